"""Corpus-scale `paddle-qwen2 embed`: peak memory against corpus size, texts/s of one and two processes, and the
time a kill-and-resume costs.

The model is the bundled trained tiny causal LM (examples/model, a plain Qwen2 folder) with `--pooling mean`. A
corpus is short texts (5 to 30 English words, or for a quarter of them 10 to 60 Chinese characters) cut from the
bundled corpus (examples/data/corpus) with a fixed seed, in `--shards` JSONL shards (`{"id", "text"}` per line);
outputs are the default parquet shards and manifest.json. Every run is the real command line in a fresh process,
with the same options but the corpus and the process settings:

- memory: one process (2 threads) over `--small` and `--large` texts, same shard count. Peak RSS is `ru_maxrss` of
  `RUSAGE_CHILDREN` in a small runner process that only starts the command and waits for it (the largest process
  it waited for); target: the large run within 1.2x of the small one's.
- processes: `--texts` texts by 1 process on 1 thread, 1 process on 2 threads, and 2 processes of 1 thread each
  (`--processes 2 --threads-per-process 1`). Seconds are the whole command's; texts/s and tokens/s are its
  embedding, from the ranks' progress files (`.embed/progress/rank-*.json`): the first rank's start of work to the
  last commit (the newest file's mtime).
- resume: the 1-process, 2-thread command again into a fresh folder, SIGKILL of its whole process group once its
  progress file says half the texts are committed, then the same command to the end. Time lost = (killed run +
  resumed run - the uninterrupted run's seconds) / those seconds, target <= 10%; every file of the resumed folder
  (shard outputs and manifest.json) must have the sha256 of the uninterrupted folder's.

The 1-minute load average at each run's start is recorded (the machine is shared: compare the ratios of one run).

    python benchmarks/bench_embed_corpus.py              # 20k / 400k / 40k texts
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
POLL_SECONDS = 0.02
SUMMARY = re.compile(
    r"embedded (\d+) texts, dim (\d+), in ([\d.]+) s \(([\d.]+) texts/s, ([\d.]+) tokens/s",
)
FULL = {"small": 20_000, "large": 400_000, "texts": 40_000, "chunk_size": 2048}
QUICK = {"small": 200, "large": 800, "texts": 1_500, "chunk_size": 64}
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
    """The texts and the dimension of the command's summary line; RuntimeError without one."""
    matches = SUMMARY.findall(stdout)
    if not matches:
        raise RuntimeError(f"no summary line ('embedded N texts, ...') in the command's output:\n{stdout[-2000:]}")
    texts, dim = matches[-1][:2]
    return {"texts": int(texts), "dim": int(dim)}


def progress_files(out: Path) -> list[Path]:
    """The ranks' progress files of the output folder `out` (`.embed/progress/rank-*.json`; they are replaced by a
    rename, so a listed file stays there)."""
    return sorted((out / ".embed" / "progress").glob("rank-*.json"))


def embedding_phase(out: Path, began: float) -> dict:
    """The embedding of a finished run from its ranks' progress files: the texts and tokens this run embedded
    (`new_texts`, else `texts`, and `tokens` summed over the ranks) and the seconds from `began` (epoch seconds: when
    a rank first wrote its progress file, its model loaded and its shards counted) to the last commit (the newest
    file's mtime), with the rates over them."""
    files = progress_files(out)
    if not files:
        raise RuntimeError(f"{out}: no progress files (.embed/progress/rank-*.json)")
    states = [json.loads(f.read_text()) for f in files]
    seconds = max(max(f.stat().st_mtime for f in files) - began, 1e-9)
    texts = sum(state.get("new_texts", state["texts"]) for state in states)
    tokens = sum(state["tokens"] for state in states)
    return {"embed_seconds": seconds, "texts_per_s": texts / seconds, "tokens_per_s": tokens / seconds}


