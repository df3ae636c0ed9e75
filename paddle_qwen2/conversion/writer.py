"""Transforming and writing the output safetensors files.

Each file's header is computed up front from the shapes; then its tensors are written in place as pieces:
unchanged tensors are copied file to file by the kernel (copy_file_range), the rest is cut into chunks that
worker threads transpose and / or cast (the optional C kernel `_transpose.c` when built, else numpy) while the
main thread writes them. Files above the maximum shard size are split into shards + an index.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .dtypes import _itemsize, _LazyNumpy, _np_dtype, cast_array
from .errors import ConversionError
from .names import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from .plan import _Item

np = _LazyNumpy(globals())

_CHUNK_BYTES = 4 * 1024 * 1024  # output bytes per piece a worker fills (wide chunks: fewer passes over the source)
_COPY_BYTES = 64 * 1024 * 1024  # bytes per kernel copy
_AHEAD = 2  # pieces queued per worker
_BLOCK = 64

try:  # the optional C kernel (paddle_qwen2/conversion/_transpose.c); numpy does the same work when it is not built
    from . import _transpose as _simd_transpose
except ImportError:
    _simd_transpose = None


# ---------------------------------------------------------------------------------------------------- transposes


def _fill_transposed(out: np.ndarray, array: np.ndarray, start: int, stop: int, scratch: np.ndarray | None) -> None:
    """out[:] = array[:, start:stop].T for a 2-D `array`, without the GIL where it can.

    With the compiled `_transpose` module (built by `pip install`): SIMD tiles. Otherwise numpy: when both sides
    are multiples of `_BLOCK`, the blocks are transposed in two cache-friendly passes through `scratch` (cheaper
    than one strided copy)."""
    rows, cols = array.shape
    if _simd_transpose is not None and array.flags.c_contiguous and out.flags.c_contiguous:
        _simd_transpose.transpose_columns(out, array, rows, cols, start, stop, array.itemsize)
        return
    b = _BLOCK
    if rows % b or cols % b or start % b or stop % b or not array.flags.c_contiguous:
        np.copyto(out, array[:, start:stop].T)
        return
    if scratch is None:
        scratch = np.empty(out.nbytes, np.uint8)
    nb = (stop - start) // b
    blocks = array.reshape(rows // b, b, cols // b, b)[:, :, start // b : stop // b, :]  # (I, ii, J, jj)
    tiles = scratch[: out.nbytes].view(array.dtype).reshape(rows // b, nb, b, b)
    np.copyto(tiles, blocks.transpose(0, 2, 1, 3))  # (I, J, ii, jj): contiguous runs of b
    np.copyto(out.reshape(nb, b, rows // b, b), tiles.transpose(1, 3, 0, 2))  # (J, jj, I, ii): within L1 tiles


def _transpose_step(rows: int, itemsize: int, chunk_bytes: int) -> int:
    """Output rows per chunk of a transpose: about `chunk_bytes`, a multiple of the numpy path's `_BLOCK`
    (of 8 with the C kernel, which takes any chunk)."""
    align = _BLOCK if _simd_transpose is None else 8
    return max(align, chunk_bytes // (rows * itemsize) // align * align)


# ---------------------------------------------------------------------------------------------------- files


def _disk_code(code: str, layout: str) -> str:
    return "U16" if (layout == "paddle" and code == "BF16") else code


def _safetensors_header(items: Sequence[_Item], layout: str) -> bytes:
    """The header of a file holding `items` in order (8-byte length + JSON padded to 8-byte alignment)."""
    header: dict[str, dict] = {"__metadata__": {"format": "np" if layout == "paddle" else "pt"}}
    offset = 0
    for item in items:
        header[item.name] = {
            "dtype": _disk_code(item.dtype, layout),
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write the bytes of `data` at `offset` of `fd`."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _copy_range(src: Path, src_offset: int, nbytes: int, fd: int, offset: int) -> None:
    """Copy `nbytes` of `src` from `src_offset` to `offset` of `fd`, inside the kernel when it can
    (copy_file_range), else through a buffer."""
    with open(src, "rb", buffering=0) as f:
        done = 0
        while done < nbytes:
            count = min(nbytes - done, 1 << 30)
            try:
                n = os.copy_file_range(f.fileno(), fd, count, src_offset + done, offset + done)
            except (AttributeError, OSError):  # not Linux, or a file system that cannot
                data = os.pread(f.fileno(), min(count, _CHUNK_BYTES), src_offset + done)
                n = len(data)
                _pwrite_all(fd, data, offset + done)
            if n <= 0:
                raise ConversionError(f"{src}: truncated: file ends at byte {src_offset + done}")
            done += n


# ---------------------------------------------------------------------------------------------------- pieces


@dataclass
class _Piece:
    """A part of an output file: `nbytes` at `offset`, either copied from `copy_from` (file, offset) by the
    kernel, or computed into a buffer (a writable memoryview of `nbytes`) by `fill(buffer)` on a worker."""

    offset: int
    nbytes: int
    fill: Callable[[memoryview], None] | None = None
    copy_from: tuple[Path, int] | None = None


def _fill_transposed_bytes(
    buffer: memoryview, source: memoryview, rows: int, cols: int, start: int, stop: int, itemsize: int
) -> None:
    """buffer = rows `start:stop` of the transpose of the C-contiguous [rows, cols] matrix in `source`
    (C kernel, any element type, no numpy)."""
    _simd_transpose.transpose_columns(buffer, source, rows, cols, start, stop, itemsize)


def _fill_transposed_cast(buffer: memoryview, array: np.ndarray, start: int, stop: int, src: str, dst: str) -> None:
    """buffer = rows `start:stop` of `array.T` ([cols, rows]), cast from `src` to `dst`."""
    shape = (stop - start, array.shape[0])
    out = np.frombuffer(buffer, _np_dtype(src)) if src == dst else np.empty(shape, array.dtype)
    _fill_transposed(out.reshape(shape), array, start, stop, None)
    if src != dst:
        np.frombuffer(buffer, _np_dtype(dst))[:] = cast_array(out, src, dst).reshape(-1)


def _fill_cast(buffer: memoryview, flat: np.ndarray, src: str, dst: str) -> None:
    """buffer = the 1-D `flat` cast from `src` to `dst`."""
    np.frombuffer(buffer, _np_dtype(dst))[:] = cast_array(flat, src, dst)


def _item_pieces(item: _Item, offset: int) -> Iterator[_Piece]:
    """The pieces that write the output tensor `item` at `offset`: kernel copies for bytes that need no
    change, else chunks of the memory-mapped source, transposed and / or cast, of at most about
    `_CHUNK_BYTES` each. Plain transposes go through the C kernel on the mapped bytes, without numpy."""
    entry, src, dst = item.entry, item.entry.dtype, item.dtype
    if item.unchanged:
        for start in range(0, item.nbytes, _COPY_BYTES):
            n = min(_COPY_BYTES, item.nbytes - start)
            yield _Piece(offset + start, n, copy_from=(entry.file, entry.offset + start))
        return
    if item.nbytes == 0:
        return
    itemsize = _itemsize(dst)
    if item.transpose:
        rows, cols = entry.shape
        if _simd_transpose is not None and entry.is_plain and src == dst:
            source = entry.mapped_bytes()
            fill = functools.partial(_fill_transposed_bytes, source=source, rows=rows, cols=cols, itemsize=itemsize)
        else:
            fill = functools.partial(_fill_transposed_cast, array=entry.map(), src=src, dst=dst)
        step = _transpose_step(rows, max(_itemsize(src), itemsize), _CHUNK_BYTES)
        for start in range(0, cols, step):
            stop = min(cols, start + step)
            yield _Piece(
                offset + start * rows * itemsize,
                (stop - start) * rows * itemsize,
                fill=functools.partial(fill, start=start, stop=stop),
            )
        return
    flat = np.ascontiguousarray(entry.map()).reshape(-1)
    step = max(1, _CHUNK_BYTES // max(_itemsize(src), itemsize))
    for start in range(0, flat.size, step):
        part = flat[start : start + step]
        yield _Piece(
            offset + start * itemsize,
            part.size * itemsize,
            fill=functools.partial(_fill_cast, flat=part, src=src, dst=dst),
        )


def _write_pieces(
    fd: int, pieces: Iterable[_Piece], pool: ThreadPoolExecutor, ahead: int, on_bytes: Callable[[int], object]
) -> None:
    """Write `pieces` into `fd`: worker threads fill buffers (`ahead` pieces at most) while this thread writes the
    filled ones in order. Page-cache writes stay on this one thread: the file system takes one writer per
    file, and concurrent writers here only contend in the kernel. The first error stops the work and is
    raised once no worker is touching a buffer."""
    free: list[bytearray] = []
    pending: collections.deque[tuple[_Piece, Future | None, bytearray | None]] = collections.deque()

    def write_oldest() -> None:
        piece, future, buffer = pending.popleft()
        if piece.copy_from is not None:
            _copy_range(piece.copy_from[0], piece.copy_from[1], piece.nbytes, fd, piece.offset)
        else:
            future.result()
            _pwrite_all(fd, memoryview(buffer)[: piece.nbytes], piece.offset)
            free.append(buffer)
        on_bytes(piece.nbytes)

    try:
        for piece in pieces:
            if len(pending) >= ahead:
                write_oldest()
            if piece.copy_from is not None:
                pending.append((piece, None, None))
                continue
            buffer = free.pop() if free else bytearray(0)
            if len(buffer) < piece.nbytes:
                buffer = bytearray(max(piece.nbytes, _CHUNK_BYTES))
            pending.append((piece, pool.submit(piece.fill, memoryview(buffer)[: piece.nbytes]), buffer))
        while pending:
            write_oldest()
    except BaseException:
        futures = [future for _, future, _ in pending if future is not None]
        for future in futures:
            future.cancel()
        futures_wait(futures)  # the running ones (a chunk each) finish before the caller removes the files
        raise


def _workers() -> int:
    """Threads for converting: the CPUs this process may use, at most 8 (past that the disk is the limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


# ---------------------------------------------------------------------------------------------------- shards


def parse_size(size: int | str) -> int:
    """ "5GB" -> 5e9, "500MB", "2GiB", "100KB" or an int -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ConversionError(f"max shard size {size!r}: expected a number of bytes or e.g. '5GB', '500MB'")
    unit = (match.group(2) or "B").upper()
    powers = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    if unit not in powers:
        raise ConversionError(f"max shard size {size!r}: unknown unit {match.group(2)!r}")
    return int(float(match.group(1)) * powers[unit])


def _shard(items: Sequence[_Item], max_shard_size: int) -> list[list[_Item]]:
    """Consecutive groups of at most `max_shard_size` bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[_Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def _progress_bar(total: int):
    from tqdm import tqdm  # imported only when shown (its import is a fifth of the converter's start-up)

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting", disable=None)


def _write_weights(folder: Path, items: Sequence[_Item], layout: str, max_shard_size: int, progress: bool) -> list[str]:
    """Write the weights (one file, or shards + `model.safetensors.index.json`); returns the file names.

    Each file gets its header (computed from the shapes), then its tensors in chunks that `_workers()`
    threads transpose / cast while this thread writes. Memory: the mapped pages of the tensors being worked
    on plus a few chunk buffers per thread, whatever the model size."""
    shards = _shard(items, max_shard_size)
    total = sum(item.nbytes for item in items)
    names = _shard_names(len(shards))
    bar = _progress_bar(total) if progress else contextlib.nullcontext()
    on_bytes = bar.update if progress else (lambda n: None)
    workers = _workers()
    with bar, ThreadPoolExecutor(workers, thread_name_prefix="paddle_qwen2-convert") as pool:
        for name, shard in zip(names, shards):
            header = _safetensors_header(shard, layout)
            offsets = itertools.accumulate([item.nbytes for item in shard], initial=len(header))
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_all(fd, header, 0)
                pieces = (piece for item, offset in zip(shard, offsets) for piece in _item_pieces(item, offset))
                _write_pieces(fd, pieces, pool, _AHEAD * workers, on_bytes)
            finally:
                os.close(fd)
    return names + _write_index(folder, names, shards)


def _shard_names(count: int) -> list[str]:
    """`model.safetensors`, or `model-0000k-of-0000n.safetensors` (paddlenlp's and transformers' names)."""
    return (
        [SAFE_WEIGHTS_NAME] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    )


def _write_index(folder: Path, names: list[str], shards: list[list]) -> list[str]:
    """`model.safetensors.index.json` for more than one shard; returns the file names written."""
    if len(shards) < 2:
        return []
    index = {
        "metadata": {"total_size": sum(item.nbytes for shard in shards for item in shard)},
        "weight_map": {item.name: name for name, shard in zip(names, shards) for item in shard},
    }
    with open(folder / SAFE_WEIGHTS_INDEX_NAME, "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2) + "\n")
    return [SAFE_WEIGHTS_INDEX_NAME]


# safetensors writes a file's tensors by dtype (this order, largest first), then by name
_SAFETENSORS_DTYPES = [
    "BOOL",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "F64",
]
_SAFETENSORS_DTYPES += ["I64", "U64"]


@dataclass
class MemoryTensor:
    """A tensor to write from memory: `read()` returns its C-contiguous array (bfloat16 as uint16 bits); it is called
    once, when the tensor is written, so only one tensor is copied out at a time."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def write_safetensors(folder: Path, tensors: Sequence[MemoryTensor], layout: str, max_shard_size: int) -> list[str]:
    """Write `tensors` as safetensors files in `folder` (one file, or shards in the given order + the index), the
    bytes the safetensors library writes for the same tensors, streaming: each file's header first (from the shapes),
    then one tensor at a time. Returns the file names."""
    shards = _shard(tensors, max_shard_size)
    names = _shard_names(len(shards))
    for name, shard in zip(names, shards):
        ordered = sorted(shard, key=lambda t: (-_SAFETENSORS_DTYPES.index(_disk_code(t.dtype, layout)), t.name))
        header = _safetensors_header(ordered, layout)
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, header, 0)
            offset = len(header)
            for tensor in ordered:
                array = tensor.read()
                if array.nbytes != tensor.nbytes:
                    raise ConversionError(f"tensor {tensor.name!r}: {array.nbytes} bytes, expected {tensor.nbytes}")
                _pwrite_all(fd, memoryview(np.ascontiguousarray(array)).cast("B"), offset)
                offset += tensor.nbytes
        finally:
            os.close(fd)
    return names + _write_index(folder, names, shards)
