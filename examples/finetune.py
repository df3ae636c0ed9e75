#!/usr/bin/env python
"""Fine-tune Qwen2 with paddlenlp's Trainer: chat SFT (full or LoRA) or sequence classification.

    python examples/finetune.py --config configs/finetune_sft.json
    python examples/finetune.py --config configs/finetune_lora.json --max-steps 50
    python examples/finetune.py --config configs/finetune_seqcls.json
    python examples/finetune.py --config configs/finetune_sft.json --resume      # after an interruption

Every option can come from the `--config` JSON (keys are the option names with `_`); the command line wins.
`--model` is a Paddle checkpoint folder or an HF one (converted into OUTPUT/base-paddle first).

Writes into `--output-dir`:
    checkpoints/checkpoint-N/   every `--save-steps` (model, optimizer, scheduler, RNG, trainer state);
                                `--resume` continues from the newest complete one with the same loss curve
    train_log.jsonl             one line per logging step: step, loss, learning_rate, epoch
    final/                      the trained model (`save_pretrained`, safetensors; LoRA merged in) + tokenizer
    final-hf/ (`--export-hf`)   the same converted to the HF layout (`paddle-qwen2 convert --to-hf`)
    lora-adapter/ (`--lora`)    the LoRA weights and config alone
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "paddle_qwen2" / "__init__.py").is_file():
    sys.path.insert(0, str(REPO))

from paddle_qwen2.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from paddle import nn  # noqa: E402
from paddlenlp.trainer import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from paddle_qwen2 import Qwen2ForCausalLM, Qwen2ForSequenceClassification  # noqa: E402
from paddle_qwen2.conversion import ConversionError, convert_checkpoint, detect_layout  # noqa: E402
from paddle_qwen2.data import (  # noqa: E402
    DataCollatorForClassification,
    DataError,
    DataCollatorForSFT,
    build_classification_dataset,
    build_sft_dataset,
)
from paddle_qwen2.tokenizer import ENDOFTEXT, IM_END, load_tokenizer  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ------------------------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="JSON file of option defaults (keys: option names with '_')")
    p.add_argument("--task", choices=["sft", "seq_cls"], default="sft")
    p.add_argument("--model", default=str(REPO / "examples" / "model"), help="Paddle or HF checkpoint folder")
    p.add_argument("--train-file", default=str(REPO / "examples" / "data" / "chat_sft.jsonl"))
    p.add_argument("--eval-file", default=None)
    p.add_argument("--output-dir", default="output/finetune")
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (packed row)")
    p.add_argument("--packing", action="store_true", help="SFT: pack several chats into each row")
    p.add_argument("--num-labels", type=int, default=2, help="seq_cls: number of classes")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only (paddlenlp.peft)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", nargs="+", default=list(LORA_TARGETS), help="Linear layer names to adapt")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--lr-scheduler", choices=["linear", "cosine", "constant"], default="linear")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--save-total-limit", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=None, help="evaluate every N steps (default: at the end only)")
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from the newest complete checkpoint in OUTPUT/checkpoints (or from PATH)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (GPU only)")
    p.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU only)")
    p.add_argument("--amp-level", choices=["O1", "O2"], default="O1", help="AMP level for --bf16 / --fp16")
    p.add_argument("--export-hf", nargs="?", const="final-hf", default=None,
                   help="also write the final model in HF layout (default OUTPUT/final-hf)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line over `--config` JSON defaults; unknown JSON keys are an error."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        with open(pre.config, encoding="utf-8") as f:
            try:
                defaults = json.load(f)
            except json.JSONDecodeError as e:
                parser.error(f"{pre.config}: malformed JSON ({e.msg}, line {e.lineno})")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            parser.error(f"{pre.config}: unknown option(s) {unknown}")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.bf16 and args.fp16:
        parser.error("--bf16 and --fp16 are exclusive")
    if (args.bf16 or args.fp16) and not paddle.is_compiled_with_cuda():
        parser.error("--bf16 / --fp16 need a GPU build of Paddle (Paddle has no bfloat16 matmul on CPU); train in fp32 on CPU")
    if args.lora and args.task != "sft":
        parser.error("--lora is supported for --task sft")
    return args


# ------------------------------------------------------------------------------------------------------------------
# Helpers shared with pretrain.py / demo.py
# ------------------------------------------------------------------------------------------------------------------


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log (loss, learning_rate, eval metrics) with its step to a JSON-lines file and
    prints the loss / learning-rate lines."""

    def __init__(self, path: Path, echo: bool = True):
        self.path, self.echo = Path(path), echo

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not args.should_save:
            return
        record = {"step": int(state.global_step), "epoch": state.epoch}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float)) and k not in ("global_step",)})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.echo and "loss" in record:
            print(f"  step {record['step']:>5}  loss {record['loss']:.4f}  lr {record.get('learning_rate', 0):.2e}", flush=True)
        elif self.echo and "eval_loss" in record:
            extra = f"  accuracy {record['eval_accuracy']:.3f}" if "eval_accuracy" in record else ""
            print(f"  step {record['step']:>5}  eval loss {record['eval_loss']:.4f}{extra}", flush=True)


