"""Pooling token states into sentence embeddings, as sentence-transformers 5.1's `Pooling` module computes it.

The one implementation behind `Qwen2SentenceEmbedding` (modeling.py) and the Pooling module of
`paddle_qwen2.embedding`. `pool` takes token states `[batch, seq, hidden]` and an attention mask `[batch, seq]`
(1 = token, 0 = padding) and returns `[batch, hidden * len(modes)]` float32, one block per mode in the order given.

A row whose mask is all zeros gives what sentence-transformers gives: the first position's state ("cls"), -1e9 in
every feature ("max"), and zeros for every other mode (never NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import paddle
from paddle import Tensor

from .errors import PaddleQwen2Error

__all__ = ["POOLING_MODES", "pool", "take_rows"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

_PADDING_FOR_MAX = -1e9  # what sentence-transformers writes into padded positions before the max


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b]]` for `x` `[batch, seq, features]` and `index` `[batch]`: `[batch, features]`, with
    `take_along_axis` (exports to ONNX, unlike advanced indexing). The index is expanded to `[batch, 1, features]`
    here: Paddle 2.6's traced broadcast of it fails on the unknown batch size."""
    index = index.reshape([-1, 1, 1]).expand([-1, 1, x.shape[2]])
    return paddle.take_along_axis(x, index, axis=1).squeeze(1)


def _last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The state of the last attended token (any padding side), `[batch, hidden]`; zeros for a row with no token
    (the masked states are gathered, as sentence-transformers does)."""
    positions = paddle.arange(hidden.shape[1], dtype="int64").unsqueeze(0)  # [1, seq]
    last = (positions * (mask > 0).astype("int64")).argmax(axis=-1)  # [batch]
    return take_rows(hidden * mask.unsqueeze(-1), last)


def _masked_mean(hidden: Tensor, weights: Tensor, sqrt: bool = False) -> Tensor:
    """`sum(hidden * weights) / sum(weights)` over the sequence (the divisor's square root with `sqrt`); the
    divisor is at least 1e-9, so a row with no token gives zeros."""
    summed = (hidden * weights.unsqueeze(-1)).sum(axis=1)
    count = paddle.clip(weights.sum(axis=1, keepdim=True), min=1e-9)
    return summed / (paddle.sqrt(count) if sqrt else count)


def _pool_one(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """One mode of `pool`: `[batch, seq, hidden]` float32 and the float32 mask `[batch, seq]` -> `[batch, hidden]`."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return paddle.where(mask.unsqueeze(-1) > 0, hidden, paddle.full([], _PADDING_FOR_MAX, "float32")).max(axis=1)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        return _masked_mean(hidden, mask, sqrt=mode == "mean_sqrt_len_tokens")
    if mode == "weightedmean":
        weights = paddle.arange(1, mask.shape[1] + 1, dtype="float32").unsqueeze(0) * mask
        return _masked_mean(hidden, weights)
    if mode == "lasttoken":
        return _last_token(hidden, mask)
    raise PaddleQwen2Error(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")


def pool(hidden: Tensor, attention_mask: Tensor | None, modes: Sequence[str], prompt_length: int = 0) -> Tensor:
    """hidden `[batch, seq, hidden]`, attention_mask `[batch, seq]` (1 = token; None: every position) ->
    `[batch, hidden * len(modes)]` float32, the modes of `POOLING_MODES` concatenated in order. `prompt_length > 0`
    leaves the first `prompt_length` positions out (sentence-transformers' `include_prompt=False`, which counts
    from the start of the row whatever the padding side)."""
    hidden = hidden.astype("float32")
    if attention_mask is None:
        mask = paddle.ones_like(hidden[:, :, 0], dtype="float32")
    else:
        mask = attention_mask.astype("float32")
    if prompt_length:
        keep = (paddle.arange(mask.shape[1], dtype="int64") >= prompt_length).astype("float32")
        mask = mask * keep.unsqueeze(0)
    outputs = [_pool_one(hidden, mask, mode) for mode in modes]
    return outputs[0] if len(outputs) == 1 else paddle.concat(outputs, axis=-1)
