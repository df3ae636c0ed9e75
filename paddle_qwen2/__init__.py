"""paddle_qwen2: Qwen2 / Qwen2.5 for PaddlePaddle, numerically faithful to HuggingFace transformers.

The public classes are imported lazily (on first attribute access), so `import paddle_qwen2.runtime` does not load
paddle and scripts can call `paddle_qwen2.runtime.configure_cpu_threads()` before paddle starts.
"""
import zlib  # noqa: F401  # paddle 2.6 ships its own zlib symbols: Python's must be loaded first

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Qwen2Config": "configuration",
    "Qwen2Model": "modeling",
    "Qwen2PretrainedModel": "modeling",
    "Qwen2ForCausalLM": "modeling",
    "Qwen2ForSequenceClassification": "modeling",
    "Qwen2ForTokenClassification": "modeling",
    "Qwen2ForQuestionAnswering": "modeling",
    "Qwen2SentenceEmbedding": "modeling",
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
