"""Attention masks of Qwen2 (the counterpart of HF's `masking_utils`): causal, padding, sliding-window and
bidirectional masks, and PaddleNLP's mask helpers.

Boolean masks are True where attention is allowed; additive masks hold 0 there and the dtype's lowest finite
value elsewhere (as HF's eager attention does). Masks are `[batch or 1, 1, q_len, kv_len]`, where
`kv_len = past + q_len` counts the cached positions first.

The data-dependent shortcuts (reading a mask's values to drop it) run only in dygraph (`_eager`); a program
traced by `paddle.jit.to_static` builds the general mask, which gives the same result for every input.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import Tensor

from .configuration import Qwen2Config
from .errors import PaddleQwen2Error

__all__ = [
    "masked_fill",
    "_make_causal_mask",
    "_expand_2d_mask",
    "decoder_attention_mask",
    "layer_attention_masks",
    "check_attention_mask",
    "get_triangle_upper_mask",
    "is_casual_mask",
]


def _eager() -> bool:
    """True in dygraph, False while `paddle.jit.to_static` traces a program. The data-dependent code (`.item()`
    range checks, `bool(tensor)` shortcuts, Python state such as the dynamic-NTK cache) runs only when True; the
    traced program takes the general path, correct for every input (the errors stay dygraph's)."""
    return paddle.in_dynamic_mode()


def _dtype_min(dtype) -> float:
    """Lowest finite value of a float dtype (paddle dtype or string)."""
    name = str(dtype).split(".")[-1]
    if name in ("bfloat16", "uint16"):
        return -3.3895313892515355e38
    if name == "float16":
        return float(np.finfo(np.float16).min)
    if name == "float64":
        return float(np.finfo(np.float64).min)
    return float(np.finfo(np.float32).min)


def masked_fill(x: Tensor, mask: Tensor, value: float) -> Tensor:
    """Return `x` with `value` wherever the boolean `mask` (broadcast to `x`) is True.

    Half-precision inputs go through float32 (Paddle's CPU `where` has no bf16/fp16 kernel)."""
    if x.dtype in (paddle.bfloat16, paddle.float16):
        return masked_fill(x.astype("float32"), mask, value).astype(x.dtype)
    return paddle.where(mask, paddle.full([], value, dtype=x.dtype), x)


def _additive_mask(allowed: Tensor, dtype) -> Tensor:
    """Boolean mask (True = attend) -> additive mask in `dtype`: 0 where allowed, the dtype's minimum elsewhere. In
    a traced program a float32 mask holds bfloat16's minimum instead (a float32 number too, whose softmax weight is
    the same 0): Paddle Inference's oneDNN bf16 passes run the mask's add in bf16, where float32's minimum rounds
    to -inf and a padded query row, with every key masked, would turn into NaN."""
    zeros = paddle.zeros_like(allowed, dtype="float32")
    fill = _dtype_min("bfloat16" if not _eager() and _dtype_min(dtype) < _dtype_min("bfloat16") else dtype)
    return masked_fill(zeros, paddle.logical_not(allowed), fill).astype(dtype)


def _causal_allowed(q_len, past_key_values_length=0, sliding_window: int | None = None) -> Tensor:
    """Boolean `[q_len, past + q_len]`: query `i` (absolute position `past + i`) may see key `j` (see
    `_make_causal_mask`). `q_len` and `past_key_values_length` may be ints or, in a traced program, 0-d tensors."""
    kv_len = past_key_values_length + q_len
    q_pos = paddle.arange(past_key_values_length, kv_len, dtype="int64").unsqueeze(-1)
    kv_pos = paddle.arange(kv_len, dtype="int64").unsqueeze(0)
    allowed = kv_pos <= q_pos
    if sliding_window is not None:
        allowed = paddle.logical_and(allowed, kv_pos > q_pos - sliding_window)
    return allowed


def _make_causal_mask(input_ids_shape, past_key_values_length: int = 0, sliding_window: int | None = None) -> Tensor:
    """Boolean causal mask `[batch, 1, q_len, past + q_len]` for queries placed after `past` cached tokens.

    Query `i` sits at absolute position `past + i` and may see keys `j <= past + i`; with a
    `sliding_window` only keys `j > past + i - sliding_window` (HF 4.57 sliding-window semantics).
    """
    batch_size, q_len = input_ids_shape[0], input_ids_shape[1]
    allowed = _causal_allowed(q_len, past_key_values_length, sliding_window).unsqueeze([0, 1])
    if isinstance(batch_size, int) and batch_size == 1:
        return allowed
    # broadcast to the batch by AND-ing a `[batch, 1, 1, 1]` True tensor (no boolean `expand` in the program)
    rows = paddle.ones([batch_size, 1, 1, 1], dtype="bool")
    return paddle.logical_and(allowed, rows)


def _expand_2d_mask(mask: Tensor, tgt_length) -> Tensor:
    """Padding mask `[batch, kv_len]` (1 = token, 0 = pad) -> boolean `[batch, 1, tgt_length, kv_len]`."""
    rows = paddle.ones([1, 1, tgt_length, 1], dtype="bool")
    return paddle.logical_and(mask.astype("bool").unsqueeze([1, 2]), rows)


def _given_4d_mask(attention_mask: Tensor, dtype) -> Tensor:
    """A caller's 4D mask as an additive mask in `dtype` (boolean: True = attend; float: taken as additive)."""
    if attention_mask.dtype == paddle.bool:
        return _additive_mask(attention_mask, dtype)
    return attention_mask.astype(dtype)


def _bidirectional_mask(attention_mask: Tensor | None, batch: int, seq_len: int, past_length: int, dtype) -> Tensor:
    """Additive mask `[batch or 1, 1, seq, past + seq]` for bidirectional attention (`config.is_causal` False):
    every query sees every real token; only padding (2D `attention_mask`, 1 = token) is masked. A 4D mask is
    taken as given."""
    if attention_mask is not None and attention_mask.ndim == 4:
        return _given_4d_mask(attention_mask, dtype)
    kv_len = past_length + seq_len
    if attention_mask is None:
        return paddle.zeros([1, 1, seq_len, kv_len], dtype=dtype)
    return _additive_mask(_expand_2d_mask(attention_mask, seq_len), dtype)


def _padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """`attention_mask` unless it is a 2D mask without padding (all ones), which needs no per-row mask: then None,
    so one causal mask serves the whole batch. Dygraph only (the test reads the data); a traced program keeps the
    mask, which gives the same result for any input."""
    if (
        _eager()
        and attention_mask is not None
        and attention_mask.ndim == 2
        and bool(attention_mask.astype("bool").all())
    ):
        return None
    return attention_mask


def decoder_attention_mask(
    attention_mask: Tensor | None,
    input_shape,
    past_key_values_length: int,
    dtype,
    sliding_window: int | None = None,
) -> Tensor | None:
    """Additive mask `[batch, 1, seq, past + seq]` combining causality (offset by the cache), padding
    (2D `attention_mask` `[batch, past + seq]`, 1 = token) and an optional sliding window.

    A 4D `attention_mask` is taken as given (boolean: True = attend; float: additive). Without a padding mask
    (None: see `_padding_mask`) the mask has batch size 1 (shared by every row), and in dygraph a single new token
    with no window to apply gets None (a traced program does not know the length: it builds the mask).
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        return _given_4d_mask(attention_mask, dtype)
    q_len = input_shape[1]
    if attention_mask is None:
        kv_len = past_key_values_length + q_len
        if _eager() and q_len == 1 and (sliding_window is None or kv_len <= sliding_window):
            return None  # a single new token sees every cached position
    causal = _causal_allowed(q_len, past_key_values_length, sliding_window).unsqueeze([0, 1])
    if attention_mask is None:
        return _additive_mask(causal, dtype)
    # [1, 1, q, kv] AND [batch, 1, 1, kv] -> [batch, 1, q, kv], broadcast (no boolean expand)
    allowed = paddle.logical_and(causal, attention_mask.astype("bool").unsqueeze([1, 2]))
    return _additive_mask(allowed, dtype)


def layer_attention_masks(
    config: Qwen2Config, attention_mask: Tensor | None, batch: int, seq_len: int, past_length: int, dtype
) -> dict[str, Tensor | None]:
    """The additive mask of each attention type of `config.layer_types`, `{"full_attention": ...,
    "sliding_attention": ...}` (the sliding one only when some layer uses it), for an input `[batch, seq_len]`
    after `past_length` cached positions. `config.is_causal` False: one bidirectional mask for both types."""
    attention_mask = _padding_mask(attention_mask)
    if not config.is_causal:
        mask = _bidirectional_mask(attention_mask, batch, seq_len, past_length, dtype)
        return {"full_attention": mask, "sliding_attention": mask}
    shape = [batch, seq_len]
    masks = {"full_attention": decoder_attention_mask(attention_mask, shape, past_length, dtype)}
    if "sliding_attention" in config.layer_types:
        window = config.sliding_window
        masks["sliding_attention"] = decoder_attention_mask(attention_mask, shape, past_length, dtype, window)
    return masks


def check_attention_mask(attention_mask: Tensor, batch: int, q_len: int, kv_len: int) -> None:
    """Raise a PaddleQwen2Error naming the shapes unless `attention_mask` is `[batch, kv_len]` or
    `[batch or 1, 1, q_len, kv_len]`."""
    shape = list(attention_mask.shape)
    if attention_mask.ndim == 2 and shape == [batch, kv_len]:
        return
    if attention_mask.ndim == 4 and shape[0] in (1, batch) and shape[1] == 1 and shape[2:] == [q_len, kv_len]:
        return
    raise PaddleQwen2Error(
        f"attention_mask has shape {shape}; expected [batch, past + seq] = [{batch}, {kv_len}] "
        f"or [batch, 1, seq, past + seq] = [{batch}, 1, {q_len}, {kv_len}]"
    )


# ----------------------------------------------------------------------------------------------------------------
# PaddleNLP layout names (`modeling.PADDLENLP_LAYOUT_ONLY`): kept for code written against PaddleNLP's Qwen2.
# `is_casual_mask` keeps PaddleNLP's spelling.
# ----------------------------------------------------------------------------------------------------------------


def get_triangle_upper_mask(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Additive causal mask for attention scores `x` of shape `[..., q_len, kv_len]`.

    Positions above the (bottom-right aligned) diagonal get the dtype's lowest value, the rest 0. A given
    `mask` is returned unchanged, so callers can write `mask = get_triangle_upper_mask(scores, mask)`.
    """
    if mask is not None:
        return mask
    q_len, kv_len = x.shape[-2], x.shape[-1]
    return _additive_mask(_make_causal_mask([1, q_len], past_key_values_length=kv_len - q_len)[0, 0], x.dtype)


def is_casual_mask(attention_mask: Tensor | None) -> bool:
    """True when a 4D boolean/additive mask `[batch, 1, q, kv]` is exactly the plain causal mask
    (no padding, no window), i.e. a kernel may use `is_causal=True` instead of the mask."""
    if attention_mask is None:
        return True
    q_len, kv_len = attention_mask.shape[-2], attention_mask.shape[-1]
    allowed = attention_mask if attention_mask.dtype == paddle.bool else attention_mask == 0
    causal = _make_causal_mask([1, q_len], kv_len - q_len)
    return bool(paddle.all(allowed == causal).item())
