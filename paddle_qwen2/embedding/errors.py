"""The embedding package's two errors (no imports, so the CLI can catch them without loading numpy or paddle)."""

from __future__ import annotations

from ..errors import PaddleQwen2Error

__all__ = ["EmbeddingError", "EmbedInputError"]


class EmbeddingError(PaddleQwen2Error):
    """A sentence-transformers folder or an encode argument this package cannot use; the message names the file
    (and module, key or value) and what was expected."""


class EmbedInputError(PaddleQwen2Error):
    """Bad input / output path or input data; the message names the file (and line) and reads after `error: `."""
