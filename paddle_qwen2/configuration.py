"""Qwen2 / Qwen2.5 configuration.

`Qwen2Config` reads a HuggingFace `config.json` unchanged (every field HF transformers 4.57 writes) and
adds the Paddle-side switches. The parallel and recompute switches (`tensor_parallel_degree`,
`sequence_parallel`, `recompute`, `recompute_granularity`, `no_recompute_layers`, `use_flash_attention`,
`fuse_attention_qkv`, `fuse_attention_ffn`, `tensor_parallel_output`, ...) are defined by paddlenlp's
`PretrainedConfig`; this class validates them for Qwen2.
"""

from __future__ import annotations

from typing import Any

from paddlenlp.transformers.configuration_utils import PretrainedConfig

__all__ = ["Qwen2Config", "ROPE_TYPES", "RECOMPUTE_GRANULARITIES"]

ROPE_TYPES = ("default", "linear", "dynamic", "yarn")
RECOMPUTE_GRANULARITIES = ("full", "full_attn", "core_attn")
LAYER_TYPES = ("full_attention", "sliding_attention")

# Keys each rope type needs besides `rope_type`, and the optional ones it understands.
_ROPE_REQUIRED = {"default": set(), "linear": {"factor"}, "dynamic": {"factor"}, "yarn": {"factor"}}
_ROPE_OPTIONAL = {
    "default": set(),
    "linear": set(),
    "dynamic": set(),
    "yarn": {
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "original_max_position_embeddings",
        "truncate",
    },
}


class Qwen2Config(PretrainedConfig):
    """Configuration of a Qwen2 model; the defaults are those of HF's `Qwen2Config` (Qwen2-7B-like).

    HF fields: vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim (None -> hidden_size // num_attention_heads), hidden_act,
    max_position_embeddings, initializer_range, rms_norm_eps, use_cache, tie_word_embeddings, rope_theta,
    rope_scaling ({"rope_type": "linear"|"dynamic"|"yarn", "factor": ...} or None), use_sliding_window,
    sliding_window (None unless use_sliding_window), max_window_layers, layer_types, attention_dropout,
    is_causal (False: bidirectional attention, as embedding models such as gte-Qwen2 are trained and say in their
    config.json; padding is still masked).

    As in transformers 4.57, `layer_types[i]` is "sliding_attention" for layers `i >= max_window_layers`
    when the sliding window is on, "full_attention" otherwise.
    """

    model_type = "qwen2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        layer_types: list[str] | None = None,
        attention_dropout: float = 0.0,
        is_causal: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling = _normalise_rope_scaling(rope_scaling)
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.is_causal = bool(is_causal)
        if layer_types is None:
            layer_types = [
                "sliding_attention" if self.sliding_window is not None and i >= max_window_layers else "full_attention"
                for i in range(num_hidden_layers)
            ]
        self.layer_types = list(layer_types)
        kwargs.setdefault("tie_word_embeddings", tie_word_embeddings)
        super().__init__(**kwargs)
        # paddlenlp's PretrainedConfig defaults use_cache to False; HF's Qwen2 default is True.
        self.use_cache = use_cache
        self.validate()

    @property
    def attention_head_dim(self) -> int:
        """Per-head size: `head_dim` when the config gives it, else hidden_size // num_attention_heads."""
        return self.head_dim if self.head_dim else self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise `ValueError` for combinations no Qwen2 model can be built from."""
        if self.hidden_size <= 0 or self.num_attention_heads <= 0 or self.num_key_value_heads <= 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}), num_attention_heads ({self.num_attention_heads}) and "
                f"num_key_value_heads ({self.num_key_value_heads}) must be positive"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}) when head_dim is not given"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        if self.attention_head_dim % 2 != 0:
            raise ValueError(f"the head dimension ({self.attention_head_dim}) must be even for rotary embeddings")
        if len(self.layer_types) != self.num_hidden_layers or any(t not in LAYER_TYPES for t in self.layer_types):
            raise ValueError(
                f"layer_types must list {self.num_hidden_layers} entries from {LAYER_TYPES}, got {self.layer_types}"
            )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("layer_types contains 'sliding_attention' but sliding_window is not set")
        if self.recompute_granularity not in RECOMPUTE_GRANULARITIES:
            raise ValueError(
                f"recompute_granularity must be one of {RECOMPUTE_GRANULARITIES}, got {self.recompute_granularity!r}"
            )
        if self.sequence_parallel and self.tensor_parallel_degree <= 1:
            raise ValueError("sequence_parallel=True needs tensor_parallel_degree > 1")
        tp = self.tensor_parallel_degree
        if tp > 1 and self.num_attention_heads % tp != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by tensor_parallel_degree ({tp})"
            )
        if tp > 1 and self.intermediate_size % tp != 0:
            raise ValueError(
                f"intermediate_size ({self.intermediate_size}) must be divisible by tensor_parallel_degree ({tp})"
            )
        kv = self.num_key_value_heads
        if tp > 1 and (kv % tp if kv >= tp else tp % kv) != 0:
            raise ValueError(
                f"num_key_value_heads ({kv}) and tensor_parallel_degree ({tp}) must divide one another: kv heads "
                "are split across the ranks when there are at least as many, replicated on groups of ranks otherwise"
            )
        if tp > 1 and kv < tp and self.fuse_attention_qkv:
            raise ValueError(
                f"fuse_attention_qkv needs num_key_value_heads ({kv}) >= tensor_parallel_degree ({tp}); "
                "replicated kv heads use separate k/v projections"
            )
        if self.pipeline_parallel_degree > self.num_hidden_layers:
            raise ValueError(
                f"pipeline_parallel_degree ({self.pipeline_parallel_degree}) must not exceed num_hidden_layers "
                f"({self.num_hidden_layers}): every pipeline stage needs at least one decoder layer"
            )


def _normalise_rope_scaling(rope_scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """Copy `rope_scaling`, move the legacy `type` key to `rope_type` and check it; None stays None."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {rope_scaling!r}")
    rope_scaling = dict(rope_scaling)
    if "type" in rope_scaling:
        rope_scaling.setdefault("rope_type", rope_scaling["type"])
    rope_type = rope_scaling.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling has unknown rope_type {rope_type!r}; expected one of {ROPE_TYPES}")
    missing = _ROPE_REQUIRED[rope_type] - set(rope_scaling)
    if missing:
        raise ValueError(f"rope_scaling of type {rope_type!r} is missing {sorted(missing)}")
    if "factor" in rope_scaling and (
        not isinstance(rope_scaling["factor"], (int, float)) or rope_scaling["factor"] < 1
    ):
        raise ValueError(f"rope_scaling factor must be a number >= 1, got {rope_scaling['factor']!r}")
    unknown = set(rope_scaling) - _ROPE_REQUIRED[rope_type] - _ROPE_OPTIONAL[rope_type] - {"rope_type", "type"}
    if unknown:
        raise ValueError(f"rope_scaling of type {rope_type!r} has unknown keys {sorted(unknown)}")
    return rope_scaling
