"""Qwen2 / Qwen2.5 in PaddlePaddle, numerically faithful to HuggingFace transformers 4.57.

Read top to bottom: masks, the layers (RMSNorm, rotary embedding, attention core, MLP, attention, decoder layer),
`Qwen2PretrainedModel` (config, weight init, checkpoint names, FLOPs), `Qwen2Model`, then the heads, which share
`Qwen2ModelWithHead` (causal LM, sequence / token classification, extractive QA, sentence embeddings). Tensor and
sequence parallelism live in `parallel.py`, the HF <-> Paddle checkpoint names in `conversion/names.py`.

Tensor layout: activations are `[batch, seq, hidden]`; attention works in `[batch, seq, heads, head_dim]`
(Paddle's flash / SDPA layout) and the KV cache keeps that layout, one `(key, value)` tuple per layer.
Linear weights are stored Paddle-style as `[in_features, out_features]` (HF's transposed).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn
from paddle.distributed import fleet
from paddle.distributed.fleet.utils import recompute
from paddlenlp.transformers.activations import ACT2FN
from paddlenlp.transformers.conversion_utils import StateDictNameMapping
from paddlenlp.transformers.model_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    ModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from paddlenlp.transformers.model_utils import PretrainedModel, register_base_model

from .configuration import Qwen2Config
from .conversion import HF_ARCHITECTURES, detect_layout, name_rows
from .conversion.names import SAFE_WEIGHTS_NAME
from .flops import model_flops, training_flops
from .loading import load_pretrained, save_weights
from .losses import Qwen2PretrainingCriterion, classification_loss, cross_entropy_mean
from .parallel import (
    assign_kv_heads,
    fuse_or_split_actions,
    gather_sequence,
    kv_replica_group,
    parallel_matmul,
    replicated_kv,
    scatter_sequence,
    sequence_to_batch_major,
    tensor_parallel_actions,
    unfused_state_dict,
)
from .rope import dynamic_inv_freq_tensor, rope_inv_freq

# Names of PaddleNLP's Qwen2 layout that this port keeps so that code written against PaddleNLP finds them,
# although nothing here needs them (defined in the last section of this file). `is_casual_mask` keeps
# PaddleNLP's spelling.
PADDLENLP_LAYOUT_ONLY = ["get_triangle_upper_mask", "is_casual_mask", "create_custom_forward"]

__all__ = [
    "assign_kv_heads",
    "parallel_matmul",
    "scaled_dot_product_attention",
    "masked_fill",
    "_make_causal_mask",
    "_expand_2d_mask",
    "repeat_kv",
    "rotate_half",
    "apply_rotary_pos_emb",
    "Qwen2RMSNorm",
    "Qwen2RotaryEmbedding",
    "Qwen2MLP",
    "Qwen2Attention",
    "Qwen2DecoderLayer",
    "Qwen2PretrainedModel",
    "Qwen2Model",
    "Qwen2ModelWithHead",
    "Qwen2LMHead",
    "Qwen2PretrainingCriterion",
    "Qwen2ForCausalLM",
    "Qwen2ForSequenceClassification",
    "Qwen2ForTokenClassification",
    "Qwen2ForQuestionAnswering",
    "Qwen2SentenceEmbedding",
    "Qwen2SentenceEmbeddingOutput",
    *PADDLENLP_LAYOUT_ONLY,
]

KVCache = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Masks. Boolean masks are True where attention is allowed; additive masks hold 0 there and the dtype's
# lowest finite value elsewhere (as HF's eager attention does).
# ----------------------------------------------------------------------------------------------------------------


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


def _eager() -> bool:
    """True in dygraph, False while `paddle.jit.to_static` traces a program. The data-dependent code (`.item()`
    range checks, `bool(tensor)` shortcuts, Python state such as the dynamic-NTK cache) runs only when True; the
    traced program takes the general path, correct for every input (the errors stay dygraph's)."""
    return paddle.in_dynamic_mode()


def _additive_mask(allowed: Tensor, dtype) -> Tensor:
    """Boolean mask (True = attend) -> additive mask in `dtype`: 0 where allowed, the dtype's minimum elsewhere."""
    zeros = paddle.zeros_like(allowed, dtype="float32")
    return masked_fill(zeros, paddle.logical_not(allowed), _dtype_min(dtype)).astype(dtype)


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


def _bidirectional_mask(attention_mask: Tensor | None, batch: int, seq_len: int, past_length: int, dtype) -> Tensor:
    """Additive mask `[batch or 1, 1, seq, past + seq]` for bidirectional attention (`config.is_causal` False):
    every query sees every real token; only padding (2D `attention_mask`, 1 = token) is masked. A 4D mask is
    taken as given."""
    if attention_mask is not None and attention_mask.ndim == 4:
        return (
            attention_mask.astype(dtype)
            if attention_mask.dtype != paddle.bool
            else _additive_mask(attention_mask, dtype)
        )
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


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class Qwen2RMSNorm(nn.Layer):
    """RMSNorm: `weight * x / sqrt(mean(x^2) + eps)`, the variance taken in float32 and the result cast
    back to the input dtype before the weight is applied (as HF does). Input/output `[..., hidden]`.

    Under sequence parallelism each rank normalises only its part of the sequence, so the weight is marked for
    the gradient all-reduce over the tensor-parallel group (`register_sequence_parallel_allreduce_hooks`)."""

    def __init__(self, config_or_hidden_size: Qwen2Config | int, eps: float | None = None):
        super().__init__()
        sequence_parallel = False
        if isinstance(config_or_hidden_size, int):
            hidden_size, self.variance_epsilon = config_or_hidden_size, 1e-6 if eps is None else eps
        else:
            hidden_size = config_or_hidden_size.hidden_size
            self.variance_epsilon = config_or_hidden_size.rms_norm_eps if eps is None else eps
            sequence_parallel = config_or_hidden_size.sequence_parallel
        self.hidden_size = hidden_size
        self.weight = self.create_parameter(
            shape=[hidden_size], dtype=paddle.get_default_dtype(), default_initializer=nn.initializer.Constant(1.0)
        )
        if sequence_parallel:
            from paddle.distributed.fleet.utils.sequence_parallel_utils import mark_as_sequence_parallel_parameter

            mark_as_sequence_parallel_parameter(self.weight)

    def forward(self, hidden_states: Tensor) -> Tensor:
        input_dtype = hidden_states.dtype
        if input_dtype != paddle.float32:
            hidden_states = hidden_states.astype("float32")
        # square / operand order chosen for Paddle's CPU kernels (pow and a broadcast left operand are slow paths)
        variance = paddle.square(hidden_states).mean(-1, keepdim=True)
        hidden_states = hidden_states * paddle.rsqrt(variance + self.variance_epsilon)
        if input_dtype != paddle.float32:
            hidden_states = hidden_states.astype(input_dtype)
        return hidden_states * self.weight

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.variance_epsilon}"


