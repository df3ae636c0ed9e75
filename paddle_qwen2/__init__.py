"""paddle_qwen2: Qwen2 / Qwen2.5 for PaddlePaddle, numerically faithful to HuggingFace transformers.

The public names are imported lazily (on first attribute access), so `import paddle_qwen2.runtime` does not load
paddle and scripts can call `paddle_qwen2.runtime.configure_cpu_threads()` before paddle starts. Every name of
PaddleNLP's Qwen2 layout is here and in `paddle_qwen2.modeling`.
"""

import importlib
import zlib  # noqa: F401  # paddle 2.6 ships its own zlib symbols: Python's must be loaded first

__version__ = "0.1.0"  # the one place the version is set (pyproject.toml reads it)

_MODELING = [
    "Qwen2Model",
    "Qwen2PretrainedModel",
    "Qwen2ModelWithHead",
    "Qwen2ForCausalLM",
    "Qwen2ForSequenceClassification",
    "Qwen2ForTokenClassification",
    "Qwen2ForQuestionAnswering",
    "Qwen2SentenceEmbedding",
    "Qwen2SentenceEmbeddingOutput",
    "Qwen2LMHead",
    "Qwen2PretrainingCriterion",
    "Qwen2DecoderLayer",
    "Qwen2Attention",
    "Qwen2MLP",
    "Qwen2RMSNorm",
    "Qwen2RotaryEmbedding",
    "get_triangle_upper_mask",
    "assign_kv_heads",
    "parallel_matmul",
    "scaled_dot_product_attention",
    "masked_fill",
    "is_casual_mask",
    "_make_causal_mask",
    "_expand_2d_mask",
    "repeat_kv",
    "rotate_half",
    "apply_rotary_pos_emb",
    "create_custom_forward",
]
_LAZY = {
    "Qwen2Config": "configuration",
    **dict.fromkeys(_MODELING, "modeling"),
    "Qwen2ForCausalLMPipe": "modeling_pp",
    "Qwen2Tokenizer": "tokenizer",
    "Qwen2TokenizerFast": "tokenizer",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