def read_log(path: Path) -> Dict[int, dict]:
    """`step -> last record` of a `train_log.jsonl` (a resumed run overwrites the steps it repeats)."""
    records: Dict[int, dict] = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if "loss" in record:
                    records[record["step"]] = record
    return records


COMPLETE_MARKER = "checkpoint_complete.json"


class CheckpointMarker(TrainerCallback):
    """After the Trainer has finished writing `checkpoint-N` (model, optimizer, scheduler, trainer state, RNG
    state), records the files and their sizes in `checkpoint-N/checkpoint_complete.json` (written atomically).
    A checkpoint cut short by a kill has no marker, or files that no longer match it."""

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER}
        tmp = folder / (COMPLETE_MARKER + ".tmp")
        tmp.write_text(json.dumps({"step": int(state.global_step), "files": files}, indent=1))
        os.replace(tmp, folder / COMPLETE_MARKER)


def _is_complete(folder: Path) -> bool:
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def last_complete_checkpoint(folder: Path) -> Optional[Path]:
    """Newest `checkpoint-N` in `folder` whose save finished (see `CheckpointMarker`); folders left half-written
    or half-deleted by a kill are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and _is_complete(p)]
    return max(done)[1] if done else None


def ensure_paddle_checkpoint(model_dir: Path, work_dir: Path) -> Path:
    """`model_dir` itself if it is a Paddle checkpoint; an HF one is converted into `work_dir/base-paddle`."""
    layout = detect_layout(model_dir)
    if layout == "hf":
        target = work_dir / "base-paddle"
        convert_checkpoint(model_dir, target, to_paddle=True, force=True, progress=False)
        print(f"converted HF checkpoint {model_dir} -> {target}")
        return target
    has_pdparams = any(model_dir.glob("model_state*.pdparams")) or (model_dir / "model_state.pdparams.index.json").is_file()
    if layout is None and not has_pdparams:
        raise FileNotFoundError(f"{model_dir}: no checkpoint (expected config.json and safetensors or pdparams weights)")
    return model_dir


def copy_tokenizer_files(src: Path, dst: Path, tokenizer) -> None:
    """The Qwen2 tokenizer files of `src` as they are (HF-readable), else the tokenizer's own save."""
    if (src / "tokenizer_config.json").is_file() and ((src / "tokenizer.json").is_file() or (src / "vocab.json").is_file()):
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, dst / name)
    else:
        tokenizer.save_pretrained(str(dst))