def run_embed(cmd: list[str], env: dict[str, str], out: Path) -> dict:
    """Run `cmd` (which writes the folder `out`) to its end through the runner, watching `out` for the first
    progress file this run writes: wall seconds, peak RSS (bytes, the largest process), the load average at the
    start, the summary line's texts and dimension and the embedding phase's rates (`embedding_phase`).
    RuntimeError with the command's stderr if it fails."""
    load = os.getloadavg()[0]
    began = None
    with tempfile.TemporaryFile() as report_file:
        start_epoch = time.time()
        proc = subprocess.Popen([sys.executable, "-c", _RUNNER, json.dumps(cmd)], stdout=report_file, env=env)
        while proc.poll() is None:
            if began is None and any(f.stat().st_mtime >= start_epoch for f in progress_files(out)):
                began = time.time()
            time.sleep(POLL_SECONDS)
        report_file.seek(0)
        lines = report_file.read().decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the runner of {' '.join(cmd)} failed (exit {proc.returncode})")
    report = json.loads(lines[-1])
    if report["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {report['returncode']}:\n{report['stderr']}")
    if began is None:
        raise RuntimeError(f"{' '.join(cmd)} ended before its progress file was seen: use a larger corpus")
    run = {"seconds": report["seconds"], "peak_rss": report["peak_rss"], "load_average_at_start": round(load, 2)}
    run.update(parse_summary(report["stdout"]))
    run["wall_texts_per_s"] = run["texts"] / report["seconds"]
    run.update(embedding_phase(out, began))
    return run


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
    """Peak RSS of one process (2 threads) over the small and the large corpus, and their ratio."""
    runs = {}
    for key in ("small", "large"):
        corpus, out = workdir / f"corpus-{key}", workdir / f"out-{key}"
        write_corpus(corpus, sizes[key], shards)
        shutil.rmtree(out, ignore_errors=True)
        run = run_embed(embed_command(corpus, out, sizes["chunk_size"], []), command_env("2"), out)
        runs[str(sizes[key])] = run
        shutil.rmtree(out)
        shutil.rmtree(corpus)
        print(f"  {sizes[key]} texts: peak RSS {run['peak_rss'] / 2**20:.0f} MB, {run['seconds']:.1f} s", flush=True)
    small, large = (runs[str(sizes[k])]["peak_rss"] for k in ("small", "large"))
    measured = time.strftime("%Y-%m-%d %H:%M")
    return {"threads": 2, "runs": runs, "ratio": large / small, "target": RSS_TARGET, "measured": measured}


def previous_memory(path: str) -> dict:
    """The memory part of the results at `path` (`--reuse-memory`), with the date it was measured."""
    try:
        previous = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse-memory: no results to reuse in {path} ({e})") from None
    if previous.get("quick"):
        raise SystemExit(f"--reuse-memory: {path} holds a --quick run")
    return {"measured": previous["date"], **previous["memory"]}


def measure_processes(workdir: Path, corpus: Path, sizes: dict) -> tuple[dict, Path]:
    """Every PROCESS_SETTINGS entry over `corpus`, each one's rates against BASELINE's; returns the result and
    BASELINE's output folder (kept: the uninterrupted run the resume part compares with)."""
    runs = {}
    for name, (extra, threads) in PROCESS_SETTINGS.items():
        out = workdir / ("out-whole" if name == BASELINE else "out-processes")
        shutil.rmtree(out, ignore_errors=True)
        runs[name] = run_embed(embed_command(corpus, out, sizes["chunk_size"], extra), command_env(threads), out)
        if name != BASELINE:
            shutil.rmtree(out)
        r = runs[name]
        print(f"  {name}: {r['texts_per_s']:.0f} texts/s embedding, {r['seconds']:.1f} s in all", flush=True)
    base = runs[BASELINE]
    for r in runs.values():
        r["vs_baseline"] = r["texts_per_s"] / base["texts_per_s"]
        r["wall_vs_baseline"] = r["wall_texts_per_s"] / base["wall_texts_per_s"]
    return {"texts": sizes["texts"], "baseline": BASELINE, "runs": runs}, workdir / "out-whole"


