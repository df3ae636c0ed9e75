"""Load time and load memory of `from_pretrained` on real-size Qwen2.5 checkpoints, against transformers.

Random Qwen2.5 checkpoints of the published shapes (configs/qwen2.5-0.5b.json, configs/qwen2.5-1.5b.json) are
written by transformers itself (bf16 safetensors; sharded for the 1.5B) and converted once with
`paddle-qwen2 convert`. Each load runs in a fresh child process that imports its libraries, records its RSS, calls
`from_pretrained` to float32 on CPU and reports the wall time of that call and the memory it added (peak VmHWM
minus the RSS before). Implementations, interleaved, median of `--repeats` (default 6):
  * transformers 4.57.6 `AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)` (the anchor),
  * paddle_qwen2 `Qwen2ForCausalLM.from_pretrained` from the HF folder and from the converted folder,
  * paddlenlp 3.0.0b2's own `Qwen2ForCausalLM` from the converted folder, default and `low_cpu_mem_usage=True`
    (one run each: they take tens of seconds).
Targets: paddle_qwen2's load time <= 1.0x transformers', load memory <= 1.1x transformers'.

One untimed round of every implementation comes first, and each repeat starts one implementation later. On a
VM touching memory that no process has used yet, or that another process has just freed, costs several times more
than touching it again, whichever library does it: the warm-up round pays the first, the rotation spreads the
second over every implementation, and the files are in the page cache before anything is timed.

    python benchmarks/bench_load.py                      # 0.5B and 1.5B, 6 repeats (~10 min with the checkpoints)
    python benchmarks/bench_load.py --sizes 0.5b --repeats 1 --skip-paddlenlp
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import run_json_child, write_hf_checkpoint, write_results
from model_configs import load_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "load.json"
TIME_TARGET, MEMORY_TARGET = 1.0, 1.1
SHARD_SIZE = {"0.5b": "5GB", "1.5b": "1GB"}  # the 1.5B checkpoint is sharded, as published ones are

# Child programs: print one JSON line {"seconds", "added_bytes"}.
_MEASURE = r"""
import json, os, sys, time
from common import status_bytes
{imports}
before = status_bytes("VmRSS")
start = time.perf_counter()
model = {load}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "added_bytes": status_bytes("VmHWM") - before}}))
"""
IMPLS = {
    "transformers": (
        "import torch, transformers; torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))",
        "transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)",
        "hf",
    ),
    "ours_hf": (
        "from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()\n"
        "import paddle_qwen2, paddle; from paddle_qwen2 import Qwen2ForCausalLM",
        "Qwen2ForCausalLM.from_pretrained(sys.argv[1], dtype='float32')",
        "hf",
    ),
    "ours_paddle": (
        "from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()\n"
        "import paddle_qwen2, paddle; from paddle_qwen2 import Qwen2ForCausalLM",
        "Qwen2ForCausalLM.from_pretrained(sys.argv[1], dtype='float32')",
        "paddle",
    ),
    "paddlenlp": (
        "import zlib, paddle; from paddlenlp.transformers import Qwen2ForCausalLM",
        "Qwen2ForCausalLM.from_pretrained(sys.argv[1], dtype='float32')",
        "paddle",
    ),
    "paddlenlp_low_mem": (
        "import zlib, paddle; from paddlenlp.transformers import Qwen2ForCausalLM",
        "Qwen2ForCausalLM.from_pretrained(sys.argv[1], dtype='float32', low_cpu_mem_usage=True)",
        "paddle",
    ),
}
SLOW = ("paddlenlp", "paddlenlp_low_mem")


def write_checkpoint(size: str, folder: Path) -> None:
    """A random Qwen2.5-`size` written by transformers (bf16, the published config), then converted."""
    hf, paddle_dir = folder / "hf", folder / "paddle"
    write_hf_checkpoint(hf, load_config(f"qwen2.5-{size}"), dtype="bfloat16", max_shard_size=SHARD_SIZE[size])
    convert = [sys.executable, "-m", "paddle_qwen2", "convert", "--from-hf", str(hf), "--out", str(paddle_dir)]
    subprocess.run([*convert, "--quiet"], check=True)


def measure(impl: str, folder: Path) -> dict:
    imports, load, layout = IMPLS[impl]
    return run_json_child(_MEASURE.format(imports=imports, load=load), [str(folder / layout)], impl)


def bench_size(size: str, workdir: Path, repeats: int, impls: list[str]) -> dict:
    folder = workdir / size
    if not (folder / "paddle" / "config.json").is_file():
        print(f"writing a random Qwen2.5-{size} checkpoint with transformers ...", flush=True)
        write_checkpoint(size, folder)
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for impl in impls:  # untimed: the files into the page cache, the VM's memory touched once (see the docstring)
        if impl not in SLOW:
            measure(impl, folder)
    timed, slow = [impl for impl in impls if impl not in SLOW], [impl for impl in impls if impl in SLOW]
    for repeat in range(repeats):
        # each repeat starts one implementation later: what ran just before (and freed its memory) changes
        order = timed[repeat % len(timed) :] + timed[: repeat % len(timed)] + (slow if repeat == 0 else [])
        for impl in order:
            runs[impl].append(measure(impl, folder))
            print(f"  {size} {impl:<18} {runs[impl][-1]['seconds']:7.2f} s", flush=True)
    summary = {
        impl: {
            "seconds": statistics.median(r["seconds"] for r in results),
            "added_mb": statistics.median(r["added_bytes"] for r in results) / 2**20,
            "runs": results,
        }
        for impl, results in runs.items()
    }
    anchor = summary["transformers"]
    for impl in impls:
        summary[impl]["time_vs_transformers"] = summary[impl]["seconds"] / anchor["seconds"]
        summary[impl]["memory_vs_transformers"] = summary[impl]["added_mb"] / anchor["added_mb"]
    return summary


def table(results: dict) -> str:
    lines = [
        "| model | implementation | from_pretrained | memory added | time vs transformers | memory vs transformers |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, summary in results["sizes"].items():
        for impl, row in summary.items():
            lines.append(
                f"| Qwen2.5-{size} | {impl} | {row['seconds']:.2f} s | {row['added_mb']:.0f} MB | "
                f"{row['time_vs_transformers']:.2f}x | {row['memory_vs_transformers']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"], choices=sorted(SHARD_SIZE))
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--skip-paddlenlp", action="store_true", help="leave out paddlenlp's own model (slow)")
    parser.add_argument("--workdir", help="keep the checkpoints here (default: a temp folder, removed afterwards)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    for size in args.sizes:
        load_config(f"qwen2.5-{size}")  # the config exists
    impls = [impl for impl in IMPLS if not (args.skip_paddlenlp and impl in SLOW)]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        results = {
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "repeats": args.repeats,
            "targets": {"time_vs_transformers_max": TIME_TARGET, "memory_vs_transformers_max": MEMORY_TARGET},
            "sizes": {size: bench_size(size, workdir, args.repeats, impls) for size in args.sizes},
        }
    results = write_results(args.results, results)
    print(table(results))
    for size, summary in results["sizes"].items():
        for impl in ("ours_hf", "ours_paddle"):
            row = summary[impl]
            ok = row["time_vs_transformers"] <= TIME_TARGET and row["memory_vs_transformers"] <= MEMORY_TARGET
            print(
                f"{size} {impl}: time {row['time_vs_transformers']:.2f}x (<= {TIME_TARGET}), "
                f"memory {row['memory_vs_transformers']:.2f}x (<= {MEMORY_TARGET}) {'met' if ok else 'NOT met'}"
            )
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
