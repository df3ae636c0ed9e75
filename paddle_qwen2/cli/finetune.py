"""`paddle-qwen2 finetune`: the options of a fine-tuning run, their `--config` JSON defaults, and the run.

    paddle-qwen2 finetune --config configs/finetune_sft.json [--max-steps 50] [--resume]
    paddle-qwen2 finetune --model DIR --train-file chats.jsonl [--packing] [--lora] [--export-hf] [...]

Every option can come from the `--config` JSON (keys are the option names with `_`, relative paths are relative
to the current directory); the command line wins. `--model` and `--train-file` must come from one of the two.
The options become a `paddle_qwen2.training.options.FinetuneOptions`, which `paddle_qwen2.training.finetune.run`
trains with. `main(argv)` does the same from Python and returns the summary.

No paddle import until the run (`--bf16` / `--fp16` import it to look for a GPU).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ..training.options import (
    AMP_LEVELS,
    DEFAULT_MAX_LENGTH,
    LR_SCHEDULERS,
    POOLINGS,
    REQUIRED,
    TASKS,
    FinetuneOptions,
    OptionsError,
    parse_dimensions,
)

__all__ = ["DESCRIPTION", "HELP", "HelpFormatter", "add_arguments", "build_parser", "main", "parse_args", "run"]

HELP = "fine-tune with paddlenlp's Trainer (chat SFT, LoRA, sequence classification)"
SUMMARY = (
    "Fine-tune Qwen2 with paddlenlp's Trainer: chat SFT (full or LoRA), sequence classification, or a "
    "sentence-embedding model (InfoNCE, full or LoRA)."
)
DESCRIPTION = (
    SUMMARY + " Every option can come from the --config JSON (keys: option names with '_'); the command line wins. "
    "Prints the run's summary as JSON (also OUTPUT/summary.json)."
)
_DEFAULT = FinetuneOptions()


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the fine-tuning options to `p` (a standalone parser or the `finetune` subparser); returns `p`."""
    p.add_argument("--config", metavar="FILE", help="JSON file of option defaults (keys: option names with '_')")
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default=_DEFAULT.task,
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
        default=_DEFAULT.output_dir,
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
    p.add_argument("--num-labels", type=int, default=_DEFAULT.num_labels, help="seq_cls: number of classes")
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
    p.add_argument(
        "--seed", type=int, default=_DEFAULT.seed, help="data order, dropout, new LoRA and classification weights"
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU only)")
    p.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU only)")
    p.add_argument(
        "--amp-level", choices=list(AMP_LEVELS), default=_DEFAULT.amp_level, help="AMP level for --bf16 / --fp16"
    )
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
        choices=list(POOLINGS),
        help="embedding: pooling mode (default: the sentence-transformers folder's, 'last' for a plain Qwen2 folder)",
    )
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="embedding: bidirectional attention (is_causal false, saved in config.json)",
    )
    p.add_argument("--temperature", type=float, default=_DEFAULT.temperature, help="embedding: InfoNCE temperature")
    p.add_argument(
        "--num-negatives",
        type=int,
        default=_DEFAULT.num_negatives,
        help="embedding: hard negatives per query (fewer if a row has fewer)",
    )
    p.add_argument(
        "--matryoshka-dims",
        type=_dimensions,
        default=None,
        metavar="D1,D2",
        help="embedding: also train these leading dimensions (Matryoshka: the loss is averaged over the full "
        "embedding and each)",
    )


def _dimensions(value: str) -> list[int]:
    try:
        return parse_dimensions(value)
    except OptionsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_lora_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only (paddlenlp.peft)")
    p.add_argument("--lora-rank", type=int, default=_DEFAULT.lora_rank, help="LoRA rank r")
    p.add_argument(
        "--lora-alpha",
        type=int,
        default=_DEFAULT.lora_alpha,
        help="LoRA scaling alpha (the update is scaled by alpha/r)",
    )
    p.add_argument("--lora-dropout", type=float, default=_DEFAULT.lora_dropout, help="dropout on the LoRA input")
    p.add_argument(
        "--lora-targets", nargs="+", default=_DEFAULT.lora_targets, metavar="NAME", help="Linear layer names to adapt"
    )


def _add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    d = _DEFAULT
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the training data")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="overrides --epochs when > 0")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples (rows) per step and device")
    p.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=d.gradient_accumulation_steps,
        help="batches per optimizer step",
    )
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="peak learning rate (AdamW)")
    p.add_argument(
        "--lr-scheduler", choices=list(LR_SCHEDULERS), default=d.lr_scheduler, help="decay after the warm-up"
    )
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping by global norm")
    p.add_argument("--logging-steps", type=int, default=d.logging_steps, help="log the loss every N steps")
    p.add_argument("--save-steps", type=int, default=d.save_steps, help="write a checkpoint every N steps")
    p.add_argument("--save-total-limit", type=int, default=d.save_total_limit, help="checkpoints kept")
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
) -> FinetuneOptions:
    """The checked `FinetuneOptions` of the command line `argv` over the `--config` JSON defaults.

    `parser` parses `argv` (default: `build_parser()`); `options` is the parser `add_arguments` filled (default:
    `parser`; the `finetune` subparser when `parser` is the `paddle-qwen2` one). Mistakes (unknown or malformed
    config, a missing required option, options that do not fit together) go through `options.error`.
    """
    parser = parser or build_parser()
    options = options or parser
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        options.set_defaults(**_read_config(pre.config, options))
    args = vars(parser.parse_args(argv))
    missing = ["--" + name.replace("_", "-") for name in REQUIRED if args[name] is None]
    if missing:
        required = ", ".join(missing)
        options.error(f"the following arguments are required: {required} (on the command line or in --config)")
    try:
        return FinetuneOptions(**{name: args[name] for name in FinetuneOptions.field_names()}).check()
    except OptionsError as exc:
        options.error(str(exc))


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


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse `argv` (`parse_args`) and train; returns the run's summary. For Python callers (argparse's usual
    errors: message on stderr, SystemExit 2); the command line is `paddle-qwen2 finetune`."""
    from ..runtime import configure_cpu_threads

    configure_cpu_threads()
    options = parse_args(argv)
    from ..training.finetune import run as run_finetune

    return run_finetune(options)


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Train with `args.options` (the `FinetuneOptions` `parse_args` made); prints the summary as JSON. Raises
    `DataError` / OSError on bad input (the CLI prints them as `error: ...`, exit 1)."""
    from ..runtime import configure_cpu_threads

    configure_cpu_threads()
    from ..training.finetune import run as run_finetune

    summary = run_finetune(args.options)
    print(json.dumps(summary, indent=2))
    return 0
