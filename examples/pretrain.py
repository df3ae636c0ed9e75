#!/usr/bin/env python
"""Pretrain a small Qwen2 from scratch on a text corpus with paddlenlp's Trainer (how examples/model was made).

Steps: train a byte-level BPE tokenizer in Qwen2's format on the corpus (or reuse `--tokenizer`), cut the
corpus into fixed-length blocks (documents joined by `<|endoftext|>`), train `Qwen2ForCausalLM` with the Trainer
and `Qwen2PretrainingCriterion`, report the held-out loss, save the Paddle checkpoint and (with `--export-hf`)
convert it to a HuggingFace folder with the tokenizer files next to it.

The bundled model (see README, "Demo"):

    python examples/pretrain.py --output-dir output/pretrain --export-hf examples/model

Everything is seeded (`--seed`): the same command on the same Paddle build gives the same model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from paddle_qwen2.runtime import configure_cpu_threads

configure_cpu_threads()

import argparse
import json
import math
import random
import shutil
import subprocess
import time

import numpy as np
import paddle
from paddlenlp.trainer import Trainer, TrainingArguments

from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.modeling import Qwen2PretrainingCriterion
from paddle_qwen2.tokenizer import Qwen2TokenizerFast, save_qwen2_tokenizer, train_qwen2_bpe
from paddle_qwen2.training.callbacks import JsonlLogger, read_log
from paddle_qwen2.training.data import ListDataset, load_texts
from paddle_qwen2.training.saving import TOKENIZER_FILES, write_generation_config

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
DEFAULT_CORPUS = [str(CORPUS_DIR / "en.txt"), str(CORPUS_DIR / "zh.txt")]


class CausalLMCriterion(Qwen2PretrainingCriterion):
    """The Trainer's criterion: takes the model output (logits first) and HF-style labels `[batch, seq]`."""

    def forward(self, outputs, labels):
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        return super().forward(logits, labels)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--corpus",
        nargs="+",
        default=DEFAULT_CORPUS,
        help="text files (documents split by blank lines) or .jsonl {'text'}",
    )
    p.add_argument("--output-dir", default="output/pretrain")
    p.add_argument("--export-hf", default=None, help="write the final model + tokenizer here in HF format")
    p.add_argument("--tokenizer", default=None, help="use this Qwen2 tokenizer folder instead of training one")
    p.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary to train (plus 3 special tokens)")
    p.add_argument(
        "--padded-vocab-size", type=int, default=4096, help="model vocab_size (>= tokenizer size, as Qwen2 pads)"
    )
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--intermediate-size", type=int, default=384)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-fraction", type=float, default=0.03, help="documents held out for the eval loss")
    p.add_argument("--logging-steps", type=int, default=20)
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def make_blocks(tokenizer, docs: list[str], seq_len: int) -> np.ndarray:
    """Token ids of `docs`, each followed by `<|endoftext|>`, concatenated and cut into `[n, seq_len]` blocks."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {seq_len}")
    return np.asarray(stream[: n * seq_len], dtype="int64").reshape(n, seq_len)


def collate(features):
    ids = paddle.to_tensor(np.stack([f["input_ids"] for f in features]))
    return {"input_ids": ids, "labels": ids}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [d for path in args.corpus for d in load_texts(path)]
    random.Random(args.seed).shuffle(docs)
    n_eval = max(1, int(len(docs) * args.eval_fraction))
    print(f"corpus: {len(docs)} documents, {sum(map(len, docs))} characters ({n_eval} documents held out)")

    tok_dir = out / "tokenizer"
    if args.tokenizer:
        tok_dir = Path(args.tokenizer)
    else:
        t0 = time.time()
        backend = train_qwen2_bpe(docs[n_eval:], args.vocab_size, min_frequency=2)
        save_qwen2_tokenizer(backend, str(tok_dir), model_max_length=args.max_position_embeddings)
        print(f"tokenizer: {backend.get_vocab_size()} tokens trained in {time.time() - t0:.1f}s -> {tok_dir}")
    tokenizer = Qwen2TokenizerFast.from_pretrained(str(tok_dir))
    if len(tokenizer) > args.padded_vocab_size:
        raise ValueError(f"--padded-vocab-size {args.padded_vocab_size} < tokenizer size {len(tokenizer)}")

    train_blocks = make_blocks(tokenizer, docs[n_eval:], args.seq_len)
    eval_blocks = make_blocks(tokenizer, docs[:n_eval], args.seq_len)
    print(f"blocks of {args.seq_len} tokens: {len(train_blocks)} train, {len(eval_blocks)} eval")

    eos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=args.padded_vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        max_window_layers=args.num_layers,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=False,
    )
    paddle.seed(args.seed)
    model = Qwen2ForCausalLM(config)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, hidden {args.hidden_size}, {args.num_layers} layers")

    log_path = out / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    training_args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine",
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=1,
        evaluation_strategy="no",
        seed=args.seed,
        device="cpu" if not paddle.is_compiled_with_cuda() else "gpu",
        report_to=["none"],
        disable_tqdm=False,
        dataloader_drop_last=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=ListDataset([{"input_ids": b} for b in train_blocks]),
        eval_dataset=ListDataset([{"input_ids": b} for b in eval_blocks]),
        data_collator=collate,
        criterion=CausalLMCriterion(config),
        callbacks=[JsonlLogger(log_path)],
    )
    t0 = time.time()
    result = trainer.train()
    train_time = time.time() - t0
    eval_loss = trainer.evaluate()["eval_loss"]
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.config.use_cache = True
    model.save_pretrained(str(final), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tok_dir / name, final / name)
    write_generation_config(final, eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=eos_id)
    last_logged = [r["loss"] for r in read_log(log_path).values()]
    report = {
        "command": "python examples/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "parameters": n_params,
        "train_blocks": len(train_blocks),
        "steps": trainer.state.global_step,
        "train_loss_last_logged": last_logged[-1] if last_logged else None,
        "train_loss_mean": result.training_loss,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss),
        "train_seconds": round(train_time, 1),
    }
    print(json.dumps(report, indent=2))
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.export_hf:
        export_hf(final, Path(args.export_hf))
        print(f"HF checkpoint -> {args.export_hf}")
    print(f"Paddle checkpoint -> {final}")
    return report


def export_hf(paddle_dir: Path, hf_dir: Path) -> None:
    """`paddle-qwen2 convert --to-hf` (the tokenizer files are copied along)."""
    subprocess.run(
        [sys.executable, "-m", "paddle_qwen2", "convert", "--to-hf", str(paddle_dir), "--out", str(hf_dir), "--force"],
        check=True,
    )


if __name__ == "__main__":
    main()
