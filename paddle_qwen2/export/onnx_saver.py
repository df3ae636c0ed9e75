"""`model.onnx` of a traced program: the Paddle Inference files converted by paddle2onnx."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ExportError
from .paddle_saver import save_paddle

__all__ = ["ONNX_OPSET", "paddle2onnx", "save_onnx"]

ONNX_OPSET = 14


def paddle2onnx():
    """The `paddle2onnx` module, or ExportError saying why it does not import."""
    try:
        import paddle2onnx as module
    except (ImportError, ValueError) as exc:  # paddle2onnx 2.x refuses to import on paddle < 3 (ValueError)
        raise ExportError(f"--format onnx needs paddle2onnx: {str(exc).splitlines()[0]}") from None
    return module


def save_onnx(layer, folder: Path, spec: list, opset: int = ONNX_OPSET) -> dict[str, str]:
    """`folder/model.onnx` of the traced `layer` (through the Paddle files in a scratch folder, removed after);
    returns `{"onnx": "model.onnx"}`."""
    converter = paddle2onnx()
    work = folder / ".paddle"
    work.mkdir()
    files = save_paddle(layer, work, spec)
    # optimize_tool: paddle2onnx's default ("polygraphy") turns on POLYGRAPHY_AUTOINSTALL_DEPS, which pip-installs
    # onnx_graphsurgeon and with it numpy 2 into the running environment
    converter.export(
        str(work / files["program"]),
        str(work / files["params"]),
        str(folder / "model.onnx"),
        opset_version=opset,
        optimize_tool="onnxoptimizer",
    )
    shutil.rmtree(work)
    if not (folder / "model.onnx").is_file():
        raise ExportError("paddle2onnx wrote no model.onnx")
    return {"onnx": "model.onnx"}
