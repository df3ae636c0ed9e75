"""Corpus-scale `paddle-qwen2 embed`: peak memory against corpus size, texts/s of one and two processes, and the
time a kill-and-resume costs.

The model is the bundled trained tiny causal LM (examples/model, a plain Qwen2 folder) with `--pooling mean`. The
corpus is short texts (5 to 30 English words, or 10 to 60 Chinese characters, a quarter of them) cut from the bundled
corpus (examples/data/corpus) with a fixed seed, written as `--shards` JSONL shards (`{"id", "text"}` per line);
outputs are the default parquet shards, one per input shard, and manifest.json. Every run is the real command line
in a fresh process, with the same options but the corpus and the process settings:

- memory: one process over `--small` and `--large` texts (same shard count). Peak RSS is `ru_maxrss` of
  `RUSAGE_CHILDREN` in a small runner process that only starts the command and waits (the largest process of the
  run: with `--processes`, one rank); target: the large run within 1.2x of the small one's;
- processes: `--throughput-texts` texts by 1 process on 1 thread, 1 process on 2 threads, and 2 processes of 1
  thread each (`--processes 2 --threads-per-process 1`): wall seconds of the whole command and the texts/s and
  tokens/s of its summary line;
- resume: `--resume-texts` texts once uninterrupted (T0), then into a fresh folder, SIGKILL of the command's whole
  process group once its progress files (`.embed/progress/rank-*.json`) say half the texts are committed, and the
  same command again to the end. Time lost = (killed run + resumed run - T0) / T0, target <= 10%; the resumed
  folder's files (every shard output and manifest.json) must have the uninterrupted folder's sha256.

The 1-minute load average at each run's start is recorded (the machine is shared: compare ratios of one run).

    python benchmarks/bench_embed_corpus.py              # full run (~10 min on 2 cores)
    python benchmarks/bench_embed_corpus.py --quick      # tiny corpora, a smoke run (results not for the docs)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import EXAMPLES, ROOT, write_results

RESULTS = ROOT / "benchmarks" / "results" / "embed_corpus.json"
MODEL = EXAMPLES / "model"
POOLING = "mean"
RSS_TARGET = 1.2
RESUME_TARGET = 0.10
KILL_AT = 0.5
POLL_SECONDS = 0.05
SUMMARY = re.compile(
    r"embedded (\d+) texts, dim (\d+), in ([\d.]+) s \(([\d.]+) texts/s, ([\d.]+) tokens/s",
)
FULL = {"small": 20_000, "large": 400_000, "throughput_texts": 40_000, "resume_texts": 100_000, "chunk_size": 2048}
QUICK = {"small": 300, "large": 1_200, "throughput_texts": 600, "resume_texts": 2_000, "chunk_size": 64}
PROCESS_SETTINGS = {
    "1 process, 1 thread": ([], "1"),
    "1 process, 2 threads": ([], "2"),
    "2 processes, 1 thread each": (["--processes", "2", "--threads-per-process", "1"], None),
}
BASELINE = "1 process, 2 threads"

# The runner: starts the command, waits, and reports its wall time, exit code, output tails and the peak RSS of the
# largest process it waited for (ru_maxrss of RUSAGE_CHILDREN; the runner itself stays small).
_RUNNER = r"""
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
start = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"returncode": proc.returncode, "seconds": seconds, "peak_rss": peak,
                  "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-4000:]}))
