"""`paddle-qwen2 embed`: embed the texts of a file, a folder or a glob of shards with a sentence-transformers (or
plain Qwen2) folder, streamed, resumable and over several processes.

    paddle-qwen2 embed --model DIR --input texts.jsonl --output vectors.parquet --prompt-name query
    paddle-qwen2 embed --model DIR --input corpus/ --output vectors/ --processes 2
    python -m paddle.distributed.launch --nnodes 2 --ips 10.0.0.1,10.0.0.2 --nproc_per_node 4 \\
        paddle-qwen2 embed --model DIR --input /shared/corpus --output /shared/vectors

One input file and an output file name: that file. Anything else: `--output` is a folder with one output per input
shard and a `manifest.json` (`paddle_qwen2.embedding.corpus`). Rerunning the same command after a crash resumes
where it stopped. Under `paddle.distributed.launch` (on one machine or many) each process is a rank that embeds
its share of the shards; `--processes N` starts N such ranks on this machine through the same launcher (its logs
in `OUTPUT/.embed/logs/`), and shows their progress here. Paths and inputs are checked before the model loads (no
paddle import until then).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "sentence embeddings of a text file or a corpus of shards"
DESCRIPTION = (
    "Embed every text of a file, folder or glob of .txt / .jsonl / .jsonl.gz / .parquet shards with a "
    "sentence-transformers folder (its pooling, Dense, Normalize and prompts; Qwen2 weights in HF or Paddle layout) "
    "or a plain Qwen2 folder (--pooling). One input file -> an .npy, .jsonl or .parquet file; several -> a folder "
    "with one output per shard and manifest.json. Streamed in chunks, resumable (rerun the same command), and "
    "split over the ranks of paddle.distributed.launch (or --processes N)."
)
# set in the ranks `--processes` starts, so they know the launch is this command's own
_CHILD = "PADDLE_QWEN2_EMBED_PROCESSES"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `embed` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", required=True, help="sentence-transformers or Qwen2 folder")
    p.add_argument(
        "--input",
        metavar="PATH",
        nargs="+",
        required=True,
        help="files, folders or globs of .txt (a text per line), .jsonl, .jsonl.gz or .parquet shards",
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        required=True,
        help="for one input file: a .npy [n, dim] float32, .jsonl or .parquet file; else a folder",
    )
    p.add_argument(
        "--output-format",
        choices=("npy", "jsonl", "parquet"),
        help="the format of a folder's outputs (default parquet)",
    )
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", metavar="NAME", help="a prompt of the model (config_sentence_transformers)")
    prompt.add_argument("--prompt", metavar="TEXT", help="a prompt prepended to every text")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=8192,
        metavar="N",
        help="padded tokens per batch, texts x the longest (default 8192); batches are cut from length-sorted chunks",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="at most N texts per batch (default: no limit)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        metavar="N",
        help="texts read, sorted, embedded and committed together (default 2048): memory and the work a crash loses",
    )
    p.add_argument("--max-length", type=int, metavar="N", help="tokens per text (default: the model's)")
    p.add_argument("--truncate-dim", type=int, metavar="N", help="keep the first N dimensions (re-normalised)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field / parquet column (text)")
    p.add_argument("--no-normalize", action="store_true", help="skip the model's Normalize module")
    p.add_argument("--pooling", metavar="MODE", help="last | mean | cls | max | ...; required for a plain Qwen2 folder")
    p.add_argument(
        "--engine",
        choices=("dygraph", "inference"),
        default="dygraph",
        help="dygraph (default) or inference: the exported program on Paddle Inference (a folder is exported once "
        "into the export cache)",
    )
    p.add_argument(
        "--weights",
        metavar="float32|bfloat16|int8|int4",
        help="with --engine inference: the precision of the weights the program reads (default: float32, or an "
        "export folder's own); bfloat16 runs on Paddle Inference's oneDNN bf16 passes, int8 / int4 on onnxruntime's "
        "n-bit matmuls (the ONNX export, quantized once into the export cache)",
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="start N ranks on this machine with paddle.distributed.launch (each embeds its share of the shards)",
    )
    p.add_argument(
        "--threads-per-process",
        type=int,
        metavar="N",
        help="CPU threads of each process (default: the usable cores / the processes on this machine)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard earlier outputs of --output instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Embed `args.input` into `args.output`; prints a one-line summary. Raises `EmbedInputError` /
    `EmbeddingError` on bad input (the CLI prints them as `error: ...`, exit 1). `own_process`: the command owns
    the process (run from the command line), so it may set process-wide malloc behaviour
    (`runtime.keep_freed_memory`); a call from Python leaves the caller's process as it is."""
    from ..embedding.corpus import Rank, plan_corpus

    _check_numbers(args)
    plan = plan_corpus(args.input, args.output, args.output_format)
    if not Path(args.model).is_dir():  # before any process starts or paddle loads
        from ..embedding.errors import EmbeddingError

        raise EmbeddingError(f"{args.model}: no such model folder")
    _check_weights(args)
    if args.processes is not None and _CHILD not in os.environ:
        return _launch(args, plan)
    rank = Rank.from_env()
    _configure_threads(args.threads_per_process)
    if own_process:
        from ..runtime import keep_freed_memory

        keep_freed_memory()  # this process computes with paddle only
    model = _load(args)
    model.resolve_prompt(args.prompt_name, args.prompt)  # an unknown prompt name fails before any work
    summary = _embed(args, plan, model, rank)
    if not args.quiet and (rank.rank == 0 or not plan.folder):
        print(_summary_line(summary.texts, summary.new_texts, summary.tokens, summary.seconds, summary.dimension, plan))
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    from ..embedding.errors import EmbeddingError

    for flag in ("max_batch_tokens", "batch_size", "chunk_size", "processes", "threads_per_process", "truncate_dim"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise EmbeddingError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.processes is not None and os.environ.get("PADDLE_TRAINERS_NUM") and _CHILD not in os.environ:
        raise EmbeddingError(
            "--processes starts its own paddle.distributed.launch; under a launcher leave it out (its ranks are "
            "the processes)"
        )


def _check_weights(args: argparse.Namespace) -> None:
    """EmbeddingError for an unknown `--weights`, or one other than float32 with `--engine dygraph`."""
    weights = getattr(args, "weights", None)
    if weights is None:
        return
    from ..embedding.errors import EmbeddingError
    from ..export.meta import WEIGHTS

    if weights not in WEIGHTS:
        raise EmbeddingError(f"--weights {weights}: unknown precision; expected one of {', '.join(WEIGHTS)}")
    if args.engine == "dygraph" and weights != "float32":
        raise EmbeddingError(
            f"--weights {weights}: the dygraph engine computes with float32 weights; use --engine inference"
        )


def _configure_threads(threads: int | None) -> None:
    """CPU threads of this process: `--threads-per-process`, else the usable cores shared by the processes the
    launcher started on this machine (`PADDLE_LOCAL_SIZE`), unless OMP_NUM_THREADS is already set."""
    from ..runtime import configure_cpu_threads

    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    local = int(os.environ.get("PADDLE_LOCAL_SIZE", "1") or 1)
    configure_cpu_threads(_cores_each(local) if threads is None else threads)


def _cores_each(processes: int) -> int:
    """The usable cores of this machine shared by `processes` processes (at least 1 each)."""
    return max(1, len(os.sched_getaffinity(0)) // max(processes, 1))


def _load(args: argparse.Namespace):
    """The dygraph `EmbeddingModel`, or the exported program (`--engine inference`), as the options say."""
    if args.engine == "dygraph":
        from ..embedding.model import EmbeddingModel

        return EmbeddingModel.from_pretrained(
            args.model, pooling=args.pooling, max_length=args.max_length, normalize=not args.no_normalize
        )
    from ..embedding.errors import EmbeddingError

    fixed = [flag for flag, value in (("--pooling", args.pooling), ("--max-length", args.max_length)) if value]
    if fixed:
        raise EmbeddingError(f"{', '.join(fixed)}: the exported program fixes the pipeline; use --engine dygraph")
    from ..inference.embedding import InferenceEmbeddingModel

    return InferenceEmbeddingModel.from_pretrained(args.model, weights=getattr(args, "weights", None))


def _embed(args: argparse.Namespace, plan, model, rank):
    """Run the plan as this rank (`embedding.corpus.embed_corpus`) with the options of the command line."""
    from ..embedding.corpus import EncodeOptions, embed_corpus, model_identity

    options = EncodeOptions(
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        normalize_embeddings=False if args.no_normalize else None,
        truncate_dim=args.truncate_dim,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
    )
    identity = model_identity(
        args.model, engine=args.engine, weights=args.weights, pooling=args.pooling, max_length=args.max_length
    )
    settings = {"format": plan.fmt, "text_field": args.text_field, "chunk_size": args.chunk_size}
    spec = {"model": identity, "options": {**vars(options), **settings}}
    return embed_corpus(
        plan,
        model,
        spec,
        options,
        text_field=args.text_field,
        chunk_size=args.chunk_size,
        rank=rank,
        overwrite=args.overwrite,
        show_progress_bar=not args.quiet,
    )


def _summary_line(texts: int, new: int, tokens: int, seconds: float, dimension: int, plan) -> str:
    seconds = max(seconds, 1e-9)
    resumed = f"; {texts - new} were done before" if new < texts else ""
    return (
        f"embedded {texts} texts, dim {dimension}, in {seconds:.1f} s ({new / seconds:.1f} texts/s, "
        f"{tokens / seconds:.0f} tokens/s{resumed}) -> {plan.output}"
    )


# ---------------------------------------------------------------------------------------------------- --processes


def _launch(args: argparse.Namespace, plan) -> int:
    """`--processes N`: this command again as N ranks under `python -m paddle.distributed.launch`, with their
    progress shown here; exit 0 when all finished, else 1 with each failed rank's `error:` lines."""
    from ..embedding.errors import EmbeddingError

    if not plan.folder:
        raise EmbeddingError(f"{plan.output}: --processes needs a folder --output (one output per shard)")
    log_dir = plan.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(plan.state_dir / "progress", ignore_errors=True)  # the ranks about to start write theirs anew
    threads = args.threads_per_process or _cores_each(args.processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **{_CHILD: str(args.processes)})
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(args.processes),
        "--max_restart",
        "0",
        "--log_dir",
        str(log_dir),
        sys.executable,
        "-m",
        "paddle_qwen2",
        "embed",
        *args.argv[args.argv.index("embed") + 1 :],
    ]
    start = time.perf_counter()
    with open(log_dir / "launch.log", "wb") as launch_log:
        proc = subprocess.Popen(cmd, env=env, stdout=launch_log, stderr=subprocess.STDOUT)
        try:
            sums = _watch(proc, plan, args.processes, show=not args.quiet)
        except BaseException:  # Ctrl-C, SIGTERM: the launcher stops its ranks (what they committed stays)
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        errors = _rank_errors(log_dir) or [f"error: a rank failed (exit {proc.returncode}); see {log_dir}"]
        print("\n".join(dict.fromkeys(errors)), file=sys.stderr)
        return 1
    if not args.quiet:
        line = _summary_line(
            sums["texts"], sums["new_texts"], sums["tokens"], time.perf_counter() - start, _dimension(plan), plan
        )
        print(line)
    return 0


def _watch(proc: subprocess.Popen, plan, world: int, show: bool) -> dict[str, int]:
    """Wait for the launcher, showing the ranks' progress; the last progress sums."""
    from tqdm import tqdm

    from ..embedding.corpus import read_progress

    started = time.time()
    with tqdm(total=None, unit="text", desc="Embedding", disable=not show, dynamic_ncols=True) as bar:
        while True:
            done = proc.poll() is not None
            sums = read_progress(plan, world, None)
            bar.total, bar.n = sums["total"], sums["texts"]
            bar.set_postfix_str(f"{sums['tokens'] / max(time.time() - started, 1e-9):,.0f} tokens/s", refresh=False)
            bar.refresh()
            if done:
                return sums
            time.sleep(0.5)


def _rank_errors(log_dir: Path) -> list[str]:
    """The `error: ...` lines of the ranks' logs."""
    lines = []
    for log in sorted(log_dir.glob("workerlog.*")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return lines


def _dimension(plan) -> int:
    import json

    from ..embedding.corpus import MANIFEST

    return json.loads((plan.output / MANIFEST).read_text(encoding="utf-8"))["dimension"]
