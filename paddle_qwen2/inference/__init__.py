"""Inference on the exported programs: generation (`LLM`, over the one-step `decode` program on Paddle Inference or,
for int8 / int4 weights and ONNX exports, on onnxruntime (`OnnxPredictor`); or the dygraph model), host-side sampling
and streaming detokenization, sentence embeddings through Paddle Inference. See `engine.py`.

Importing this package loads nothing heavy; its names import their modules on first use, and `LLM.from_pretrained`
loads paddle.
"""

from __future__ import annotations

import importlib

from .errors import EngineError

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
    "OnnxPredictor",
]

_MODULES = {
    "LLM": "engine",
    "Batch": "engine",
    "ENGINES": "engine",
    "SamplingParams": "sampling",
    "Sampler": "sampling",
    "IncrementalDetokenizer": "detokenize",
    "StopMatcher": "detokenize",
    "ChatTokenizer": "tokenization",
    "TokenizerError": "tokenization",
    "Completion": "sequence",
    "GenerationSequence": "sequence",
    "OnnxPredictor": "onnx_predictor",
}


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
