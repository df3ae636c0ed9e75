"""Speed and memory of `paddle-qwen2 convert --from-hf` on a generated ~1 GB bf16 checkpoint in 4 shards.

Anchors measured in the same run, on the same bytes:
  * speed: a plain file copy (`shutil.copyfile`) of the 4 shard files; conversion MB/s / copy MB/s, target >= 0.5;
  * memory: the largest input shard; peak RSS of the conversion process (a child running the real CLI,
    `ru_maxrss` from `wait4`) / largest shard, target <= 1.5.
After one untimed round, copy and conversion alternate (copy, convert, ...) after `sync`; medians are reported.
The checkpoint has HF names and layout and is written with `safetensors.serialize_file` (no torch needed) by
a child process, so that the measuring process stays small (a child's ru_maxrss starts from its parent's).

The model shape comes from `configs/bench-convert-1b.json` (`--config` picks another; `--layers` overrides its
`num_hidden_layers`).

    python benchmarks/bench_convert.py                    # ~1 GB, 4 shards, 5 repeats
    python benchmarks/bench_convert.py --layers 2 --repeats 1 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_results
from model_configs import config_path, load_config
from safetensors import TensorSpec, serialize_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "convert.json"

# ~1.07 GB in bf16 with its 9 layers: hidden 2048, GQA 16/4, MLP 5632, vocab 32000, untied LM head.
DEFAULT_CONFIG = ROOT / "configs" / "bench-convert-1b.json"
SPEED_TARGET, MEMORY_TARGET = 0.5, 1.5


def model_config(name: str, layers: int | None = None) -> dict:
    """The HF config.json `name` (see `config_path`), with `num_hidden_layers` replaced by `layers` if given."""
    config = load_config(name)
    if layers is not None:
        config["num_hidden_layers"] = layers
    return config


def hf_tensors(config: dict):
    """(name, shape) of an HF Qwen2ForCausalLM, in HF's order."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = h
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for name, shape in (
            ("self_attn.q_proj.weight", (q, h)),
            ("self_attn.q_proj.bias", (q,)),
            ("self_attn.k_proj.weight", (kv, h)),
            ("self_attn.k_proj.bias", (kv,)),
            ("self_attn.v_proj.weight", (kv, h)),
            ("self_attn.v_proj.bias", (kv,)),
            ("self_attn.o_proj.weight", (h, q)),
            ("mlp.gate_proj.weight", (i, h)),
            ("mlp.up_proj.weight", (i, h)),
            ("mlp.down_proj.weight", (h, i)),
            ("input_layernorm.weight", (h,)),
            ("post_attention_layernorm.weight", (h,)),
        ):
            yield p + name, shape
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def write_checkpoint(folder: Path, config: dict, num_shards: int) -> list:
    """Random bf16 weights (N(0, 0.02) rounded) in `num_shards` files of about equal size + the index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = list(hf_tensors(config))
    total = sum(2 * int(np.prod(s)) for _, s in tensors)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).view(np.uint32) >> 16  # 16M bf16 values
    pool = pool.astype(np.uint16)
    groups, size = [[]], 0
    for name, shape in tensors:
        if groups[-1] and size + 2 * int(np.prod(shape)) > total / num_shards * 1.02:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += 2 * int(np.prod(shape))
    files, weight_map = [], {}
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        arrays = {}
        for j, (tensor, shape) in enumerate(group):
            n = int(np.prod(shape))
            arrays[tensor] = np.resize(np.roll(pool, 7919 * (j + 1)), n).reshape(shape)
            weight_map[tensor] = name
        specs = {
            t: TensorSpec(dtype="bfloat16", shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes)
            for t, a in arrays.items()
        }
        serialize_file(specs, str(folder / name), metadata={"format": "pt"})
        files.append(folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def timed_copy(files: list, dst: Path) -> float:
    dst.mkdir()
    os.sync()
    start = time.perf_counter()
    for path in files:
        shutil.copyfile(path, dst / path.name)
    return time.perf_counter() - start


def timed_convert(src: Path, dst: Path) -> tuple:
    """(seconds, peak RSS bytes, CPU seconds user + sys) of the CLI converting `src` -> `dst` in a child process.
    A child's ru_maxrss starts from the RSS of this process at fork time, so this process never holds tensors while
    measuring."""
    os.sync()
    cmd = [sys.executable, "-m", "paddle_qwen2", "convert", "--from-hf", str(src), "--out", str(dst), "--quiet"]
    # As after any normal install, the converter's bytecode is cached (by the untimed warm-up run) even where
    # the environment turns caching off (PYTHONDONTWRITEBYTECODE would add compiling to every run).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"conversion failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def check_output(src: Path, dst: Path) -> None:
    """Spot check: a transposed projection and the embedding are bit-exact."""
    from paddle_qwen2.conversion import open_checkpoint

    hf, pd = open_checkpoint(src, "hf").entries, open_checkpoint(dst, "paddle").entries
    q = hf["model.layers.0.self_attn.q_proj.weight"].read()
    assert np.array_equal(pd["qwen2.layers.0.self_attn.q_proj.weight"].read(), q.T), "q_proj differs"
    assert np.array_equal(pd["qwen2.embed_tokens.weight"].read(), hf["model.embed_tokens.weight"].read())
    assert len(hf) == len(pd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="HF config.json of the generated checkpoint: a path or a name in configs/ "
        "(default: configs/bench-convert-1b.json)",
    )
    parser.add_argument(
        "--layers", type=int, help="decoder layers, overriding the config's (default config: 9 -> ~1.07 GB)"
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", help="scratch folder (default: a temp folder, removed afterwards)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)  # child: write the checkpoint only
    args = parser.parse_args()
    config = model_config(args.config, args.layers)
    if args.generate:
        write_checkpoint(Path(args.generate), config, args.shards)
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        src = work / "hf"
        t0 = time.perf_counter()
        generate = [
            sys.executable,
            __file__,
            "--generate",
            str(src),
            "--config",
            str(config_path(args.config).resolve()),
        ]
        generate += ["--layers", str(config["num_hidden_layers"]), "--shards", str(args.shards)]
        subprocess.run(generate, check=True)
        files = sorted(src.glob("model-*.safetensors"))
        total = sum(p.stat().st_size for p in files)
        largest = max(p.stat().st_size for p in files)
        print(
            f"checkpoint: {total / 1e6:.0f} MB in {len(files)} shards (largest {largest / 1e6:.0f} MB), "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        copies, converts, peaks, cpus = [], [], [], []
        timed_copy(files, work / "warmup-copy")  # settles the page cache and the write-back of the new files
        timed_convert(src, work / "warmup-convert")
        shutil.rmtree(work / "warmup-copy")
        shutil.rmtree(work / "warmup-convert")
        for r in range(args.repeats):
            copies.append(timed_copy(files, work / f"copy{r}"))
            shutil.rmtree(work / f"copy{r}")
            seconds, peak, cpu = timed_convert(src, work / f"pd{r}")
            converts.append(seconds)
            peaks.append(peak)
            cpus.append(cpu)
            print(
                f"  run {r + 1}: copy {copies[-1]:.2f} s, convert {seconds:.2f} s ({cpu:.2f} CPU s), "
                f"peak RSS {peak / 1e6:.0f} MB"
            )
            if r < args.repeats - 1:
                shutil.rmtree(work / f"pd{r}")
        # after the timed runs: reading tensors here would raise the RSS that the next children start from
        check_output(src, work / f"pd{args.repeats - 1}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    copy_s, convert_s, peak = statistics.median(copies), statistics.median(converts), max(peaks)
    copy_mbs, convert_mbs = total / 1e6 / copy_s, total / 1e6 / convert_s
    speed_ratio, memory_ratio = convert_mbs / copy_mbs, peak / largest
    result = {
        "checkpoint": {
            "bytes": total,
            "shards": len(files),
            "largest_shard_bytes": largest,
            "dtype": "bfloat16",
            "config": {k: v for k, v in config.items() if k != "architectures"},
        },
        "repeats": args.repeats,
        "convert_seconds": convert_s,
        "convert_mb_per_s": convert_mbs,
        "convert_cpu_seconds": statistics.median(cpus),  # user + sys of the converting process (all threads)
        "copy_seconds": copy_s,
        "copy_mb_per_s": copy_mbs,
        "speed_ratio_vs_copy": speed_ratio,
        "peak_rss_bytes": peak,
        "peak_rss_vs_largest_shard": memory_ratio,
        "targets": {"speed_ratio_min": SPEED_TARGET, "memory_ratio_max": MEMORY_TARGET},
        "pass": {"speed": speed_ratio >= SPEED_TARGET, "memory": memory_ratio <= MEMORY_TARGET},
        "runs": {
            "copy_seconds": copies,
            "convert_seconds": converts,
            "convert_cpu_seconds": cpus,
            "peak_rss_bytes": peaks,
        },
    }
    # the load average goes with the machine: other work on it slows the conversion most
    write_results(args.results, result, load_average_1min=os.getloadavg()[0])
    print(
        f"convert: {convert_s:.2f} s, {convert_mbs:.0f} MB/s | copy: {copy_s:.2f} s, {copy_mbs:.0f} MB/s | "
        f"ratio {speed_ratio:.2f} (target >= {SPEED_TARGET})"
    )
    print(
        f"peak RSS: {peak / 1e6:.0f} MB | largest shard: {largest / 1e6:.0f} MB | ratio {memory_ratio:.2f} "
        f"(target <= {MEMORY_TARGET})"
    )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