class Qwen2RotaryEmbedding(nn.Layer):
    """Rotary position embedding with HF's rope types: default, linear, dynamic (NTK) and yarn.

    `forward(x, position_ids)` returns `(cos, sin)`, each `[batch, seq, head_dim]` in `x.dtype`, computed
    in float32 and multiplied by the rope type's attention scaling. Dynamic NTK re-derives its frequencies
    when positions grow past the longest seen (and resets below `max_position_embeddings`), like HF.
    """

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.rope_type = (config.rope_scaling or {}).get("rope_type", "default")
        self.original_max_seq_len = self.max_seq_len_cached = config.max_position_embeddings
        inv_freq, self.attention_scaling = rope_inv_freq(config)
        self.original_inv_freq = inv_freq
        self.inv_freq = paddle.to_tensor(inv_freq)

    def _dynamic_update(self, position_ids: Tensor) -> None:
        seq_len = int(position_ids.max().item()) + 1
        if seq_len > self.max_seq_len_cached:
            inv_freq, self.attention_scaling = rope_inv_freq(self.config, seq_len)
            self.inv_freq = paddle.to_tensor(inv_freq)
            self.max_seq_len_cached = seq_len
        if seq_len < self.original_max_seq_len < self.max_seq_len_cached:
            self.inv_freq = paddle.to_tensor(self.original_inv_freq)
            self.max_seq_len_cached = self.original_max_seq_len

    @paddle.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        inv_freq = self.inv_freq
        if self.rope_type == "dynamic":
            if _eager():
                self._dynamic_update(position_ids)
                inv_freq = self.inv_freq
            else:  # traced: the frequencies of this call's longest position, computed in the program
                seq_len = position_ids.max() + 1
                inv_freq = dynamic_inv_freq_tensor(self.config, seq_len, paddle.to_tensor(self.original_inv_freq))
        freqs = position_ids.astype("float32").unsqueeze(-1) * inv_freq
        emb = paddle.concat([freqs, freqs], axis=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.astype(x.dtype), sin.astype(x.dtype)


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
        q_cos, q_sin, k_cos, k_sin = traced_rope_tables(cos, sin, q.shape[unsqueeze_dim], k.shape[unsqueeze_dim],
                                                        unsqueeze_dim)  # fmt: skip
        return apply_traced_rope(q, k, q_cos, q_sin, k_cos, k_sin)
    q_embed = q * _repeat_heads(cos, q.shape, unsqueeze_dim) + rotate_half(q) * _repeat_heads(
        sin, q.shape, unsqueeze_dim
    )
    k_embed = k * _repeat_heads(cos, k.shape, unsqueeze_dim) + rotate_half(k) * _repeat_heads(
        sin, k.shape, unsqueeze_dim
    )
    return q_embed, k_embed


def traced_rope_tables(cos: Tensor, sin: Tensor, heads: int, kv_heads: int, head_axis: int = 2) -> tuple:
    """RoPE tables for `apply_traced_rope`: `cos` / `sin` with a size-1 head axis, tiled to `heads` and `kv_heads`,
    the sine signed so that `rotate_half(x) * sin == roll(x, half) * signed_sin`. A traced model builds them once
    per forward for all layers: a multiply broadcasting the head axis is Paddle's slow CPU path (15 us against
    1.6 us for `[8, 1, 8, 64]`), and the roll replaces rotate_half's split / negate / concat of q and k."""
    sin_first, sin_second = paddle.split(sin, 2, axis=-1)
    signed_sin = paddle.concat([-sin_first, sin_second], axis=-1)
    tables = []
    for count in (heads, kv_heads):
        repeats = [1] * len(cos.shape)
        repeats[head_axis] = count
        tables += [paddle.tile(cos, repeats), paddle.tile(signed_sin, repeats)]
    return tuple(tables)


def apply_traced_rope(q: Tensor, k: Tensor, q_cos: Tensor, q_sin: Tensor, k_cos: Tensor, k_sin: Tensor) -> tuple:
    """`apply_rotary_pos_emb` with the tables of `traced_rope_tables` (shaped like q and k)."""
    half = q.shape[-1] // 2
    return (q * q_cos + paddle.roll(q, half, axis=-1) * q_sin,
            k * k_cos + paddle.roll(k, half, axis=-1) * k_sin)  # fmt: skip


def _repeat_heads(table: Tensor, shape, head_axis: int) -> Tensor:
    """`table` with its size-1 head axis tiled to `shape[head_axis]`: Paddle's CPU multiply is ~30x slower
    broadcasting a middle axis than on equal shapes, and the tiled table is small."""
    heads = shape[head_axis]
    if heads == 1 or table.shape[head_axis] != 1:
        return table
    repeats = [1] * len(shape)
    repeats[head_axis] = heads
    return paddle.tile(table, repeats)


def repeat_kv(hidden_states: Tensor, n_rep: int) -> Tensor:
    """`[batch, seq, kv_heads, head_dim]` -> `[batch, seq, kv_heads * n_rep, head_dim]`, each kv head
    repeated `n_rep` times in place (head `h` serves query heads `h*n_rep ... h*n_rep + n_rep - 1`)."""
    if n_rep == 1:
        return hidden_states
    batch, seq_len, kv_heads, head_dim = hidden_states.shape
    hidden_states = hidden_states.unsqueeze(3).expand([batch, seq_len, kv_heads, n_rep, head_dim])
    return hidden_states.reshape([batch, seq_len, kv_heads * n_rep, head_dim])


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


def _math_attention(q, k, v, attention_mask, output_attentions, dropout, training):
    """softmax(q k^T / sqrt(d) + mask) v with HF eager's numerics (softmax in float32), arranged for speed:
    the query heads sharing a kv head are stacked so k and v are never repeated, the scale is applied to q,
    and a mask shared by the whole batch is added as a 2D `[q_len, kv_len]` broadcast. Reshapes name only the
    static sizes (0 copies a dim, -1 infers one), so a traced program computes no shapes. k, v:
    `[batch, kv_heads, kv_len, head_dim]`."""
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


def _parallel_linear(config: Qwen2Config, in_features: int, out_features: int, bias: bool, kind: str) -> nn.Layer:
    """A Linear, or fleet's column/row parallel Linear (sequence-parallel variants with `sequence_parallel`).

    `kind` is "column" (output dim split across ranks), "row" (input dim split) or "local" (not split).
    """
    if config.tensor_parallel_degree <= 1 or kind == "local":
        return nn.Linear(in_features, out_features, bias_attr=None if bias else False)
    if config.sequence_parallel:
        from paddle.distributed.fleet.utils.sequence_parallel_utils import (
            ColumnSequenceParallelLinear,
            RowSequenceParallelLinear,
        )

        column_cls, row_cls = ColumnSequenceParallelLinear, RowSequenceParallelLinear
    else:
        column_cls, row_cls = fleet.meta_parallel.ColumnParallelLinear, fleet.meta_parallel.RowParallelLinear
    if kind == "column":
        return column_cls(in_features, out_features, has_bias=bias, gather_output=False)
    return row_cls(in_features, out_features, has_bias=bias, input_is_parallel=True)


class Qwen2MLP(nn.Layer):
    """SwiGLU feed-forward: `down(act(gate(x)) * up(x))`, `[batch, seq, hidden] -> [batch, seq, hidden]`.

    With `fuse_attention_ffn` gate and up are one projection `gate_up_fused_proj` (`[gate | up]` per rank).
    """

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.hidden_size, self.intermediate_size = config.hidden_size, config.intermediate_size
        self.fuse_attention_ffn = config.fuse_attention_ffn
        if self.fuse_attention_ffn:
            self.gate_up_fused_proj = _parallel_linear(
                config, self.hidden_size, 2 * self.intermediate_size, False, "column"
            )
        else:
            self.gate_proj = _parallel_linear(config, self.hidden_size, self.intermediate_size, False, "column")
            self.up_proj = _parallel_linear(config, self.hidden_size, self.intermediate_size, False, "column")
        self.down_proj = _parallel_linear(config, self.intermediate_size, self.hidden_size, False, "row")
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        if self.fuse_attention_ffn:
            gate, up = paddle.chunk(self.gate_up_fused_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act_fn(gate) * up)


def _recomputes(layer: nn.Layer, granularity: str, inputs: Tensor) -> bool:
    """The one recompute decision: whether `layer` (with `config` and `layer_idx`) runs its part at `granularity`
    ("full": the whole decoder layer, "full_attn": the attention block, "core_attn": the attention core) under
    activation recompute now: the config asks for that granularity, the layer is not in `no_recompute_layers`,
    and it is training with gradients flowing into `inputs`."""
    config = layer.config
    return (
        config.recompute
        and config.recompute_granularity == granularity
        and layer.layer_idx not in (config.no_recompute_layers or [])
        and layer.training
        and not inputs.stop_gradient
    )


def _maybe_recompute(layer: nn.Layer, granularity: str, function: Callable, *args):
    """`function(*args)`, under activation recompute when `_recomputes(layer, granularity, args[0])`."""
    if _recomputes(layer, granularity, args[0]):
        return recompute(function, *args, use_reentrant=layer.config.recompute_use_reentrant)
    return function(*args)


class Qwen2Attention(nn.Layer):
    """Multi-head attention with grouped KV heads, bias on q/k/v only, RoPE and a KV cache (the sliding window,
    if any, comes with the mask). `[batch, seq, hidden] -> [batch, seq, hidden]`.

    Under tensor parallelism each rank holds `num_heads / tp` query heads and the kv heads given by
    `assign_kv_heads`. With fewer kv heads than ranks each rank keeps its one kv head in a local `k_proj` /
    `v_proj` whose gradients are summed over the ranks sharing that head. With `fuse_attention_qkv` q, k and v
    are one projection `qkv_proj` laid out `[q | k | v]` per rank. Under sequence parallelism the input and
    output are this rank's part of the sequence, `[seq / tp * batch, hidden]` (see `parallel.scatter_sequence`).
    """

    def __init__(self, config: Qwen2Config, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.hidden_size = config.hidden_size
        self.head_dim = config.attention_head_dim
        tp = config.tensor_parallel_degree
        self.num_heads = config.num_attention_heads // tp
        self.kv_heads_replicated = tp > 1 and config.num_key_value_heads < tp
        self.num_key_value_heads = 1 if self.kv_heads_replicated else config.num_key_value_heads // tp
        self.attention_dropout = config.attention_dropout
        self.fuse_attention_qkv = config.fuse_attention_qkv
        self.sequence_parallel = config.sequence_parallel
        q_size = config.num_attention_heads * self.head_dim
        kv_size = self.head_dim if self.kv_heads_replicated else config.num_key_value_heads * self.head_dim
        kv_kind = "local" if self.kv_heads_replicated else "column"
        if self.fuse_attention_qkv:  # never with replicated kv heads (Qwen2Config.validate)
            self.qkv_proj = _parallel_linear(config, self.hidden_size, q_size + 2 * kv_size, True, "column")
        else:
            self.q_proj = _parallel_linear(config, self.hidden_size, q_size, True, "column")
            self.k_proj = _parallel_linear(config, self.hidden_size, kv_size, True, kv_kind)
            self.v_proj = _parallel_linear(config, self.hidden_size, kv_size, True, kv_kind)
        self.o_proj = _parallel_linear(config, q_size, self.hidden_size, False, "row")
        self.kv_replica_group = None
        if self.kv_heads_replicated:
            self.kv_replica_group = kv_replica_group(config)
            # Ranks hold different heads: fleet must not broadcast these from rank 0 like replicated parameters
            # (and counts them on every rank in the global gradient norm).
            for param in (*self.k_proj.parameters(), *self.v_proj.parameters()):
                param.is_distributed = True

    def _project_qkv(self, hidden_states: Tensor, batch: int, seq_len: int) -> tuple[Tensor, Tensor, Tensor]:
        """q `[batch, seq, heads, head_dim]`, k and v `[batch, seq, kv_heads, head_dim]` (this rank's heads)."""
        if self.fuse_attention_qkv:
            mixed = self.qkv_proj(hidden_states)
            q_width = self.num_heads * self.head_dim
            kv_width = self.num_key_value_heads * self.head_dim
            query, key, value = paddle.split(mixed, [q_width, kv_width, kv_width], axis=-1)
        else:
            query = self.q_proj(hidden_states)
            if self.kv_heads_replicated:
                key, value = replicated_kv(
                    hidden_states, self.k_proj, self.v_proj, self.kv_replica_group, self.sequence_parallel
                )
            else:
                key, value = self.k_proj(hidden_states), self.v_proj(hidden_states)
        if self.sequence_parallel:
            return (
                sequence_to_batch_major(query, batch, seq_len, self.num_heads, self.head_dim),
                sequence_to_batch_major(key, batch, seq_len, self.num_key_value_heads, self.head_dim),
                sequence_to_batch_major(value, batch, seq_len, self.num_key_value_heads, self.head_dim),
            )
        query = query.reshape([0, 0, self.num_heads, self.head_dim])
        key = key.reshape([0, 0, self.num_key_value_heads, self.head_dim])
        value = value.reshape([0, 0, self.num_key_value_heads, self.head_dim])
        return query, key, value

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        sequence_shape: tuple[int, int] | None = None,
        heads_first_cache: bool = False,
    ) -> tuple[Tensor, Tensor | None, KVCache | None]:
        """hidden_states `[batch, seq, hidden]`; position_embeddings `(cos, sin)` `[batch, seq, head_dim]` (traced:
        the four tables of `traced_rope_tables`);
        attention_mask additive `[batch, 1, seq, past + seq]`; past_key_value `(k, v)`
        `[batch, past, kv_heads, head_dim]`, or `[batch, kv_heads, past, head_dim]` with `heads_first_cache` (the
        layout attention computes in: a step then transposes only its new keys and values, not the whole cache).
        Under sequence parallelism hidden_states is this rank's `[seq / tp * batch, hidden]` and `sequence_shape`
        must give the full `(batch, seq)`. Returns `(output shaped like hidden_states, attn_weights or None, (k, v)
        or None)`, the cache in the layout it came in."""
        if self.sequence_parallel:
            if sequence_shape is None:
                raise ValueError("Qwen2Attention under sequence parallelism needs sequence_shape=(batch, seq)")
            batch, seq_len = sequence_shape
        else:
            batch, seq_len = hidden_states.shape[0], hidden_states.shape[1]
        query, key, value = self._project_qkv(hidden_states, batch, seq_len)
        if len(position_embeddings) == 4:  # a traced model's tables, built once for all layers
            query, key = apply_traced_rope(query, key, *position_embeddings)
        else:
            query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if heads_first_cache:
            key, value = key.transpose([0, 2, 1, 3]), value.transpose([0, 2, 1, 3])
        if past_key_value is not None:
            seq_axis = 2 if heads_first_cache else 1
            key = paddle.concat([past_key_value[0], key], axis=seq_axis)
            value = paddle.concat([past_key_value[1], value], axis=seq_axis)
        present = (key, value) if use_cache else None

        dropout = self.attention_dropout if self.training else 0.0
        attn_output, attn_weights = _maybe_recompute(
            self, "core_attn", scaled_dot_product_attention,
            query, key, value, attention_mask, self.config, output_attentions, dropout, self.training,
            heads_first_cache,
        )  # fmt: skip
        if self.sequence_parallel:  # [batch, seq, heads * head_dim] -> [seq * batch, heads * head_dim]
            attn_output = attn_output.transpose([1, 0, 2]).reshape([seq_len * batch, attn_output.shape[-1]])
        return self.o_proj(attn_output), attn_weights, present


class Qwen2DecoderLayer(nn.Layer):
    """Pre-norm block: `x + attn(norm(x))`, then `h + mlp(norm(h))`. `[batch, seq, hidden]` in and out.

    `attention_type` ("full_attention" or "sliding_attention") says which mask the layer takes; `sliding_window`
    is its window (None for full attention)."""

    def __init__(self, config: Qwen2Config, layer_idx: int = 0):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.hidden_size = config.hidden_size
        self.self_attn = Qwen2Attention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config)
        self.post_attention_layernorm = Qwen2RMSNorm(config)
        self.attention_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if self.attention_type == "sliding_attention" else None

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        attention_mask: Tensor | None = None,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        sequence_shape: tuple[int, int] | None = None,
        heads_first_cache: bool = False,
    ) -> tuple[Tensor, Tensor | None, KVCache | None]:
        """Arguments as `Qwen2Attention.forward`; returns `(hidden_states, attn_weights or None, (k, v) or None)`."""
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        attn_out, attn_weights, present = _maybe_recompute(
            self, "full_attn", self.self_attn,
            hidden_states, position_embeddings, attention_mask, past_key_value, use_cache, output_attentions,
            sequence_shape, heads_first_cache,
        )  # fmt: skip
        hidden_states = residual + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, attn_weights, present


