"""Reading PyTorch `torch.save` zip archives (`pytorch_model.bin`) without torch: torch is never imported.

The pickle goes through a restricted unpickler that only rebuilds tensors: only the globals in
`_RestrictedUnpickler._ALLOWED` and the torch storage types are honoured; anything else is refused, so a
malicious pickle cannot run code. Tensor data is not read here: each tensor becomes a `TensorEntry` pointing
at its storage's stored (uncompressed) zip member, with its view and the member's CRC-32.
"""

from __future__ import annotations

import collections
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .dtypes import _itemsize
from .errors import ConversionError
from .tensors import TensorEntry

_TORCH_STORAGES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _StorageType:
    code: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    code: str
    numel: int


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_unused) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("parameter without a tensor")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a `torch.save`d state dict into `_TensorRef`s without torch and without executing globals."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        raise ConversionError(
            f"{self.source}: refusing to unpickle global {module}.{name}: only tensors (torch storages, "
            "_rebuild_tensor_v2, OrderedDict) are allowed in a weights file"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ConversionError(f"{self.source}: unsupported persistent id in pickle: {pid!r:.80}")
        return _StorageRef(str(pid[2]), pid[1].code, int(pid[4]))


def _torch_entries(path: Path) -> list[TensorEntry]:
    """Entries of a `torch.save` zip archive (`<prefix>/data.pkl` + one stored entry `<prefix>/data/<key>` per
    storage), in the pickle's order, without reading any tensor data."""
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: not a PyTorch zip checkpoint (truncated or corrupted file, or the pre-1.6 torch.save format)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            pickles = [name for name in infos if name.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ConversionError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            if prefix + "byteorder" in infos and zf.read(prefix + "byteorder") != b"little":
                raise ConversionError(f"{path}: big-endian checkpoints are not supported")
            state = _RestrictedUnpickler(zf.open(pickles[0]), path).load()
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zlib.error, ValueError) as exc:
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"{path}: corrupted PyTorch checkpoint ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise ConversionError(f"{path}: expected a flat dict of tensor name -> tensor")
    entries = []
    with open(path, "rb") as f:
        for name, ref in state.items():
            info = infos.get(f"{prefix}data/{ref.storage.key}")
            if info is None or info.file_size != ref.storage.numel * _itemsize(ref.storage.code):
                raise ConversionError(f"{path}: storage of tensor {name!r} is missing or has the wrong size")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ConversionError(
                    f"{path}: storage of tensor {name!r} is compressed; torch.save stores them plainly"
                )
            numel = math.prod(ref.shape)
            extent = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride)) + 1 if numel else 0
            if ref.offset < 0 or extent > ref.storage.numel or any(s < 0 for s in ref.stride):
                raise ConversionError(f"{path}: tensor {name!r} lies outside its storage")
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise ConversionError(f"{path}: corrupted zip entry {info.filename}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            view = (ref.offset, ref.stride)
            entries.append(
                TensorEntry(
                    name, ref.storage.code, ref.shape, path, offset, info.file_size, ref.storage.code, view, info.CRC
                )
            )
    return entries
