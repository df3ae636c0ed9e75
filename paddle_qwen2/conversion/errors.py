"""The one exception of the converter (import-free, so the CLI can catch it cheaply)."""

from __future__ import annotations

from ..errors import PaddleQwen2Error

__all__ = ["ConversionError"]


class ConversionError(PaddleQwen2Error):
    """Bad input for a conversion; the message names the file / tensor and what was expected."""
