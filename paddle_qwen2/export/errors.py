"""`ExportError`: what `export` cannot use (import-free, so the CLI and the engine can catch it cheaply)."""

from __future__ import annotations

from ..errors import PaddleQwen2Error

__all__ = ["ExportError"]


class ExportError(PaddleQwen2Error):
    """A model folder, task, output path or export folder `export` cannot use; the message names the file (and key)
    and what was expected."""
