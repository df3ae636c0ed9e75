"""The options of `paddle-qwen2 finetune` and their `--config` JSON defaults.

Every option can come from the `--config` JSON (keys are the option names with `_`, relative paths are relative
to the current directory); the command line wins. `--model` and `--train-file` must come from one of the two.

No paddle import at module level: `paddle-qwen2 convert` builds the same command-line parser.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

__all__ = ["LORA_TARGETS", "REQUIRED", "HelpFormatter", "add_arguments", "build_parser", "parse_args"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REQUIRED = ("model", "train_file")
DESCRIPTION = "Fine-tune Qwen2 with paddlenlp's Trainer: chat SFT (full or LoRA) or sequence classification."


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the fine-tuning options to `p` (a standalone parser or the `finetune` subparser); returns `p`."""
    p.add_argument("--config", metavar="FILE", help="JSON file of option defaults (keys: option names with '_')")
    p.add_argument(
        "--task", choices=["sft", "seq_cls"], default="sft", help="chat SFT (causal LM) or sequence classification"
    )
    p.add_argument("--model", metavar="DIR", help="Paddle or HF checkpoint folder (required unless in --config)")
    p.add_argument(
        "--train-file", metavar="FILE", help="SFT .jsonl, or classification .csv / .jsonl (required unless in --config)"
    )
    p.add_argument("--eval-file", metavar="FILE", help="evaluation data, same format as --train-file")
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        default="output/finetune",
        help="checkpoints, train_log.jsonl, final/, summary.json",
    )
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (packed row)")
    p.add_argument("--packing", action="store_true", help="SFT: pack several chats into each row")
    p.add_argument("--num-labels", type=int, default=2, help="seq_cls: number of classes")
    _add_lora_arguments(p)
    _add_schedule_arguments(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="PATH",
        help="continue from the newest complete checkpoint in OUTPUT/checkpoints (or from PATH)",
    )
    p.add_argument("--seed", type=int, default=42, help="data order, dropout, new LoRA and classification weights")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU only)")
    p.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU only)")
    p.add_argument("--amp-level", choices=["O1", "O2"], default="O1", help="AMP level for --bf16 / --fp16")
    p.add_argument(
        "--export-hf",
        nargs="?",
        const="final-hf",
        default=None,
        metavar="DIR",
        help="also write the final model in HF layout (DIR defaults to OUTPUT/final-hf)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _add_lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only (paddlenlp.peft)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling alpha (the update is scaled by alpha/r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    p.add_argument(
        "--lora-targets", nargs="+", default=list(LORA_TARGETS), metavar="NAME", help="Linear layer names to adapt"
    )


def _add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training data")
    p.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    p.add_argument("--batch-size", type=int, default=16, help="examples (rows) per step and device")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument(
        "--lr-scheduler", choices=["linear", "cosine", "constant"], default="linear", help="decay after the warm-up"
    )
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping by global norm")
    p.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps")
    p.add_argument("--save-steps", type=int, default=100, help="write a checkpoint every N steps")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    p.add_argument("--eval-steps", type=int, default=None, help="evaluate every N steps (default: at the end only)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None / False or the help text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """A standalone parser of the fine-tuning options (argparse's usual errors: message, exit code 2)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    return add_arguments(parser)


def parse_args(
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    options: argparse.ArgumentParser | None = None,
) -> argparse.Namespace:
    """The command line `argv` over the `--config` JSON defaults.

    `parser` parses `argv` (default: `build_parser()`); `options` is the parser `add_arguments` filled (default:
    `parser`; the `finetune` subparser when `parser` is the `paddle-qwen2` one). Mistakes (unknown or malformed
    config, a missing required option, exclusive options) go through `options.error`.
    """
    parser = parser or build_parser()
    options = options or parser
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        options.set_defaults(**_read_config(pre.config, options))
    args = parser.parse_args(argv)
    _check(args, options)
    return args


def _read_config(path: str, options: argparse.ArgumentParser) -> dict:
    """The option defaults in the JSON file `path`; unknown keys are an error naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            defaults = json.load(f)
    except OSError as e:
        options.error(f"{path}: cannot read the --config file ({e.strerror})")
    except json.JSONDecodeError as e:
        options.error(f"{path}: malformed JSON ({e.msg}, line {e.lineno})")
    if not isinstance(defaults, dict):
        options.error(f"{path}: expected a JSON object of option defaults")
    known = {action.dest for action in options._actions if action.dest != "help"}
    unknown = sorted(set(defaults) - known)
    if unknown:
        options.error(f"{path}: unknown option(s) {unknown}")
    return defaults


def _check(args: argparse.Namespace, options: argparse.ArgumentParser) -> None:
    missing = ["--" + name.replace("_", "-") for name in REQUIRED if getattr(args, name) is None]
    if missing:
        required = ", ".join(missing)
        options.error(f"the following arguments are required: {required} (on the command line or in --config)")
    if args.bf16 and args.fp16:
        options.error("--bf16 and --fp16 are exclusive")
    if (args.bf16 or args.fp16) and not _has_cuda():
        options.error(
            "--bf16 / --fp16 need a GPU build of Paddle (Paddle has no bfloat16 matmul on CPU); train in fp32 on CPU"
        )
    if args.lora and args.task != "sft":
        options.error("--lora is supported for --task sft")


def _has_cuda() -> bool:
    import paddle  # only for --bf16 / --fp16: keeps this module free of paddle otherwise

    return paddle.is_compiled_with_cuda()
