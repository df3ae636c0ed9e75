"""The tensors of a checkpoint folder in the Paddle layout, one at a time, for `from_pretrained`.

`checkpoint_tensors(folder)` lists what a folder holds, HF (converted on the fly: Paddle names, Linear weights
transposed to `[in, out]`) or Paddle (paddlenlp's safetensors, as they are); nothing is read yet. Each
`SourceTensor.read(dtype)` then memory-maps its bytes and returns a new C-contiguous array in the Paddle layout and
the requested dtype: a bfloat16 file becomes float32 tensor by tensor, so loading never holds more than the model
plus the tensor in flight. No paddle, no torch.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import writer
from .checkpoint import PathLike, _read_json, detect_layout, open_checkpoint
from .dtypes import _LazyNumpy, _np_dtype, cast_array
from .errors import ConversionError
from .names import CONFIG_NAME, ModelDims, _architecture
from .plan import _plan
from .tensors import TensorEntry
from .writer import _CHUNK_BYTES, _fill_transposed, _transpose_step

np = _LazyNumpy(globals())

__all__ = ["SourceTensor", "checkpoint_tensors"]

_MAPPED_MIN_BYTES = 1 << 20  # arrays this large get their own mapping (see `aligned_empty`)
Selection = tuple[int, list[tuple[int, int]]]  # (axis of the Paddle layout, [(start, stop), ...]) to keep


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of a checkpoint: its Paddle name (as the checkpoint's own architecture names it), where its bytes
    are, and whether it is stored transposed (an HF Linear weight, `[out, in]`)."""

    name: str
    entry: TensorEntry
    transpose: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape in the Paddle layout."""
        return self.entry.shape[::-1] if self.transpose else self.entry.shape

    @property
    def dtype(self) -> str:
        """The stored dtype code ("F32", "BF16", ...)."""
        return self.entry.dtype

    def read(self, dtype: str | None = None, select: Selection | None = None) -> np.ndarray:
        """The tensor in the Paddle layout as a new C-contiguous, page-aligned array the caller owns, cast to the
        dtype code `dtype` (default: as stored; bfloat16 is returned as its uint16 bits; bfloat16 -> float32 is
        exact). Aligned as Paddle aligns its own allocations: MKL's float rounding can depend on the alignment.

        `select = (axis, [(start, stop), ...])` keeps only those ranges along `axis` of the Paddle layout (a
        tensor-parallel rank's shard): only they are read from the file."""
        source = self.entry.map()
        if select is not None:
            source = _select(source, *select, transposed=self.transpose)
        target = dtype or self.entry.dtype
        out = aligned_empty(source.shape[::-1] if self.transpose else source.shape, _np_dtype(target))
        if self.transpose:
            _transpose_into(source, out, self.entry.dtype, target)
        else:
            _converter(self.entry.dtype, target)(source, out)
        return out


def _converter(src: str, dst: str) -> Callable[[np.ndarray, np.ndarray], None]:
    """`convert(a, out)`: `out[...] = a` cast from dtype code `src` to `dst` (exact, as `cast_array`)."""
    if src == dst:
        return lambda a, out: np.copyto(out, a)
    if (src, dst) == ("BF16", "F32"):  # the bits are the top half of the float32: one pass
        return lambda a, out: np.left_shift(a, np.uint32(16), out=out.view(np.uint32), dtype=np.uint32)
    return lambda a, out: np.copyto(out, cast_array(a, src, dst))


def _transpose_into(source: np.ndarray, out: np.ndarray, src: str, dst: str) -> None:
    """`out[...] = source.T` cast from dtype code `src` to `dst`, a chunk of the transpose's rows at a time (the
    pages stay in the TLB). bfloat16 -> float32 goes through the C kernel in one pass where it is built; otherwise
    each chunk is transposed into one small buffer (it stays in cache) and cast from there."""
    rows, cols = source.shape
    kernel = writer._simd_transpose
    if kernel is not None and (src, dst) == ("BF16", "F32") and source.flags.c_contiguous and out.flags.c_contiguous:
        step = _transpose_step(rows, 4, _CHUNK_BYTES)
        for start in range(0, cols, step):
            stop = min(cols, start + step)
            kernel.transpose_columns_bf16_to_f32(out[start:stop], source, rows, cols, start, stop)
        return
    convert = _converter(src, dst)
    step = _transpose_step(rows, source.itemsize, _CHUNK_BYTES)
    chunk = np.empty((min(step, cols), rows), source.dtype)
    for start in range(0, cols, step):
        stop = min(cols, start + step)
        _fill_transposed(chunk[: stop - start], source, start, stop, None)
        convert(chunk[: stop - start], out[start:stop])


def _select(source: np.ndarray, axis: int, ranges: list[tuple[int, int]], transposed: bool) -> np.ndarray:
    """The `ranges` along `axis` of the Paddle layout, from the stored array (transposed: the other axis)."""
    axis %= source.ndim
    if transposed:
        axis = source.ndim - 1 - axis
    pieces = [source[start:stop] if axis == 0 else source[:, start:stop] for start, stop in ranges]
    return np.ascontiguousarray(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces, axis=axis)


def aligned_empty(shape: tuple[int, ...], dtype: str, alignment: int = 4096) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `alignment`-byte boundary.

    Arrays of `_MAPPED_MIN_BYTES` or more get their own private anonymous mapping (page-aligned, freed with the
    array) in small pages. numpy's allocator would mark them for transparent huge pages (`MADV_HUGEPAGE`), and
    on a VM that hands freed memory back to its host each first touch of a huge page then stalls in the kernel,
    most after another process has freed its memory. Small pages are also what Paddle's own allocations and
    PyTorch's get."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= max(1, _MAPPED_MIN_BYTES) and mmap.PAGESIZE % alignment == 0 and hasattr(mmap, "MAP_PRIVATE"):
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(mapping, dtype, math.prod(shape)).reshape(shape)
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def checkpoint_tensors(
    folder: PathLike, dims: ModelDims | None = None, check_shapes: bool = True
) -> tuple[list[SourceTensor], list[str]]:
    """Every tensor of the checkpoint in `folder` with its Paddle name, in file order, and notes on what was left
    out (tensors the other layout does not store). HF folders: names and shapes as the converter maps them, checked
    against `dims` (the config the model is built from; the folder's own config.json when `dims` is None or
    `check_shapes` is False). Paddle folders: paddlenlp's safetensors names as they are."""
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout is None:
        raise ConversionError(f"{folder}: no weights file (safetensors or pytorch_model.bin)")
    checkpoint = open_checkpoint(folder, layout)
    if layout == "paddle":
        return [SourceTensor(name, entry, False) for name, entry in checkpoint.entries.items()], []
    file_config = _read_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else {}
    architecture = _architecture(file_config, list(checkpoint.entries), "hf")
    if (dims is None or not check_shapes) and file_config:
        dims = ModelDims.from_config(file_config, str(folder / CONFIG_NAME))
    if dims is None:
        raise ConversionError(f"{folder / CONFIG_NAME}: file not found (needed for the tensor shapes)")
    notes: list[str] = []
    items = _plan(checkpoint, architecture, dims, to_paddle=True, dtype=None, strict=False, notes=notes)
    return [SourceTensor(item.name, item.entry, item.transpose) for item in items], notes
