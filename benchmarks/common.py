"""Helpers the bench_*.py scripts share: the machine a run is on, results files, RSS, the bundled corpus, child
programs, and random-weight HF checkpoints.

    machine_info()           CPU model, usable cores, Python and library versions, the thread variables
    write_results(path, r)   `r` with "date" and "machine" first, as indented JSON
    status_bytes(field)      a /proc/<pid>/status memory field (VmRSS, VmHWM) in bytes
    corpus_spans(n, length)  `n` spans of the bundled corpus (examples/data/corpus), seeded
    run_json_child(...)      `python -c PROGRAM ARGS` with the benchmark's thread count; its last JSON line
    run_result_child(cmd)    a child that prints `RESULT {json}`: that result, its process seconds and the load
    timed(fn)                (seconds, fn's result)
    write_hf_checkpoint(...) a random-weight transformers `Qwen2ForCausalLM`, written by a child process

Only the standard library is imported here, so a child program can import this module (with `sys.path` holding
benchmarks/) before it measures its own memory. `python benchmarks/common.py write-checkpoint ...` is the child
side of `write_hf_checkpoint` (it imports torch and transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
EXAMPLES = ROOT / "examples"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
DISTRIBUTIONS = ("paddlepaddle", "torch", "transformers", "sentence-transformers", "paddlenlp")


# ------------------------------------------------------------------------------------------------ machine, results


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" without it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions(distributions: tuple[str, ...] = DISTRIBUTIONS) -> dict[str, str | None]:
    """The installed version of each distribution (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_info(**extra: Any) -> dict[str, Any]:
    """What a result was measured on: CPU model, the cores this process may use, Python, library versions,
    MKL_DEBUG_CPU_TYPE and OMP_NUM_THREADS; `extra` entries are added."""
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **versions(),
        "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        **extra,
    }


def write_results(path: str | os.PathLike, result: dict[str, Any], **machine_extra: Any) -> dict[str, Any]:
    """Write `result` to `path` (folders created) as indented JSON, headed by "date" (local, minutes) and
    "machine" (`machine_info(**machine_extra)`) unless it has them; returns what was written."""
    stamped = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(**machine_extra), **result}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    return stamped


# ------------------------------------------------------------------------------------------------ memory, timing


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/<pid>/status ("VmRSS", "VmHWM", ...) in bytes. VmHWM belongs to the process image,
    so unlike `ru_maxrss` it does not inherit the parent's peak across fork + exec."""
    prefix = field.rstrip(":") + ":"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(prefix):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status: no {prefix} line")


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(wall seconds, result) of `fn(*args, **kwargs)`."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def bench_threads() -> str:
    """OMP_NUM_THREADS for child processes: the caller's, else every core this process may use."""
    return os.environ.get("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


def run_json_child(program: str, args: list[str], what: str) -> dict[str, Any]:
    """Run `python -c program *args` (OMP_NUM_THREADS as `bench_threads()`, benchmarks/ importable) and return
    the JSON object on its last line of output; a failure raises RuntimeError naming `what`."""
    env = dict(os.environ, OMP_NUM_THREADS=bench_threads())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


RESULT_PREFIX = "RESULT "


def run_result_child(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` in `env` and return the JSON object of the last line of its output that starts with "RESULT ",
    with "process_seconds" (the child's wall time, start to exit) and "load_average_at_start" (1-minute load
    average) added; {"error": the tail of its stderr (else stdout)} when it exits non-zero or prints no result."""
    start, load = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:].strip()}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["process_seconds"] = time.perf_counter() - start
    result["load_average_at_start"] = round(load, 2)
    return result


# ------------------------------------------------------------------------------------------------ inputs


def corpus_text() -> str:
    """The bundled English and Chinese corpus as one string, runs of whitespace made single spaces."""
    files = [EXAMPLES / "data" / "corpus" / name for name in ("en.txt", "zh.txt")]
    return " ".join(" ".join(f.read_text(encoding="utf-8").split()) for f in files)


def corpus_spans(count: int, length: Callable[[random.Random], int], seed: int = 0, empty: str = "empty") -> list[str]:
    """`count` spans of the bundled corpus, each of `length(rng)` characters at a random start, stripped
    (`empty` where nothing is left); the same `seed` gives the same spans."""
    corpus = corpus_text()
    rng = random.Random(seed)
    spans = []
    for _ in range(count):
        n = length(rng)
        start = rng.randrange(0, len(corpus) - n)
        spans.append(corpus[start : start + n].strip() or empty)
    return spans


# ------------------------------------------------------------------------------------------------ checkpoints


def write_hf_checkpoint(
    folder: Path,
    config: dict[str, Any],
    *,
    dtype: str | None = None,
    max_shard_size: str | None = None,
    tokenizer: bool = False,
    generation_config: dict[str, Any] | None = None,
) -> None:
    """A random-weight transformers `Qwen2ForCausalLM` of `config` (seed 0) saved into `folder` by a child process
    (so this process never loads torch): in `dtype` if given, sharded at `max_shard_size` if given; with the
    bundled tokenizer (examples/model) if `tokenizer`, and `generation_config` as generation_config.json (the
    bundled one when `tokenizer` and no `generation_config`)."""
    cmd = [sys.executable, __file__, "write-checkpoint", str(folder), json.dumps(config)]
    if dtype:
        cmd += ["--dtype", dtype]
    if max_shard_size:
        cmd += ["--max-shard-size", max_shard_size]
    if tokenizer:
        cmd += ["--tokenizer"]
    if generation_config is not None:
        cmd += ["--generation-config", json.dumps(generation_config)]
    subprocess.run(cmd, check=True)


def _write_hf_checkpoint_here(args: argparse.Namespace) -> None:
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**json.loads(args.config)))
    if args.dtype:
        model = model.to(getattr(torch, args.dtype))
    model.save_pretrained(args.folder, **({"max_shard_size": args.max_shard_size} if args.max_shard_size else {}))
    if args.tokenizer:
        names = TOKENIZER_FILES if args.generation_config else (*TOKENIZER_FILES, "generation_config.json")
        for name in names:
            shutil.copy(EXAMPLES / "model" / name, Path(args.folder) / name)
    if args.generation_config:
        (Path(args.folder) / "generation_config.json").write_text(args.generation_config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The child side of benchmarks/common.py's helpers.")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-checkpoint", help="a random-weight transformers Qwen2ForCausalLM")
    write.add_argument("folder")
    write.add_argument("config", help="the Qwen2Config fields as a JSON object")
    write.add_argument("--dtype", help="a torch dtype name (e.g. bfloat16); default float32")
    write.add_argument("--max-shard-size")
    write.add_argument("--tokenizer", action="store_true", help="copy the bundled tokenizer (examples/model)")
    write.add_argument("--generation-config", help="generation_config.json's contents (JSON)")
    args = parser.parse_args(argv)
    _write_hf_checkpoint_here(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
