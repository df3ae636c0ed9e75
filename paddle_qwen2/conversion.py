"""HF <-> Paddle checkpoint conversion: streaming, exact, safe.

A checkpoint folder holds `config.json`, the weights and tokenizer / generation files. The two layouts:

- HF (transformers): names `model.layers.0.self_attn.q_proj.weight` (`transformer.` for the QA head, no prefix
  for a bare `Qwen2Model`), Linear weights `[out, in]`, files `model.safetensors` or shards named in
  `model.safetensors.index.json`, or the PyTorch pickles `pytorch_model.bin` / `pytorch_model.bin.index.json`.
- Paddle (paddlenlp): names `qwen2.layers.0.self_attn.q_proj.weight`, Linear weights `[in, out]`, files as
  paddlenlp's `save_pretrained(safe_serialization=True)` writes them (`model.safetensors` or
  `model-00001-of-0000N.safetensors` + `model.safetensors.index.json`, metadata `{"format": "np"}`, bfloat16
  stored as its uint16 bit pattern because numpy has no bfloat16).

`HF_ARCHITECTURES` and `name_rows` are the one table of names and transposes; `Qwen2PretrainedModel.
_get_name_mappings` (modeling.py) is built from them. This module imports neither paddle nor torch, so the
converter starts fast and its memory stays near one tensor: tensors are memory-mapped one at a time
(safetensors headers are parsed here; PyTorch zip archives go through a restricted unpickler that only
rebuilds tensors), unchanged tensors are copied file to file by the kernel, and the rest is cut into chunks
that worker threads transpose (the C kernel in `_transpose.c` when built, else numpy) while the main thread
writes them in place (each file's header is computed up front from the shapes). numpy itself is imported
only when needed (casts, PyTorch files, no C kernel). Output goes to a temporary folder beside DST that is
renamed into place at the end, so an interrupted run leaves no DST.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import mmap
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
import warnings
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union



class _LazyNumpy:
    """`numpy`, imported on first use: converting a safetensors checkpoint with the C transpose kernel never
    needs it, and importing it is a sixth of the time it takes to convert 1 GB here."""

    def __getattr__(self, name: str):
        import numpy

        globals()["np"] = numpy  # later lookups find the module itself
        return getattr(numpy, name)


np = _LazyNumpy()

__all__ = [
    "ConversionError",
    "HeadSpec",
    "HF_ARCHITECTURES",
    "ModelDims",
    "ConversionSummary",
    "name_rows",
    "expected_hf_shape",
    "detect_layout",
    "read_paddle_state_dict",
    "convert_checkpoint",
    "parse_size",
    "cast_array",
]

PathLike = Union[str, "os.PathLike[str]"]
Row = Tuple[str, str, Optional[str]]  # (hf_name, paddle_name, action: "transpose" or None)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
TRANSPOSE = "transpose"


class ConversionError(ValueError):
    """Bad input for a conversion; the message names the file / tensor and what was expected."""


# ----------------------------------------------------------------------------------------------------------------
# Names: the single table of HF <-> Paddle names and transposes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """How an HF architecture names its tensors: the attribute holding the base model (`hf_prefix`, "" for
    the bare base model) and the head's own rows `(hf_name, paddle_name, action)`."""

    hf_prefix: str
    head_mappings: Tuple[Row, ...] = ()


HF_ARCHITECTURES: Dict[str, HeadSpec] = {
    "Qwen2Model": HeadSpec(""),
    "Qwen2ForCausalLM": HeadSpec("model", (("lm_head.weight", "lm_head.weight", TRANSPOSE),)),
    "Qwen2ForSequenceClassification": HeadSpec("model", (("score.weight", "score.weight", TRANSPOSE),)),
    "Qwen2ForTokenClassification": HeadSpec(
        "model", (("score.weight", "score.weight", TRANSPOSE), ("score.bias", "score.bias", None))
    ),
    # transformers keeps the `transformer` attribute on its QA head for backward compatibility.
    "Qwen2ForQuestionAnswering": HeadSpec(
        "transformer", (("qa_outputs.weight", "qa_outputs.weight", TRANSPOSE), ("qa_outputs.bias", "qa_outputs.bias", None))
    ),
}
# Paddle-only models and the HF architecture their weights are written as.
PADDLE_ONLY_ARCHITECTURES = {"Qwen2SentenceEmbedding": "Qwen2Model"}
PADDLE_BASE_PREFIX = "qwen2"


