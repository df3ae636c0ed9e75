"""FLOP counts (2 per multiply-add) of Qwen2: `Qwen2PretrainedModel._get_model_flops` / `_get_hardware_flops`,
which paddlenlp's Trainer reports, are these functions."""

from __future__ import annotations

from .configuration import Qwen2Config

__all__ = ["layer_flops", "model_flops", "training_flops"]


def layer_flops(config: Qwen2Config, seq_length: int) -> dict[str, int]:
    """Forward FLOPs of one decoder layer on one sequence, by part."""
    q_out = config.num_attention_heads * config.attention_head_dim
    kv_out = config.num_key_value_heads * config.attention_head_dim
    return {
        "attn_proj": 2 * seq_length * config.hidden_size * (2 * q_out + 2 * kv_out),  # q, k, v, o
        "core_attn": 2 * 2 * seq_length * seq_length * q_out,  # q @ k^T and weights @ v
        "mlp": 2 * seq_length * 3 * config.hidden_size * config.intermediate_size,
    }


def model_flops(config: Qwen2Config, batch_size: int = 1, seq_length: int | None = None) -> float:
    """Forward-pass FLOPs of `batch_size` sequences of `seq_length` tokens (default `max_position_embeddings`):
    every decoder-layer matmul (q/k/v/o, attention scores and values, MLP) plus the LM head."""
    seq_length = seq_length or config.max_position_embeddings
    layer = sum(layer_flops(config, seq_length).values())
    lm_head = 2 * seq_length * config.hidden_size * config.vocab_size
    return float(batch_size * (config.num_hidden_layers * layer + lm_head))


def training_flops(config: Qwen2Config, batch_size: int = 1, seq_length: int | None = None) -> float:
    """Training-step FLOPs: forward + backward (2x forward) plus the forward work recompute repeats."""
    total = 3 * model_flops(config, batch_size, seq_length)
    if not config.recompute:
        return total
    parts = layer_flops(config, seq_length or config.max_position_embeddings)
    repeated = {
        "full": sum(parts.values()),
        "full_attn": parts["attn_proj"] + parts["core_attn"],
        "core_attn": parts["core_attn"],
    }[config.recompute_granularity]
    layers_recomputed = config.num_hidden_layers - len(config.no_recompute_layers or [])
    return total + batch_size * layers_recomputed * repeated
