"""Checkpoint folders: which weights files a folder holds (single file or index + shards, safetensors or
PyTorch pickles), their tensors indexed by name (headers only), and whether the folder is HF or Paddle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import ConversionError
from .names import (
    CONFIG_NAME,
    PADDLE_BASE_PREFIX,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TORCH_WEIGHTS_INDEX_NAME,
    TORCH_WEIGHTS_NAME,
)
from .safetensors_reader import _safetensors_entries, read_safetensors_header
from .tensors import TensorEntry
from .torch_reader import _torch_entries

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Checkpoint:
    """The weights of a folder: entries (name -> TensorEntry, in file order) and the files they came from."""

    folder: Path
    layout: str  # "hf" or "paddle"
    files: list[Path]
    entries: dict[str, TensorEntry]
    kind: str  # e.g. "safetensors", "sharded safetensors (3 files)", "pytorch .bin"


def _weights_candidates(layout: str) -> list[str]:
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


def _index_shards(index_path: Path) -> dict[str, list[str]]:
    """shard file name -> tensor names, from an index's weight_map (shards must sit in the same folder)."""
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index_path}: no 'weight_map' (tensor name -> shard file)")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ConversionError(
                f"{index_path}: tensor {name!r} maps to {shard!r}, expected a file name in the folder"
            )
        if not (index_path.parent / shard).is_file():
            raise ConversionError(f"{index_path}: names shard {shard!r} (for {name!r}) which does not exist")
        shards.setdefault(shard, []).append(name)
    return dict(sorted(shards.items()))


def _file_entries(path: Path, layout: str) -> list[TensorEntry]:
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
    entries: dict[str, TensorEntry] = {}
    for path in files:
        file_entries = _file_entries(path, layout)
        names = {e.name for e in file_entries}
        if shards is not None:
            listed = set(shards[path.name])
            if listed - names:
                raise ConversionError(
                    f"{chosen}: lists {sorted(listed - names)[:3]} in {path.name}, which does not hold them"
                )
            if names - listed:
                raise ConversionError(f"{path}: holds {sorted(names - listed)[:3]}, which {chosen.name} does not list")
        for entry in file_entries:
            if entry.name in entries:
                raise ConversionError(f"{path}: tensor {entry.name!r} also appears in {entries[entry.name].file.name}")
            entries[entry.name] = entry
    return Checkpoint(folder, layout, files, entries, kind)


def _tensor_names(folder: Path) -> tuple[list[str], dict]:
    """Names in the first safetensors file (or index) of `folder` and that file's metadata ({} for an index)."""
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return list(_read_json(folder / SAFE_WEIGHTS_INDEX_NAME).get("weight_map") or {}), {}
    header, _ = read_safetensors_header(folder / SAFE_WEIGHTS_NAME)
    metadata = header.pop("__metadata__", None) or {}
    return list(header), metadata


def detect_layout(folder: PathLike) -> str | None:
    """ "hf" or "paddle" for a Qwen2 checkpoint folder, None when it holds no weights file we know.

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