def _base_rows(num_hidden_layers: int) -> List[Tuple[str, Optional[str]]]:
    """Base-model tensor names (no prefix) and whether each is an nn.Linear weight (transposed)."""
    rows: List[Tuple[str, Optional[str]]] = [("embed_tokens.weight", None), ("norm.weight", None)]
    for i in range(num_hidden_layers):
        prefix = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            rows.append((f"{prefix}self_attn.{proj}.weight", TRANSPOSE))
            rows.append((f"{prefix}self_attn.{proj}.bias", None))
        rows.append((f"{prefix}self_attn.o_proj.weight", TRANSPOSE))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            rows.append((f"{prefix}mlp.{proj}.weight", TRANSPOSE))
        rows.append((f"{prefix}input_layernorm.weight", None))
        rows.append((f"{prefix}post_attention_layernorm.weight", None))
    return rows


def name_rows(
    num_hidden_layers: int, tie_word_embeddings: bool, hf_prefix: Optional[str], head_mappings: Sequence[Row] = ()
) -> List[Row]:
    """HF name -> Paddle name rows `(hf_name, paddle_name, action)`; action "transpose" marks nn.Linear weights
    (HF `[out, in]`, Paddle `[in, out]`).

    `hf_prefix=None` is the bare base model (same names on both sides, no prefix); otherwise HF names get
    `{hf_prefix}.` and Paddle names `qwen2.`, followed by the head's rows (`lm_head.weight` is left out when the
    embeddings are tied: neither side stores it then).
    """
    base = _base_rows(num_hidden_layers)
    if hf_prefix is None:
        return [(name, name, action) for name, action in base]
    hf = f"{hf_prefix}." if hf_prefix else ""
    rows = [(f"{hf}{name}", f"{PADDLE_BASE_PREFIX}.{name}", action) for name, action in base]
    rows += [tuple(row) for row in head_mappings if not (tie_word_embeddings and row[0] == "lm_head.weight")]
    return rows


@dataclass(frozen=True)
class ModelDims:
    """The config values that fix tensor names and shapes."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    num_labels: int = 2

    @classmethod
    def from_config(cls, config: Union[Mapping, object], where: str = CONFIG_NAME) -> "ModelDims":
        """From a config.json dict or a config object (attributes)."""
        get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        values = {}
        for key in required:
            value = get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConversionError(f"{where}: {key!r} must be a positive integer, got {value!r}")
            values[key] = value
        heads = values["num_attention_heads"]
        num_labels = get("num_labels")
        if num_labels is None:
            id2label = get("id2label")
            num_labels = len(id2label) if id2label else 2
        return cls(
            num_key_value_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or values["hidden_size"] // heads,
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            num_labels=int(num_labels),
            **values,
        )


def expected_hf_shape(hf_name: str, dims: ModelDims) -> Tuple[int, ...]:
    """Shape of `hf_name` in an HF checkpoint of `dims` (Linear weights `[out, in]`)."""
    h, v, i = dims.hidden_size, dims.vocab_size, dims.intermediate_size
    q, kv = dims.num_attention_heads * dims.head_dim, dims.num_key_value_heads * dims.head_dim
    shapes = {
        "embed_tokens.weight": (v, h),
        "lm_head.weight": (v, h),
        "norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "q_proj.weight": (q, h),
        "q_proj.bias": (q,),
        "k_proj.weight": (kv, h),
        "k_proj.bias": (kv,),
        "v_proj.weight": (kv, h),
        "v_proj.bias": (kv,),
        "o_proj.weight": (h, q),
        "gate_proj.weight": (i, h),
        "up_proj.weight": (i, h),
        "down_proj.weight": (h, i),
        "score.weight": (dims.num_labels, h),
        "score.bias": (dims.num_labels,),
        "qa_outputs.weight": (2, h),
        "qa_outputs.bias": (2,),
    }
    return shapes[".".join(hf_name.split(".")[-2:])]


def conversion_rows(architecture: str, dims: ModelDims) -> List[Row]:
    """Rows for the weights of a checkpoint of `architecture` (HF or Paddle class name)."""
    if architecture in PADDLE_ONLY_ARCHITECTURES:  # Paddle `qwen2.*` <-> HF bare base model
        return [(hf, f"{PADDLE_BASE_PREFIX}.{pd}", a) for hf, pd, a in name_rows(dims.num_hidden_layers, False, None)]
    spec = HF_ARCHITECTURES[architecture]
    hf_prefix = None if architecture == "Qwen2Model" else spec.hf_prefix
    return name_rows(dims.num_hidden_layers, dims.tie_word_embeddings, hf_prefix, spec.head_mappings)


def _infer_architecture(names: Sequence[str], layout: str) -> str:
    """The architecture whose head tensors appear in `names` (tied causal LM when only the base is there)."""
    names = set(names)
    if any(n.startswith("transformer.") or n.startswith("qa_outputs.") for n in names):
        return "Qwen2ForQuestionAnswering"
    if "score.bias" in names:
        return "Qwen2ForTokenClassification"
    if "score.weight" in names:
        return "Qwen2ForSequenceClassification"
    if "lm_head.weight" in names:
        return "Qwen2ForCausalLM"
    prefix = "model." if layout == "hf" else f"{PADDLE_BASE_PREFIX}."
    if any(n.startswith(prefix) for n in names):
        return "Qwen2ForCausalLM"
    return "Qwen2Model"


def _architecture(config: Mapping, names: Sequence[str], layout: str) -> str:
    declared = (config.get("architectures") or [None])[0]
    known = set(HF_ARCHITECTURES) | (set(PADDLE_ONLY_ARCHITECTURES) if layout == "paddle" else set())
    return declared if declared in known else _infer_architecture(names, layout)


# ----------------------------------------------------------------------------------------------------------------
# dtypes: safetensors codes; bfloat16 travels as its raw uint16 bit pattern (numpy has no bfloat16)
# ----------------------------------------------------------------------------------------------------------------

_STORAGE = {  # code -> (numpy dtype name, itemsize)
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("uint16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
CODE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _itemsize(code: str) -> int:
    return _STORAGE[code][1]


def _np_dtype(code: str) -> str:
    return _STORAGE[code][0]


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits; NaN -> 0x7FC0 (what torch does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def cast_array(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast between float codes ("F64", "F32", "F16", "BF16"; BF16 as uint16 bits) with round-to-nearest-even,
    bit-identical to torch's `.to(dtype)` (values beyond the target's range become inf, as there)."""
    if src == dst:
        return array
    with np.errstate(over="ignore"):  # float64 goes through float32, as torch's scalar conversions do
        as_f32 = _bf16_to_f32(array) if src == "BF16" else array.astype(np.float32, copy=False)
    if dst == "BF16":
        return _f32_to_bf16(as_f32)
    with np.errstate(over="ignore"):
        return as_f32.astype(_np_dtype(dst))


