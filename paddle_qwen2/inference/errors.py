"""`EngineError`: what the inference engine cannot use (import-free, so the CLI can catch it cheaply)."""

from __future__ import annotations

from ..errors import PaddleQwen2Error

__all__ = ["EngineError"]


class EngineError(PaddleQwen2Error):
    """A model folder or request the engine cannot use; the message names the file or field."""