def write_generation_config(folder: Path, eos_token_id, pad_token_id: int, bos_token_id: Optional[int] = None) -> None:
    """A plain generation_config.json that paddlenlp and transformers both read: greedy, the given stop ids."""
    config = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id, "do_sample": False}
    (Path(folder) / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


def apply_lora(model, rank: int, alpha: int, dropout: float, targets: List[str]):
    """Wrap the Linear layers named in `targets` with LoRA adapters; only the adapters stay trainable."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    config = LoRAConfig(
        target_modules=[rf".*\.{name}$" for name in targets],
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        merge_weights=False,
        base_model_name_or_path=None,
    )
    lora_model = LoRAModel(model, config)
    lora_model.mark_only_lora_as_trainable()
    return lora_model


def merge_lora(lora_model) -> nn.Layer:
    """Fold the LoRA updates into the base weights and swap every LoRA layer back to a plain `nn.Linear`
    (keeping the original bias or its absence), returning the base model with the merged weights."""
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    lora_model.merge()
    base = lora_model.model
    for name, layer in list(base.named_sublayers()):
        if not isinstance(layer, LoRALinear):
            continue
        parent = base
        *path, attr = name.split(".")
        for part in path:
            parent = getattr(parent, part)
        in_features, out_features = layer.weight.shape
        plain = nn.Linear(in_features, out_features, bias_attr=None if layer.bias is not None else False)
        plain.weight = layer.weight
        if layer.bias is not None:
            plain.bias = layer.bias
        setattr(parent, attr, plain)
    for param in base.parameters():
        param.stop_gradient = False
    return base


def count_parameters(model) -> Dict[str, int]:
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    return {"total": total, "trainable": trainable}


def accuracy_metrics(eval_pred) -> Dict[str, float]:
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return {"accuracy": float((np.argmax(predictions, axis=-1) == eval_pred.label_ids).mean())}


# ------------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------------


def build_datasets(args, tokenizer):
    if args.task == "sft":
        train, stats = build_sft_dataset(tokenizer, args.train_file, args.max_length, packing=args.packing)
        print(
            f"SFT data {args.train_file}: {stats.examples} chats"
            + (f" in {stats.packed_rows} packed rows" if args.packing else "")
            + (f", {stats.skipped_no_assistant} skipped (no assistant turn)" if stats.skipped_no_assistant else "")
            + (f", {stats.truncated} truncated to {args.max_length} tokens" if stats.truncated else "")
        )
        evaluation = build_sft_dataset(tokenizer, args.eval_file, args.max_length)[0] if args.eval_file else None
        return train, evaluation, DataCollatorForSFT(tokenizer.pad_token_id)
    train = build_classification_dataset(tokenizer, args.train_file, args.num_labels, args.max_length)
    evaluation = (
        build_classification_dataset(tokenizer, args.eval_file, args.num_labels, args.max_length) if args.eval_file else None
    )
    print(f"classification data {args.train_file}: {len(train)} examples, {args.num_labels} labels")
    return train, evaluation, DataCollatorForClassification(tokenizer.pad_token_id)


def load_model(args, model_dir: Path, tokenizer):
    if args.task == "sft":
        model = Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    else:
        paddle.seed(args.seed)  # the new classification head is initialised from the seed
        model = Qwen2ForSequenceClassification.from_pretrained(
            str(model_dir), dtype="float32", num_labels=args.num_labels, pad_token_id=tokenizer.pad_token_id
        )
    model.config.use_cache = False
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def training_arguments(args, output_dir: Path, has_eval: bool) -> TrainingArguments:
    eval_strategy = "steps" if (has_eval and args.eval_steps) else "no"
    return TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        evaluation_strategy=eval_strategy,
        eval_steps=args.eval_steps,
        seed=args.seed,
        bf16=args.bf16,
        fp16=args.fp16,
        fp16_opt_level=args.amp_level,
        device="gpu" if (args.bf16 or args.fp16) else "cpu",
        report_to=["none"],
        disable_tqdm=args.quiet,
        remove_unused_columns=False,
        prediction_loss_only=args.task == "sft",
    )


def main(argv: Optional[List[str]] = None) -> dict:
    """Run a fine-tuning job; returns its summary (also written to OUTPUT/summary.json)."""
    args = parse_args(argv)
    # Parameter and optimizer-state names come from Paddle's global name counters; a fresh counter makes them
    # the same as in a new process, so a checkpoint resumes even after other models were built in this one.
    with paddle.utils.unique_name.guard():
        return run(args)


def run(args: argparse.Namespace) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_paddle_checkpoint(Path(args.model), output_dir)
    tokenizer = load_tokenizer(str(model_dir))
    train_dataset, eval_dataset, collator = build_datasets(args, tokenizer)

    model = load_model(args, model_dir, tokenizer)
    if args.lora:
        model = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
    params = count_parameters(model)
    print(f"model {model_dir}: {params['total']:,} parameters, {params['trainable']:,} trainable"
          + (" (LoRA adapters)" if args.lora else ""))

    resume = None
    if args.resume == "last":
        resume = last_complete_checkpoint(output_dir / "checkpoints")
        print(f"resuming from {resume}" if resume else "no complete checkpoint to resume from: starting fresh")
    elif args.resume:
        resume = Path(args.resume)
        if not (resume / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{resume}: not a Trainer checkpoint (no trainer_state.json)")

    trainer = Trainer(
        model=model,
        args=training_arguments(args, output_dir, eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=accuracy_metrics if args.task == "seq_cls" else None,
        callbacks=[JsonlLogger(output_dir / "train_log.jsonl"), CheckpointMarker()],
    )
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {
        "task": args.task,
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "train_seconds": round(time.time() - start, 1),
        "parameters": params,
    }
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        summary.update({k: float(v) for k, v in metrics.items() if k in ("eval_loss", "eval_accuracy")})

    final_dir = output_dir / "final"
    export_model = merge_lora(model) if args.lora else model
    if args.lora:
        model.save_pretrained(str(output_dir / "lora-adapter"))
    save_final(export_model, final_dir, model_dir, tokenizer)
    summary["final"] = str(final_dir)
    if args.export_hf:
        hf_dir = Path(args.export_hf)
        hf_dir = hf_dir if hf_dir.is_absolute() or args.export_hf != "final-hf" else output_dir / hf_dir
        convert_checkpoint(final_dir, hf_dir, to_paddle=False, force=True, progress=False)
        summary["final_hf"] = str(hf_dir)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def save_final(model, final_dir: Path, tokenizer_src: Path, tokenizer) -> None:
    """`save_pretrained` (safetensors) into a temp folder renamed to `final_dir`, with the tokenizer files."""
    tmp = final_dir.with_name(final_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    config.use_cache = True
    model.save_pretrained(str(tmp), safe_serialization=True)
    copy_tokenizer_files(tokenizer_src, tmp, tokenizer)
    if isinstance(model, Qwen2ForCausalLM):  # a chat model stops at <|im_end|> (and <|endoftext|>)
        stops = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT) if t in tokenizer.get_vocab()]
        write_generation_config(tmp, stops, tokenizer.pad_token_id, getattr(config, "bos_token_id", None))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)


if __name__ == "__main__":
    try:
        print(json.dumps(main(), indent=2))
    except (DataError, ConversionError, FileNotFoundError) as exc:  # bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
