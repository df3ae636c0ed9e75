"""Sentence embeddings: sentence-transformers folders in paddle, `encode`, and the `embed` command's files.

- `errors.py`: `EmbeddingError` (folders, encode arguments), `EmbedInputError` (the embed command's files).
- `folder.py`: what a sentence-transformers folder says (both on-disk formats), no paddle.
- `tokenization.py`: tokenization exactly as sentence-transformers does it, no paddle.
- `modules.py`: Pooling, Dense and Normalize in paddle.
- `model.py`: `EmbeddingModel` (`from_pretrained`, `encode`, `save_pretrained`, a differentiable `forward`).
- `io.py`: the `embed` command's input (.txt, .jsonl, .parquet) and output (.npy, .jsonl, .parquet) files.
- `evaluation.py`: retrieval metrics (recall@k, MRR@10) for held-out query/passage pairs.
"""

from __future__ import annotations

from .errors import EmbeddingError, EmbedInputError

__all__ = ["EmbeddingError", "EmbedInputError", "EmbeddingModel"]


def __getattr__(name: str):
    if name == "EmbeddingModel":  # imports paddle: only when asked for
        from .model import EmbeddingModel

        return EmbeddingModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
