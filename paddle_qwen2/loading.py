"""`from_pretrained` without random weights: build the model empty, then fill it from the checkpoint.

The model is built under paddlenlp's `no_init_weights` and Paddle's `LazyGuard`, so no initializer runs and no
parameter memory is allocated. The checkpoint (HF or paddlenlp folder, safetensors single or sharded, or
PyTorch `.bin`, see `conversion.loading`) is then read tensor by tensor from memory-mapped files, transposed where
the layout asks, cast to the parameter's dtype, cut to this rank's slice under tensor parallelism, fused or unfused
to match `fuse_attention_qkv` / `fuse_attention_ffn`, and handed to its parameter without a further copy. Peak
memory is the model in its target dtype plus the few tensors in flight. Parameters the checkpoint lacks (a new
classification head) are initialised as `_init_weights` does, and named in a warning.

`save_weights` is the other direction for `save_pretrained(safe_serialization=True)`: the safetensors files are
written one tensor at a time (paddlenlp's own writer first copies every tensor of a shard to numpy and builds the
whole file in memory).
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import paddle
from paddle import nn
from paddle.distributed.fleet.meta_parallel import PipelineLayer
from paddlenlp.generation import GenerationConfig
from paddlenlp.transformers.configuration_utils import PretrainedConfig
from paddlenlp.transformers.model_utils import dtype_guard, no_init_weights

from .conversion import ModelDims, SourceTensor, checkpoint_tensors, parse_size
from .conversion.loading import aligned_empty
from .conversion.writer import MemoryTensor, write_safetensors
from .parallel import fused_groups, tensor_parallel_actions, tensor_parallel_layouts, unfuse

__all__ = ["load_pretrained", "save_weights"]

_DTYPE_CODES = {paddle.float32: "F32", paddle.float16: "F16", paddle.bfloat16: "BF16", paddle.float64: "F64"}
_ALL_DTYPE_CODES = {**_DTYPE_CODES, paddle.int64: "I64", paddle.int32: "I32", paddle.bool: "BOOL", paddle.uint8: "U8"}
# keyword arguments of paddlenlp's from_pretrained that mean nothing for a local folder read here
_IGNORED_KWARGS = ("low_cpu_mem_usage", "use_safetensors", "convert_from_torch", "cache_dir", "force_download")
_BASE_PREFIX = "qwen2."


def load_pretrained(cls, path: str | os.PathLike, *args, **kwargs) -> nn.Layer:
    """`cls.from_pretrained(path, ...)` for a local checkpoint folder; see the module docstring."""
    if args:
        raise TypeError(f"{cls.__name__}.from_pretrained takes the folder and keyword arguments only, got {args}")
    dtype = kwargs.pop("dtype", None)
    ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
    for key in _IGNORED_KWARGS:
        kwargs.pop(key, None)
    config = kwargs.pop("config", None)
    if not isinstance(config, PretrainedConfig):
        config, kwargs = cls.config_class.from_pretrained(config or path, return_unused_kwargs=True, **kwargs)
    if kwargs:
        raise TypeError(f"{cls.__name__}.from_pretrained got unexpected keyword arguments {sorted(kwargs)}")
    dtype = dtype or config.dtype or "float32"
    config.dtype = dtype
    with no_init_weights(), paddle.LazyGuard(), dtype_guard(dtype):
        model = cls(config)
    dims = ModelDims.from_config(config)
    tensors, notes = checkpoint_tensors(path, dims, check_shapes=not ignore_mismatched_sizes)
    for note in notes:
        warnings.warn(f"{path}: {note}")
    _Filler(model, config, Path(path), ignore_mismatched_sizes).fill(tensors)
    if model.can_generate() and (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model


def _dtype_code(param: paddle.Tensor) -> str:
    return _DTYPE_CODES[param.dtype]


def _workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


class _Filler:
    """Hands checkpoint tensors to the parameters of `model` (built under LazyGuard) and initialises the rest."""

    def __init__(self, model: nn.Layer, config, folder: Path, ignore_mismatched_sizes: bool):
        self.model, self.config, self.folder = model, config, folder
        self.ignore_mismatched_sizes = ignore_mismatched_sizes
        self.params = dict(model.state_dict())  # checkpoint names (a pipeline stage maps its own to them)
        self.prefixed = any(name.startswith(_BASE_PREFIX) for name in self.params)
        tp = config.tensor_parallel_degree > 1
        self.split = tensor_parallel_actions(config, is_split=True) if tp else {}
        self.layouts = tensor_parallel_layouts(config) if tp else {}
        self.filled: set = set()
        self.mismatched: list[str] = []
        self.unexpected: list[str] = []
        self._fuse_parts, self._unfuse_parts, self.pending = {}, {}, {}
        self._fuse_plan()

    # -- names ------------------------------------------------------------------------------------------------

    def _model_name(self, name: str) -> str:
        """The model's name for a checkpoint name (the base-model prefix added or dropped as the model needs)."""
        if name.startswith(_BASE_PREFIX) and not self.prefixed:
            return name[len(_BASE_PREFIX) :]
        if not name.startswith(_BASE_PREFIX) and self.prefixed and _BASE_PREFIX + name in self.params:
            return _BASE_PREFIX + name
        return name

    def _fuse_plan(self) -> None:
        """Which checkpoint names are parts of a fused parameter (model fused, checkpoint not) and which fused
        checkpoint names are cut into parameters (model unfused, checkpoint fused)."""
        prefix = _BASE_PREFIX if self.prefixed else ""
        qkv, ffn = self.config.fuse_attention_qkv, self.config.fuse_attention_ffn
        for names, _ in fused_groups(self.config, qkv, ffn):
            fused = prefix + names[-1]
            for index, part in enumerate(names[:-1]):
                self._fuse_parts[prefix + part] = (fused, index, len(names) - 1)
        for names, ratios in fused_groups(self.config, not qkv, not ffn):
            self._unfuse_parts[prefix + names[-1]] = ([prefix + part for part in names[:-1]], ratios)

    def _target_code(self, name: str) -> str | None:
        """The dtype code a checkpoint tensor is read as: its parameter's (or its fused / unfused relative's)."""
        if name in self.params:
            return _dtype_code(self.params[name])
        related = self._fuse_parts.get(name, (None,))[0] or (self._unfuse_parts.get(name, ([None],))[0][0])
        return _dtype_code(self.params[related]) if related in self.params else None

    # -- filling ----------------------------------------------------------------------------------------------

    def fill(self, tensors: list[SourceTensor]) -> None:
        """Read `tensors` on worker threads (a few in flight) and assign them in order on this thread."""
        jobs = [(tensor, self._model_name(tensor.name)) for tensor in tensors]
        wanted = [(tensor, name, self._target_code(name)) for tensor, name in jobs]
        for tensor, name, code in wanted:
            if code is None and not self._ignored(name):
                self.unexpected.append(tensor.name)
        readable = [(tensor, name, code) for tensor, name, code in wanted if code is not None]
        workers = _workers()
        with ThreadPoolExecutor(workers, thread_name_prefix="paddle_qwen2-load") as pool:
            window = []
            for tensor, name, code in readable:
                window.append((tensor, name, pool.submit(tensor.read, code, self._selection(name))))
                if len(window) > workers:
                    self._take(*window.pop(0))
            for item in window:
                self._take(*item)
        self._finish()

    def _base_name(self, name: str) -> str:
        return name[len(_BASE_PREFIX) :] if name.startswith(_BASE_PREFIX) else name

    def _selection(self, name: str):
        """This rank's ranges of a tensor-parallel parameter, read straight from the file (fused and unfused
        projections are assembled whole first, then cut)."""
        if name in self._fuse_parts or name in self._unfuse_parts:
            return None
        layout = self.layouts.get(self._base_name(name))
        return None if layout is None else (layout[0], layout[1][self.config.tensor_parallel_rank])

    def _take(self, tensor: SourceTensor, name: str, future) -> None:
        array = future.result()
        if name in self._fuse_parts:
            fused, index, count = self._fuse_parts[name]
            parts = self.pending.setdefault(fused, [None] * count)
            parts[index] = array
            if all(part is not None for part in parts):
                self._assign(fused, _fuse(self.pending.pop(fused)), tensor)
        elif name in self._unfuse_parts:
            names, ratios = self._unfuse_parts[name]
            for part_name, part in zip(names, unfuse(array, ratios)):
                self._assign(part_name, part, tensor)
        else:
            self._assign(name, array, tensor, split=False)  # read as this rank's slice already

    def _assign(self, name: str, array: np.ndarray, source: SourceTensor, split: bool = True) -> None:
        param = self.params[name]
        action = self.split.get(self._base_name(name)) if split else None
        if action is not None:
            array = action(array)
        if tuple(array.shape) != tuple(param.shape):
            if not self.ignore_mismatched_sizes:
                raise ValueError(
                    f"{source.entry.file}: tensor {source.name!r} gives {name!r} shape {list(array.shape)}, the model "
                    f"expects {list(param.shape)} (pass ignore_mismatched_sizes=True to initialise it instead)"
                )
            self.mismatched.append(f"{name} {list(array.shape)} -> {list(param.shape)}")
            return
        _share(param, np.ascontiguousarray(array))
        self.filled.add(name)

    def _ignored(self, name: str) -> bool:
        patterns = list(getattr(self.model, "_keys_to_ignore_on_load_unexpected", None) or [])
        tied = self.config.tie_word_embeddings and name.endswith("lm_head.weight")
        return tied or any(re.search(pattern, name) for pattern in patterns)

    def _finish(self) -> None:
        """Initialise what the checkpoint did not give (as `_init_weights` does) and say so."""
        if self.pending:
            raise ValueError(f"{self.folder}: incomplete fused projections {sorted(self.pending)[:3]}")
        missing = [name for name in self.params if name not in self.filled]
        if missing:
            self._initialise(missing)
            warnings.warn(
                f"{self.folder}: {len(missing)} weight(s) not in the checkpoint were initialised: "
                + ", ".join(missing[:8])
                + (" ..." if len(missing) > 8 else "")
            )
        if self.mismatched:
            warnings.warn(f"{self.folder}: shapes differ, initialised instead: " + ", ".join(self.mismatched[:8]))
        if self.unexpected and not isinstance(self.model, PipelineLayer):  # a stage holds only its own layers
            warnings.warn(
                f"{self.folder}: {len(self.unexpected)} tensor(s) not used by {type(self.model).__name__}: "
                + ", ".join(self.unexpected[:8])
            )

    def _initialise(self, names: list[str]) -> None:
        """Materialise the parameters `names` with their initializers, then apply `_init_weights` to the layers
        holding them (the same initialisation as a model built without a checkpoint)."""
        wanted = {id(self.params[name]) for name in names}
        for param in (self.params[name] for name in names):
            param.initialize()
        for layer in self.model.sublayers(include_self=True):
            if any(id(p) in wanted for p in layer.parameters(include_sublayers=False)):
                self.model._init_weights(layer)


