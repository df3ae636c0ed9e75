#!/usr/bin/env python
"""`make demo`: the whole path on the bundled small Qwen2, on CPU, in a few minutes.

1. convert the bundled HF checkpoint (examples/model) to Paddle    (`paddle-qwen2 convert --from-hf`)
2. answer a few prompts with the base model
3. fine-tune it on the bundled chat data (examples/data/chat_sft.jsonl) with paddlenlp's Trainer
4. answer the same prompts again: the tuned model replies in the chat format it was taught
5. sentence embeddings (Qwen2SentenceEmbedding, last-token pooling, L2-normalised): a similarity matrix
6. save the tuned model back in HF format                           (`paddle-qwen2 convert --to-hf`)

    python examples/demo.py [--output-dir output/demo] [--quick]

`--quick` (used by the test suite) trains fewer steps and generates shorter answers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from paddle_qwen2.runtime import configure_cpu_threads

THREADS = configure_cpu_threads()
START = time.time()

import argparse
import json
import shutil
import subprocess
import textwrap
import warnings

import numpy as np
import paddle
from paddlenlp.utils.log import logger as paddlenlp_logger
from tqdm import tqdm

from paddle_qwen2 import Qwen2ForCausalLM, Qwen2SentenceEmbedding
from paddle_qwen2.cli import finetune
from paddle_qwen2.embedding.evaluation import load_retrieval_pairs
from paddle_qwen2.embedding.model import EmbeddingModel
from paddle_qwen2.tokenizer import IM_END, load_tokenizer
from paddle_qwen2.training.callbacks import read_log

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent

PROMPTS = [
    "What is the capital of Japan?",
    "法国的首都是哪里？",
    "How many legs does a spider have?",
    "What sound does a cow make?",
    "猫喜欢吃什么？",
    "Who are you?",
]
QUICK_PROMPTS = PROMPTS[:3]
SENTENCES = [
    "The capital of France is Paris.",
    "Paris is a city in Europe.",
    "A cat likes to eat fish.",
    "猫喜欢吃鱼。",
    "Two plus three is five.",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default=str(EXAMPLES / "model"), help="HF checkpoint folder to start from")
    p.add_argument("--data", default=str(EXAMPLES / "data" / "chat_sft.jsonl"))
    p.add_argument("--output-dir", default="output/demo")
    p.add_argument("--steps", type=int, default=None, help="SFT steps (default 150, 20 with --quick)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 40, 16 with --quick")
    p.add_argument("--quick", action="store_true", help="a shorter run for CI")
    return p.parse_args(argv)


def banner(step: int, total: int, text: str) -> None:
    print(f"\n[{step}/{total}] {text}  (t = {time.time() - START:.0f}s)", flush=True)


def run_cli(args: list[str]) -> None:
    command = [sys.executable, "-m", "paddle_qwen2", *args]
    print("$ paddle-qwen2 " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int, desc: str) -> list[str]:
    """Greedy answers to single-turn chats (ChatML prompt with the generation header)."""
    stop = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]
    model.eval()
    answers = []
    for prompt in tqdm(prompts, desc=desc, leave=False):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        with paddle.no_grad():
            out = model.generate(
                input_ids=paddle.to_tensor([ids]),
                max_new_tokens=max_new_tokens,
                decode_strategy="greedy_search",
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )[0]
        new = [t for t in out[0].numpy().tolist() if t not in stop]
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip().replace("\n", " ") or "(empty)")
    return answers


def show_answers(prompts: list[str], before: list[str], after: list[str]) -> None:
    width = 60
    for prompt, b, a in zip(prompts, before, after):
        print(f"  Q: {prompt}")
        print(textwrap.indent(textwrap.fill(f"before: {b}", width, subsequent_indent="        "), "     "))
        print(textwrap.indent(textwrap.fill(f"after:  {a}", width, subsequent_indent="        "), "     "))
    changed = sum(b != a for b, a in zip(before, after))
    print(f"  -> {changed} of {len(prompts)} answers changed by fine-tuning")


def similarity_matrix(model_dir: Path, sentences: list[str]) -> np.ndarray:
    tokenizer = load_tokenizer(str(model_dir))
    model = Qwen2SentenceEmbedding.from_pretrained(str(model_dir), dtype="float32")
    model.eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pd", add_special_tokens=False)
    with paddle.no_grad():
        emb = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], pooling="last", normalize=True, return_dict=True
        ).embeddings.numpy()
    return emb @ emb.T


def show_matrix(sentences: list[str], sim: np.ndarray) -> None:
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("       " + "".join(f"  [{j}] " for j in range(len(sentences))))
    for i, row in enumerate(sim):
        print(f"  [{i}]  " + "".join(f"{v:6.3f}" for v in row))


def train_embedder(model: str, output: Path, quick: bool) -> dict:
    """`finetune --task embedding` with the bundled config; prints held-out recall@1 / MRR@10 before and after and
    the passage the base and the tuned model rank first for a few held-out questions."""
    config = REPO / "configs" / "finetune_embedding.json"
    steps = ["--max-steps", "60"] if quick else []
    summary = finetune.main(["--config", str(config), "--model", model, "--output-dir", str(output), "--quiet", *steps])
    before, after = summary["eval_before"], summary["eval_after"]
    print(
        f"  held-out recall@1 {before['recall@1']:.3f} -> {after['recall@1']:.3f}, "
        f"MRR@10 {before['mrr@10']:.3f} -> {after['mrr@10']:.3f} ({summary['steps']} steps)"
    )
    queries, passages, relevant = load_retrieval_pairs(EXAMPLES / "data" / "retrieval_eval.jsonl")
    options = json.loads(config.read_text())
    base = EmbeddingModel.from_pretrained(model, pooling=options["pooling"], normalize=True, is_causal=False)
    tuned = EmbeddingModel.from_pretrained(summary["final"])
    picks = list(range(0, len(queries), 9))[:4]
    for name, embedder in (("base", base), ("tuned", tuned)):
        q = embedder.encode([queries[i] for i in picks])
        top = (q @ embedder.encode(passages).T).argmax(axis=1)
        for i, j in zip(picks, top):
            mark = "right" if j == relevant[i] else "wrong"
            print(f"  {name:<5} Q: {queries[i]}\n        -> ({mark}) {passages[j][:70]}")
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    paddlenlp_logger.set_level("WARNING")
    paddle.set_device("cpu")
    steps = args.steps or (20 if args.quick else 150)
    max_new = args.max_new_tokens or (16 if args.quick else 40)
    prompts = QUICK_PROMPTS if args.quick else PROMPTS
    out = Path(args.output_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    total = 7
    print(f"paddle_qwen2 demo: model {args.model}, output {out}")
    mkl = THREADS.get("MKL_DEBUG_CPU_TYPE", "unset")
    print(f"threads: OMP_NUM_THREADS={THREADS['OMP_NUM_THREADS']} MKL_DEBUG_CPU_TYPE={mkl}")

    banner(1, total, "Convert the bundled HF checkpoint to Paddle")
    base = out / "base-paddle"
    run_cli(["convert", "--from-hf", args.model, "--out", str(base)])

    banner(2, total, "Answers of the base model (pretrained on plain text only)")
    tokenizer = load_tokenizer(str(base))
    model = Qwen2ForCausalLM.from_pretrained(str(base), dtype="float32")
    before = answer(model, tokenizer, prompts, max_new, "generating")
    for prompt, text in zip(prompts, before):
        print(f"  Q: {prompt}\n     A: {text}")
    del model

    banner(3, total, f"Fine-tune on {Path(args.data).name}: {steps} steps of chat SFT with paddlenlp's Trainer")
    sft = out / "sft"
    summary = finetune.main(
        [
            "--model",
            str(base),
            "--train-file",
            args.data,
            "--output-dir",
            str(sft),
            "--max-steps",
            str(steps),
            "--batch-size",
            "8",
            "--learning-rate",
            "3e-3",
            "--lr-scheduler",
            "cosine",
            "--warmup-steps",
            str(max(steps // 10, 1)),
            "--max-length",
            "256",
            "--packing",
            "--logging-steps",
            str(max(1, min(10, steps // 4))),
            "--save-steps",
            str(max(steps // 2, 1)),
            "--save-total-limit",
            "1",
        ]
    )
    log = read_log(sft / "train_log.jsonl")
    if log:
        first, last = log[min(log)], log[max(log)]
        print(
            f"  SFT loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']}) "
            f"in {summary['train_seconds']:.0f}s"
        )

    banner(4, total, "Answers before and after fine-tuning")
    tuned = Qwen2ForCausalLM.from_pretrained(summary["final"], dtype="float32")
    after = answer(tuned, tokenizer, prompts, max_new, "generating")
    show_answers(prompts, before, after)
    del tuned

    banner(5, total, "Sentence embeddings (last-token pooling, normalised): cosine similarity")
    show_matrix(SENTENCES, similarity_matrix(Path(summary["final"]), SENTENCES))
    print("  (a 1.3M-parameter model: this shows the API and pooling, not a strong embedding model)")

    banner(6, total, "Save the tuned model in HF format")
    tuned_hf = out / "tuned-hf"
    run_cli(["convert", "--to-hf", summary["final"], "--out", str(tuned_hf)])

    banner(7, total, "Train the base model as a retrieval embedder (InfoNCE, held-out questions)")
    embedder = out / "embedding"
    retrieval = train_embedder(args.model, embedder, args.quick)

    print(f"\nDone in {time.time() - START:.0f}s. Where everything went:")
    for label, path in [
        ("base model, Paddle layout", base),
        ("SFT checkpoints", sft / "checkpoints"),
        ("SFT loss log", sft / "train_log.jsonl"),
        ("tuned model, Paddle layout", Path(summary["final"])),
        ("tuned model, HF layout", tuned_hf),
        ("retrieval embedder (sentence-transformers folder)", Path(retrieval["final"])),
    ]:
        print(f"  {label:<28} {path}")


if __name__ == "__main__":
    main()
