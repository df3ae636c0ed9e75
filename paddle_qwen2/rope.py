"""Rotary position embedding frequencies for HF's rope types (default, linear, dynamic NTK, yarn), as
transformers' `modeling_rope_utils` computes them: float32 numpy, so the tables match HF bit for bit.
`Qwen2RotaryEmbedding` (modeling.py) turns them into cos / sin tables."""

from __future__ import annotations

import math

import numpy as np

from .configuration import Qwen2Config

__all__ = ["rope_inv_freq", "dynamic_inv_freq_tensor"]


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


def dynamic_inv_freq_tensor(config: Qwen2Config, seq_len, inv_freq):
    """Dynamic NTK inside a traced program: `rope_inv_freq(config, seq_len)` for a `seq_len` that is a tensor (the
    batch's longest position + 1), as a float32 tensor `[head_dim // 2]`; `inv_freq` (the original frequencies,
    a tensor) where `seq_len <= max_position_embeddings`. Stateless: the frequencies of this call's positions
    (dygraph keeps HF's cache of the longest length seen)."""
    import paddle

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