# ----------------------------------------------------------------------------------------------------------------
# Pretrained model base
# ----------------------------------------------------------------------------------------------------------------


class Qwen2PretrainedModel(PretrainedModel):
    """Base of every Qwen2 model: config class, weight init, HF name mapping, tensor-parallel checkpoint actions
    and FLOP counts."""

    config_class = Qwen2Config
    base_model_prefix = "qwen2"
    _keys_to_ignore_on_load_unexpected = [r"self_attn\.rotary_emb\.inv_freq"]
    # HF's attribute holding the base model and the head's extra (hf_name, paddle_name, action) rows; the
    # heads take both from conversion.HF_ARCHITECTURES (Qwen2ForQuestionAnswering keeps "transformer").
    hf_base_model_prefix = "model"
    _hf_head_mappings: tuple[tuple[str, str, str | None], ...] = ()

    def __init__(self, config: Qwen2Config, *args, **kwargs):
        config.validate()  # parallel settings are often set on the config after it was built
        super().__init__(config, *args, **kwargs)

    @classmethod
    def _get_name_mappings(cls, config: Qwen2Config) -> list[StateDictNameMapping]:
        """HF state-dict names -> this model's names. Every nn.Linear weight is transposed (HF stores
        `[out, in]`, Paddle `[in, out]`); embeddings and norms are copied as they are. The table itself is
        `conversion.name_rows`, shared with the checkpoint converter."""
        hf_prefix = None if cls.base_model_class is cls else cls.hf_base_model_prefix
        rows = name_rows(config.num_hidden_layers, config.tie_word_embeddings, hf_prefix, cls._hf_head_mappings)
        return [StateDictNameMapping(hf, pd, action, index=i) for i, (hf, pd, action) in enumerate(rows)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A checkpoint folder, HF (safetensors or pytorch_model.bin, single or sharded; converted as it is read,
        without torch) or paddlenlp (safetensors), loads without drawing random weights: the model is built empty
        and each parameter takes its tensor from the memory-mapped files (`loading.load_pretrained`), cut to this
        rank's slice with `tensor_parallel_degree > 1`. Anything else goes to paddlenlp's `from_pretrained`. On
        CPU, with no `dtype` given, the model is float32 (Paddle has no bfloat16 matmul on CPU)."""
        path = pretrained_model_name_or_path
        if "dtype" not in kwargs and paddle.get_device() == "cpu":
            kwargs["dtype"] = "float32"
        if isinstance(path, (str, os.PathLike)) and os.path.isdir(path) and detect_layout(path) is not None:
            return load_pretrained(cls, path, *args, **kwargs)
        return super().from_pretrained(path, *args, **kwargs)

    @classmethod
    def _get_tensor_parallel_mappings(cls, config: Qwen2Config, is_split: bool = True) -> dict:
        """`{parameter name: action}` for paddlenlp's tensor-parallel loading (`is_split`: full weight -> this
        rank's shard) and saving (every rank's shard -> full weight); see `parallel.tensor_parallel_actions`."""
        return tensor_parallel_actions(config, is_split)

    @classmethod
    def _get_fuse_or_split_param_mappings(cls, config: Qwen2Config, is_fuse: bool = True) -> dict:
        """paddlenlp's fuse/split actions between separate q/k/v, gate/up checkpoint weights and the fused
        projections of `fuse_attention_qkv` / `fuse_attention_ffn`; see `parallel.fuse_or_split_actions`."""
        return fuse_or_split_actions(config, is_fuse)

    @classmethod
    def merge_tensor_parallel(cls, state_dict: dict, config: Qwen2Config) -> dict:
        """paddlenlp's merge of the tensor-parallel shards into full weights, fused projections written unfused."""
        return unfused_state_dict(super().merge_tensor_parallel(state_dict, config), config)

    def save_pretrained(
        self, save_dir: str, is_main_process: bool = True, state_dict: dict | None = None, *args, **kwargs
    ):
        """paddlenlp's `save_pretrained`. A full checkpoint (one process, or `merge_tensor_parallel=True`) always
        has the separate q/k/v and gate/up weights, whatever the fuse flags: they are fused again on load.
        Tensor-parallel shards saved without merging keep the model's own layout. With `safe_serialization=True`
        on one process the weights are written one tensor at a time (`loading.save_weights`): no extra copy of
        the model in memory."""
        fused = self.config.fuse_attention_qkv or self.config.fuse_attention_ffn
        single = self.config.tensor_parallel_degree <= 1
        if state_dict is None and fused and single:
            state_dict = unfused_state_dict(self.state_dict(), self.config)
        if not (kwargs.get("safe_serialization") and single and not args):
            return super().save_pretrained(save_dir, is_main_process, state_dict, *args, **kwargs)
        state_dict = self.state_dict() if state_dict is None else state_dict
        # paddlenlp writes config.json and generation_config.json (and an empty weights file, replaced below)
        super().save_pretrained(save_dir, is_main_process, {}, **kwargs)
        if is_main_process:
            written = save_weights(state_dict, save_dir, kwargs.get("max_shard_size", "10GB"))
            if written is None:  # a dtype the streaming writer does not handle
                return super().save_pretrained(save_dir, is_main_process, state_dict, **kwargs)
            if SAFE_WEIGHTS_NAME not in written:
                os.remove(os.path.join(save_dir, SAFE_WEIGHTS_NAME))

    def _init_weights(self, layer: nn.Layer) -> None:
        """Normal(0, initializer_range) for Linear and Embedding weights, zero biases, ones for RMSNorm."""
        std = self.config.initializer_range
        linear_types = (nn.Linear, fleet.meta_parallel.ColumnParallelLinear, fleet.meta_parallel.RowParallelLinear)
        embedding_types = (nn.Embedding, fleet.meta_parallel.VocabParallelEmbedding)
        if isinstance(layer, linear_types + embedding_types + (Qwen2LMHead,)):
            if "weight" in layer._parameters:
                with paddle.no_grad():
                    layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))
            if getattr(layer, "bias", None) is not None:
                with paddle.no_grad():
                    layer.bias.set_value(paddle.zeros_like(layer.bias))
        elif isinstance(layer, Qwen2RMSNorm):
            with paddle.no_grad():
                layer.weight.set_value(paddle.ones_like(layer.weight))

    def _get_model_flops(self, batch_size: int = 1, seq_length: int | None = None, **_) -> float:
        """Forward-pass FLOPs of `batch_size` sequences of `seq_length` tokens (`flops.model_flops`)."""
        return model_flops(self.config, batch_size, seq_length)

    def _get_hardware_flops(self, batch_size: int = 1, seq_length: int | None = None, **_) -> float:
        """Training-step FLOPs, recomputed forward work included (`flops.training_flops`)."""
        return training_flops(self.config, batch_size, seq_length)


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------


