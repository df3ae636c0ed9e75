"""`paddle-qwen2 convert`: a checkpoint folder between the HF and the Paddle layouts (no paddle import).

    paddle-qwen2 convert --from-hf SRC --out DST [--dtype float32|bfloat16|float16] [--force]
    paddle-qwen2 convert --to-hf SRC --out DST [--dtype ...] [--force]

Bad input writes nothing (`paddle_qwen2.conversion` checks every tensor before it writes).
"""

from __future__ import annotations

import argparse

from ..conversion import DEFAULT_MAX_SHARD_SIZE, DTYPE_CODES

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "convert a checkpoint folder between the HF and Paddle layouts"
DESCRIPTION = (
    "Convert a checkpoint folder (config.json, weights, tokenizer files) between the HuggingFace layout and the "
    "paddlenlp layout. Tensors stay bit-exact unless --dtype is given."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `convert` options on `p`; returns `p`."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="SRC", help="HF folder (safetensors or pytorch_model.bin) -> Paddle")
    source.add_argument("--to-hf", metavar="SRC", help="Paddle folder (safetensors) -> HF")
    p.add_argument("--out", metavar="DST", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--dtype", choices=sorted(DTYPE_CODES), help="cast every weight to this dtype")
    p.add_argument("--force", action="store_true", help="replace a non-empty DST")
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest output file (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Convert as `args` say; prints the summary unless `--quiet`. Raises `ConversionError` on bad input.
    (`own_process`: the subcommands' shared signature, unused.)"""
    from ..conversion import convert_checkpoint

    summary = convert_checkpoint(
        args.from_hf or args.to_hf,
        args.out,
        to_paddle=args.from_hf is not None,
        dtype=args.dtype,
        force=args.force,
        max_shard_size=args.max_shard_size,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(summary.format())
    return 0
