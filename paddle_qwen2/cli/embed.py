"""`paddle-qwen2 embed`: embed the texts of a file with a sentence-transformers (or plain Qwen2) folder.

    paddle-qwen2 embed --model DIR --input texts.jsonl --output vectors.parquet --prompt-name query

Paths and the input file are checked before the model loads; the output is written to a temporary file beside
it and renamed at the end, so a failed or interrupted run leaves no output file. No paddle import until the
model loads (nor numpy until the command runs: every subcommand builds the same parser).
"""

from __future__ import annotations

import argparse
import time

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "sentence embeddings of a text file"
DESCRIPTION = (
    "Embed every text of a file with a sentence-transformers folder (its pooling, Dense, Normalize and prompts; "
    "Qwen2 weights in HF or Paddle layout) or a plain Qwen2 folder (--pooling). Input .txt, .jsonl or .parquet; "
    "output .npy, .jsonl or .parquet (row order = input order)."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `embed` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", required=True, help="sentence-transformers or Qwen2 folder")
    p.add_argument("--input", metavar="FILE", required=True, help="texts: .txt (a line each), .jsonl or .parquet")
    p.add_argument("--output", metavar="FILE", required=True, help=".npy [n, dim] float32, .jsonl or .parquet")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", metavar="NAME", help="a prompt of the model (config_sentence_transformers)")
    prompt.add_argument("--prompt", metavar="TEXT", help="a prompt prepended to every text")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per batch (default 32)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Embed `args.input` into `args.output`; prints a one-line summary. Raises `EmbedInputError` /
    `EmbeddingError` on bad input (the CLI prints them as `error: ...`, exit 1). `own_process`: the command owns
    the process (run from the command line), so it may set process-wide malloc behaviour
    (`runtime.keep_freed_memory`); a call from Python leaves the caller's process as it is."""
    from ..embedding.io import check_input_path, check_output_path, read_texts, write_embeddings

    check_input_path(args.input)
    check_output_path(args.output)
    _check_weights(args)
    records = read_texts(args.input, args.text_field)
    from ..runtime import configure_cpu_threads, keep_freed_memory

    configure_cpu_threads()
    if own_process:
        keep_freed_memory()  # this process computes with paddle only
    model = _load(args)
    model.resolve_prompt(args.prompt_name, args.prompt)  # an unknown prompt name fails before any work
    start = time.perf_counter()
    embeddings = model.encode(
        records.texts,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        batch_size=args.batch_size,
        normalize_embeddings=False if args.no_normalize else None,
        truncate_dim=args.truncate_dim,
        show_progress_bar=not args.quiet,
    )
    seconds = time.perf_counter() - start
    write_embeddings(args.output, records, embeddings, args.text_field)
    if not args.quiet:
        n, dim = embeddings.shape
        rate = n / max(seconds, 1e-9)
        print(f"embedded {n} texts, dim {dim}, in {seconds:.1f} s ({rate:.1f} texts/s) -> {args.output}")
    return 0


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
