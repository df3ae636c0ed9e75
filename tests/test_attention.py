"""attention.py: the attention core (math path against HF's eager attention, the fused kernel path against the
math path), repeat_kv, and the cache layouts it takes."""

import numpy as np
import paddle
import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2 as hf_qwen2

from conftest import BASE, assert_close, load_hf, load_paddle
from paddle_qwen2 import Qwen2Config, attention, modeling
from paddle_qwen2.attention import repeat_kv, scaled_dot_product_attention
from paddle_qwen2.modeling import Qwen2Model


def tiny_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**dict(BASE, **overrides))


def rand(*shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype("float32")


def test_modeling_re_exports_the_attention_helpers():
    for name in ("scaled_dot_product_attention", "repeat_kv", "traced_rope_tables", "apply_traced_rope"):
        assert getattr(modeling, name) is getattr(attention, name), name


def test_repeat_kv_matches_hf_layout():
    x = rand(2, 5, 2, 8)
    ours = repeat_kv(paddle.to_tensor(x), 3).numpy()
    theirs = hf_qwen2.repeat_kv(torch.tensor(x).transpose(1, 2), 3).transpose(1, 2).numpy()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, np.repeat(x, 3, axis=2))
    assert repeat_kv(paddle.to_tensor(x), 1).shape == [2, 5, 2, 8]


def _attention_inputs(q_len=5, kv_len=5, seed=0):
    q, k, v = (
        rand(2, q_len, 4, 16, seed=seed),
        rand(2, kv_len, 2, 16, seed=seed + 1),
        rand(2, kv_len, 2, 16, seed=seed + 2),
    )
    pad = np.ones((2, kv_len), "int64")
    pad[1, :2] = 0
    mask = Qwen2Model._prepare_decoder_attention_mask(paddle.to_tensor(pad), [2, q_len], kv_len - q_len, paddle.float32)
    return [paddle.to_tensor(a) for a in (q, k, v)] + [mask]


def test_sdpa_math_path_matches_hf_eager():
    q, k, v, mask = _attention_inputs()
    out, weights = scaled_dot_product_attention(q, k, v, mask, tiny_config(), output_attentions=True)
    module = type("M", (torch.nn.Module,), {})()
    module.num_key_value_groups, module.training = 2, False
    hf_out, hf_weights = hf_qwen2.eager_attention_forward(
        module, *(torch.tensor(t.numpy()).transpose(1, 2) for t in (q, k, v)), torch.tensor(mask.numpy()), scaling=0.25
    )
    assert_close(out, hf_out.reshape(2, 5, 64), what="attention output")
    assert_close(weights, hf_weights, what="attention weights")


@pytest.mark.paddle26
@pytest.mark.parametrize("flash", [False, True], ids=["math", "kernel"])
@pytest.mark.parametrize("q_len, kv_len, masked", [(5, 5, True), (1, 6, True), (5, 5, False)])
def test_keys_and_values_heads_first_give_the_same_attention(q_len, kv_len, masked, flash):
    """k, v as `[batch, kv_heads, kv_len, head_dim]` (`kv_heads_first`, the decode program's cache layout): the
    same output as `[batch, kv_len, kv_heads, head_dim]`, with a padding mask and with the implicit causal one."""
    q, k, v, mask = _attention_inputs(q_len, kv_len, seed=5)
    mask = mask if masked else None
    config = tiny_config(use_flash_attention=flash)
    want, _ = scaled_dot_product_attention(q, k, v, mask, config)
    heads_first = [t.transpose([0, 2, 1, 3]) for t in (k, v)]
    got, _ = scaled_dot_product_attention(q, *heads_first, mask, config, kv_heads_first=True)
    assert_close(got, want, max_abs=0, mean_abs=0, what="heads-first k, v")


@pytest.mark.paddle26
@pytest.mark.parametrize("q_len, kv_len", [(5, 5), (1, 6)])
def test_fused_kernel_path_equals_math_path(q_len, kv_len):
    """use_flash_attention picks Paddle's fused kernel where it exists (CPU SDPA on Paddle 3); on Paddle 2.6's
    CPU it falls back to the math path. Either way the numbers are the math path's."""
    q, k, v, mask = _attention_inputs(q_len, kv_len, seed=3)
    math_out, _ = scaled_dot_product_attention(q, k, v, mask, tiny_config())
    kernel_out, _ = scaled_dot_product_attention(q, k, v, mask, tiny_config(use_flash_attention=True))
    assert_close(kernel_out, math_out, max_abs=1e-5, mean_abs=1e-6, what="kernel vs math")
    rows = np.ones((2, q_len), bool)
    if q_len == kv_len:
        rows[1, :2] = False  # fully masked query rows (padding) are undefined in both paths
    causal_math, _ = scaled_dot_product_attention(q, k, v, None, tiny_config()) if q_len == kv_len else (math_out, None)
    causal_kernel, _ = (
        scaled_dot_product_attention(q, k, v, None, tiny_config(use_flash_attention=True))
        if q_len == kv_len
        else (kernel_out, None)
    )
    assert_close(causal_kernel, causal_math, max_abs=1e-5, mean_abs=1e-6, what="causal kernel vs math")


@pytest.mark.paddle26
def test_model_with_fused_attention_matches_hf(hf_checkpoint):
    path = hf_checkpoint("gqa")
    hf_model, pd_model = load_hf(path), load_paddle(path, use_flash_attention=True)
    ids = np.random.RandomState(0).randint(2, 128, size=(2, 9))
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids)).logits
    assert_close(pd_model(paddle.to_tensor(ids), return_dict=True).logits, expected, what="logits with fused attention")
