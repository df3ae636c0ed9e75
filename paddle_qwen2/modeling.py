"""Qwen2 / Qwen2.5 in PaddlePaddle, numerically faithful to HuggingFace transformers 4.57.

Laid out as HF's `modeling_qwen2.py`: the config-driven layers (RMSNorm, rotary embedding, MLP, attention, decoder
layer), `Qwen2PretrainedModel` (config, weight init, checkpoint names, FLOPs), `Qwen2Model`, then the heads on
`Qwen2ModelWithHead`, which makes the one backbone call they share (causal LM, sequence / token classification,
extractive QA, sentence embeddings). What the layers compute with lives beside this file: masks in `masks.py`, the
attention core and the traced-RoPE tables in `attention.py`, RoPE frequencies and rotation in `rope.py`, pooling in
`pooling.py`, losses in `losses.py`; tensor and sequence parallelism in `parallel.py`, the HF <-> Paddle checkpoint
names in `conversion/names.py`. Every name of PaddleNLP's Qwen2 layout is importable from here.

Tensor layout: activations are `[batch, seq, hidden]`; attention works in `[batch, seq, heads, head_dim]`
(Paddle's flash / SDPA layout) and the KV cache keeps that layout, one `(key, value)` tuple per layer.
Linear weights are stored Paddle-style as `[in_features, out_features]` (HF's transposed).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

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

# The attention core, masks and RoPE helpers are re-exported here: PaddleNLP's layout (and code written against
# this module) imports them from `modeling`.
from .attention import (  # noqa: F401
    _WARNED,
    _math_attention,
    _sdpa_kernel_available,
    _warn_once,
    apply_traced_rope,
    repeat_kv,
    scaled_dot_product_attention,
    traced_rope_tables,
)
from .configuration import Qwen2Config
from .conversion import HF_ARCHITECTURES, detect_layout, name_rows
from .conversion.names import SAFE_WEIGHTS_NAME
from .errors import PaddleQwen2Error
from .flops import model_flops, training_flops
from .loading import load_pretrained, save_weights
from .losses import Qwen2PretrainingCriterion, classification_loss, cross_entropy_mean
from .masks import (  # noqa: F401
    _additive_mask,
    _bidirectional_mask,
    _causal_allowed,
    _dtype_min,
    _eager,
    _expand_2d_mask,
    _make_causal_mask,
    _padding_mask,
    check_attention_mask,
    decoder_attention_mask,
    get_triangle_upper_mask,
    is_casual_mask,
    layer_attention_masks,
    masked_fill,
)
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
from .pooling import pool as pool_states  # (a method named `pool` calling a global `pool` breaks to_static)
from .pooling import take_rows
from .rope import _repeat_heads, apply_rotary_pos_emb, dynamic_inv_freq_tensor, rope_inv_freq, rotate_half  # noqa: F401

_check_attention_mask = check_attention_mask  # the names these helpers had in this module
_take_rows = take_rows

# Names of PaddleNLP's Qwen2 layout that this port keeps so that code written against PaddleNLP finds them,
# although nothing here needs them (the masks in `masks.py`, `create_custom_forward` with the recompute helpers
# below). `is_casual_mask` keeps PaddleNLP's spelling.
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


def create_custom_forward(module: nn.Layer) -> Callable:
    """Wrap `module` in a plain function of positional inputs, as `recompute` expects (PaddleNLP layout name)."""

    def custom_forward(*inputs):
        return module(*inputs)

    return custom_forward


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
                raise PaddleQwen2Error("Qwen2Attention under sequence parallelism needs sequence_shape=(batch, seq)")
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
        core_args = (query, key, value, attention_mask, self.config, output_attentions, dropout, self.training)
        attn_output, attn_weights = _maybe_recompute(
            self, "core_attn", scaled_dot_product_attention, *core_args, heads_first_cache
        )
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
        attn_args = (position_embeddings, attention_mask, past_key_value, use_cache, output_attentions)
        attn_out, attn_weights, present = _maybe_recompute(
            self, "full_attn", self.self_attn, hidden_states, *attn_args, sequence_shape, heads_first_cache
        )
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

    # the mask builder under PaddleNLP's name (masks.decoder_attention_mask)
    _prepare_decoder_attention_mask = staticmethod(decoder_attention_mask)

    def _validate_inputs(self, input_ids, inputs_embeds, attention_mask, past_length) -> tuple[int, int]:
        """`(batch, seq)` of the input, after the checks: in dygraph token ids in the vocabulary, the length
        within the positions, the mask's shape; in a traced program (sizes unknown, data not read) only the
        mask's rank."""
        if (input_ids is None) == (inputs_embeds is None):
            raise PaddleQwen2Error("Specify exactly one of input_ids or inputs_embeds")
        batch, seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if not _eager():
            if attention_mask is not None and attention_mask.ndim not in (2, 4):
                raise PaddleQwen2Error(
                    f"attention_mask has {attention_mask.ndim} dimensions; expected [batch, past + seq] "
                    "or [batch, 1, seq, past + seq]"
                )
            return batch, seq_len
        if input_ids is not None and input_ids.numel() > 0:
            low, high = int(input_ids.min().item()), int(input_ids.max().item())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise PaddleQwen2Error(
                    f"input_ids contain token id {bad}, outside the vocabulary [0, {self.vocab_size})"
                )
        total = past_length + seq_len
        if total > self.config.max_position_embeddings and self.config.rope_scaling is None:
            raise PaddleQwen2Error(
                f"sequence length {total} (past {past_length} + new {seq_len}) exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}) and the config has no rope_scaling"
            )
        if attention_mask is not None:
            check_attention_mask(attention_mask, batch, seq_len, total)
        return batch, seq_len

    def _traced_tables(self, position_embeddings: tuple[Tensor, Tensor], masks: dict) -> tuple[tuple, dict]:
        """What every layer of a traced model would broadcast over the heads, tiled once: the RoPE tables
        (`traced_rope_tables`) and the masks `[batch, heads, seq, past + seq]` (Paddle's CPU add is slow when it
        broadcasts the head axis)."""
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
        masks = layer_attention_masks(cfg, attention_mask, batch, seq_len, past_length, inputs_embeds.dtype)

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
    (hence the `qwen2.` prefix of every checkpoint name), its embedding accessors, and what every head shares:
    the one backbone call (`_backbone`) and the output building (`_output`)."""

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.qwen2 = Qwen2Model(config)

    def get_input_embeddings(self) -> nn.Layer:
        return self.qwen2.embed_tokens

    def set_input_embeddings(self, value: nn.Layer) -> None:
        self.qwen2.embed_tokens = value

    def _backbone(
        self,
        input_ids: Tensor | None,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        inputs_embeds: Tensor | None,
        use_cache: bool | None = False,
        past_key_values: tuple[KVCache, ...] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPast:
        """The base model on the head's inputs (`Qwen2Model.forward`), always as a `BaseModelOutputWithPast`:
        `last_hidden_state` `[batch, seq, hidden]` for the head, the rest for `_output`. No cache unless asked."""
        return self.qwen2(
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
        outputs = self._backbone(
            input_ids,
            position_ids,
            attention_mask,
            inputs_embeds,
            use_cache,
            past_key_values,
            output_attentions,
            output_hidden_states,
        )
        # Split logits are kept for the parallel loss; gathered when there is no loss to compute.
        tensor_parallel_output = self.config.tensor_parallel_output and labels is not None
        logits = self.lm_head(outputs.last_hidden_state, tensor_parallel_output=tensor_parallel_output)
        loss = self.criterion(logits, labels) if labels is not None else None
        return self._output(CausalLMOutputWithPast, return_dict, outputs, loss, logits=logits)


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
                raise PaddleQwen2Error(
                    "Qwen2ForSequenceClassification needs config.pad_token_id for batches larger than 1"
                )
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
        outputs = self._backbone(
            input_ids,
            position_ids,
            attention_mask,
            inputs_embeds,
            use_cache,
            past_key_values,
            output_attentions,
            output_hidden_states,
        )
        logits = self.score(outputs.last_hidden_state)
        last = self._last_token_index(input_ids, logits)
        pooled_logits = take_rows(logits, last)
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
        outputs = self._backbone(
            input_ids,
            position_ids,
            attention_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
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
        outputs = self._backbone(
            input_ids,
            position_ids,
            attention_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
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


POOLING_MODES = ("last", "mean")  # Qwen2SentenceEmbedding's names of `pooling.POOLING_MODES`' modes
_POOLING_NAMES = {"last": "lasttoken", "mean": "mean"}


class Qwen2SentenceEmbedding(Qwen2ModelWithHead):
    """Sentence embeddings from the base model, pooled over the attention mask (`pooling.pool`).

    `pooling="last"`: the hidden state of the rightmost attended token (left or right padding);
    `pooling="mean"`: the mean over attended tokens. `normalize=True` L2-normalises. Position ids count real
    tokens only, so the padding side does not change an embedding. An all-padding row gives zeros, as
    sentence-transformers' Pooling does, never NaN. Returns `[batch, hidden]` float32.
    """

    @staticmethod
    def pool(hidden_states: Tensor, attention_mask: Tensor | None, pooling: str = "last") -> Tensor:
        """hidden_states `[batch, seq, hidden]`, attention_mask `[batch, seq]` -> `[batch, hidden]` float32."""
        if pooling not in POOLING_MODES:
            raise PaddleQwen2Error(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        return pool_states(hidden_states, attention_mask, [_POOLING_NAMES[pooling]])

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
        outputs = self._backbone(input_ids, position_ids, attention_mask, inputs_embeds)
        embeddings = self.pool(outputs.last_hidden_state, attention_mask, pooling)
        if normalize:
            embeddings = F.normalize(embeddings, p=2, axis=-1)
        if not return_dict:
            return embeddings
        return Qwen2SentenceEmbeddingOutput(embeddings=embeddings, last_hidden_state=outputs.last_hidden_state)
