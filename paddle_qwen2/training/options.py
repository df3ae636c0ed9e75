"""The options of `paddle-qwen2 finetune` and their `--config` JSON defaults.

Every option can come from the `--config` JSON (keys are the option names with `_`, relative paths are relative
to the current directory); the command line wins. `--model` and `--train-file` must come from one of the two.

No paddle import at module level: `paddle-qwen2 convert` builds the same command-line parser.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ..embedding.folder import POOLING_MODES

__all__ = ["LORA_TARGETS", "REQUIRED", "HelpFormatter", "add_arguments", "build_parser", "parse_args"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REQUIRED = ("model", "train_file")
DEFAULT_MAX_LENGTH = 256
DESCRIPTION = (
    "Fine-tune Qwen2 with paddlenlp's Trainer: chat SFT (full or LoRA), sequence classification, or a "
    "sentence-embedding model (InfoNCE, full or LoRA)."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the fine-tuning options to `p` (a standalone parser or the `finetune` subparser); returns `p`."""
    p.add_argument("--config", metavar="FILE", help="JSON file of option defaults (keys: option names with '_')")
    p.add_argument(
        "--task",
        choices=["sft", "seq_cls", "embedding"],
        default="sft",
        help="chat SFT (causal LM), sequence classification, or sentence embeddings",
    )
    p.add_argument(
        "--model",
        metavar="DIR",
        help="Paddle or HF checkpoint folder; embedding: also a sentence-transformers folder (required unless in "
        "--config)",
    )
    p.add_argument(
        "--train-file",
        metavar="FILE",
        help="SFT .jsonl, classification .csv / .jsonl, or embedding .jsonl of {query, pos, neg} rows (required "
        "unless in --config)",
    )
    p.add_argument(
        "--eval-file",
        metavar="FILE",
        help="evaluation data, same format as --train-file; embedding: held-out {query, pos} rows, recall@1 and "
        "MRR@10 before and after training",
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        default="output/finetune",
        help="checkpoints, train_log.jsonl, final/, summary.json",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"tokens per example (packed row), default {DEFAULT_MAX_LENGTH}; embedding: tokens per text, default "
        "the model folder's max_seq_length",
    )
    p.add_argument("--packing", action="store_true", help="SFT: pack several chats into each row")
    p.add_argument("--num-labels", type=int, default=2, help="seq_cls: number of classes")
    _add_embedding_arguments(p)
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


def _add_embedding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--query-prompt",
        metavar="TEXT",
        help="embedding: text put before every query (default: the model folder's 'query' prompt, else none)",
    )
    p.add_argument(
        "--passage-prompt",
        metavar="TEXT",
        help="embedding: text put before every passage (default: the model folder's 'document' prompt, else none)",
    )
    p.add_argument(
        "--pooling",
        choices=["last", *POOLING_MODES],
        help="embedding: pooling mode (default: the sentence-transformers folder's, 'last' for a plain Qwen2 folder)",
    )
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="embedding: bidirectional attention (is_causal false, saved in config.json)",
    )
    p.add_argument("--temperature", type=float, default=0.02, help="embedding: InfoNCE temperature")
    p.add_argument(
        "--num-negatives", type=int, default=3, help="embedding: hard negatives per query (fewer if a row has fewer)"
    )
    p.add_argument(
        "--matryoshka-dims",
        type=_dimensions,
        default=None,
        metavar="D1,D2",
        help="embedding: also train these leading dimensions (Matryoshka: the loss is averaged over the full "
        "embedding and each)",
    )


def _dimensions(value: str | list) -> list[int]:
    """`"32,16"` (command line) or `[32, 16]` (--config) -> `[32, 16]`."""
    items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
    try:
        dims = [int(v) for v in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {value!r}")
    return dims


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
    if args.lora and args.task == "seq_cls":
        options.error("--lora is supported for --task sft and --task embedding")
    if args.task == "embedding":
        _check_embedding(args, options)
    elif args.max_length is None:
        args.max_length = DEFAULT_MAX_LENGTH


def _check_embedding(args: argparse.Namespace, options: argparse.ArgumentParser) -> None:
    unused = {"--packing": args.packing, "--export-hf": args.export_hf, "--eval-steps": args.eval_steps}
    for name, value in unused.items():
        if value:
            options.error(f"{name} does not apply to --task embedding")
    if args.temperature <= 0:
        options.error(f"--temperature must be positive, got {args.temperature}")
    if args.num_negatives < 0:
        options.error(f"--num-negatives must be >= 0, got {args.num_negatives}")
    if args.max_length is not None and args.max_length <= 0:
        options.error(f"--max-length must be positive, got {args.max_length}")
    try:
        args.matryoshka_dims = _dimensions(args.matryoshka_dims or [])
    except argparse.ArgumentTypeError as e:
        options.error(f"--matryoshka-dims: {e}")


def _has_cuda() -> bool:
    import paddle  # only for --bf16 / --fp16: keeps this module free of paddle otherwise

    return paddle.is_compiled_with_cuda()