def measure_resume(workdir: Path, corpus: Path, sizes: dict, uninterrupted: dict, whole: Path) -> dict:
    """The command of `uninterrupted` (BASELINE's run, its folder `whole`) into a fresh folder, killed at KILL_AT
    progress and run again to its end: the time lost against `uninterrupted` and whether the resumed folder's
    files are `whole`'s byte for byte."""
    resumed = workdir / "out-resumed"
    shutil.rmtree(resumed, ignore_errors=True)
    extra, threads = PROCESS_SETTINGS[BASELINE]
    cmd, env = embed_command(corpus, resumed, sizes["chunk_size"], extra), command_env(threads)
    killed = run_killed(cmd, env, resumed)
    print(f"  killed at {killed['progress_at_kill']:.0%} after {killed['seconds']:.1f} s", flush=True)
    rerun = run_embed(cmd, env, resumed)
    print(f"  resumed: {rerun['seconds']:.1f} s (uninterrupted: {uninterrupted['seconds']:.1f} s)", flush=True)
    expected, got = folder_digests(whole), folder_digests(resumed)
    for out in (whole, resumed):
        shutil.rmtree(out)
    lost = (killed["seconds"] + rerun["seconds"] - uninterrupted["seconds"]) / uninterrupted["seconds"]
    return {
        "texts": sizes["texts"],
        "setting": BASELINE,
        "uninterrupted_seconds": uninterrupted["seconds"],
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
        f"`paddle-qwen2 embed` of {result['corpus']} in {result['shards']} JSONL shards, model {result['model']}, "
        f"`--chunk-size {result['chunk_size']}`, other options at their defaults; every run a fresh command. Seconds: "
        "the whole command (the 1-minute load average at its start in brackets); texts/s and tokens/s: its "
        "embedding, from the first rank's start of work to the last commit.",
        "",
        "| texts, 1 process | peak RSS | seconds | texts/s | tokens/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for texts, r in mem["runs"].items():
        lines.append(
            f"| {int(texts):,} | {r['peak_rss'] / 2**20:.0f} MB | {r['seconds']:.1f} ({r['load_average_at_start']:.1f})"
            f" | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Peak RSS of the larger corpus: **{mem['ratio']:.2f}x** the smaller's (target <= {mem['target']:.1f}x; "
        f"measured {mem.get('measured', '')}).",
        "",
        f"| {procs['texts']:,} texts | seconds | texts/s | tokens/s | texts/s vs {procs['baseline']} | wall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in procs["runs"].items():
        lines.append(
            f"| {name} | {r['seconds']:.1f} ({r['load_average_at_start']:.1f}) | {r['texts_per_s']:.0f} | "
            f"{r['tokens_per_s']:.0f} | **{r['vs_baseline']:.2f}x** | {r['wall_vs_baseline']:.2f}x |"
        )
    killed, resumed = resume["killed"], resume["resumed"]
    whole = procs["runs"][resume["setting"]]
    restart = resumed["seconds"] - resumed["embed_seconds"]
    lines += [
        "",
        f"| kill and resume, {resume['texts']:,} texts, {resume['setting']} | seconds | embedding seconds | texts/s |",
        "| --- | --- | --- | --- |",
        f"| uninterrupted (T0, the run above) | {whole['seconds']:.1f} ({whole['load_average_at_start']:.1f}) | "
        f"{whole['embed_seconds']:.1f} | {whole['texts_per_s']:.0f} |",
        f"| SIGKILL at {killed['progress_at_kill']:.0%} committed | {killed['seconds']:.1f} "
        f"({killed['load_average_at_start']:.1f}) | - | - |",
        f"| the same command again, to the end | {resumed['seconds']:.1f} ({resumed['load_average_at_start']:.1f}) | "
        f"{resumed['embed_seconds']:.1f} | {resumed['texts_per_s']:.0f} |",
        "",
        f"Time lost: **{resume['time_lost']:.1%}** of T0 (target <= {resume['target']:.0%}), of which the rerun's "
        f"start (model load, the shards counted) {restart:.1f} s = {restart / whole['seconds']:.1%}; the resumed "
        "folder "
        + (
            "is byte-identical to the uninterrupted one (sha256 of every shard output and manifest.json)."
            if resume["identical"]
            else f"**differs** from the uninterrupted one: {', '.join(resume['differing_files'])}."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"tiny corpora, a smoke run ({QUICK})")
    p.add_argument("--small", type=int, help=f"texts of the smaller memory run (default {FULL['small']:,})")
    p.add_argument("--large", type=int, help=f"texts of the larger memory run (default {FULL['large']:,})")
    p.add_argument("--texts", type=int, help=f"texts of the processes and resume runs (default {FULL['texts']:,})")
    p.add_argument("--chunk-size", type=int, help=f"embed's --chunk-size (default {FULL['chunk_size']})")
    p.add_argument("--shards", type=int, default=4, help="JSONL shards of every corpus (default 4)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_embed_corpus"))
    p.add_argument("--out", default=str(RESULTS), help="the results JSON file")
    p.add_argument(
        "--reuse-memory",
        action="store_true",
        help="keep the memory part of --out's results (the long 400k-text run; its date is kept) and measure the rest",
    )
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({key: getattr(args, key) for key in sizes if getattr(args, key) is not None})
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    print("memory ...", flush=True)
    memory = previous_memory(args.out) if args.reuse_memory else measure_memory(workdir, sizes, args.shards)
    corpus = workdir / "corpus"
    write_corpus(corpus, sizes["texts"], args.shards)
    print("processes ...", flush=True)
    processes, whole = measure_processes(workdir, corpus, sizes)
    print("kill and resume ...", flush=True)
    resume = measure_resume(workdir, corpus, sizes, processes["runs"][BASELINE], whole)
    shutil.rmtree(corpus)
    result = {
        "benchmark": "embed_corpus",
        "command": " ".join(["python", "benchmarks/bench_embed_corpus.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "model": f"examples/model (--pooling {POOLING})",
        "corpus": "short texts (5-30 English words or 10-60 Chinese characters of examples/data/corpus)",
        "shards": args.shards,
        "chunk_size": sizes["chunk_size"],
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
