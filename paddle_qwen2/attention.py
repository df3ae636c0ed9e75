"""The attention core of Qwen2: `scaled_dot_product_attention` (HF eager's math, or Paddle's fused kernel),
`repeat_kv`, and the RoPE tables a traced program builds once for all layers (`traced_rope_tables`,
`apply_traced_rope`).

Layout: q `[batch, q_len, heads, head_dim]`, k and v `[batch, kv_len, kv_heads, head_dim]` (Paddle's flash / SDPA
layout) or `[batch, kv_heads, kv_len, head_dim]` (`kv_heads_first`, the decode program's cache layout); masks are
the additive masks of `masks.py`.
"""

from __future__ import annotations

import warnings

import paddle
import paddle.nn.functional as F
from paddle import Tensor

from .configuration import Qwen2Config
from .masks import _additive_mask, _causal_allowed, _eager

__all__ = ["scaled_dot_product_attention", "repeat_kv", "traced_rope_tables", "apply_traced_rope"]


def repeat_kv(hidden_states: Tensor, n_rep: int) -> Tensor:
    """`[batch, seq, kv_heads, head_dim]` -> `[batch, seq, kv_heads * n_rep, head_dim]`, each kv head
    repeated `n_rep` times in place (head `h` serves query heads `h*n_rep ... h*n_rep + n_rep - 1`)."""
    if n_rep == 1:
        return hidden_states
    batch, seq_len, kv_heads, head_dim = hidden_states.shape
    hidden_states = hidden_states.unsqueeze(3).expand([batch, seq_len, kv_heads, n_rep, head_dim])
    return hidden_states.reshape([batch, seq_len, kv_heads * n_rep, head_dim])


def traced_rope_tables(cos: Tensor, sin: Tensor, heads: int, kv_heads: int, head_axis: int = 2) -> tuple:
    """RoPE tables for `apply_traced_rope`: `cos` / `sin` with a size-1 head axis, tiled to `heads` and `kv_heads`,
    the sine signed so that `rotate_half(x) * sin == roll(x, half) * signed_sin`. A traced model builds them once
    per forward for all layers: Paddle's CPU multiply is slow when it broadcasts the head axis, and the roll
    replaces rotate_half's split / negate / concat of q and k. Returns `(q_cos, q_sin, k_cos, k_sin)`."""
    sin_first, sin_second = paddle.split(sin, 2, axis=-1)
    signed_sin = paddle.concat([-sin_first, sin_second], axis=-1)
    tables = []
    for count in (heads, kv_heads):
        repeats = [1] * len(cos.shape)
        repeats[head_axis] = count
        tables += [paddle.tile(cos, repeats), paddle.tile(signed_sin, repeats)]
    return tuple(tables)


def apply_traced_rope(q: Tensor, k: Tensor, q_cos: Tensor, q_sin: Tensor, k_cos: Tensor, k_sin: Tensor) -> tuple:
    """`rope.apply_rotary_pos_emb` with the tables of `traced_rope_tables` (shaped like q and k)."""
    half = q.shape[-1] // 2
    q_embed = q * q_cos + paddle.roll(q, half, axis=-1) * q_sin
    k_embed = k * k_cos + paddle.roll(k, half, axis=-1) * k_sin
    return q_embed, k_embed