# ----------------------------------------------------------------------------------------------------------------
# Reading: safetensors (own header parser: numpy cannot hold BF16 through safe_open) and PyTorch zip archives
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TensorEntry:
    """One tensor in a weights file. `dtype` is the logical code (a Paddle file's U16 is BF16).

    The bytes at `offset` (`read_nbytes` of them, stored as `storage_code`) hold the tensor; for a PyTorch
    storage `view = (element offset, element strides)` locates the tensor inside them and `crc` is the
    zip CRC-32 the bytes must match."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    file: Path
    offset: int
    read_nbytes: int
    storage_code: str
    view: Optional[Tuple[int, Tuple[int, ...]]] = None
    crc: Optional[int] = None

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
                raise ConversionError(f"{self.file}: truncated: file ends at byte {size}, tensor data needs {self.offset + self.read_nbytes}")
            length = self.offset + self.read_nbytes - aligned
            mapping = mmap.mmap(f.fileno(), length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=aligned)
        return memoryview(mapping)[self.offset - aligned:]

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
                raise ConversionError(f"{path}: truncated: file ends at byte {offset + got}, tensor data needs {offset + len(view)}")
            got += n


_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> Tuple[dict, int]:
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


def _safetensors_entries(path: Path, layout: str) -> List[TensorEntry]:
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
            raise ConversionError(f"{path}: corrupted safetensors header: tensor {name!r} starts at {begin}, expected {position}")
        position = end
    if position > data_size:
        raise ConversionError(
            f"{path}: truncated safetensors file: tensor data needs {position} bytes, the file has {data_size}"
        )
    if position < data_size:
        raise ConversionError(f"{path}: corrupted safetensors file: {data_size - position} bytes after the last tensor")
    return [
        TensorEntry(name, "BF16" if (layout == "paddle" and code == "U16") else code, shape, path, data_start + begin,
                    end - begin, code)
        for begin, end, name, code, shape in spans
    ]


# PyTorch `torch.save` zip archives. Only these pickle globals are honoured; anything else is refused, so a
# malicious pickle cannot run code.
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
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


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


def _torch_entries(path: Path) -> List[TensorEntry]:
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
                raise ConversionError(f"{path}: storage of tensor {name!r} is compressed; torch.save stores them plainly")
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
            entries.append(TensorEntry(name, ref.storage.code, ref.shape, path, offset, info.file_size, ref.storage.code, view, info.CRC))
    return entries


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint folders
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The weights of a folder: entries (name -> TensorEntry, in file order) and the files they came from."""

    folder: Path
    layout: str  # "hf" or "paddle"
    files: List[Path]
    entries: Dict[str, TensorEntry]
    kind: str  # e.g. "safetensors", "sharded safetensors (3 files)", "pytorch .bin"


