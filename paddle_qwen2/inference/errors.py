"""`EngineError`: what the inference engine cannot use (import-free, so the CLI can catch it cheaply)."""

__all__ = ["EngineError"]


class EngineError(ValueError):
    """A model folder or request the engine cannot use; the message names the file or field."""