def _fuse(parts: list[np.ndarray]) -> np.ndarray:
    """`fuse(parts)` written into an array as `SourceTensor.read` returns them (page-aligned, and large ones in small
    pages: see `conversion.loading.aligned_empty`)."""
    out = aligned_empty((*parts[0].shape[:-1], sum(part.shape[-1] for part in parts)), parts[0].dtype)
    np.concatenate(parts, axis=-1, out=out)
    return out


def _share(param: paddle.Tensor, array: np.ndarray) -> None:
    """Make `param` hold `array`'s data: zero copy on CPU, one copy to the current device elsewhere."""
    place = paddle.framework._current_expected_place()
    with paddle.no_grad():
        if param.dtype == paddle.bfloat16:  # numpy has no bfloat16: the array holds its uint16 bits
            value = paddle.to_tensor(array, place=place).view(paddle.bfloat16)
        elif isinstance(place, paddle.CPUPlace):
            value = paddle.Tensor(array, place=place, zero_copy=True)
        else:
            value = paddle.to_tensor(array, place=place)
        param.get_tensor()._share_data_with(value.value().get_tensor())


def save_weights(state_dict: dict, folder: str | os.PathLike, max_shard_size: int | str = "10GB") -> list[str] | None:
    """Write `state_dict` (paddle tensors or numpy arrays) into `folder` as paddlenlp's safetensors files (one file,
    or shards and the index, the same names and bytes as paddlenlp's writer), one tensor in memory at a time.
    Returns the file names, or None (nothing written) for a dtype it does not handle."""
    tensors = []
    for name, value in state_dict.items():
        if isinstance(value, np.ndarray):
            code = {"float32": "F32", "float16": "F16", "uint16": "BF16", "float64": "F64"}.get(value.dtype.name)
            read = partial(np.ascontiguousarray, value)
        else:
            code = _ALL_DTYPE_CODES.get(value.dtype)
            read = partial(_to_numpy, value)
        if code is None:
            return None
        tensors.append(MemoryTensor(name, code, tuple(value.shape), read))
    return write_safetensors(Path(folder), tensors, "paddle", parse_size(max_shard_size))


def _to_numpy(tensor: paddle.Tensor) -> np.ndarray:
    """The tensor's values on the host (bfloat16 as its uint16 bits)."""
    array = tensor.cpu().numpy() if not tensor.place.is_cpu_place() else tensor.numpy()
    return array.view(np.uint16) if tensor.dtype == paddle.bfloat16 else array