def _weights_candidates(layout: str) -> List[str]:
    if layout == "hf":  # transformers' order of preference
        return [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME]
    return [SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME]  # paddlenlp's order


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _index_shards(index_path: Path) -> Dict[str, List[str]]:
    """shard file name -> tensor names, from an index's weight_map (shards must sit in the same folder)."""
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index_path}: no 'weight_map' (tensor name -> shard file)")
    shards: Dict[str, List[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ConversionError(f"{index_path}: tensor {name!r} maps to {shard!r}, expected a file name in the folder")
        if not (index_path.parent / shard).is_file():
            raise ConversionError(f"{index_path}: names shard {shard!r} (for {name!r}) which does not exist")
        shards.setdefault(shard, []).append(name)
    return dict(sorted(shards.items()))


def _file_entries(path: Path, layout: str) -> List[TensorEntry]:
    return _safetensors_entries(path, layout) if path.name.endswith(".safetensors") else _torch_entries(path)


def open_checkpoint(folder: PathLike, layout: str) -> Checkpoint:
    """Index the weights of `folder` (headers only, no tensor data is read). Follows an index file when
    present; every tensor the index lists must be in its shard and every tensor of a shard in the index."""
    folder = Path(folder)
    found = [name for name in _weights_candidates(layout) if (folder / name).is_file()]
    if not found:
        expected = ", ".join(_weights_candidates(layout))
        hint = ""
        if layout == "paddle" and any(folder.glob("*.pdparams")):
            hint = "; .pdparams is not supported: save with save_pretrained(..., safe_serialization=True)"
        raise ConversionError(f"{folder}: no weights file (expected one of {expected}){hint}")
    chosen = folder / found[0]
    if chosen.name.endswith(".index.json"):
        shards = _index_shards(chosen)
        files = [folder / shard for shard in shards]
        kind = f"sharded {'safetensors' if chosen.name.startswith('model.') else 'pytorch .bin'} ({len(files)} files)"
    else:
        shards, files = None, [chosen]
        kind = "safetensors" if chosen.name.endswith(".safetensors") else "pytorch .bin"
    entries: Dict[str, TensorEntry] = {}
    for path in files:
        file_entries = _file_entries(path, layout)
        names = {e.name for e in file_entries}
        if shards is not None:
            listed = set(shards[path.name])
            if listed - names:
                raise ConversionError(f"{chosen}: lists {sorted(listed - names)[:3]} in {path.name}, which does not hold them")
            if names - listed:
                raise ConversionError(f"{path}: holds {sorted(names - listed)[:3]}, which {chosen.name} does not list")
        for entry in file_entries:
            if entry.name in entries:
                raise ConversionError(f"{path}: tensor {entry.name!r} also appears in {entries[entry.name].file.name}")
            entries[entry.name] = entry
    return Checkpoint(folder, layout, files, entries, kind)


def _tensor_names(folder: Path) -> Tuple[List[str], dict]:
    """Names in the first safetensors file (or index) of `folder` and that file's metadata ({} for an index)."""
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return list(_read_json(folder / SAFE_WEIGHTS_INDEX_NAME).get("weight_map") or {}), {}
    header, _ = read_safetensors_header(folder / SAFE_WEIGHTS_NAME)
    metadata = header.pop("__metadata__", None) or {}
    return list(header), metadata


def detect_layout(folder: PathLike) -> Optional[str]:
    """"hf" or "paddle" for a Qwen2 checkpoint folder, None when it holds no weights file we know.

    PyTorch pickles are HF. For safetensors, names under `model.` / `transformer.` are HF and under `qwen2.`
    Paddle; a bare base model is told apart by the MLP orientation (`gate_proj.weight` is
    `[intermediate, hidden]` in HF) and, for a square MLP, by the file metadata ("pt" is HF).
    """
    folder = Path(folder)
    has_safe = (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
    if not has_safe:
        has_torch = (folder / TORCH_WEIGHTS_NAME).is_file() or (folder / TORCH_WEIGHTS_INDEX_NAME).is_file()
        return "hf" if has_torch else None
    names, metadata = _tensor_names(folder)
    if any(n.startswith(f"{PADDLE_BASE_PREFIX}.") for n in names):
        return "paddle"
    if any(n.startswith("model.") or n.startswith("transformer.") for n in names):
        return "hf"
    if (folder / CONFIG_NAME).is_file() and "layers.0.mlp.gate_proj.weight" in names:
        config = _read_json(folder / CONFIG_NAME)
        entries = open_checkpoint(folder, "hf").entries
        shape = entries["layers.0.mlp.gate_proj.weight"].shape
        hf_shape = (config.get("intermediate_size"), config.get("hidden_size"))
        if hf_shape[0] != hf_shape[1]:
            return "hf" if tuple(shape) == hf_shape else "paddle"
    return "hf" if metadata.get("format") == "pt" else "paddle"


# ----------------------------------------------------------------------------------------------------------------
# Planning: map names, check every tensor against the config before anything is written
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One output tensor: where it comes from and how it is transformed."""

    entry: TensorEntry
    name: str
    dtype: str
    shape: Tuple[int, ...]
    transpose: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def unchanged(self) -> bool:
        """The output bytes are the file's bytes (copied file to file, never read into memory)."""
        return self.entry.is_plain and not self.transpose and self.dtype == self.entry.dtype


def _plan(
    checkpoint: Checkpoint,
    architecture: str,
    dims: ModelDims,
    to_paddle: bool,
    dtype: Optional[str],
    strict: bool = True,
    notes: Optional[List[str]] = None,
) -> List[_Item]:
    """Output items in source file order. `strict`: a missing or unexpected tensor is an error (the CLI);
    otherwise unmapped tensors are skipped and missing ones left to the loader (from_pretrained)."""
    rows = conversion_rows(architecture, dims)
    src_index = 0 if to_paddle else 1
    by_source = {row[src_index]: row for row in rows}
    entries = checkpoint.entries
    where = checkpoint.folder
    ignored = [n for n in entries if n.endswith("rotary_emb.inv_freq")]
    if dims.tie_word_embeddings and "lm_head.weight" in entries and "lm_head.weight" not in by_source:
        ignored.append("lm_head.weight")  # some tied checkpoints keep a copy; both sides read the embedding
    if notes is not None and ignored:
        notes.append(f"skipped {len(ignored)} tensor(s) not stored on the other side: {', '.join(ignored[:3])}")
    missing = [name for name in by_source if name not in entries]
    unexpected = [name for name in entries if name not in by_source and name not in ignored]
    if strict and missing:
        raise ConversionError(
            f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing in all) for {architecture} with "
            f"{dims.num_hidden_layers} layers"
        )
    if not strict and unexpected and notes is not None:
        notes.append(f"{len(unexpected)} tensor(s) not used by {architecture}: {', '.join(unexpected[:3])}")
    if strict and unexpected:
        raise ConversionError(
            f"{where}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all) for {architecture} "
            f"with {dims.num_hidden_layers} layers (tie_word_embeddings={dims.tie_word_embeddings})"
        )
    items = []
    for name, entry in entries.items():
        row = by_source.get(name)
        if row is None:
            continue
        hf_name, pd_name, action = row
        transpose = action == TRANSPOSE
        hf_shape = expected_hf_shape(hf_name, dims)
        expected = hf_shape if to_paddle else (hf_shape[::-1] if transpose else hf_shape)
        if tuple(entry.shape) != tuple(expected):
            raise ConversionError(
                f"{entry.file}: tensor {name!r} has shape {list(entry.shape)}, expected {list(expected)} from "
                f"{CONFIG_NAME} ({checkpoint.layout} layout)"
            )
        if entry.dtype not in FLOAT_CODES:
            raise ConversionError(f"{entry.file}: tensor {name!r} has dtype {entry.dtype}, expected a floating-point dtype")
        out_shape = (hf_shape[::-1] if transpose else hf_shape) if to_paddle else hf_shape
        items.append(_Item(entry, pd_name if to_paddle else hf_name, dtype or entry.dtype, tuple(out_shape), transpose))
    return items


# ----------------------------------------------------------------------------------------------------------------
# Transforming and writing
# ----------------------------------------------------------------------------------------------------------------

_CHUNK_BYTES = 4 * 1024 * 1024  # output bytes per piece a worker fills (wide chunks: fewer passes over the source)
_COPY_BYTES = 64 * 1024 * 1024  # bytes per kernel copy
_AHEAD = 2  # pieces queued per worker
_BLOCK = 64

try:  # the optional C kernel (paddle_qwen2/_transpose.c); numpy does the same work when it is not built
    from . import _transpose as _simd_transpose
except ImportError:
    _simd_transpose = None


def _fill_transposed(out: np.ndarray, array: np.ndarray, start: int, stop: int, scratch: Optional[np.ndarray]) -> None:
    """out[:] = array[:, start:stop].T for a 2-D `array`, without the GIL where it can.

    With the compiled `_transpose` module (built by `pip install`): SIMD tiles, ~3 GB/s per core for 2-byte
    values. Otherwise numpy: when both sides are multiples of `_BLOCK`, the blocks are transposed in two
    cache-friendly passes through `scratch` (~1 GB/s, 2-3x faster than one strided copy)."""
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
    blocks = array.reshape(rows // b, b, cols // b, b)[:, :, start // b:stop // b, :]  # (I, ii, J, jj)
    tiles = scratch[: out.nbytes].view(array.dtype).reshape(rows // b, nb, b, b)
    np.copyto(tiles, blocks.transpose(0, 2, 1, 3))  # (I, J, ii, jj): contiguous runs of b
    np.copyto(out.reshape(nb, b, rows // b, b), tiles.transpose(1, 3, 0, 2))  # (J, jj, I, ii): within L1 tiles


def _transpose(array: np.ndarray) -> np.ndarray:
    """`array.T` (2-D) as a new C-contiguous array."""
    rows, cols = array.shape
    out = np.empty((cols, rows), dtype=array.dtype)
    step = _transpose_step(rows, array.itemsize, _CHUNK_BYTES)
    scratch = np.empty(min(out.nbytes, step * rows * array.itemsize), np.uint8)
    for start in range(0, cols, step):
        stop = min(cols, start + step)
        _fill_transposed(out[start:stop], array, start, stop, scratch)
    return out


def _transpose_step(rows: int, itemsize: int, chunk_bytes: int) -> int:
    """Output rows per chunk of a transpose: about `chunk_bytes`, a multiple of the numpy path's `_BLOCK`
    (of 8 with the C kernel, which takes any chunk)."""
    align = _BLOCK if _simd_transpose is None else 8
    return max(align, chunk_bytes // (rows * itemsize) // align * align)


def _disk_code(code: str, layout: str) -> str:
    return "U16" if (layout == "paddle" and code == "BF16") else code


def _safetensors_header(items: Sequence[_Item], layout: str) -> bytes:
    """The header of a file holding `items` in order (8-byte length + JSON padded to 8-byte alignment)."""
    header: Dict[str, dict] = {"__metadata__": {"format": "np" if layout == "paddle" else "pt"}}
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


def _pwrite_all(fd: int, data: Union[bytes, memoryview], offset: int) -> None:
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


@dataclass
class _Piece:
    """A part of an output file: `nbytes` at `offset`, either copied from `copy_from` (file, offset) by the
    kernel, or computed into a buffer (a writable memoryview of `nbytes`) by `fill(buffer)` on a worker."""

    offset: int
    nbytes: int
    fill: Optional[Callable[[memoryview], None]] = None
    copy_from: Optional[Tuple[Path, int]] = None


def _fill_transposed_bytes(buffer: memoryview, source: memoryview, rows: int, cols: int, start: int, stop: int, itemsize: int) -> None:
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
            yield _Piece(offset + start * rows * itemsize, (stop - start) * rows * itemsize, fill=functools.partial(fill, start=start, stop=stop))
        return
    flat = np.ascontiguousarray(entry.map()).reshape(-1)
    step = max(1, _CHUNK_BYTES // max(_itemsize(src), itemsize))
    for start in range(0, flat.size, step):
        part = flat[start:start + step]
        yield _Piece(offset + start * itemsize, part.size * itemsize, fill=functools.partial(_fill_cast, flat=part, src=src, dst=dst))


def _write_pieces(fd: int, pieces: Iterable[_Piece], pool: ThreadPoolExecutor, ahead: int, on_bytes: Callable[[int], object]) -> None:
    """Write `pieces` into `fd`: worker threads fill buffers (`ahead` pieces at most) while this thread writes the
    filled ones in order. Page-cache writes stay on this one thread: the file system takes one writer per
    file, and concurrent writers here only contend in the kernel. The first error stops the work and is
    raised once no worker is touching a buffer."""
    free: List[bytearray] = []
    pending: "collections.deque[Tuple[_Piece, Optional[Future], Optional[bytearray]]]" = collections.deque()

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


def parse_size(size: Union[int, str]) -> int:
    """"5GB" -> 5e9, "500MB", "2GiB", "100KB" or an int -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ConversionError(f"max shard size {size!r}: expected a number of bytes or e.g. '5GB', '500MB'")
    unit = (match.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    if unit not in powers:
        raise ConversionError(f"max shard size {size!r}: unknown unit {match.group(2)!r}")
    return int(float(match.group(1)) * powers[unit])


def _shard(items: Sequence[_Item], max_shard_size: int) -> List[List[_Item]]:
    """Consecutive groups of at most `max_shard_size` bytes (a bigger tensor gets a shard of its own)."""
    shards: List[List[_Item]] = [[]]
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


def _write_weights(folder: Path, items: Sequence[_Item], layout: str, max_shard_size: int, progress: bool) -> List[str]:
    """Write the weights (one file, or shards + `model.safetensors.index.json`); returns the file names.

    Each file gets its header (computed from the shapes), then its tensors in chunks that `_workers()`
    threads transpose / cast while this thread writes. Memory: the mapped pages of the tensors being worked
    on plus a few chunk buffers per thread, whatever the model size."""
    shards = _shard(items, max_shard_size)
    total = sum(item.nbytes for item in items)
    names = (
        [SAFE_WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
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
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {item.name: name for name, shard in zip(names, shards) for item in shard},
        }
        with open(folder / SAFE_WEIGHTS_INDEX_NAME, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2) + "\n")
        names.append(SAFE_WEIGHTS_INDEX_NAME)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Config and the other files of a folder
# ----------------------------------------------------------------------------------------------------------------

# Keys paddlenlp's PretrainedConfig adds that transformers does not know (dropped when writing HF).
PADDLE_ONLY_CONFIG_KEYS = (
    "context_parallel_degree",
    "fuse_attention_ffn",
    "fuse_attention_qkv",
    "fuse_sequence_parallel_allreduce",
    "no_recompute_layers",
    "num_choices",
    "paddlenlp_version",
    "pipeline_parallel_degree",
    "pp_recompute_interval",
    "quantization_config",
    "recompute",
    "recompute_granularity",
    "recompute_use_reentrant",
    "sep_parallel_degree",
    "sequence_parallel",
    "tensor_parallel_degree",
    "tensor_parallel_output",
    "tensor_parallel_rank",
    "use_flash_attention",
    "use_fused_dropout_add",
    "use_fused_linear",
    "use_fused_rms_norm",
    "use_fused_rope",
    "virtual_pp_degree",
)
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pdparams|pdopt|pt|pth|ckpt|h5|msgpack)(\.index\.json)?$")


def _config_dtype(config: Mapping) -> Optional[str]:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in DTYPE_CODES else None


def _output_config(config: dict, architecture: str, to_paddle: bool, dtype_name: str) -> dict:
    out = dict(config)
    if to_paddle:
        out.pop("torch_dtype", None)  # paddlenlp lets torch_dtype win over dtype
        out["dtype"] = dtype_name
        return out
    for key in PADDLE_ONLY_CONFIG_KEYS:
        out.pop(key, None)
    if out.get("head_dim", 0) is None:  # transformers reads getattr(config, "head_dim", default)
        out.pop("head_dim")
    out["architectures"] = [PADDLE_ONLY_ARCHITECTURES.get(architecture, architecture)]
    out["dtype"] = dtype_name
    if "torch_dtype" in out:
        out["torch_dtype"] = dtype_name
    return out


def _extra_files(folder: Path) -> List[Path]:
    """Tokenizer, generation config and other plain files to copy: every top-level file except config.json,
    weights and their indices, and hidden files."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name != CONFIG_NAME and not p.name.startswith(".") and not _WEIGHT_FILE.match(p.name)
    )


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionSummary:
    direction: str
    src: Path
    dst: Path
    architecture: str
    source_kind: str
    tensors: int
    parameters: int
    dtypes: List[str]
    bytes: int
    files: List[str]
    copied: List[str]
    seconds: float
    notes: List[str] = field(default_factory=list)

    def format(self) -> str:
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")
        lines = [
            f"converted {self.direction}: {self.src} -> {self.dst}",
            f"  architecture  {self.architecture} (source: {self.source_kind})",
            f"  tensors       {self.tensors}",
            f"  parameters    {self.parameters:,}",
            f"  dtype         {', '.join(self.dtypes)}",
            f"  bytes         {self.bytes:,} ({self.bytes / 2**20:.1f} MiB)",
            f"  weights       {', '.join(self.files) if len(self.files) <= 3 else f'{len(self.files) - 1} shards + index'}",
            f"  copied        {', '.join(self.copied) if self.copied else '-'}",
            f"  seconds       {self.seconds:.2f} ({rate:.0f} MB/s)",
        ]
        lines += [f"  note          {note}" for note in self.notes]
        return "\n".join(lines)


def _load_config(folder: Path) -> dict:
    config = _read_json(folder / CONFIG_NAME)
    if config.get("model_type") != "qwen2":
        raise ConversionError(f"{folder / CONFIG_NAME}: model_type is {config.get('model_type')!r}, expected 'qwen2'")
    return config


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    if not src.exists():
        raise ConversionError(f"{src}: no such folder")
    if not src.is_dir():
        raise ConversionError(f"{src}: not a folder")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents:
        raise ConversionError(f"{dst}: the output must not be the source folder or inside it ({src})")
    if dst_real in src_real.parents:
        raise ConversionError(f"{dst}: the output must not contain the source folder ({src})")
    if dst.exists() and not force and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst}: exists and is not empty (pass --force to replace it)")


def _publish(tmp: Path, dst: Path) -> None:
    """Move the finished temp folder to `dst`, replacing what is there (already checked / forced)."""
    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
        dst.rmdir()
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    to_paddle: bool = True,
    dtype: Optional[str] = None,
    force: bool = False,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
) -> ConversionSummary:
    """Convert the checkpoint folder `src` (HF when `to_paddle`, else Paddle) into `dst` in the other layout.

    Tensors keep their dtype bit for bit unless `dtype` ("float32", "bfloat16", "float16") is given. Every name
    and shape is checked against config.json before anything is written; the output is assembled in a
    temp folder beside `dst` and renamed into place when complete. Raises `ConversionError` on bad input.
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if dtype is not None and dtype not in DTYPE_CODES:
        raise ConversionError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_CODES)}")
    _check_paths(src, dst, force)
    shard_bytes = parse_size(max_shard_size)
    src_layout, dst_layout = ("hf", "paddle") if to_paddle else ("paddle", "hf")
    config = _load_config(src)
    dims = ModelDims.from_config(config, str(src / CONFIG_NAME))
    layout = detect_layout(src)
    if layout is not None and layout != src_layout:
        names = {"hf": "an HF", "paddle": "a Paddle"}
        hint = "--to-hf" if layout == "paddle" else "--from-hf"
        raise ConversionError(f"{src}: is {names[layout]} checkpoint, expected {names[src_layout]} one (use {hint})")
    checkpoint = open_checkpoint(src, src_layout)
    architecture = _architecture(config, list(checkpoint.entries), src_layout)
    notes: List[str] = []
    items = _plan(checkpoint, architecture, dims, to_paddle, DTYPE_CODES.get(dtype), notes=notes)
    dtypes = sorted({CODE_NAMES[item.dtype] for item in items})
    dtype_name = dtype or _config_dtype(config) or CODE_NAMES[max(items, key=lambda item: item.nbytes).dtype]
    out_config = _output_config(config, architecture, to_paddle, dtype_name)
    extra = _extra_files(src)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        files = _write_weights(tmp, items, dst_layout, shard_bytes, progress)
        with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as f:
            f.write(json.dumps(out_config, indent=2, sort_keys=True) + "\n")
        for path in extra:
            shutil.copy2(path, tmp / path.name)
        _publish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConversionSummary(
        direction="HF -> Paddle" if to_paddle else "Paddle -> HF",
        src=src,
        dst=dst,
        architecture=PADDLE_ONLY_ARCHITECTURES.get(architecture, architecture) if not to_paddle else architecture,
        source_kind=checkpoint.kind,
        tensors=len(items),
        parameters=sum(math.prod(item.shape) for item in items),
        dtypes=dtypes,
        bytes=sum(item.nbytes for item in items),
        files=files,
        copied=[p.name for p in extra],
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def read_paddle_state_dict(
    folder: PathLike,
    dims: ModelDims,
    tensor_parallel_actions: Optional[Callable[[List[str]], Mapping[str, Callable]]] = None,
    check_shapes: bool = True,
) -> Dict[str, np.ndarray]:
    """The HF checkpoint in `folder` as a Paddle state dict (Paddle names, `[in, out]` Linear weights, numpy
    arrays; bfloat16 as uint16 bits), read one tensor at a time, for `from_pretrained`.

    Names follow the checkpoint's own architecture (the loader reconciles base / head prefixes); tensors with
    no Paddle counterpart are skipped. `dims` is the config the model is built from (shapes are checked
    against it unless `check_shapes` is False). `tensor_parallel_actions(paddle_names)` returns
    `{name: split function}`; each tensor is cut to this rank's slice as soon as it is read.
    """
    folder = Path(folder)
    checkpoint = open_checkpoint(folder, "hf")
    file_config = _read_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else {}
    architecture = _architecture(file_config, list(checkpoint.entries), "hf")
    if not check_shapes and file_config:  # ignore_mismatched_sizes: the loader compares shapes with the model
        dims = ModelDims.from_config(file_config, str(folder / CONFIG_NAME))
    notes: List[str] = []
    items = _plan(checkpoint, architecture, dims, to_paddle=True, dtype=None, strict=False, notes=notes)
    for note in notes:
        warnings.warn(f"{folder}: {note}")
    actions = tensor_parallel_actions([item.name for item in items]) if tensor_parallel_actions else {}
    state = {}
    for item in items:
        array = _transpose(item.entry.read()) if item.transpose else item.entry.read()
        state[item.name] = actions[item.name](array) if item.name in actions else array
    return state
