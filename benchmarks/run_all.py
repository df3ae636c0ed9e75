"""`make bench`: every benchmark (model, conversion, loading, embeddings, the inference engine, the server), then a
markdown summary of the results
(benchmarks/results/summary.md).

`--config` is passed to bench_model.py: a config in configs/ by name or a path to an HF config.json.

    python benchmarks/run_all.py                 # configs/small.json on CPU (what README shows)
    python benchmarks/run_all.py --config tiny   # quick look (configs/tiny.json)
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
UNITS = {"decode_16+64": ("tokens/s", True), "embed_32x64": ("sentences/s", True)}


def run(script: str, *args: str) -> None:
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def model_table(path: Path) -> str:
    data = json.loads(path.read_text())
    impls = list(next(iter(data["workloads"].values()))["seconds_per_unit"])
    machine = data["machine"]
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
        f"Model benchmark, config `{data['config']}`, {data['device']} {data['dtype']}, {data['threads']} threads, "
        f"{data['date']}, {machine['cpu']} ({machine['cores']} cores), paddle {machine['paddle']}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for name, row in data["workloads"].items():
        unit, is_rate = UNITS.get(name, ("ms", False))
        cells = [f"{1 / s:.1f} {unit}" if is_rate else f"{s * 1000:.0f} ms" for s in row["seconds_per_unit"].values()]
        ratios = []
        for other in ("paddlenlp", "hf_eager", "hf_sdpa"):
            r = row["ratio_ours_vs"].get(other)
            ratios.append("-" if r is None else (f"{1 / r:.2f}x speed" if is_rate else f"{r:.2f}x time"))
        ceiling = row.get("fraction_of_ceiling_ours")
        rss = row.get("peak_rss_mb", {})
        rss_cell = f"{rss.get('ours', float('nan')):.0f} / {rss.get('paddlenlp', float('nan')):.0f}" if rss else "-"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratios)
            + f" | {'-' if ceiling is None else f'{ceiling * 100:.0f}%'} | {rss_cell} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="a config in configs/ by name (small, tiny, ...) or a path")
    parser.add_argument("--repeats", default="5")
    parser.add_argument("--skip-convert", action="store_true")
    parser.add_argument("--skip-load", action="store_true", help="leave out bench_load.py (~10 min)")
    parser.add_argument("--skip-embed", action="store_true", help="leave out bench_embed.py (~5 min)")
    parser.add_argument("--skip-inference", action="store_true", help="leave out bench_inference.py (~5 min)")
    parser.add_argument("--skip-serve", action="store_true", help="leave out bench_serve.py (~10 min, a 5-min soak)")
    parser.add_argument("--summary-only", action="store_true", help="run nothing: summary.md from results/")
    args = parser.parse_args(argv)
    if not args.summary_only:
        run_benchmarks(args)
    write_summary(args.config)
    return 0


def run_benchmarks(args: argparse.Namespace) -> None:
    run("bench_model.py", "--config", args.config, "--repeats", args.repeats)
    if not args.skip_convert:
        run("bench_convert.py")
    if not args.skip_load:
        run("bench_load.py")
    if not args.skip_embed:
        run("bench_embed.py")
    if not args.skip_inference:
        run("bench_inference.py")
    if not args.skip_serve:
        run("bench_serve.py", "--soak-seconds", "300")


def write_summary(config: str) -> None:
    """benchmarks/results/summary.md from the results JSON files (printed too)."""
    summary = model_table(RESULTS / f"model_{Path(config).stem}_cpu_float32.json")
    convert = RESULTS / "convert.json"
    if convert.exists():
        summary += "\n\nConversion benchmark (`benchmarks/bench_convert.py`):\n\n```\n" + convert.read_text() + "\n```"
    load = RESULTS / "load.json"
    if load.exists():
        from bench_load import table as load_table  # this folder is on sys.path (the script's own)

        data = json.loads(load.read_text())
        summary += f"\n\nLoad benchmark (`benchmarks/bench_load.py`), {data['date']}:\n\n" + load_table(data)
    embed = RESULTS / "embed.json"
    if embed.exists():
        from bench_embed import table as embed_table

        data = json.loads(embed.read_text())
        summary += f"\n\nEmbedding benchmark (`benchmarks/bench_embed.py`), {data['date']}:\n\n" + embed_table(data)
    for name, title in (("inference", "Inference engine"), ("serve", "Serving")):
        path = RESULTS / f"{name}.json"
        if path.exists():
            table = importlib.import_module(f"bench_{name}").table
            data = json.loads(path.read_text())
            summary += f"\n\n{title} benchmark (`benchmarks/bench_{name}.py`), {data['date']}:\n\n" + table(data)
    (RESULTS / "summary.md").write_text(summary + "\n")
    print("\n" + summary)


if __name__ == "__main__":
    sys.exit(main())
