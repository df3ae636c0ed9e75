"""The one base of every error paddle_qwen2 raises for bad input or a failure the user can act on.

Each package derives its own type from `PaddleQwen2Error` (conversion, embedding, export, inference, serving,
training data); the command line catches this base, prints one `error: ...` line and exits 1. The message names
the file, line, key, tensor or field and what was expected.
"""

from __future__ import annotations

__all__ = ["PaddleQwen2Error"]


class PaddleQwen2Error(ValueError):
    """Bad input (a file, option, field or tensor) or a failure the user can fix; the message says which."""