"""


# ------------------------------------------------------------------------------------------------ the corpus


def short_texts(count: int, seed: int = 0) -> Iterator[str]:
    """`count` short texts of the bundled corpus: 5 to 30 consecutive English words, or (one in four) 10 to 60
    consecutive characters of the Chinese text; the same seed gives the same texts."""
    corpus = EXAMPLES / "data" / "corpus"
    words = (corpus / "en.txt").read_text(encoding="utf-8").split()
    hanzi = "".join((corpus / "zh.txt").read_text(encoding="utf-8").split())
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.25:
            n = rng.randint(10, 60)
            start = rng.randrange(len(hanzi) - n)
            yield hanzi[start : start + n]
        else:
            n = rng.randint(5, 30)
            start = rng.randrange(len(words) - n)
            yield " ".join(words[start : start + n])


def write_corpus(folder: Path, count: int, shards: int, seed: int = 0) -> list[Path]:
    """`count` short texts in `shards` JSONL files `folder/part-NNNNN.jsonl` of (nearly) equal size, each line
    `{"id": i, "text": ...}`; an existing folder is replaced."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = [folder / f"part-{i:05d}.jsonl" for i in range(shards)]
    bounds = [count * i // shards for i in range(shards + 1)]
    texts = short_texts(count, seed)
    for i, path in enumerate(paths):
        with open(path, "w", encoding="utf-8") as f:
            for row in range(bounds[i], bounds[i + 1]):
                f.write(json.dumps({"id": row, "text": next(texts)}, ensure_ascii=False) + "\n")
    return paths


# ------------------------------------------------------------------------------------------------ one run


def embed_command(corpus: Path, out: Path, chunk_size: int, extra: list[str]) -> list[str]:
    """The `paddle-qwen2 embed` command line of a run: every shard of `corpus` into the folder `out`."""
    return [
        sys.executable,
        "-m",
        "paddle_qwen2",
        "embed",
        "--model",
        str(MODEL),
        "--pooling",
        POOLING,
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--chunk-size",
        str(chunk_size),
        *extra,
    ]


def command_env(threads: str | None) -> dict[str, str]:
    """The environment of a run: OMP_NUM_THREADS as `threads` (unset for None: `--threads-per-process` says)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    return env


def parse_summary(stdout: str) -> dict:
    """texts, dim, seconds, texts_per_s, tokens_per_s of the command's summary line; RuntimeError without one."""
    matches = SUMMARY.findall(stdout)
    if not matches:
        raise RuntimeError(f"no summary line ('embedded N texts, ...') in the command's output:\n{stdout[-2000:]}")
    texts, dim, seconds, rate, tokens = matches[-1]
    return {
        "texts": int(texts),
        "dim": int(dim),
        "embed_seconds": float(seconds),
        "texts_per_s": float(rate),
        "tokens_per_s": float(tokens),
    }


def run_embed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd` to its end through the runner: wall seconds, peak RSS (bytes, the largest process), the load
    average at the start and the summary line's numbers. RuntimeError with the command's stderr if it fails."""
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(cmd)], capture_output=True, text=True, env=env, check=True
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {report['returncode']}:\n{report['stderr']}")
    return {
        "seconds": report["seconds"],
        "peak_rss": report["peak_rss"],
        "load_average_at_start": round(load, 2),
        **parse_summary(report["stdout"]),
    }


def progress(out: Path) -> float | None:
    """The committed fraction of the texts over every rank's progress file of the output folder `out`, or None
    before any rank has written one (a file being replaced is read on the next poll)."""
    done = total = 0
    for path in (out / ".embed" / "progress").glob("rank-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        done, total = done + state["texts"], total + state["total"]
    return done / total if total else None


def run_killed(cmd: list[str], env: dict[str, str], out: Path, at: float = KILL_AT) -> dict:
    """Start `cmd` in a process group of its own and SIGKILL the whole group once `progress(out)` >= `at`:
    seconds from the start to the kill and the progress seen then. RuntimeError if the command ends first."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as log:  # not a pipe: nobody reads it while the command runs
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                seen = progress(out)
                if seen is not None and seen >= at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    seconds = time.perf_counter() - start
                    proc.wait()
                    return {"seconds": seconds, "progress_at_kill": seen, "load_average_at_start": round(load, 2)}
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")[-3000:]
    raise RuntimeError(f"the run ended (exit {proc.returncode}) before {at:.0%} progress was seen:\n{output}")


def folder_digests(out: Path) -> dict[str, str]:
    """sha256 of every file directly in the output folder `out` (the shard outputs and manifest.json)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the three parts


def measure_memory(workdir: Path, sizes: dict, shards: int) -> dict:
    """Peak RSS of one process over the small and the large corpus, and their ratio."""
    runs = {}
    for key in ("small", "large"):
        corpus = workdir / f"corpus-{key}"
        write_corpus(corpus, sizes[key], shards)
        out = workdir / f"out-{key}"
        shutil.rmtree(out, ignore_errors=True)
        runs[str(sizes[key])] = run_embed(embed_command(corpus, out, sizes["chunk_size"], []), command_env("2"))
        shutil.rmtree(out)
        print(f"  memory, {sizes[key]} texts: {runs[str(sizes[key])]['peak_rss'] / 2**20:.0f} MB", flush=True)
    small, large = (runs[str(sizes[k])]["peak_rss"] for k in ("small", "large"))
    return {"threads": 2, "runs": runs, "ratio": large / small, "target": RSS_TARGET}


def measure_processes(workdir: Path, sizes: dict, shards: int) -> dict:
    """texts/s of every PROCESS_SETTINGS entry over the same corpus, and each one's ratio to BASELINE's."""
    corpus = workdir / "corpus-throughput"
    write_corpus(corpus, sizes["throughput_texts"], shards)
    runs = {}
    for name, (extra, threads) in PROCESS_SETTINGS.items():
        out = workdir / "out-throughput"
        shutil.rmtree(out, ignore_errors=True)
        runs[name] = run_embed(embed_command(corpus, out, sizes["chunk_size"], extra), command_env(threads))
        runs[name]["wall_texts_per_s"] = sizes["throughput_texts"] / runs[name]["seconds"]
        print(f"  {name}: {runs[name]['texts_per_s']:.0f} texts/s ({runs[name]['seconds']:.1f} s)", flush=True)
    shutil.rmtree(workdir / "out-throughput", ignore_errors=True)
    base = runs[BASELINE]
    for r in runs.values():
        r["vs_baseline"] = r["texts_per_s"] / base["texts_per_s"]
        r["wall_vs_baseline"] = r["wall_texts_per_s"] / base["wall_texts_per_s"]
    return {"texts": sizes["throughput_texts"], "baseline": BASELINE, "runs": runs}


def measure_resume(workdir: Path, sizes: dict, shards: int) -> dict:
    """An uninterrupted run, then a run killed at KILL_AT progress and the same command to its end: the time lost
    and whether the resumed folder's files are the uninterrupted ones byte for byte."""
    corpus = workdir / "corpus-resume"
    write_corpus(corpus, sizes["resume_texts"], shards)
    whole, resumed = workdir / "out-whole", workdir / "out-resumed"
    for out in (whole, resumed):
        shutil.rmtree(out, ignore_errors=True)
    env = command_env("2")
    uninterrupted = run_embed(embed_command(corpus, whole, sizes["chunk_size"], []), env)
    print(f"  uninterrupted: {uninterrupted['seconds']:.1f} s", flush=True)
    cmd = embed_command(corpus, resumed, sizes["chunk_size"], [])
    killed = run_killed(cmd, env, resumed)
    print(f"  killed at {killed['progress_at_kill']:.0%} after {killed['seconds']:.1f} s", flush=True)
    rerun = run_embed(cmd, env)
    print(f"  resumed: {rerun['seconds']:.1f} s", flush=True)
    expected, got = folder_digests(whole), folder_digests(resumed)
    for out in (whole, resumed):
        shutil.rmtree(out)
    lost = (killed["seconds"] + rerun["seconds"] - uninterrupted["seconds"]) / uninterrupted["seconds"]
    return {
        "texts": sizes["resume_texts"],
        "threads": 2,
        "uninterrupted": uninterrupted,
        "killed": killed,
        "resumed": rerun,
        "time_lost": lost,
        "target": RESUME_TARGET,
        "files": sorted(expected),
        "identical": expected == got,
        "differing_files": sorted(name for name in set(expected) | set(got) if expected.get(name) != got.get(name)),
    }


# ------------------------------------------------------------------------------------------------ results


def table(result: dict) -> str:
    """The docs tables of a result (benchmarks/results/embed_corpus.json)."""
    mem, procs, resume = result["memory"], result["processes"], result["resume"]
    lines = [
        f"`paddle-qwen2 embed` of {result['corpus']}, {result['shards']} JSONL shards, model {result['model']}; "
        f"options `{' '.join(result['options'])}`; each run a fresh command (1-minute load average at its start "
        "in brackets).",
        "",
        "| texts | peak RSS | seconds | texts/s | tokens/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for texts, r in mem["runs"].items():
        lines.append(
            f"| {int(texts):,} | {r['peak_rss'] / 2**20:.0f} MB | {r['seconds']:.1f} ({r['load_average_at_start']:.1f})"
            f" | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Peak RSS of the larger corpus: **{mem['ratio']:.2f}x** the smaller's (target <= {mem['target']:.1f}x).",
        "",
        f"| {procs['texts']:,} texts | seconds | texts/s | tokens/s | vs {procs['baseline']} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in procs["runs"].items():
        lines.append(
            f"| {name} | {r['seconds']:.1f} ({r['load_average_at_start']:.1f}) | {r['texts_per_s']:.0f} | "
            f"{r['tokens_per_s']:.0f} | **{r['vs_baseline']:.2f}x** ({r['wall_vs_baseline']:.2f}x wall) |"
        )
    killed = resume["killed"]
    lines += [
        "",
        f"| kill and resume, {resume['texts']:,} texts | seconds |",
        "| --- | --- |",
        f"| uninterrupted (T0) | {resume['uninterrupted']['seconds']:.1f} "
        f"({resume['uninterrupted']['load_average_at_start']:.1f}) |",
        f"| SIGKILL at {killed['progress_at_kill']:.0%} committed | {killed['seconds']:.1f} "
        f"({killed['load_average_at_start']:.1f}) |",
        f"| the same command again, to the end | {resume['resumed']['seconds']:.1f} "
        f"({resume['resumed']['load_average_at_start']:.1f}) |",
        "",
        f"Time lost: **{resume['time_lost']:.1%}** of T0 (target <= {resume['target']:.0%}); resumed outputs "
        + (
            "byte-identical to the uninterrupted run's (sha256 of every shard output and manifest.json)."
            if resume["identical"]
            else f"**differ** from the uninterrupted run's: {', '.join(resume['differing_files'])}."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny corpora (a smoke run)")
    p.add_argument("--small", type=int, help=f"texts of the smaller memory run (default {FULL['small']})")
    p.add_argument("--large", type=int, help=f"texts of the larger memory run (default {FULL['large']})")
    p.add_argument("--throughput-texts", type=int, help=f"default {FULL['throughput_texts']}")
    p.add_argument("--resume-texts", type=int, help=f"default {FULL['resume_texts']}")
    p.add_argument("--chunk-size", type=int, help=f"texts per committed chunk (default {FULL['chunk_size']})")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_embed_corpus"))
    p.add_argument("--out", default=str(RESULTS), help="the results JSON file")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    print("memory ...", flush=True)
    memory = measure_memory(workdir, sizes, args.shards)
    print("processes ...", flush=True)
    processes = measure_processes(workdir, sizes, args.shards)
    print("kill and resume ...", flush=True)
    resume = measure_resume(workdir, sizes, args.shards)
    result = {
        "benchmark": "embed_corpus",
        "quick": args.quick,
        "model": f"examples/model (--pooling {POOLING})",
        "corpus": "short texts (5-30 English words or 10-60 Chinese characters) of examples/data/corpus",
        "shards": args.shards,
        "options": ["--chunk-size", str(sizes["chunk_size"])],
        "load_average_at_start": load,
        "memory": memory,
        "processes": processes,
        "resume": resume,
        "elapsed_seconds": time.perf_counter() - started,
    }
    result = write_results(args.out, result)
    print("\n" + table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
