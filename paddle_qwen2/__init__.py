"""paddle_qwen2: Qwen2 / Qwen2.5 for PaddlePaddle, numerically faithful to HuggingFace transformers."""
import zlib  # noqa: F401  # paddle 2.6 ships its own zlib symbols: Python's must be loaded first

from .configuration import Qwen2Config
from .modeling import (
    Qwen2ForCausalLM,
    Qwen2ForQuestionAnswering,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
    Qwen2Model,
    Qwen2PretrainedModel,
    Qwen2SentenceEmbedding,
)

__version__ = "0.1.0"
__all__ = [
    "Qwen2Config",
    "Qwen2Model",
    "Qwen2PretrainedModel",
    "Qwen2ForCausalLM",
    "Qwen2ForSequenceClassification",
    "Qwen2ForTokenClassification",
    "Qwen2ForQuestionAnswering",
    "Qwen2SentenceEmbedding",
]
