"""The entry points: `convert_checkpoint` (a folder to a folder, the `paddle-qwen2 convert` CLI) and
`read_paddle_state_dict` (a checkpoint folder as a Paddle state dict of numpy arrays); plus the config and the
other files of a folder, the checks on the paths and publishing the finished output.

Output goes to a temporary folder beside DST that is renamed into place at the end, so an interrupted run
leaves no DST.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .checkpoint import PathLike, _read_json, detect_layout, open_checkpoint
from .dtypes import CODE_NAMES, DTYPE_CODES
from .errors import ConversionError
from .loading import checkpoint_tensors
from .names import CONFIG_NAME, PADDLE_ONLY_ARCHITECTURES, ModelDims, _architecture
from .plan import _plan
from .writer import _write_weights, parse_size

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_SHARD_SIZE = "5GB"

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


# ---------------------------------------------------------------------------------------------------- config, files


def _config_dtype(config: Mapping) -> str | None:
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


def _extra_files(folder: Path) -> list[Path]:
    """Tokenizer, generation config and other plain files to copy: every top-level file except config.json,
    weights and their indices, and hidden files."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name != CONFIG_NAME and not p.name.startswith(".") and not _WEIGHT_FILE.match(p.name)
    )


def _load_config(folder: Path) -> dict:
    config = _read_json(folder / CONFIG_NAME)
    if config.get("model_type") != "qwen2":
        raise ConversionError(f"{folder / CONFIG_NAME}: model_type is {config.get('model_type')!r}, expected 'qwen2'")
    return config


# ---------------------------------------------------------------------------------------------------- paths


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


# ---------------------------------------------------------------------------------------------------- entry points


@dataclass
class ConversionSummary:
    direction: str
    src: Path
    dst: Path
    architecture: str
    source_kind: str
    tensors: int
    parameters: int
    dtypes: list[str]
    bytes: int
    files: list[str]
    copied: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")
        weights = ", ".join(self.files) if len(self.files) <= 3 else f"{len(self.files) - 1} shards + index"
        lines = [
            f"converted {self.direction}: {self.src} -> {self.dst}",
            f"  architecture  {self.architecture} (source: {self.source_kind})",
            f"  tensors       {self.tensors}",
            f"  parameters    {self.parameters:,}",
            f"  dtype         {', '.join(self.dtypes)}",
            f"  bytes         {self.bytes:,} ({self.bytes / 2**20:.1f} MiB)",
            f"  weights       {weights}",
            f"  copied        {', '.join(self.copied) if self.copied else '-'}",
            f"  seconds       {self.seconds:.2f} ({rate:.0f} MB/s)",
        ]
        lines += [f"  note          {note}" for note in self.notes]
        return "\n".join(lines)


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    to_paddle: bool = True,
    dtype: str | None = None,
    force: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
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
    notes: list[str] = []
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
    tensor_parallel_actions: Callable[[list[str]], Mapping[str, Callable]] | None = None,
    check_shapes: bool = True,
) -> dict[str, np.ndarray]:
    """The checkpoint in `folder` (HF, converted as it is read, or Paddle) as a Paddle state dict (Paddle names,
    `[in, out]` Linear weights, numpy arrays; bfloat16 as uint16 bits), read one tensor at a time.

    Names follow the checkpoint's own architecture (the loader reconciles base / head prefixes); tensors with
    no Paddle counterpart are skipped. `dims` is the config the model is built from (shapes are checked
    against it unless `check_shapes` is False). `tensor_parallel_actions(paddle_names)` returns
    `{name: split function}`; each tensor is cut to this rank's slice as soon as it is read.
    """
    tensors, notes = checkpoint_tensors(folder, dims, check_shapes)
    for note in notes:
        warnings.warn(f"{folder}: {note}")
    actions = tensor_parallel_actions([tensor.name for tensor in tensors]) if tensor_parallel_actions else {}
    state = {}
    for tensor in tensors:
        array = tensor.read()
        state[tensor.name] = actions[tensor.name](array) if tensor.name in actions else array
    return state
