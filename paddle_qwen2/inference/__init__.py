"""Inference on the exported programs: generation (`LLM`, over the one-step `decode` program, or the dygraph model),
host-side sampling and streaming detokenization, sentence embeddings through Paddle Inference. See `engine.py`.

Importing this package loads no paddle; `LLM.from_pretrained` does.
"""

from .detokenize import IncrementalDetokenizer, StopMatcher
from .engine import ENGINES, LLM, Batch, EngineError
from .sampling import Sampler, SamplingParams
from .sequence import Completion, GenerationSequence
from .tokenization import ChatTokenizer, TokenizerError

__all__ = [
    "LLM",
    "Batch",
    "ENGINES",
    "EngineError",
    "SamplingParams",
    "Sampler",
    "IncrementalDetokenizer",
    "StopMatcher",
    "ChatTokenizer",
    "TokenizerError",
    "Completion",
    "GenerationSequence",
]
