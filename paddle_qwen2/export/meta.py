"""`export_meta.json`: the constants of an export folder, its input and output descriptions, the `InputSpec`s the
program is traced with, and `read_meta`. No paddle import at module level.

Inputs `input_ids` and `attention_mask` are int64 `[batch, seq]`; the decode program also takes the KV cache
`past_key_0, past_value_0, ...` in `DecodeProgram.CACHE_LAYOUT` (`[batch, kv_heads, past, head_dim]`) and returns
the present cache (past + new).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ExportError

__all__ = [
    "DTYPES",
    "FORMATS",
    "INPUT_NAMES",
    "META_FILE",
    "META_VERSION",
    "TASKS",
    "WEIGHTS",
    "WEIGHT_FORMATS",
    "check_weights",
    "decode_meta",
    "decode_outputs",
    "generation_config",
    "inference_settings",
    "input_meta",
    "input_spec",
    "read_json",
    "read_meta",
]

TASKS = ("causal-lm", "embedding", "sequence-classification", "decode")
DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("paddle", "onnx")
# the precision of the weights an engine reads, and the export formats that hold each: bfloat16 runs on Paddle
# Inference's oneDNN bf16 passes (the program holds float32 weights, converted when the predictor loads), int8 and
# int4 on onnxruntime's MatMulNBits (block-quantized weights written into model.onnx)
WEIGHTS = ("float32", "bfloat16", "int8", "int4")
WEIGHT_FORMATS = {"float32": ("paddle", "onnx"), "bfloat16": ("paddle",), "int8": ("onnx",), "int4": ("onnx",)}
META_FILE = "export_meta.json"
META_VERSION = 1
INPUT_NAMES = ("input_ids", "attention_mask")


def read_json(path: Path, what: str) -> Any:
    """The JSON document in `path`, or ExportError naming the file and `what` it should hold."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the {what}: {exc}") from None


def read_meta(folder: str | os.PathLike) -> dict:
    """`export_meta.json` of an export folder, or ExportError."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ExportError(f"{folder}: not an export folder (no {META_FILE})")
    meta = read_json(path, "export metadata")
    version = meta.get("export_meta_version") if isinstance(meta, dict) else None
    if version != META_VERSION:
        raise ExportError(f"{path}: export_meta_version {version!r}, expected {META_VERSION}")
    return meta


def check_weights(weights: str, format: str, dtype: str) -> None:
    """ExportError unless `weights` is a known precision that `format` holds, traced in float32 (`dtype`)."""
    if weights not in WEIGHTS:
        raise ExportError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    if format not in WEIGHT_FORMATS[weights]:
        formats = " or ".join(f"--format {f}" for f in WEIGHT_FORMATS[weights])
        raise ExportError(f"--weights {weights} is written with {formats}, not --format {format}")
    if weights != "float32" and dtype != "float32":
        raise ExportError(f"--weights {weights} quantizes a float32 program; --dtype {dtype} cannot go with it")


def generation_config(folder: Path) -> dict:
    """generation_config.json of `folder` ({} when it has none): the generation defaults, stop token ids."""
    path = folder / "generation_config.json"
    return read_json(path, "generation config") if path.is_file() else {}


def inference_settings(paddle_version: str) -> dict:
    """Whether oneDNN runs these programs correctly: Paddle 2.6's oneDNN passes fail on them ("could not reshape a
    memory descriptor")."""
    return {"onednn": int(paddle_version.split(".")[0]) != 2}


def _cache_names(config, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(config.num_hidden_layers) for kind in ("key", "value")]


def decode_meta(config, dtype: str) -> dict:
    """What the engine needs to feed the decode program its cache (`config`: the model's `Qwen2Config`)."""
    from .programs import DecodeProgram

    return {
        "num_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.attention_head_dim,
        "cache_dtype": dtype,
        "cache_layout": list(DecodeProgram.CACHE_LAYOUT),
        "cache_inputs": _cache_names(config, "past"),
        "cache_outputs": _cache_names(config, "present"),
        "padding_side": "left",
    }


def _cache_shape(decode: dict, past: str | None) -> list:
    """A cache tensor's shape in the decode program's layout: named axes, the sizes of the fixed ones (`past` as
    None: the `InputSpec` form)."""
    sizes = {
        "batch": None if past is None else "batch",
        "kv_heads": decode["num_key_value_heads"],
        "past": past,
        "head_dim": decode["head_dim"],
    }
    return [sizes[axis] for axis in decode["cache_layout"]]


def decode_outputs(config, dtype: str) -> list[dict]:
    """The decode program's outputs: logits `[batch, vocab]`, then the present cache."""
    cache = _cache_shape(decode_meta(config, dtype), "past+new")
    return [{"name": "logits", "dtype": "float32", "shape": ["batch", config.vocab_size]}] + [
        {"name": name, "dtype": dtype, "shape": cache} for name in _cache_names(config, "present")
    ]


def input_spec(task: str, decode: dict | None) -> list:
    """The `paddle.static.InputSpec`s the program of `task` is traced with (`decode`: its `decode_meta`)."""
    from paddle.static import InputSpec

    spec = [InputSpec([None, None], "int64", name) for name in INPUT_NAMES]
    if task == "decode":
        shape = _cache_shape(decode, None)
        spec.append([InputSpec(shape, decode["cache_dtype"], name) for name in decode["cache_inputs"]])
    return spec


def input_meta(task: str, decode: dict | None) -> list[dict]:
    """`export_meta.json`'s `inputs`: name, dtype, named shape and dynamic axes of each input, in order."""
    dims = {"0": "batch", "1": "seq"}
    inputs = [{"name": name, "dtype": "int64", "shape": ["batch", "seq"], "dynamic_axes": dims} for name in INPUT_NAMES]
    if task == "decode":
        inputs[0].update(shape=["batch", "new"], dynamic_axes={"0": "batch", "1": "new"})
        inputs[1].update(shape=["batch", "past+new"], dynamic_axes={"0": "batch", "1": "past+new"})
        shape, past_axis = _cache_shape(decode, "past"), str(decode["cache_layout"].index("past"))
        inputs += [
            {
                "name": name,
                "dtype": decode["cache_dtype"],
                "shape": shape,
                "dynamic_axes": {"0": "batch", past_axis: "past"},
            }
            for name in decode["cache_inputs"]
        ]
    return inputs
