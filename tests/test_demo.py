"""`make demo` end to end (its --quick variant), and the bundled model it starts from."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_qwen2 import Qwen2ForCausalLM
from paddle_qwen2.conversion import convert_checkpoint
from paddle_qwen2.tokenizer import load_tokenizer
from paddle_qwen2.training.data import load_texts

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "model"
DATA = REPO / "examples" / "data"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_bundled_assets_are_small_and_complete():
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    ):
        assert (MODEL / name).is_file(), name
    assert _size(MODEL) < 8 * 2**20
    assert _size(DATA) < 3 * 2**20
    config = json.loads((MODEL / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    tok = load_tokenizer(str(MODEL))
    assert 4000 <= len(tok) <= config["vocab_size"] <= 8192
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == config["pad_token_id"] != 0


def test_bundled_model_was_trained(tmp_path):
    """Far below the loss of a uniform guess (ln vocab ~ 8.3) on held-in corpus text: not a random init."""
    paddle_dir = tmp_path / "paddle"
    convert_checkpoint(MODEL, paddle_dir, to_paddle=True, progress=False)
    model = Qwen2ForCausalLM.from_pretrained(str(paddle_dir), dtype="float32")
    model.eval()
    tok = load_tokenizer(str(paddle_dir))
    docs = load_texts(DATA / "corpus" / "en.txt")[:8] + load_texts(DATA / "corpus" / "zh.txt")[:8]
    losses = []
    for doc in docs:
        ids = paddle.to_tensor([tok(doc)["input_ids"][:128]])
        losses.append(float(model(ids, labels=ids, return_dict=True).loss))
    assert np.mean(losses) < 2.5 < math.log(model.config.vocab_size), losses


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--quick", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    for step in range(1, 8):
        assert f"[{step}/7]" in text
    retrieval = re.search(r"held-out recall@1 ([\d.]+) -> ([\d.]+), MRR@10 ([\d.]+) -> ([\d.]+)", text)
    assert retrieval, text[-3000:]
    recall_before, recall_after, mrr_before, mrr_after = map(float, retrieval.groups())
    assert recall_after > recall_before + 0.2 and mrr_after > mrr_before + 0.2, retrieval.group(0)
    changed = re.search(r"-> (\d+) of (\d+) answers changed by fine-tuning", text)
    assert changed and int(changed.group(1)) >= 1, text[-3000:]
    assert re.search(r"SFT loss [\d.]+ \(step \d+\) -> [\d.]+ \(step \d+\)", text)
    rows = re.findall(r"^\s+\[\d\]\s+((?:\s*-?\d\.\d{3})+)\s*$", text, flags=re.MULTILINE)
    matrix = np.array([[float(v) for v in row.split()] for row in rows])
    assert (
        matrix.shape == (5, 5)
        and np.allclose(np.diag(matrix), 1.0, atol=1e-3)
        and np.allclose(matrix, matrix.T, atol=1e-3)
    )
    for sub in (
        "base-paddle/model.safetensors",
        "sft/final/model.safetensors",
        "sft/train_log.jsonl",
        "tuned-hf/model.safetensors",
        "tuned-hf/tokenizer.json",
        "embedding/final/modules.json",
    ):
        assert (out / sub).is_file(), sub
    assert str(out / "tuned-hf") in text
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out / "tuned-hf"))
    assert hf.config.vocab_size == json.loads((MODEL / "config.json").read_text())["vocab_size"]
