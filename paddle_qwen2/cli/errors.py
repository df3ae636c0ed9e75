"""The command line's own error (the others come from the packages it runs)."""

from __future__ import annotations

from ..errors import PaddleQwen2Error

__all__ = ["ServeError"]


class ServeError(PaddleQwen2Error):
    """Bad `serve` input (a folder, an option's value, the address); printed as one `error: ...` line, exit 1."""
