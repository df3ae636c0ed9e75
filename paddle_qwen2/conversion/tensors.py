"""`TensorEntry`: where one tensor of a weights file lies and how to read or memory-map it (both readers,
safetensors and PyTorch, produce these)."""

from __future__ import annotations

import math
import mmap
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from .dtypes import _itemsize, _LazyNumpy, _np_dtype
from .errors import ConversionError

np = _LazyNumpy(globals())


@dataclass
class TensorEntry:
    """One tensor in a weights file. `dtype` is the logical code (a Paddle file's U16 is BF16).

    The bytes at `offset` (`read_nbytes` of them, stored as `storage_code`) hold the tensor; for a PyTorch
    storage `view = (element offset, element strides)` locates the tensor inside them and `crc` is the
    zip CRC-32 the bytes must match."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    read_nbytes: int
    storage_code: str
    view: tuple[int, tuple[int, ...]] | None = None
    crc: int | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def is_plain(self) -> bool:
        """The file bytes are exactly the tensor's bytes (they may be copied file to file)."""
        return self.view is None and self.crc is None

    def read(self) -> np.ndarray:
        """The tensor (bfloat16 as uint16) in a new C-contiguous array the caller owns."""
        raw = np.empty(self.read_nbytes, np.uint8)
        _read_exact(self.file, self.offset, raw)
        tensor = self._from_bytes(raw)
        if tensor.nbytes != raw.nbytes or not tensor.flags.c_contiguous:  # a part of a PyTorch storage
            tensor = np.array(tensor, order="C")
        return tensor

    def map(self) -> np.ndarray:
        """The tensor as a read-only view of the memory-mapped file (no copy); the mapping lives as long as
        the returned array."""
        if self.read_nbytes == 0:
            return np.empty(self.shape, _np_dtype(self.storage_code))
        return self._from_bytes(np.frombuffer(self.mapped_bytes(), np.uint8))

    def mapped_bytes(self) -> memoryview:
        """The `read_nbytes` bytes at `offset`, memory-mapped read-only (no copy, no numpy); the mapping lives
        as long as the returned view (or anything made from it)."""
        if self.read_nbytes == 0:
            return memoryview(b"")
        aligned = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        with open(self.file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < self.offset + self.read_nbytes:
                raise ConversionError(
                    f"{self.file}: truncated: file ends at byte {size}, tensor data needs "
                    f"{self.offset + self.read_nbytes}"
                )
            length = self.offset + self.read_nbytes - aligned
            mapping = mmap.mmap(f.fileno(), length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=aligned)
        return memoryview(mapping)[self.offset - aligned :]

    def _from_bytes(self, raw: np.ndarray) -> np.ndarray:
        """The tensor inside the bytes read for it (checked against the zip CRC-32 when there is one)."""
        if self.crc is not None and zlib.crc32(raw) != self.crc:
            raise ConversionError(f"{self.file}: corrupted data for tensor {self.name!r} (CRC-32 mismatch)")
        data = raw.view(_np_dtype(self.storage_code))
        if self.view is None:
            return data.reshape(self.shape)
        start, strides = self.view
        if math.prod(self.shape) == 0:
            return np.empty(self.shape, data.dtype)
        itemsize = data.itemsize
        return np.lib.stride_tricks.as_strided(
            data[start:], self.shape, tuple(s * itemsize for s in strides), writeable=False
        )


def _read_exact(path: Path, offset: int, out: np.ndarray) -> None:
    view = memoryview(out).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise ConversionError(
                    f"{path}: truncated: file ends at byte {offset + got}, tensor data needs {offset + len(view)}"
                )
            got += n
