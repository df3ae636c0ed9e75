"""Markdown tables of the benchmark results in benchmarks/results/*.json.

One table per results file, each headed by the benchmark, its date and the machine it ran on (both recorded in the
JSON). `run_all.py` writes them to benchmarks/results/summary.md; the docs hook (docs/hooks.py) puts them into
docs/benchmarks.md. The model and conversion tables are rendered here; the other benchmarks render their own
(`table(result)` in bench_load.py, bench_embed.py, bench_embed_corpus.py, bench_inference.py, bench_precision.py,
quant_configs.py, bench_serve.py), imported on demand.

    python benchmarks/tables.py            # print every table
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# kind -> (title, script); the order of the summary and of the docs page
KINDS = {
    "model": ("Model", "bench_model.py"),
    "convert": ("Conversion", "bench_convert.py"),
    "load": ("Loading", "bench_load.py"),
    "embed": ("Embeddings", "bench_embed.py"),
    "embed_corpus": ("Corpus-scale embedding", "bench_embed_corpus.py"),
    "inference": ("Inference engine", "bench_inference.py"),
    "precision": ("Real size: weight precisions against llama.cpp", "bench_precision.py"),
    "quant_configs": ("Quantization settings", "quant_configs.py"),
    "serve": ("Serving", "bench_serve.py"),
    "prefix": ("Prefix caching", "bench_serve.py"),
}
UNITS = {"decode_16+64": ("tokens/s", True), "embed_32x64": ("sentences/s", True)}


def kind_of(path: Path) -> str:
    """The benchmark a results file belongs to: `model_small_cpu_float32.json` -> "model", `serve.json` -> "serve"."""
    stem = path.stem
    kind = "model" if stem.startswith("model_") else stem
    if kind not in KINDS:
        raise ValueError(f"{path}: not a known benchmark result (expected model_*.json or one of {sorted(KINDS)})")
    return kind


def result_files(results: Path = RESULTS) -> list[Path]:
    """The results JSON files of `results`, in the order of KINDS (several model_*.json by name)."""
    order = list(KINDS)
    return sorted(results.glob("*.json"), key=lambda p: (order.index(kind_of(p)), p.name))


def machine_text(machine: dict) -> str:
    """`AMD EPYC, 2 cores, paddle 3.3.1` from a result's "machine" entry (whatever of these it records)."""
    parts = [str(machine.get("cpu", "unknown CPU"))]
    if "cores" in machine:
        parts.append(f"{machine['cores']} cores")
    paddle = machine.get("paddle") or machine.get("paddlepaddle")
    if paddle:
        parts.append(f"paddle {paddle}")
    return ", ".join(parts)


def heading(kind: str, data: dict) -> str:
    """The line above a table: benchmark, script, date and machine."""
    title, script = KINDS[kind]
    date, machine = data.get("date", "undated"), machine_text(data.get("machine", {}))
    return f"**{title}** (`benchmarks/{script}`), {date}, {machine}."


def model_table(data: dict) -> str:
    """bench_model.py's result: each workload's time or rate per implementation and the ratios to ours."""
    impls = list(next(iter(data["workloads"].values()))["seconds_per_unit"])
    columns = [
        "workload",
        *impls,
        "ours vs paddlenlp",
        "ours vs HF eager",
        "ours vs HF sdpa",
        "% of matmul ceiling",
        "peak RSS MB (ours / paddlenlp)",
    ]
    lines = [
        f"Config `{data['config']}`, {data['device']} {data['dtype']}, {data['threads']} threads.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for name, row in data["workloads"].items():
        lines.append(_model_row(name, row))
    return "\n".join(lines)


def _model_row(name: str, row: dict) -> str:
    unit, is_rate = UNITS.get(name, ("ms", False))
    cells = [f"{1 / s:.1f} {unit}" if is_rate else f"{s * 1000:.0f} ms" for s in row["seconds_per_unit"].values()]
    for other in ("paddlenlp", "hf_eager", "hf_sdpa"):
        r = row["ratio_ours_vs"].get(other)
        cells.append("-" if r is None else (f"{1 / r:.2f}x speed" if is_rate else f"{r:.2f}x time"))
    ceiling = row.get("fraction_of_ceiling_ours")
    cells.append("-" if ceiling is None else f"{ceiling * 100:.0f}%")
    rss = row.get("peak_rss_mb", {})
    cells.append(f"{rss.get('ours', float('nan')):.0f} / {rss.get('paddlenlp', float('nan')):.0f}" if rss else "-")
    return f"| {name} | " + " | ".join(cells) + " |"


def convert_table(data: dict) -> str:
    """bench_convert.py's result: conversion against a plain copy of the same bytes, and peak memory."""
    ckpt = data["checkpoint"]
    lines = [
        f"{ckpt['bytes'] / 1e9:.2f} GB {ckpt['dtype']} checkpoint in {ckpt['shards']} shards (largest "
        f"{ckpt['largest_shard_bytes'] / 1e6:.0f} MB), medians of {data['repeats']} interleaved runs.",
        "",
        "| | seconds | MB/s | vs copy | peak RSS | vs largest shard |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| `paddle-qwen2 convert` | {data['convert_seconds']:.2f} | {data['convert_mb_per_s']:.0f} | "
        f"**{data['speed_ratio_vs_copy']:.2f}x speed** | {data['peak_rss_bytes'] / 1e6:.0f} MB | "
        f"**{data['peak_rss_vs_largest_shard']:.2f}x** |",
        f"| plain copy | {data['copy_seconds']:.2f} | {data['copy_mb_per_s']:.0f} | 1.00x | - | - |",
    ]
    targets = data.get("targets")
    if targets:
        lines += [
            "",
            f"Targets: speed >= {targets['speed_ratio_min']:.2f}x copy, peak RSS <= "
            f"{targets['memory_ratio_max']:.2f}x the largest shard.",
        ]
    return "\n".join(lines)


def _bench_table(kind: str) -> Callable[[dict], str]:
    if str(HERE) not in sys.path:  # the bench scripts import their neighbours by name
        sys.path.insert(0, str(HERE))
    return importlib.import_module(KINDS[kind][1].removesuffix(".py")).table


def renderer(kind: str) -> Callable[[dict], str]:
    """The function that renders a result of `kind` as markdown."""
    own = {"model": model_table, "convert": convert_table}
    return own[kind] if kind in own else _bench_table(kind)


def render(path: Path) -> str:
    """One results file as markdown: its heading line, then its table(s)."""
    kind = kind_of(path)
    data = json.loads(path.read_text())
    return heading(kind, data) + "\n\n" + renderer(kind)(data)


def summary(results: Path = RESULTS) -> str:
    """Every results file of `results` as markdown, one section each (what summary.md and the docs show)."""
    return "\n\n".join(render(path) for path in result_files(results))


if __name__ == "__main__":
    print(summary())
