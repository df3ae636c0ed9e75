"""The `paddle-qwen2` command line (also `python -m paddle_qwen2`).

    paddle-qwen2 convert --from-hf SRC --out DST [--dtype float32|bfloat16|float16] [--force]
    paddle-qwen2 convert --to-hf SRC --out DST [--dtype ...] [--force]

    paddle-qwen2 finetune --config configs/finetune_sft.json [--max-steps 50] [--resume]
    paddle-qwen2 finetune --model DIR --train-file chats.jsonl [--packing] [--lora] [--export-hf] [...]
    paddle-qwen2 finetune --task seq_cls --model DIR --train-file train.csv --eval-file eval.csv --num-labels 2

    paddle-qwen2 embed --model DIR --input texts.jsonl --output vectors.npy [--prompt-name query] [...]

    paddle-qwen2 export --model DIR --out EXP --task causal-lm|embedding|sequence-classification|decode [--format onnx]

    paddle-qwen2 generate --model DIR|EXP --prompt TEXT [--chat] [--system TEXT] [--temperature 0] [...]

    paddle-qwen2 serve --model DIR [--embedding-model DIR] [--port 8000] [--api-key KEY] [...]

`convert` moves a checkpoint folder between the HF and Paddle layouts. `finetune` trains with paddlenlp's Trainer
(chat SFT, full or LoRA, or sequence classification), writes checkpoints, train_log.jsonl, final/ and
summary.json into `--output-dir`, and prints the summary as JSON (`paddle-qwen2 finetune --help` lists the
options; `paddle_qwen2.training.finetune` is the same as a Python API). `embed` writes the sentence embeddings of
a .txt / .jsonl / .parquet file (`paddle_qwen2.embedding.command`). `convert` never imports paddle.

Bad input prints one line `error: ...` on stderr and returns exit code 1 (a command-line mistake: 2); `convert`
then writes nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from . import export as export_command
from .conversion import DEFAULT_MAX_SHARD_SIZE, DTYPE_CODES, ConversionError, convert_checkpoint
from .embedding import EmbeddingError, EmbedInputError
from .embedding import command as embed_command
from .export import ExportError
from .inference import EngineError
from .inference import command as generate_command
from .serving import command as serve_command
from .training import options as finetune_options

__all__ = ["build_parser", "main"]

_AFTER_INTERRUPT = {"finetune": "--resume continues from the last complete checkpoint"}

# subcommands whose module gives DESCRIPTION, add_arguments(parser) and run(args): name -> (summary, module)
_COMMANDS = {
    "embed": ("sentence embeddings of a text file", embed_command),
    "export": ("a static program for Paddle Inference or ONNX", export_command),
    "generate": ("stream a model's answer to a prompt", generate_command),
    "serve": ("an OpenAI-compatible HTTP server (continuous batching)", serve_command),
}


class _UsageError(Exception):
    """A command-line mistake (argparse would otherwise print the usage and exit)."""


class _BadInput(Exception):
    """Bad input data found while running a command (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The `paddle-qwen2` parser with its subcommands."""
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `paddle-qwen2` parser and its `finetune` subparser."""
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
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest output file (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    convert.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune with paddlenlp's Trainer (chat SFT, LoRA, sequence classification)",
        description=finetune_options.DESCRIPTION + " Every option can come from the --config JSON (keys: option "
        "names with '_'); the command line wins. Prints the run's summary as JSON (also OUTPUT/summary.json).",
        formatter_class=finetune_options.HelpFormatter,
    )
    finetune_options.add_arguments(finetune)
    for name, (summary, module) in _COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=summary, description=module.DESCRIPTION))
    return parser, finetune


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


def _run_finetune(parser: argparse.ArgumentParser, finetune: argparse.ArgumentParser, argv: list[str]) -> int:
    """Thread settings first, then paddle: `--config` defaults, the training run, the summary on stdout."""
    from .runtime import configure_cpu_threads

    configure_cpu_threads()
    args = finetune_options.parse_args(argv, parser, finetune)
    from .training.data import DataError
    from .training.finetune import run

    try:
        summary = run(args)
    except DataError as exc:
        raise _BadInput(str(exc)) from None
    print(json.dumps(summary, indent=2))
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the converter's cleanup of its temp folder


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 bad input, 2 usage, 130 interrupted). With `argv`
    given (a call from Python) no process-wide setting is changed beyond the CPU thread variables."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    from_command_line = argv is None  # the process is ours (console script, `python -m paddle_qwen2`)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = None
    try:
        parser, finetune = _build_parsers()
        args = parser.parse_args(argv)
        command = args.command
        if command == "finetune":
            return _run_finetune(parser, finetune, argv)
        if command in ("embed", "generate"):
            return _COMMANDS[command][1].run(args, own_process=from_command_line)
        if command in _COMMANDS:
            return _COMMANDS[command][1].run(args)
        return _run_convert(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConversionError, EmbeddingError, EmbedInputError, ExportError, EngineError, OSError, _BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted, {_AFTER_INTERRUPT.get(command, 'nothing was written')}", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
