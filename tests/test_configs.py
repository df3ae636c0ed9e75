"""The shipped configs: published Qwen2 / Qwen2.5 sizes, and tiny ones that build and run."""
import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# published parameter counts (billions) of the real models
PUBLISHED = {
    "qwen2-0.5b": 0.49, "qwen2-1.5b": 1.54, "qwen2-7b": 7.62, "qwen2-72b": 72.7,
    "qwen2.5-0.5b": 0.49, "qwen2.5-1.5b": 1.54, "qwen2.5-3b": 3.09, "qwen2.5-7b": 7.62,
    "qwen2.5-14b": 14.7, "qwen2.5-32b": 32.5, "qwen2.5-72b": 72.7,
}


def count_parameters(config: Qwen2Config) -> int:
    h, d = config.hidden_size, config.attention_head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    attention = h * q + q + 2 * (h * kv + kv) + q * h
    layer = attention + 3 * h * config.intermediate_size + 2 * h
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return config.num_hidden_layers * layer + embeddings + h


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_configs_load_and_match_published_size(name):
    path = CONFIG_DIR / f"{name}.json"
    raw = json.loads(path.read_text())
    config = Qwen2Config.from_pretrained(path)
    assert config.model_type == raw["model_type"] == "qwen2"
    for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "rope_theta", "tie_word_embeddings"):
        assert getattr(config, key) == raw[key], key
    assert config.layer_types == ["full_attention"] * config.num_hidden_layers  # sliding window off in every release
    billions = count_parameters(config) / 1e9
    assert billions == pytest.approx(PUBLISHED[name], rel=0.015), billions


def test_parameter_formula_matches_a_built_model():
    config = Qwen2Config.from_pretrained(CONFIG_DIR / "tiny-gqa.json")
    model = Qwen2ForCausalLM(config)
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == count_parameters(config)


@pytest.mark.parametrize("name", ["tiny-gqa", "small"])
def test_small_configs_build_and_run(name):
    config = Qwen2Config.from_pretrained(CONFIG_DIR / f"{name}.json")
    paddle.seed(0)
    model = Qwen2ForCausalLM(config)
    model.eval()
    ids = paddle.to_tensor(np.arange(1, 9).reshape(1, 8))
    logits = model(ids, return_dict=True).logits
    assert logits.shape == [1, 8, config.vocab_size] and np.isfinite(logits.numpy()).all()
