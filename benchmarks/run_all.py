"""`make bench`: every benchmark (model, conversion, loading, embeddings, the inference engine, the server), then a
markdown summary of the results
(benchmarks/results/summary.md: one table per results JSON file, rendered by benchmarks/tables.py).

`--config` is passed to bench_model.py: a config in configs/ by name or a path to an HF config.json.

    python benchmarks/run_all.py                 # configs/small.json on CPU (what docs/benchmarks.md shows)
    python benchmarks/run_all.py --config tiny   # quick look (configs/tiny.json)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import tables  # this folder is on sys.path (the script's own)

HERE = Path(__file__).resolve().parent
RESULTS = tables.RESULTS


def run(script: str, *args: str) -> None:
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="a config in configs/ by name (small, tiny, ...) or a path")
    parser.add_argument("--repeats", default="5")
    parser.add_argument("--skip-convert", action="store_true")
    parser.add_argument("--skip-load", action="store_true", help="leave out bench_load.py (~10 min)")
    parser.add_argument("--skip-embed", action="store_true", help="leave out bench_embed.py (~5 min)")
    parser.add_argument("--skip-embed-corpus", action="store_true", help="leave out bench_embed_corpus.py (~20 min)")
    parser.add_argument("--skip-inference", action="store_true", help="leave out bench_inference.py (~5 min)")
    parser.add_argument(
        "--skip-precision", action="store_true", help="leave out bench_precision.py (real size vs llama.cpp, ~15 min)"
    )
    parser.add_argument("--skip-serve", action="store_true", help="leave out bench_serve.py (~15 min with its soak)")
    parser.add_argument("--summary-only", action="store_true", help="run nothing: summary.md from results/")
    args = parser.parse_args(argv)
    if not args.summary_only:
        run_benchmarks(args)
    write_summary()
    return 0


def run_benchmarks(args: argparse.Namespace) -> None:
    run("bench_model.py", "--config", args.config, "--repeats", args.repeats)
    if not args.skip_convert:
        run("bench_convert.py")
    if not args.skip_load:
        run("bench_load.py")
    if not args.skip_embed:
        run("bench_embed.py")
    if not args.skip_embed_corpus:
        run("bench_embed_corpus.py")
    if not args.skip_inference:
        run("bench_inference.py")
    if not args.skip_precision:
        run("bench_precision.py")
    if not args.skip_serve:
        run("bench_serve.py", "--soak-seconds", "300")
        run("bench_serve.py", "--workload", "prefix")


def write_summary() -> None:
    """benchmarks/results/summary.md: a table per results JSON file (benchmarks/tables.py), printed too."""
    text = tables.summary(RESULTS)
    (RESULTS / "summary.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