def _check_attention_mask(attention_mask: Tensor, batch: int, q_len: int, kv_len: int) -> None:
    shape = list(attention_mask.shape)
    if attention_mask.ndim == 2 and shape == [batch, kv_len]:
        return
    if attention_mask.ndim == 4 and shape[0] in (1, batch) and shape[1] == 1 and shape[2:] == [q_len, kv_len]:
        return
    raise ValueError(
        f"attention_mask has shape {shape}; expected [batch, past + seq] = [{batch}, {kv_len}] "
        f"or [batch, 1, seq, past + seq] = [{batch}, 1, {q_len}, {kv_len}]"
    )


@register_base_model
@register_base_model
class Qwen2Model(Qwen2PretrainedModel):
    """Embeddings, decoder layers and the final norm. Returns `last_hidden_state` `[batch, seq, hidden]`,
    optionally `hidden_states` (embedding output first, final-norm output last: `num_hidden_layers + 1`
    entries, as HF), `attentions` and `past_key_values`."""

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.hidden_size = config.hidden_size
        self.embed_tokens = self._embedding(config)
        self.layers = nn.LayerList([Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config)
        self.rotary_emb = Qwen2RotaryEmbedding(config)
        self.has_sliding_layers = "sliding_attention" in config.layer_types

    @staticmethod
    def _embedding(config: Qwen2Config) -> nn.Layer:
        """Token embedding: vocabulary-split (`VocabParallelEmbedding`) under TP when the vocabulary divides."""
        tp = config.tensor_parallel_degree
        if tp > 1 and config.vocab_size % tp == 0:
            return fleet.meta_parallel.VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        return nn.Embedding(config.vocab_size, config.hidden_size)

    def get_input_embeddings(self) -> nn.Layer:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Layer) -> None:
        self.embed_tokens = value

    @staticmethod
    def _prepare_decoder_attention_mask(
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
            if attention_mask.dtype == paddle.bool:
                return _additive_mask(attention_mask, dtype)
            return attention_mask.astype(dtype)
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

    def _validate_inputs(self, input_ids, inputs_embeds, attention_mask, past_length) -> tuple[int, int]:
        """`(batch, seq)` of the input, after the checks: in dygraph token ids in the vocabulary, the length
        within the positions, the mask's shape; in a traced program (sizes unknown, data not read) only the
        mask's rank."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        batch, seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if not _eager():
            if attention_mask is not None and attention_mask.ndim not in (2, 4):
                raise ValueError(
                    f"attention_mask has {attention_mask.ndim} dimensions; expected [batch, past + seq] "
                    "or [batch, 1, seq, past + seq]"
                )
            return batch, seq_len
        if input_ids is not None and input_ids.numel() > 0:
            low, high = int(input_ids.min().item()), int(input_ids.max().item())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"input_ids contain token id {bad}, outside the vocabulary [0, {self.vocab_size})")
        total = past_length + seq_len
        if total > self.config.max_position_embeddings and self.config.rope_scaling is None:
            raise ValueError(
                f"sequence length {total} (past {past_length} + new {seq_len}) exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}) and the config has no rope_scaling"
            )
        if attention_mask is not None:
            _check_attention_mask(attention_mask, batch, seq_len, total)
        return batch, seq_len

    def _masks(self, attention_mask: Tensor | None, batch: int, seq_len: int, past_length: int, dtype) -> dict:
        """The additive mask of each attention type in use, `{"full_attention": ..., "sliding_attention": ...}`."""
        attention_mask = _padding_mask(attention_mask)
        if not self.config.is_causal:
            mask = _bidirectional_mask(attention_mask, batch, seq_len, past_length, dtype)
            return {"full_attention": mask, "sliding_attention": mask}
        shape = [batch, seq_len]
        masks = {"full_attention": self._prepare_decoder_attention_mask(attention_mask, shape, past_length, dtype)}
        if self.has_sliding_layers:
            window = self.config.sliding_window
            masks["sliding_attention"] = self._prepare_decoder_attention_mask(
                attention_mask, shape, past_length, dtype, window
            )
        return masks

    def _traced_tables(self, position_embeddings: tuple[Tensor, Tensor], masks: dict) -> tuple[tuple, dict]:
        """What every layer of a traced model would broadcast over the heads, tiled once: the RoPE tables
        (`traced_rope_tables`) and the masks `[batch, heads, seq, past + seq]` (Paddle's CPU add broadcasting the
        head axis: 33 us against 2 us for an 8-row decode step's scores)."""
        attention = self.layers[0].self_attn
        heads, kv_heads = attention.num_heads, attention.num_key_value_heads
        cos, sin = position_embeddings
        tables = traced_rope_tables(cos.unsqueeze(2), sin.unsqueeze(2), heads, kv_heads)
        tiled = {}
        for kind, mask in masks.items():
            tiled[kind] = paddle.tile(mask, [1, heads, 1, 1]) if mask is not None and mask.shape[1] == 1 else mask
        return tables, tiled

    def _full_sequence(self, hidden_states: Tensor, batch: int, seq_len: int) -> Tensor:
        """Decoder activations as `[batch, seq, hidden]` (gathered from the ranks under sequence parallelism)."""
        return gather_sequence(hidden_states, batch, seq_len) if self.config.sequence_parallel else hidden_states

    def recompute_training_full(self, layer_module: nn.Layer, hidden_states: Tensor, *args) -> tuple:
        """Run one decoder layer under activation recompute (granularity "full")."""
        return recompute(layer_module, hidden_states, *args, use_reentrant=self.config.recompute_use_reentrant)

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: tuple[KVCache, ...] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        heads_first_cache: bool = False,
    ) -> tuple | BaseModelOutputWithPast:
        """input_ids `[batch, seq]` (or inputs_embeds `[batch, seq, hidden]`); attention_mask `[batch, past + seq]`
        (1 = token, 0 = padding) or a 4D mask; position_ids `[batch, seq]` (default `past .. past + seq - 1`).
        The KV cache (in and out) is `[batch, seq, kv_heads, head_dim]` per tensor, or `[batch, kv_heads, seq,
        head_dim]` with `heads_first_cache` (the decode program's layout, see `Qwen2Attention.forward`)."""
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict

        past_length = past_key_values[0][0].shape[2 if heads_first_cache else 1] if past_key_values is not None else 0
        batch, seq_len = self._validate_inputs(input_ids, inputs_embeds, attention_mask, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = paddle.arange(past_length, past_length + seq_len, dtype="int64")
            position_ids = position_ids.unsqueeze(0).expand([batch, seq_len])
        masks = self._masks(attention_mask, batch, seq_len, past_length, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        if not _eager() and not cfg.sequence_parallel:
            position_embeddings, masks = self._traced_tables(position_embeddings, masks)
        if cfg.sequence_parallel:  # the decoder layers see [seq / tp * batch, hidden]
            hidden_states = scatter_sequence(hidden_states)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        next_cache = () if use_cache else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (self._full_sequence(hidden_states, batch, seq_len),)
            past = past_key_values[idx] if past_key_values is not None else None
            args = (
                position_embeddings,
                masks[layer.attention_type],
                past,
                use_cache,
                output_attentions,
                (batch, seq_len),
                heads_first_cache,
            )
            if _recomputes(layer, "full", hidden_states):
                hidden_states, attn_weights, present = self.recompute_training_full(layer, hidden_states, *args)
            else:
                hidden_states, attn_weights, present = layer(hidden_states, *args)
            if output_attentions:
                all_attentions += (attn_weights,)
            if use_cache:
                next_cache += (present,)
        hidden_states = self._full_sequence(self.norm(hidden_states), batch, seq_len)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, next_cache, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=next_cache,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------


class Qwen2LMHead(nn.Layer):
    """Vocabulary projection `[batch, seq, hidden] -> [batch, seq, vocab]` (or this rank's vocab shard).

    Untied: its own `weight` `[hidden, vocab]`. Tied (`tied_embedding` given): the embedding matrix
    `[vocab, hidden]` used transposed; it is read from the embedding layer at call time and not registered
    a second time, so the state dict holds it once (as HF's does).
    """

    def __init__(self, config: Qwen2Config, tied_embedding: nn.Layer | None = None):
        super().__init__()
        self.config = config
        tp = config.tensor_parallel_degree
        vocab_size = config.vocab_size // tp if tp > 1 and config.vocab_size % tp == 0 else config.vocab_size
        self.transpose_y = tied_embedding is not None
        object.__setattr__(self, "tied_embedding", tied_embedding)  # a reference, not a sublayer
        if tied_embedding is None:
            self.weight = self.create_parameter(
                shape=[config.hidden_size, vocab_size],
                dtype=paddle.get_default_dtype(),
                default_initializer=nn.initializer.Normal(0.0, config.initializer_range),
            )
            self.weight.is_distributed = vocab_size != config.vocab_size
            if self.weight.is_distributed:
                self.weight.split_axis = 1

    @property
    def projection(self) -> Tensor:
        """The matrix used: own weight `[hidden, vocab]` or the tied embedding `[vocab, hidden]`."""
        return self.tied_embedding.weight if self.tied_embedding is not None else self.weight

    def forward(self, hidden_states: Tensor, tensor_parallel_output: bool | None = None) -> Tensor:
        if tensor_parallel_output is None:
            tensor_parallel_output = self.config.tensor_parallel_output
        return parallel_matmul(hidden_states, self.projection, self.transpose_y, tensor_parallel_output)


class Qwen2ModelWithHead(Qwen2PretrainedModel):
    """Base of the task models (as HF's `GenericForSequenceClassification` & co.): the base model `self.qwen2`
    (hence the `qwen2.` prefix of every checkpoint name), its embedding accessors, and the output building
    shared by the heads."""

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.qwen2 = Qwen2Model(config)

    def get_input_embeddings(self) -> nn.Layer:
        return self.qwen2.embed_tokens

    def set_input_embeddings(self, value: nn.Layer) -> None:
        self.qwen2.embed_tokens = value

    def _output(
        self,
        output_class: type,
        return_dict: bool | None,
        base: BaseModelOutputWithPast,
        loss: Tensor | None,
        **results: Tensor,
    ) -> tuple | ModelOutput:
        """`output_class(loss, **results)` plus the base model's cache, hidden states and attentions where the
        class has those fields; with `return_dict` False (default: the config's) the same values as a tuple in
        that order, Nones left out."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        fields = {field.name for field in dataclasses.fields(output_class)}
        extras = {name: getattr(base, name) for name in ("past_key_values", "hidden_states", "attentions")}
        extras = {name: value for name, value in extras.items() if name in fields}
        if not return_dict:
            return tuple(v for v in (loss, *results.values(), *extras.values()) if v is not None)
        return output_class(loss=loss, **results, **extras)


class Qwen2ForCausalLM(Qwen2ModelWithHead):
    """Qwen2 with the LM head: logits `[batch, seq, vocab]`, loss from `labels` `[batch, seq]` (shifted
    inside, -100 ignored), KV cache for paddlenlp's `generate` (greedy, sampling, beam search)."""

    _tied_weights_keys = ["lm_head.weight"]
    _hf_head_mappings = HF_ARCHITECTURES["Qwen2ForCausalLM"].head_mappings

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        tied_embedding = self.qwen2.embed_tokens if config.tie_word_embeddings else None
        self.lm_head = Qwen2LMHead(config, tied_embedding=tied_embedding)
        self.criterion = Qwen2PretrainingCriterion(config)

    def get_output_embeddings(self) -> nn.Layer:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Layer) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> Qwen2Model:
        return self.qwen2

    @staticmethod
    def prepare_attention_mask_for_generation(input_ids: Tensor, pad_token_id, eos_token_id) -> Tensor:
        """2D padding mask `[batch, seq]` (1 = token) for `generate` when the caller gave none: pad tokens
        are masked only when the pad id differs from the eos id (else nothing is masked)."""
        if pad_token_id is not None and pad_token_id != eos_token_id:
            return (input_ids != pad_token_id).astype("int64")
        return paddle.ones_like(input_ids, dtype="int64")

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        use_cache: bool = True,
        past_key_values: tuple[KVCache, ...] | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        **kwargs,
    ) -> dict:
        """Inputs of one decoding step. With a cache only the newest token is fed. Position ids follow the
        padding mask like HF (`cumsum(mask) - 1`, pads at 1), so left-padded prompts start at position 0."""
        if attention_mask is not None and attention_mask.ndim == 4:  # paddlenlp's additive [batch, 1, 1, seq]
            attention_mask = (attention_mask.reshape([attention_mask.shape[0], -1]) == 0).astype("int64")
        if position_ids is None and attention_mask is not None:
            position_ids = attention_mask.astype("int64").cumsum(-1) - 1
            position_ids = masked_fill(position_ids, attention_mask == 0, 1)
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
        if position_ids is not None:
            position_ids = position_ids[:, -input_ids.shape[1] :]
        model_inputs = (
            {"inputs_embeds": inputs_embeds}
            if inputs_embeds is not None and past_key_values is None
            else {"input_ids": input_ids}
        )
        model_inputs.update(
            {
                "position_ids": position_ids,
                "past_key_values": past_key_values,
                "use_cache": use_cache,
                "attention_mask": attention_mask,
                "return_dict": True,
            }
        )
        return model_inputs

    @staticmethod
    def update_model_kwargs_for_generation(outputs, model_kwargs: dict, is_encoder_decoder: bool = False) -> dict:
        """Carry the new cache forward and extend the 2D attention mask (and explicit position ids) by one."""
        if isinstance(outputs, ModelOutput):
            model_kwargs["past_key_values"] = outputs.past_key_values
        elif isinstance(outputs, tuple) and len(outputs) > 1 and not isinstance(outputs[1], paddle.Tensor):
            model_kwargs["past_key_values"] = outputs[1]
        model_kwargs.pop("cache", None)
        attention_mask = model_kwargs.get("attention_mask")
        if attention_mask is not None:
            if attention_mask.ndim == 4:
                attention_mask = (attention_mask.reshape([attention_mask.shape[0], -1]) == 0).astype("int64")
            ones = paddle.ones([attention_mask.shape[0], 1], dtype=attention_mask.dtype)
            model_kwargs["attention_mask"] = paddle.concat([attention_mask, ones], axis=-1)
        position_ids = model_kwargs.get("position_ids")
        if position_ids is not None:
            model_kwargs["position_ids"] = paddle.concat([position_ids, position_ids[:, -1:] + 1], axis=-1)
        return model_kwargs

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: tuple[KVCache, ...] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | CausalLMOutputWithPast:
        outputs = self.qwen2(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        # Split logits are kept for the parallel loss; gathered when there is no loss to compute.
        tensor_parallel_output = self.config.tensor_parallel_output and labels is not None
        logits = self.lm_head(outputs.last_hidden_state, tensor_parallel_output=tensor_parallel_output)
        loss = self.criterion(logits, labels) if labels is not None else None
        return self._output(CausalLMOutputWithPast, return_dict, outputs, loss, logits=logits)


def _take_rows(x: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b]]` for `x` `[batch, seq, features]` and `index` `[batch]`: `[batch, features]`, with
    `take_along_axis` (exports to ONNX, unlike advanced indexing). The index is expanded to `[batch, 1, features]`
    here: Paddle 2.6's traced broadcast of it fails on the unknown batch size."""
    index = index.reshape([-1, 1, 1]).expand([-1, 1, x.shape[2]])
    return paddle.take_along_axis(x, index, axis=1).squeeze(1)


class Qwen2ForSequenceClassification(Qwen2ModelWithHead):
    """Sequence classification / regression from the hidden state of the rightmost token that is not
    `pad_token_id` (so left and right padding both work, as HF 4.57). logits `[batch, num_labels]`."""

    _hf_head_mappings = HF_ARCHITECTURES["Qwen2ForSequenceClassification"].head_mappings

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias_attr=False)

    def _last_token_index(self, input_ids: Tensor | None, logits: Tensor) -> Tensor:
        """`[batch]` int64: the position pooled in each row of `logits` `[batch, seq, num_labels]`."""
        pad_id = self.config.pad_token_id
        positions = paddle.arange(logits.shape[1], dtype="int64").unsqueeze(0)  # [1, seq]
        if pad_id is None or input_ids is None:
            if pad_id is None and _eager() and logits.shape[0] != 1:  # (traced: the batch size is not known)
                raise ValueError("Qwen2ForSequenceClassification needs config.pad_token_id for batches larger than 1")
            if pad_id is not None:
                warnings.warn("inputs_embeds given: padding cannot be detected, pooling the last position")
            return paddle.zeros_like(logits[:, 0, 0], dtype="int64") + positions[0, -1]
        return (positions * (input_ids != pad_id).astype("int64")).argmax(axis=-1)

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: tuple[KVCache, ...] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | SequenceClassifierOutputWithPast:
        outputs = self.qwen2(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(outputs.last_hidden_state)
        last = self._last_token_index(input_ids, logits)
        pooled_logits = _take_rows(logits, last)
        loss = classification_loss(self.config, pooled_logits, labels) if labels is not None else None
        return self._output(SequenceClassifierOutputWithPast, return_dict, outputs, loss, logits=pooled_logits)


class Qwen2ForTokenClassification(Qwen2ModelWithHead):
    """Per-token classification: dropout (classifier_dropout, default 0.1) then a biased Linear.
    logits `[batch, seq, num_labels]`; loss is cross entropy over labels != -100."""

    _hf_head_mappings = HF_ARCHITECTURES["Qwen2ForTokenClassification"].head_mappings

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout if config.classifier_dropout is not None else 0.1
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | TokenClassifierOutput:
        outputs = self.qwen2(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            flat_labels = labels.reshape([-1]).astype("int64")
            loss = classification_loss(self.config, logits.reshape([-1, self.num_labels]), flat_labels)
        return self._output(TokenClassifierOutput, return_dict, outputs, loss, logits=logits)


class Qwen2ForQuestionAnswering(Qwen2ModelWithHead):
    """Extractive QA: a Linear `hidden -> 2` gives start and end logits, each `[batch, seq]`. The loss is
    the mean of start and end cross entropies; positions outside the sequence are ignored (as HF)."""

    hf_base_model_prefix = HF_ARCHITECTURES["Qwen2ForQuestionAnswering"].hf_prefix
    _hf_head_mappings = HF_ARCHITECTURES["Qwen2ForQuestionAnswering"].head_mappings

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(
        self,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | QuestionAnsweringModelOutput:
        outputs = self.qwen2(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.shape[1]
            start = start_positions.reshape([-1]).astype("int64").clip(0, ignored_index)
            end = end_positions.reshape([-1]).astype("int64").clip(0, ignored_index)
            start_loss = cross_entropy_mean(start_logits, start, ignore_index=ignored_index)
            end_loss = cross_entropy_mean(end_logits, end, ignore_index=ignored_index)
            loss = (start_loss + end_loss) / 2
        return self._output(
            QuestionAnsweringModelOutput, return_dict, outputs, loss, start_logits=start_logits, end_logits=end_logits
        )


class Qwen2SentenceEmbeddingOutput(ModelOutput):
    """`embeddings` `[batch, hidden]` (float32) and the model's `last_hidden_state` `[batch, seq, hidden]`."""

    embeddings: Tensor | None = None
    last_hidden_state: Tensor | None = None


POOLING_MODES = ("last", "mean")


class Qwen2SentenceEmbedding(Qwen2ModelWithHead):
    """Sentence embeddings from the base model, pooled over the attention mask.

    `pooling="last"`: the hidden state of the rightmost attended token (left or right padding);
    `pooling="mean"`: the mean over attended tokens. `normalize=True` L2-normalises. Position ids count real
    tokens only, so the padding side does not change an embedding. An all-padding row gives
    the last position's state ("last") or zeros ("mean"), never NaN. Returns `[batch, hidden]` float32.
    """

    @staticmethod
    def pool(hidden_states: Tensor, attention_mask: Tensor | None, pooling: str = "last") -> Tensor:
        """hidden_states `[batch, seq, hidden]`, attention_mask `[batch, seq]` -> `[batch, hidden]` float32."""
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        hidden_states = hidden_states.astype("float32")
        if attention_mask is None:
            attention_mask = paddle.ones_like(hidden_states[:, :, 0], dtype="int64")
        mask = attention_mask.astype("float32")
        if pooling == "mean":
            summed = (hidden_states * mask.unsqueeze(-1)).sum(axis=1)
            return summed / paddle.clip(mask.sum(axis=1, keepdim=True), min=1.0)
        positions = paddle.arange(hidden_states.shape[1], dtype="int64").unsqueeze(0)  # [1, seq]
        has_token = mask.sum(axis=1) > 0
        last = (positions * attention_mask.astype("int64")).argmax(axis=-1)
        last = paddle.where(has_token, last, paddle.zeros_like(last) + positions[0, -1])
        return _take_rows(hidden_states, last)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        pooling: str = "last",
        normalize: bool = True,
        return_dict: bool | None = None,
    ) -> Tensor | Qwen2SentenceEmbeddingOutput:
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # count positions over real tokens only, so a sentence embeds the same whatever its padding side
            position_ids = masked_fill(attention_mask.astype("int64").cumsum(-1) - 1, attention_mask == 0, 0)
        outputs = self.qwen2(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            return_dict=True,
        )
        embeddings = self.pool(outputs.last_hidden_state, attention_mask, pooling)
        if normalize:
            embeddings = F.normalize(embeddings, p=2, axis=-1)
        if not return_dict:
            return embeddings
        return Qwen2SentenceEmbeddingOutput(embeddings=embeddings, last_hidden_state=outputs.last_hidden_state)


# ----------------------------------------------------------------------------------------------------------------
# PaddleNLP layout names (PADDLENLP_LAYOUT_ONLY): kept for code written against PaddleNLP's Qwen2; unused here.
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


def create_custom_forward(module: nn.Layer) -> Callable:
    """Wrap `module` in a plain function of positional inputs, as `recompute` expects."""

    def custom_forward(*inputs):
        return module(*inputs)

    return custom_forward
