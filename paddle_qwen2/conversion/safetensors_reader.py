"""Reading safetensors files: our own header parser (numpy cannot hold BF16 through `safe_open`), checked so
that truncated or corrupted files fail with a clear message before any tensor is read."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .dtypes import _STORAGE, _itemsize
from .errors import ConversionError
from .tensors import TensorEntry

_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset of the data section); raises ConversionError for truncated / corrupted files."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise ConversionError(
                f"{path}: corrupted or truncated safetensors file (header claims {length} bytes, file has {size})"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: corrupted safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupted safetensors header (not a JSON object)")
    return header, 8 + length


def _safetensors_entries(path: Path, layout: str) -> list[TensorEntry]:
    """Entries in file order (by data offset); the data must exactly fill the file after the header."""
    header, data_start = read_safetensors_header(path)
    header.pop("__metadata__", None)
    data_size = path.stat().st_size - data_start
    spans = []
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: corrupted safetensors header entry for {name!r}: {info!r}") from None
        if code not in _STORAGE:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
        nbytes = math.prod(shape) * _itemsize(code)
        if end - begin != nbytes or begin < 0:
            raise ConversionError(
                f"{path}: corrupted safetensors header: {name!r} {code}{list(shape)} needs {nbytes} bytes, "
                f"offsets {begin}..{end}"
            )
        spans.append((begin, end, name, code, shape))
    spans.sort()
    position = 0
    for begin, end, name, _, _ in spans:
        if begin != position:
            raise ConversionError(
                f"{path}: corrupted safetensors header: tensor {name!r} starts at {begin}, expected {position}"
            )
        position = end
    if position > data_size:
        raise ConversionError(
            f"{path}: truncated safetensors file: tensor data needs {position} bytes, the file has {data_size}"
        )
    if position < data_size:
        raise ConversionError(f"{path}: corrupted safetensors file: {data_size - position} bytes after the last tensor")
    return [
        TensorEntry(
            name,
            "BF16" if (layout == "paddle" and code == "U16") else code,
            shape,
            path,
            data_start + begin,
            end - begin,
            code,
        )
        for begin, end, name, code, shape in spans
    ]
