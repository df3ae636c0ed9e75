"""The `paddle-qwen2` command line (also `python -m paddle_qwen2`).

    paddle-qwen2 convert --from-hf SRC --out DST [--dtype float32|bfloat16|float16] [--force]
    paddle-qwen2 convert --to-hf SRC --out DST [--dtype ...] [--force]

Bad input prints one line `error: ...` on stderr and returns a non-zero exit code; nothing is written.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import List, Optional

from .conversion import DEFAULT_MAX_SHARD_SIZE, DTYPE_CODES, ConversionError, convert_checkpoint

__all__ = ["main", "build_parser"]


class _UsageError(Exception):
    """A command-line mistake (argparse would otherwise print the usage and exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="paddle-qwen2", description="Qwen2 / Qwen2.5 for PaddlePaddle.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint folder between the HF and Paddle layouts",
        description="Convert a checkpoint folder (config.json, weights, tokenizer files) between the HuggingFace "
        "layout and the paddlenlp layout. Tensors stay bit-exact unless --dtype is given.",
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="SRC", help="HF folder (safetensors or pytorch_model.bin) -> Paddle")
    source.add_argument("--to-hf", metavar="SRC", help="Paddle folder (safetensors) -> HF")
    convert.add_argument("--out", metavar="DST", required=True, help="output folder (must be empty or absent)")
    convert.add_argument("--dtype", choices=sorted(DTYPE_CODES), help="cast every weight to this dtype")
    convert.add_argument("--force", action="store_true", help="replace a non-empty DST")
    convert.add_argument(
        "--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help=f"largest output file (default {DEFAULT_MAX_SHARD_SIZE})"
    )
    convert.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def _run_convert(args: argparse.Namespace) -> int:
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


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the converter's cleanup of its temp folder


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 bad input, 2 usage, 130 interrupted)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        return _run_convert(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted, nothing was written", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
