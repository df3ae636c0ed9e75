"""Qwen2Config: HF config.json read as it is, derived fields equal to HF's, invalid combinations refused, and the
shipped configs (published Qwen2 / Qwen2.5 sizes, tiny ones that build and run)."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
import transformers

from conftest import BASE, FUSED, PARALLEL_BASE
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# published parameter counts (billions) of the real models
PUBLISHED = {
    "qwen2-0.5b": 0.49,
    "qwen2-1.5b": 1.54,
    "qwen2-7b": 7.62,
    "qwen2-72b": 72.7,
    "qwen2.5-0.5b": 0.49,
    "qwen2.5-1.5b": 1.54,
    "qwen2.5-3b": 3.09,
    "qwen2.5-7b": 7.62,
    "qwen2.5-14b": 14.7,
    "qwen2.5-32b": 32.5,
    "qwen2.5-72b": 72.7,
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
    for key in (
        "vocab_size",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "rope_theta",
        "tie_word_embeddings",
    ):
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


# ---------------------------------------------------------------------------------------------- HF config parity


@pytest.mark.paddle26
def test_config_reads_hf_config_json_as_is(hf_checkpoint):
    path = hf_checkpoint("sliding")
    raw = json.loads((path / "config.json").read_text())
    config = Qwen2Config.from_pretrained(path)
    for key in (
        "vocab_size",
        "hidden_size",
        "num_key_value_heads",
        "rope_theta",
        "sliding_window",
        "max_window_layers",
        "layer_types",
        "use_sliding_window",
        "tie_word_embeddings",
    ):
        assert getattr(config, key) == raw[key], key
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert config.use_cache is True and config.attention_head_dim == 16


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_sliding_window=True, sliding_window=8, max_window_layers=2, num_hidden_layers=4),
        dict(use_sliding_window=False, sliding_window=8, max_window_layers=0),
        dict(rope_scaling={"type": "yarn", "factor": 4.0}),
        dict(head_dim=48),
    ],
)
def test_config_derived_fields_match_hf(kwargs):
    hf = transformers.Qwen2Config(**dict(BASE, **kwargs))
    ours = Qwen2Config(**dict(BASE, **kwargs))
    assert ours.layer_types == hf.layer_types
    assert ours.sliding_window == hf.sliding_window
    assert (ours.rope_scaling or {}).get("rope_type") == (hf.rope_scaling or {}).get("rope_type")
    assert ours.attention_head_dim == getattr(hf, "head_dim", hf.hidden_size // hf.num_attention_heads)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=66, num_attention_heads=4), "divisible by num_attention_heads"),
        (dict(num_attention_heads=4, num_key_value_heads=3), "divisible by num_key_value_heads"),
        (dict(rope_scaling={"rope_type": "ntk-by-parts", "factor": 2.0}), "unknown rope_type"),
        (dict(rope_scaling={"rope_type": "linear"}), "missing \\['factor'\\]"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta_fast": 3}), "unknown keys"),
        (dict(layer_types=["full_attention"]), "layer_types must list 3"),
        (dict(recompute_granularity="everything"), "recompute_granularity"),
    ],
)
def test_config_rejects_invalid_combinations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Qwen2Config(**dict(BASE, **kwargs))


# ------------------------------------------------------------------------------ parallel layouts the config refuses


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(tensor_parallel_degree=3),
            r"num_attention_heads \(8\) must be divisible by tensor_parallel_degree \(3\)",
        ),
        (dict(tensor_parallel_degree=8, intermediate_size=100), r"intermediate_size \(100\) must be divisible"),
        (
            dict(num_key_value_heads=8, num_attention_heads=24, tensor_parallel_degree=6, intermediate_size=96),
            r"num_key_value_heads \(8\) and tensor_parallel_degree \(6\) must divide one another",
        ),
        (
            dict(num_key_value_heads=3, num_attention_heads=12, tensor_parallel_degree=4),
            r"num_key_value_heads \(3\) and tensor_parallel_degree \(4\) must divide one another",
        ),
        (
            dict(num_key_value_heads=2, tensor_parallel_degree=4, **FUSED),
            r"fuse_attention_qkv needs num_key_value_heads",
        ),
        (dict(pipeline_parallel_degree=3), r"pipeline_parallel_degree \(3\) must not exceed num_hidden_layers \(2\)"),
    ],
)
def test_impossible_layout_is_refused_by_the_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        Qwen2Config(**dict(PARALLEL_BASE, **overrides))


def test_sequence_parallel_without_tensor_parallel_is_refused():
    with pytest.raises(AssertionError, match="only works in tensor parallel"):  # paddlenlp's own PretrainedConfig check
        Qwen2Config(**PARALLEL_BASE, sequence_parallel=True)


def test_impossible_layout_set_after_the_config_is_refused_by_the_model():
    """paddlenlp's from_pretrained(..., tensor_parallel_degree=...) and the Trainer set parallel flags on a built
    config: the model validates again before building any layer."""
    config = Qwen2Config(**PARALLEL_BASE)
    config.tensor_parallel_degree = 3
    with pytest.raises(ValueError, match=r"num_attention_heads \(8\) must be divisible by tensor_parallel_degree"):
        Qwen2ForCausalLM(config)
    config = Qwen2Config(**PARALLEL_BASE)
    config.sequence_parallel = True
    with pytest.raises(ValueError, match="sequence_parallel=True needs tensor_parallel_degree > 1"):
        Qwen2ForCausalLM(config)