def _sdpa_kernel_available() -> bool:
    """Whether Paddle's fused attention kernel can run here (GPU flash attention, or CPU SDPA on Paddle 3)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return False
    if paddle.is_compiled_with_cuda() and "gpu" in paddle.get_device():
        return True
    return int(paddle.__version__.split(".")[0]) >= 3


_WARNED: set[str] = set()  # warnings already given once in this process (a set, not a `global` flag: traceable)


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message)


def scaled_dot_product_attention(
    query_states: Tensor,
    key_states: Tensor,
    value_states: Tensor,
    attention_mask: Tensor | None,
    config: Qwen2Config,
    output_attentions: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    kv_heads_first: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attention core. q: `[batch, q_len, heads, head_dim]`; k, v: `[batch, kv_len, kv_heads, head_dim]`, or
    `[batch, kv_heads, kv_len, head_dim]` with `kv_heads_first`;
    `attention_mask`: additive `[batch or 1, 1, q_len, kv_len]`, or None for plain (bottom-right aligned) causal.

    Returns `([batch, q_len, heads * head_dim], attn_weights or None)`. The math path matches HF eager
    (softmax in float32). With `config.use_flash_attention` Paddle's fused kernel is used where the device and
    version support it (falling back to the math path otherwise); it cannot return attention weights.
    """
    batch, q_len, num_heads, head_dim = query_states.shape
    kv_len = key_states.shape[2 if kv_heads_first else 1]
    # (a traced program does not know q_len: it always builds the causal mask, all-True for a single query)
    if attention_mask is None and (not _eager() or q_len > 1):
        attention_mask = _additive_mask(_causal_allowed(q_len, kv_len - q_len).unsqueeze([0, 1]), query_states.dtype)

    use_kernel = config.use_flash_attention and not output_attentions
    if use_kernel and not _sdpa_kernel_available():
        _warn_once("use_flash_attention: no fused attention kernel on this device/Paddle; using the math path")
        use_kernel = False
    if use_kernel:
        if kv_heads_first:
            key_states, value_states = key_states.transpose([0, 2, 1, 3]), value_states.transpose([0, 2, 1, 3])
        n_rep = num_heads // key_states.shape[2]
        key_states, value_states = repeat_kv(key_states, n_rep), repeat_kv(value_states, n_rep)
        out = F.scaled_dot_product_attention(
            query_states, key_states, value_states, attn_mask=attention_mask, dropout_p=dropout, training=training
        )
        return out.reshape([batch, q_len, num_heads * head_dim]), None
    if not kv_heads_first:
        key_states, value_states = key_states.transpose([0, 2, 1, 3]), value_states.transpose([0, 2, 1, 3])
    return _math_attention(query_states, key_states, value_states, attention_mask, output_attentions, dropout, training)


def _math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attention_mask: Tensor | None,
    output_attentions: bool,
    dropout: float,
    training: bool,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T / sqrt(d) + mask) v with HF eager's numerics (softmax in float32), arranged for speed:
    the query heads sharing a kv head are stacked so k and v are never repeated, the scale is applied to q,
    and a mask shared by the whole batch is added as a 2D `[q_len, kv_len]` broadcast. Reshapes name only the
    static sizes (0 copies a dim, -1 infers one), so a traced program computes no shapes. q `[batch, q_len,
    heads, head_dim]`; k, v `[batch, kv_heads, kv_len, head_dim]`."""
    num_heads, head_dim, kv_heads = q.shape[2], q.shape[3], k.shape[1]
    # [batch, kv_heads, n_rep * q_len, head_dim]: rows of query head h = g * n_rep + r sit in group g
    q = (q * head_dim**-0.5).transpose([0, 2, 1, 3]).reshape([0, kv_heads, -1, head_dim])
    scores = paddle.matmul(q, k, transpose_y=True).reshape([0, num_heads, -1, 0])  # [batch, heads, q_len, kv_len]
    if attention_mask is not None:
        if not _eager():  # a broadcast over the heads (expanding would need the shapes as tensors)
            scores = scores + attention_mask
        elif attention_mask.shape[0] == 1:
            scores = scores + attention_mask.reshape(attention_mask.shape[2:])
        else:
            scores = scores + attention_mask.expand(scores.shape)
    if scores.dtype == paddle.float32:
        weights = F.softmax(scores, axis=-1)
    else:
        weights = F.softmax(scores, axis=-1, dtype="float32").astype(scores.dtype)
    if dropout > 0.0 and training:
        weights = F.dropout(weights, p=dropout, training=True)
    out = paddle.matmul(weights.reshape([0, kv_heads, -1, 0]), v)
    out = out.reshape([0, num_heads, -1, head_dim]).transpose([0, 2, 1, 3])
    return out.reshape([0, 0, num_heads * head_dim]), (weights if output_attentions else None)
