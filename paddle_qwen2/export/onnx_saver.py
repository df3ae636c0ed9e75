"""`model.onnx` of a traced program: the Paddle Inference files converted by paddle2onnx, its weights moved to
initializers (`onnx_graph.weights_to_initializers`), saved with external data when large (`onnx_graph.save_model`).

paddle2onnx 2.1.0 builds the whole model, weights included, in one protobuf message, which cannot reach 2 GiB: a
single tensor of 2 GiB fails ("vector::_M_default_append", then `sys.exit`), a larger total writes an empty file
("onnx.ModelProto exceeded maximum protobuf size of 2GB"). When the weights reach `PADDLE2ONNX_LIMIT`, paddle2onnx
converts the program alone (without the parameters file its graph reads each weight by its Paddle name) and the
weights are added as initializers from the traced layer's parameters and buffers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ExportError
from .onnx_graph import PROTOBUF_LIMIT, save_model, weights_to_initializers
from .paddle_saver import save_paddle

__all__ = ["ONNX_OPSET", "PADDLE2ONNX_LIMIT", "paddle2onnx", "save_onnx"]

ONNX_OPSET = 14
# weights (bytes of model.pdiparams) from which paddle2onnx converts the program without them; the margin leaves
# room for the graph in the message
PADDLE2ONNX_LIMIT = PROTOBUF_LIMIT - 2**24


def paddle2onnx():
    """The `paddle2onnx` module, or ExportError saying why it does not import."""
    try:
        import paddle2onnx as module
    except (ImportError, ValueError) as exc:  # paddle2onnx 2.x refuses to import on paddle < 3 (ValueError)
        raise ExportError(f"--format onnx needs paddle2onnx: {str(exc).splitlines()[0]}") from None
    return module


def _convert(program: Path, params: Path | None, target: Path, opset: int) -> None:
    """paddle2onnx on `program` with the weights in `params` (None: without weights), writing `target`; ExportError
    when it fails."""
    converter = paddle2onnx()
    # optimize_tool: paddle2onnx's default ("polygraphy") turns on POLYGRAPHY_AUTOINSTALL_DEPS, which pip-installs
    # onnx_graphsurgeon and with it numpy 2 into the running environment. Without weights the graph reads names
    # nothing produces yet, which its checker would report.
    try:
        converter.export(
            str(program),
            "" if params is None else str(params),
            str(target),
            opset_version=opset,
            enable_onnx_checker=params is not None,
            optimize_tool="onnxoptimizer",
        )
    except SystemExit:  # paddle2onnx logs the failure and calls sys.exit
        raise ExportError(f"paddle2onnx {converter.__version__} failed (its log above)") from None
    if not target.is_file() or target.stat().st_size == 0:
        raise ExportError(f"paddle2onnx {converter.__version__} wrote no model.onnx (its log above)")


def _tensor_proto(tensor, name: str):
    from onnx import TensorProto, numpy_helper

    values = tensor.numpy()
    if str(tensor.dtype).endswith("bfloat16"):  # numpy holds bfloat16 as its uint16 bit patterns
        proto = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=values.shape)
        proto.raw_data = values.tobytes()
        return proto
    return numpy_helper.from_array(values, name)


def _add_weights(model, layer) -> None:
    """The tensors `model`'s graph reads but nothing produces, as initializers from `layer`'s parameters and buffers
    (matched by their Paddle names); ExportError naming those the layer does not have."""
    graph = model.graph
    known = {name for node in graph.node for name in node.output}
    known |= {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    wanted = sorted({name for node in graph.node for name in node.input if name and name not in known})
    tensors = {tensor.name: tensor for tensor in (*layer.parameters(), *layer.buffers())}
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise ExportError(f"paddle2onnx's graph reads tensors the traced model does not hold: {', '.join(missing)}")
    for name in wanted:
        graph.initializer.append(_tensor_proto(tensors[name], name))


def save_onnx(layer, folder: Path, spec: list, opset: int = ONNX_OPSET) -> dict[str, str]:
    """`folder/model.onnx` of the traced `layer` (through the Paddle files in a scratch folder, removed after), its
    weights as initializers; returns `{"onnx": "model.onnx"}`, plus `"onnx_data": "model.onnx.data"` when the
    tensors are saved as ONNX external data."""
    import onnx

    work = folder / ".paddle"
    work.mkdir()
    files = save_paddle(layer, work, spec)
    params = work / files["params"]
    detached = params.stat().st_size >= PADDLE2ONNX_LIMIT
    converted = work / "model.onnx"
    _convert(work / files["program"], None if detached else params, converted, opset)
    model = onnx.load_model(str(converted))
    shutil.rmtree(work)
    if detached:
        _add_weights(model, layer)
    weights_to_initializers(model)
    return save_model(model, folder)
