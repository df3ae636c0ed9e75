"""The `paddle-qwen2` command line (also `python -m paddle_qwen2`): the top parser, dispatch and exit codes.

    paddle-qwen2 convert --from-hf SRC --out DST [--dtype float32|bfloat16|float16] [--force]
    paddle-qwen2 convert --to-hf SRC --out DST [--dtype ...] [--force]

    paddle-qwen2 finetune --config configs/finetune_sft.json [--max-steps 50] [--resume]
    paddle-qwen2 finetune --model DIR --train-file chats.jsonl [--packing] [--lora] [--export-hf] [...]
    paddle-qwen2 finetune --task seq_cls --model DIR --train-file train.csv --eval-file eval.csv --num-labels 2

    paddle-qwen2 embed --model DIR --input texts.jsonl --output vectors.npy [--prompt-name query] [...]

    paddle-qwen2 export --model DIR --out EXP --task causal-lm|embedding|sequence-classification|decode [--format onnx]

    paddle-qwen2 generate --model DIR|EXP --prompt TEXT [--chat] [--system TEXT] [--temperature 0] [...]

    paddle-qwen2 serve --model DIR [--embedding-model DIR] [--port 8000] [--api-key KEY] [...]

Each subcommand is a module of this package (`convert.py`, `finetune.py`, ...) giving `HELP`, `DESCRIPTION`,
`add_arguments(parser)` and `run(args, own_process)`. Exit codes: 0 done; 1 bad input (one line `error: ...` on
stderr: any `PaddleQwen2Error` or `OSError`; `convert` then writes nothing); 2 a command-line mistake (one line
`error: paddle-qwen2 SUBCOMMAND: ...`); 130 interrupted (Ctrl-C). SIGTERM unwinds like `SystemExit(143)`, so
temporary output folders are removed. Every subcommand prints its own lines only; `--verbose` (or
`PADDLE_QWEN2_LOG=debug`) adds paddle's, paddlenlp's and glog's (`paddle_qwen2.console`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..console import LOG_VARIABLE, configure_console
from ..errors import PaddleQwen2Error
from . import convert, embed, export, finetune, generate, serve

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

# the subcommands in the order `--help` lists them: name -> module (HELP, DESCRIPTION, add_arguments, run)
COMMANDS = {
    "convert": convert,
    "finetune": finetune,
    "embed": embed,
    "export": export,
    "generate": generate,
    "serve": serve,
}
_AFTER_INTERRUPT = {
    "finetune": "--resume continues from the last complete checkpoint",
    "embed": "rerunning the same command resumes after the last committed chunk",
}


class UsageError(Exception):
    """A command-line mistake (argparse would otherwise print the usage and exit); exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The `paddle-qwen2` parser with its subcommands."""
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `paddle-qwen2` parser and its subparsers by subcommand name."""
    parser = _Parser(prog="paddle-qwen2", description="Qwen2 / Qwen2.5 for PaddlePaddle.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    verbose_help = f"also the libraries' log lines and warnings (paddle, paddlenlp, glog); as {LOG_VARIABLE}=debug"
    common.add_argument("--verbose", action="store_true", help=verbose_help)
    subparsers = {}
    for name, module in COMMANDS.items():
        formatter = getattr(module, "HelpFormatter", argparse.HelpFormatter)
        sub = commands.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION, formatter_class=formatter, parents=[common]
        )
        subparsers[name] = module.add_arguments(sub)
    return parser, subparsers


def _parse(argv: list[str], own_process: bool = False) -> argparse.Namespace:
    """The parsed command line; `finetune` adds its `--config` JSON defaults under it and checks the result
    (`args.options`, a `FinetuneOptions`). In `own_process` the console is set up (`--verbose`) before anything
    imports paddle."""
    parser, subparsers = _build_parsers()
    args = parser.parse_args(argv)
    args.argv = list(argv)  # what a command that starts copies of itself passes on (`embed --processes`)
    if own_process:
        configure_console(args.verbose)
    if args.command == "finetune":
        from ..runtime import configure_cpu_threads

        configure_cpu_threads()  # before the checks of --bf16 / --fp16 import paddle
        args.options = finetune.parse_args(argv, parser, subparsers["finetune"])
    return args


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the commands' cleanup of their temporary folders


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 bad input, 2 usage, 130 interrupted). With `argv`
    given (a call from Python) no process-wide setting is changed beyond the CPU thread variables."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    from_command_line = argv is None  # the process is ours (console script, `python -m paddle_qwen2`)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = None
    try:
        args = _parse(argv, own_process=from_command_line)
        command = args.command
        # Every subcommand's parsed options are in `args` here, before it runs: the place for global options.
        return COMMANDS[command].run(args, own_process=from_command_line)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PaddleQwen2Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted, {_AFTER_INTERRUPT.get(command, 'nothing was written')}", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
