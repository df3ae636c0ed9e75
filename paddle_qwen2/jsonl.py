"""The one reader of JSON-lines files (training data, embed inputs, retrieval pairs, train logs).

`read_jsonl(path)` yields `(line_number, value)` for every non-blank line (1-based numbers, counted over all lines,
blank ones included). The file is UTF-8; a leading UTF-8 byte-order mark is dropped; `\\r\\n` endings are fine; a
name ending in `.gz` (any case) is read through gzip. Every problem of the file itself (a truncated or corrupt `.gz`
too) raises `JSONLError` with one message form, `FILE:LINE: what is wrong (detail)` or `FILE: what is wrong`:

    data.jsonl: no such file
    data.jsonl:3: not valid JSON (Expecting ',' delimiter at column 12)
    data.jsonl:5: not valid UTF-8 (invalid start byte at byte 11)

Callers check the values themselves (keys, types) and report through the same `FILE:LINE: ...` form, using
`where(path, line)` for the prefix.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import PaddleQwen2Error

__all__ = ["JSONLError", "decode_line", "parse_line", "read_jsonl", "read_lines", "read_raw_lines", "where"]

_BOM = b"\xef\xbb\xbf"


class JSONLError(PaddleQwen2Error):
    """A JSON-lines file that is missing or unreadable, or (raised by a caller without an error type of its own) a
    row it cannot use; the message names the file (and line) and what was expected."""


def where(path: str | os.PathLike, line: int) -> str:
    """The `FILE:LINE` prefix of an error about line `line` (1-based) of `path`."""
    return f"{os.fspath(path)}:{line}"


def _open(path: Path) -> IO[bytes]:
    if not path.exists():
        raise JSONLError(f"{path}: no such file")
    if not path.is_file():
        raise JSONLError(f"{path}: not a file")
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def read_raw_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """`(line_number, raw)` of every line of a text file (1-based), undecoded, without its `\\n` / `\\r\\n`; blank
    lines included; a leading byte-order mark is dropped and the final newline does not make an extra line. A read
    error (a truncated or corrupt `.gz`) raises `JSONLError` naming the line being read."""
    path = Path(path)
    lineno = 0
    with _open(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                kind = "gzip file" if path.name.lower().endswith(".gz") else "file"
                raise JSONLError(f"{where(path, lineno + 1)}: not a readable {kind} ({e})") from None
            lineno += 1
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            yield lineno, raw[:-1] if raw.endswith(b"\r") else raw


def decode_line(path: str | os.PathLike, lineno: int, raw: bytes) -> str:
    """Line `lineno` of `path` (as `read_raw_lines` gives it) as text; `JSONLError` naming it if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONLError(f"{where(path, lineno)}: not valid UTF-8 ({e.reason} at byte {e.start + 1})") from None


def parse_line(path: str | os.PathLike, lineno: int, line: str) -> Any:
    """The JSON value of the non-blank line `lineno` of `path`; `JSONLError` naming file, line and column if it is
    not valid JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise JSONLError(f"{where(path, lineno)}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """`(line_number, line)` of every line of a UTF-8 text file (1-based), without its `\\n` / `\\r\\n`; blank
    lines included; a leading byte-order mark is dropped and the final newline does not make an extra line. A line
    that is not UTF-8 raises `JSONLError` naming it."""
    for lineno, raw in read_raw_lines(path):
        yield lineno, decode_line(path, lineno, raw)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`(line_number, value)` of every non-blank line of a JSON-lines file (see the module docstring); an empty
    file yields nothing. A line that is not valid JSON raises `JSONLError` naming the file, line and column."""
    for lineno, line in read_lines(path):
        if line.strip():
            yield lineno, parse_line(path, lineno, line)
