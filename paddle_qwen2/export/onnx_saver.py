"""`model.onnx` of a traced program: the Paddle Inference files converted by paddle2onnx, its weights moved to
initializers (`onnx_graph.weights_to_initializers`), saved with external data when large (`onnx_graph.save_model`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ExportError
from .onnx_graph import PROTOBUF_LIMIT, save_model, weights_to_initializers
from .paddle_saver import save_paddle

__all__ = ["ONNX_OPSET", "PADDLE2ONNX_LIMIT", "paddle2onnx", "save_onnx"]

ONNX_OPSET = 14
# paddle2onnx 2.1.0 builds the whole model in one protobuf message: a single tensor of 2 GiB fails
# ("vector::_M_default_append", then sys.exit), a larger total writes an empty model.onnx ("onnx.ModelProto exceeded
# maximum protobuf size of 2GB"); the margin leaves room for the graph
PADDLE2ONNX_LIMIT = PROTOBUF_LIMIT - 2**24


def paddle2onnx():
    """The `paddle2onnx` module, or ExportError saying why it does not import."""
    try:
        import paddle2onnx as module
    except (ImportError, ValueError) as exc:  # paddle2onnx 2.x refuses to import on paddle < 3 (ValueError)
        raise ExportError(f"--format onnx needs paddle2onnx: {str(exc).splitlines()[0]}") from None
    return module


def _convert(work: Path, files: dict, target: Path, opset: int) -> None:
    """paddle2onnx on the Paddle files in `work`, writing `target`; ExportError when it fails or the weights are
    too large for it."""
    converter = paddle2onnx()
    params = work / files["params"]
    size = params.stat().st_size
    if size >= PADDLE2ONNX_LIMIT:
        raise ExportError(
            f"--format onnx: the weights take {size} bytes ({params.name}, {size / 2**30:.2f} GiB); paddle2onnx "
            f"{converter.__version__} converts models whose weights take under {PADDLE2ONNX_LIMIT} bytes "
            f"({PADDLE2ONNX_LIMIT / 2**30:.2f} GiB, protobuf's 2 GiB message limit); use --format paddle"
        )
    # optimize_tool: paddle2onnx's default ("polygraphy") turns on POLYGRAPHY_AUTOINSTALL_DEPS, which pip-installs
    # onnx_graphsurgeon and with it numpy 2 into the running environment
    try:
        converter.export(
            str(work / files["program"]), str(params), str(target), opset_version=opset, optimize_tool="onnxoptimizer"
        )
    except SystemExit:  # paddle2onnx logs the failure and calls sys.exit
        raise ExportError(f"paddle2onnx {converter.__version__} failed (its log above)") from None
    if not target.is_file() or target.stat().st_size == 0:
        raise ExportError(f"paddle2onnx {converter.__version__} wrote no model.onnx (its log above)")


def save_onnx(layer, folder: Path, spec: list, opset: int = ONNX_OPSET) -> dict[str, str]:
    """`folder/model.onnx` of the traced `layer` (through the Paddle files in a scratch folder, removed after), its
    weights as initializers; returns `{"onnx": "model.onnx"}`, plus `"onnx_data": "model.onnx.data"` when the
    tensors are saved as ONNX external data."""
    import onnx

    work = folder / ".paddle"
    work.mkdir()
    files = save_paddle(layer, work, spec)
    converted = work / "model.onnx"
    _convert(work, files, converted, opset)
    model = onnx.load_model(str(converted))
    shutil.rmtree(work)
    weights_to_initializers(model)
    return save_model(model, folder)
