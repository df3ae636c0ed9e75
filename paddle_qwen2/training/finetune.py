"""Fine-tune Qwen2 with paddlenlp's Trainer: chat SFT (full or LoRA), sequence classification, or a sentence-embedding
model (InfoNCE, full or LoRA; `.embedding`).

    from paddle_qwen2.training.finetune import run
    from paddle_qwen2.training.options import FinetuneOptions
    summary = run(FinetuneOptions(model="examples/model", train_file="chats.jsonl", max_steps=50))

What `paddle-qwen2 finetune ...` runs (`paddle_qwen2.cli.finetune` turns the command line and its `--config` JSON into
the `FinetuneOptions`; `paddle_qwen2.cli.finetune.main(argv)` does it from Python). `--model` is a Paddle checkpoint
folder or an HF one (converted into OUTPUT/base-paddle first); for `--task embedding` also a sentence-transformers
folder (a plain Qwen2 folder gets `--pooling`, default last-token, and a Normalize).

Writes into `--output-dir` (OUTPUT):
    checkpoints/checkpoint-N/   every `--save-steps` (model, optimizer, scheduler, RNG, trainer state);
                                `--resume` continues from the newest complete one with the same loss curve
    train_log.jsonl             one line per logging step: step, loss, learning_rate, epoch (and eval metrics)
    final/                      the trained model (`save_pretrained`, safetensors; LoRA merged in) + tokenizer;
                                embedding: a sentence-transformers folder (HF layout, pooling, Normalize, prompts)
    final-hf/ (`--export-hf`)   the same converted to the HF layout (`paddle-qwen2 convert --to-hf`)
    lora-adapter/ (`--lora`)    the LoRA weights and config alone
    summary.json                what `run` returns: task, steps, train_loss, seconds, parameters, eval metrics, paths
                                (embedding with `--eval-file`: `eval_before` / `eval_after` recall@1, recall@10, mrr@10)
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import paddle
from paddlenlp.trainer import Trainer, TrainingArguments

from .. import Qwen2ForCausalLM, Qwen2ForSequenceClassification
from ..conversion import convert_checkpoint, detect_layout
from ..tokenizer import load_tokenizer
from .callbacks import CheckpointMarker, JsonlLogger, last_complete_checkpoint
from .data import (
    DataCollatorForClassification,
    DataCollatorForSFT,
    DataError,
    build_classification_dataset,
    build_sft_dataset,
)
from .embedding import (
    ContrastiveEmbeddingModel,
    EmbeddingCollator,
    EmbeddingTrainer,
    EpochCallback,
    RetrievalDataset,
    evaluate_retrieval,
    load_embedding_model,
    load_retrieval_examples,
    matryoshka_dims,
    prompt_length,
    resolve_prompts,
)
from .lora import apply_lora, merge_lora
from .options import FinetuneOptions
from .saving import save_final

__all__ = [
    "accuracy_metrics",
    "build_datasets",
    "count_parameters",
    "ensure_paddle_checkpoint",
    "load_model",
    "run",
    "training_arguments",
]

PDPARAMS_INDEX = "model_state.pdparams.index.json"

# The command line as a Python call moved to the CLI package; these names still resolve from here.
_MOVED_TO_CLI = ("main", "parse_args")


def __getattr__(name: str):
    """`main(argv)` and `parse_args(...)` live in `paddle_qwen2.cli.finetune`; the old path still gives them (with a
    DeprecationWarning). The lookup is by name so that `training` does not import the command line."""
    if name in _MOVED_TO_CLI:
        warnings.warn(
            f"paddle_qwen2.training.finetune.{name} moved to paddle_qwen2.cli.finetune.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("paddle_qwen2.cli.finetune"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(options: FinetuneOptions) -> dict:
    """Run a fine-tuning job; returns its summary (also written to OUTPUT/summary.json). `options` is checked first
    (`FinetuneOptions.check`: OptionsError naming the option)."""
    options.check()
    # Parameter and optimizer-state names come from Paddle's global name counters; a fresh counter makes them
    # the same as in a new process, so a checkpoint resumes even after other models were built in this one.
    with paddle.utils.unique_name.guard():
        return _run(options)


def _run(args: FinetuneOptions) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.task == "embedding":
        return _run_embedding(args, output_dir)
    model_dir = ensure_paddle_checkpoint(Path(args.model), output_dir)
    tokenizer = load_tokenizer(str(model_dir))
    train_dataset, eval_dataset, collator = build_datasets(args, tokenizer)
    model = load_model(args, model_dir, tokenizer)
    if args.lora:
        paddle.seed(args.seed)  # the LoRA matrices are drawn here, before the Trainer seeds its run
        model = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
    params = count_parameters(model)
    print(
        f"model {model_dir}: {params['total']:,} parameters, {params['trainable']:,} trainable"
        + (" (LoRA adapters)" if args.lora else "")
    )
    resume = _resume_checkpoint(args, output_dir)
    trainer = Trainer(
        model=model,
        args=training_arguments(args, output_dir, eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=accuracy_metrics if args.task == "seq_cls" else None,
        callbacks=[JsonlLogger(output_dir / "train_log.jsonl"), CheckpointMarker()],
    )
    summary = _train(trainer, args, resume, params)
    summary.update(_save(args, model, output_dir, model_dir, tokenizer))
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run_embedding(args: FinetuneOptions, output_dir: Path) -> dict:
    """`--task embedding`: InfoNCE training of an `EmbeddingModel`; OUTPUT/final is a sentence-transformers folder.
    With `--eval-file`, held-out retrieval metrics before and after training go into the summary."""
    examples = load_retrieval_examples(args.train_file)
    pairs = _read_retrieval_pairs(args.eval_file) if args.eval_file else None
    embedder = load_embedding_model(args.model, args.pooling, args.max_length, args.bidirectional)
    prompts = resolve_prompts(embedder, args.query_prompt, args.passage_prompt)
    dataset = RetrievalDataset(examples, embedder.tokenizer, *prompts, args.num_negatives, args.seed)
    print(f"embedding data {args.train_file}: {len(dataset)} queries, {len(dataset.passages)} distinct passages")
    dims = matryoshka_dims(args.matryoshka_dims, embedder.dimension)
    lengths = [prompt_length(embedder, prompt) for prompt in prompts]
    model = ContrastiveEmbeddingModel(embedder, args.temperature, dims, *lengths)
    lora = _embedding_lora(args, embedder)
    params = count_parameters(model)
    print(
        f"embedding model {args.model}: {params['total']:,} parameters, {params['trainable']:,} trainable"
        + (" (LoRA adapters)" if args.lora else "")
    )
    before = _retrieval(embedder, pairs, prompts, args.batch_size, "before")
    trainer = EmbeddingTrainer(
        model=model,
        args=training_arguments(args, output_dir, False),
        train_dataset=dataset,
        data_collator=EmbeddingCollator(embedder.tokenizer),
        callbacks=[JsonlLogger(output_dir / "train_log.jsonl"), CheckpointMarker(), EpochCallback(dataset)],
    )
    summary = _train(trainer, args, _resume_checkpoint(args, output_dir), params)
    if lora is not None:
        lora.save_pretrained(str(output_dir / "lora-adapter"))
        merge_lora(lora)
    embedder.save_pretrained(output_dir / "final")
    summary["final"] = str(output_dir / "final")
    if pairs is not None:
        summary.update(eval_before=before, eval_after=_retrieval(embedder, pairs, prompts, args.batch_size, "after"))
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _embedding_lora(args: FinetuneOptions, embedder):
    """With `--lora`: adapters on the Qwen2 Linear layers named by `--lora-targets` (returns the LoRAModel), all
    else (Dense modules included) frozen; else None."""
    if not args.lora:
        return None
    paddle.seed(args.seed)  # the LoRA matrices are drawn here, before the Trainer seeds its run
    lora = apply_lora(embedder.transformer, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
    for param in embedder.dense.parameters():
        param.stop_gradient = True
    return lora


def _read_retrieval_pairs(path: str) -> tuple[list[str], list[str], list[int]]:
    """`load_retrieval_pairs` of the held-out file; its errors as `DataError` (FILE:LINE: ...)."""
    from ..embedding.evaluation import load_retrieval_pairs

    try:
        return load_retrieval_pairs(path)
    except OSError as e:
        raise DataError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise DataError(str(e)) from None


def _retrieval(embedder, pairs, prompts: tuple[str, str], batch_size: int, when: str) -> dict[str, float] | None:
    """recall@1 / recall@10 / MRR@10 of `embedder` on the held-out `pairs` (printed); None without them."""
    if pairs is None:
        return None
    metrics = evaluate_retrieval(embedder, pairs, *prompts, batch_size)
    print(
        f"held-out retrieval {when} training ({len(pairs[0])} queries, {len(pairs[1])} passages): "
        + ", ".join(f"{name} {value:.3f}" for name, value in metrics.items()),
        flush=True,
    )
    return metrics


def _resume_checkpoint(args: FinetuneOptions, output_dir: Path) -> Path | None:
    """The checkpoint `--resume` names: the newest complete one (`--resume`), PATH (`--resume PATH`) or none."""
    if args.resume == "last":
        resume = last_complete_checkpoint(output_dir / "checkpoints")
        print(f"resuming from {resume}" if resume else "no complete checkpoint to resume from: starting fresh")
        return resume
    if args.resume:
        resume = Path(args.resume)
        if not (resume / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{resume}: not a Trainer checkpoint (no trainer_state.json)")
        return resume
    return None


def _train(trainer: Trainer, args: FinetuneOptions, resume: Path | None, params: dict[str, int]) -> dict:
    """Train (and evaluate when there is eval data); the summary of the run."""
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {
        "task": args.task,
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "train_seconds": round(time.time() - start, 1),
        "parameters": params,
    }
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        summary.update({k: float(v) for k, v in metrics.items() if k in ("eval_loss", "eval_accuracy")})
    return summary


def _save(args: FinetuneOptions, model, output_dir: Path, model_dir: Path, tokenizer) -> dict[str, str]:
    """OUTPUT/final (LoRA merged in), OUTPUT/lora-adapter (`--lora`) and the HF copy (`--export-hf`)."""
    final_dir = output_dir / "final"
    export_model = merge_lora(model) if args.lora else model
    if args.lora:
        model.save_pretrained(str(output_dir / "lora-adapter"))
    save_final(export_model, final_dir, model_dir, tokenizer)
    paths = {"final": str(final_dir)}
    if args.export_hf:
        hf_dir = Path(args.export_hf)
        hf_dir = hf_dir if hf_dir.is_absolute() or args.export_hf != "final-hf" else output_dir / hf_dir
        convert_checkpoint(final_dir, hf_dir, to_paddle=False, force=True, progress=False)
        paths["final_hf"] = str(hf_dir)
    return paths


def ensure_paddle_checkpoint(model_dir: Path, work_dir: Path) -> Path:
    """`model_dir` itself if it is a Paddle checkpoint; an HF one is converted into `work_dir/base-paddle`."""
    layout = detect_layout(model_dir)
    if layout == "hf":
        target = work_dir / "base-paddle"
        convert_checkpoint(model_dir, target, to_paddle=True, force=True, progress=False)
        print(f"converted HF checkpoint {model_dir} -> {target}")
        return target
    has_pdparams = any(model_dir.glob("model_state*.pdparams")) or (model_dir / PDPARAMS_INDEX).is_file()
    if layout is None and not has_pdparams:
        raise FileNotFoundError(
            f"{model_dir}: no checkpoint (expected config.json and safetensors or pdparams weights)"
        )
    return model_dir


def build_datasets(args: FinetuneOptions, tokenizer) -> tuple[object, object | None, object]:
    """(train dataset, eval dataset or None, collator) for `args.task`; prints what was loaded."""
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
    evaluation = None
    if args.eval_file:
        evaluation = build_classification_dataset(tokenizer, args.eval_file, args.num_labels, args.max_length)
    print(f"classification data {args.train_file}: {len(train)} examples, {args.num_labels} labels")
    return train, evaluation, DataCollatorForClassification(tokenizer.pad_token_id)


def load_model(args: FinetuneOptions, model_dir: Path, tokenizer):
    """The float32 model of `args.task` (a seq_cls head is initialised from `--seed`), without the KV cache."""
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


def training_arguments(args: FinetuneOptions, output_dir: Path, has_eval: bool) -> TrainingArguments:
    """paddlenlp `TrainingArguments` from the options; checkpoints go to OUTPUT/checkpoints."""
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


def count_parameters(model) -> dict[str, int]:
    """{"total": all parameters, "trainable": those without `stop_gradient`}."""
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    return {"total": total, "trainable": trainable}


def accuracy_metrics(eval_pred) -> dict[str, float]:
    """The Trainer's `compute_metrics` for classification: {"accuracy": ...}."""
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return {"accuracy": float((np.argmax(predictions, axis=-1) == eval_pred.label_ids).mean())}
