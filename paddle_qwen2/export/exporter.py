"""`export_model`: check the paths, build the program, save it (Paddle Inference or ONNX; int8 / int4 weights
quantized in the saved ONNX file, `quantize.py`), copy the tokenizer and config files, write `export_meta.json`; all
into a temporary folder beside `out`, renamed into place at the end."""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..conversion.names import TOKENIZER_FILES
from .errors import ExportError
from .meta import (
    DTYPES,
    FORMATS,
    META_FILE,
    META_VERSION,
    TASKS,
    check_weights,
    generation_config,
    inference_settings,
    input_meta,
    input_spec,
    read_json,
)
from .onnx_saver import ONNX_OPSET
from .quantize import SETTINGS as QUANTIZED
from .quantize import quantize_folder

__all__ = ["SIDE_FILES", "export_model"]

# copied from the model folder when present
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def _check_paths(model: Path, out: Path, force: bool) -> None:
    if not model.is_dir():
        raise ExportError(f"{model}: no such model folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: folder is not empty (use --force to replace it)")
    resolved_model, resolved_out = model.resolve(), out.resolve()
    if resolved_out == resolved_model or resolved_out in resolved_model.parents:
        raise ExportError(f"{out}: would replace the model folder {model}")


def _check_choices(task: str, format: str, dtype: str, weights: str) -> None:
    for what, value, allowed in (("format", format, FORMATS), ("task", task, TASKS), ("dtype", dtype, DTYPES)):
        if value not in allowed:
            raise ExportError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    check_weights(weights, format, dtype)


def export_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    task: str,
    format: str = "paddle",
    dtype: str = "float32",
    force: bool = False,
    opset: int = ONNX_OPSET,
    weights: str = "float32",
) -> Path:
    """Export `model_dir` for `task` into the folder `out` (see the `paddle_qwen2.export` docstring); returns
    `out`. ExportError on bad input, before anything is written."""
    model_dir, out = Path(model_dir), Path(out)
    _check_choices(task, format, dtype, weights)
    _check_paths(model_dir, out, force)
    from ..runtime import configure_cpu_threads

    configure_cpu_threads()
    import paddle

    from .. import __version__
    from .loading import build_program
    from .onnx_saver import paddle2onnx, save_onnx
    from .paddle_saver import save_paddle

    if format == "onnx":
        paddle2onnx()  # before the model loads

    layer, task_meta, outputs, source = build_program(model_dir, task, dtype)
    spec = input_spec(task, task_meta.get("decode"))
    config = read_json(source / "config.json", "model config")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        try:
            files = save_paddle(layer, work, spec) if format == "paddle" else save_onnx(layer, work, spec, opset)
        except TypeError as exc:  # CPU builds check op dtypes against their kernels while tracing
            if dtype == "float32" or "Check data type error" not in str(exc):
                raise
            reason = next(line for line in str(exc).splitlines() if "Check data type error" in line)
            device = "GPU" if paddle.is_compiled_with_cuda() else "CPU"
            raise ExportError(
                f"--dtype {dtype}: this Paddle build ({paddle.__version__}, {device}) cannot trace the model in "
                f"{dtype}: {reason.strip().split(' (at ')[0]}; half-precision programs need paddlepaddle-gpu"
            ) from None
        quantization = None
        if weights in QUANTIZED:
            layer = None  # the float32 model's memory, before the quantizer loads model.onnx's
            gc.collect()
            files, quantization = quantize_folder(work, weights)
        copied = []
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, work / name)
                copied.append(name)
        meta = {
            "export_meta_version": META_VERSION,
            "task": task,
            "format": format,
            "dtype": dtype,
            "weights": weights,
            "files": files,
            "inputs": input_meta(task, task_meta.get("decode")),
            "outputs": outputs,
            "output_note": "outputs in this order; Paddle Inference names them fetch_name_N (use the index)",
            "paddle_inference": inference_settings(paddle.__version__),
            **task_meta,
            "config": config,
            "generation_config": generation_config(source) if task in ("causal-lm", "decode") else None,
            "tokenizer_files": [n for n in copied if n not in ("config.json", "generation_config.json")],
            "source": str(model_dir),
            "versions": {"paddle": paddle.__version__, "paddle_qwen2": __version__},
        }
        if format == "onnx":
            meta["onnx_opset"] = opset
        if quantization is not None:
            meta["quantization"] = quantization
        (work / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
