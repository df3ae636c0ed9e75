"""Rotary position embedding: the frequencies of HF's rope types (default, linear, dynamic NTK, yarn), as
transformers' `modeling_rope_utils` computes them (float32 numpy, so the tables match HF bit for bit), and the
rotation of q and k (`rotate_half`, `apply_rotary_pos_emb`). `Qwen2RotaryEmbedding` (modeling.py) turns the
frequencies into cos / sin tables; a traced model rotates with `attention.traced_rope_tables` instead."""

from __future__ import annotations

import math

import numpy as np
import paddle
from paddle import Tensor

from .attention import apply_traced_rope, traced_rope_tables
from .configuration import Qwen2Config
from .masks import _eager

__all__ = ["rope_inv_freq", "dynamic_inv_freq_tensor", "rotate_half", "apply_rotary_pos_emb"]


def rope_inv_freq(config: Qwen2Config, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies `[head_dim // 2]` (float32) and the cos/sin scale for `config.rope_scaling`."""
    base, dim = float(config.rope_theta), config.attention_head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    scaling = config.rope_scaling or {"rope_type": "default"}
    rope_type = scaling["rope_type"]
    if rope_type == "default":
        return (1.0 / (np.float32(base) ** exponents)).astype(np.float32), 1.0
    if rope_type == "linear":
        return (1.0 / (np.float32(base) ** exponents) / np.float32(scaling["factor"])).astype(np.float32), 1.0
    if rope_type == "dynamic":
        max_pos, factor = config.max_position_embeddings, scaling["factor"]
        seq_len = max_pos if seq_len is None else max(seq_len, max_pos)
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return (1.0 / (np.float32(base) ** exponents)).astype(np.float32), 1.0
    return _yarn_inv_freq(scaling, base, dim, config.max_position_embeddings, exponents)


def dynamic_inv_freq_tensor(config: Qwen2Config, seq_len: Tensor, inv_freq: Tensor) -> Tensor:
    """Dynamic NTK inside a traced program: `rope_inv_freq(config, seq_len)` for a `seq_len` that is a tensor (the
    batch's longest position + 1), as a float32 tensor `[head_dim // 2]`; `inv_freq` (the original frequencies,
    a tensor) where `seq_len <= max_position_embeddings`. Stateless: the frequencies of this call's positions
    (dygraph keeps HF's cache of the longest length seen)."""
    base, dim = float(config.rope_theta), config.attention_head_dim
    max_pos, factor = config.max_position_embeddings, config.rope_scaling["factor"]
    exponents = paddle.to_tensor(np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim))
    length = paddle.maximum(seq_len.astype("float64"), paddle.full([], max_pos, "float64"))
    scaled_base = base * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    scaled = 1.0 / paddle.pow(scaled_base.astype("float32"), exponents)
    return paddle.where(length > max_pos, scaled, inv_freq)


def _yarn_inv_freq(
    scaling: dict, base: float, dim: int, max_pos: int, exponents: np.ndarray
) -> tuple[np.ndarray, float]:
    """YaRN: blend interpolated and extrapolated frequencies with a linear ramp; scale cos/sin by mscale."""
    factor = scaling["factor"]
    original_max_pos = scaling.get("original_max_position_embeddings") or max_pos

    def mscale_of(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim))
        else:
            attention_factor = mscale_of(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation_weight = 1 - ramp
    pos_freqs = np.float32(base) ** exponents
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention_factor)


def rotate_half(x: Tensor) -> Tensor:
    """Rotate the two halves of the last dimension: `[x1, x2] -> [-x2, x1]`."""
    x1, x2 = paddle.split(x, 2, axis=-1)
    return paddle.concat([-x2, x1], axis=-1)


def apply_rotary_pos_emb(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_ids: Tensor | None = None, unsqueeze_dim: int = 2
) -> tuple[Tensor, Tensor]:
    """Apply RoPE to `q` `[batch, seq, heads, head_dim]` and `k` `[batch, seq, kv_heads, head_dim]`.

    `cos`/`sin` are `[batch, seq, head_dim]` (from `Qwen2RotaryEmbedding`); they are unsqueezed at
    `unsqueeze_dim` to broadcast over heads (use 1 for the `[batch, heads, seq, head_dim]` layout).
    If `position_ids` is given, `cos`/`sin` are tables `[max_pos, head_dim]` gathered at those positions.
    """
    if position_ids is not None:
        cos, sin = (
            paddle.gather(cos, position_ids.reshape([-1]), axis=0),
            paddle.gather(sin, position_ids.reshape([-1]), axis=0),
        )
        cos = cos.reshape(list(position_ids.shape) + [cos.shape[-1]])
        sin = sin.reshape(list(position_ids.shape) + [sin.shape[-1]])
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if not _eager():  # traced: no split / concat of q and k (see `traced_rope_tables`); the same products and sums
        heads, kv_heads = q.shape[unsqueeze_dim], k.shape[unsqueeze_dim]
        return apply_traced_rope(q, k, *traced_rope_tables(cos, sin, heads, kv_heads, unsqueeze_dim))
    q_cos, q_sin = _repeat_heads(cos, q.shape, unsqueeze_dim), _repeat_heads(sin, q.shape, unsqueeze_dim)
    k_cos, k_sin = _repeat_heads(cos, k.shape, unsqueeze_dim), _repeat_heads(sin, k.shape, unsqueeze_dim)
    return q * q_cos + rotate_half(q) * q_sin, k * k_cos + rotate_half(k) * k_sin


def _repeat_heads(table: Tensor, shape, head_axis: int) -> Tensor:
    """`table` with its size-1 head axis tiled to `shape[head_axis]`: Paddle's CPU multiply is much slower
    broadcasting a middle axis than on equal shapes, and the tiled table is small."""
    heads = shape[head_axis]
    if heads == 1 or table.shape[head_axis] != 1:
        return table
    repeats = [1] * len(shape)
    repeats[head_axis] = heads
    return paddle.tile(table, repeats)
