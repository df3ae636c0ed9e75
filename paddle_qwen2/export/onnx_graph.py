"""paddle2onnx's graph made readable by weight-only quantizers, and saved at any size.

paddle2onnx 2.1.0 writes every weight as a `Constant` node (some passed on through `Identity` nodes) and a tied LM
head as `MatMul(x, Transpose(embedding))`. Tools that rewrite weights, such as `onnxruntime.quantization`'s MatMul
n-bits quantizer, only take a MatMul whose second input is a graph initializer. `weights_to_initializers` rewrites
the graph in place so that:

- every `Constant` node's tensor is an initializer named by the node's output;
- an `Identity` of an initializer is removed and its readers read the initializer (kept, re-pointed, when its
  output is a graph output);
- a 2-D initializer `W [rows, cols]` read by `MatMul` through `Transpose(perm=[1, 0])` is stored transposed
  (`W_transposed [cols, rows]`) and the MatMul reads it directly. When `W` is otherwise read only by `Gather(axis=0)`
  (the tied embedding), `W` itself is replaced: each lookup becomes `Gather(W_transposed, axis=1)` followed by a
  `Transpose` that moves the hidden axis last, so the weights are stored once. Otherwise `W` stays for its other
  readers and `W_transposed` is an extra initializer;
- initializers that nothing reads are removed.

`save_model` writes `model.onnx` alone, or with all tensors in `model.onnx.data` (ONNX external data) when the
tensors exceed `EXTERNAL_DATA_THRESHOLD` (protobuf cannot serialize a message of 2 GiB or more).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "EXTERNAL_DATA_FILE",
    "EXTERNAL_DATA_THRESHOLD",
    "PROTOBUF_LIMIT",
    "save_model",
    "tensor_bytes",
    "weights_to_initializers",
]

PROTOBUF_LIMIT = 2**31  # bytes: protobuf refuses to serialize a message this large
# tensors above this total go to the external data file; the margin leaves room for the graph itself
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 2**27
EXTERNAL_DATA_FILE = "model.onnx.data"
# tensors smaller than this stay inside model.onnx when the rest goes to the external data file
_INLINE_BYTES = 1024


def _consumers(graph) -> dict[str, list]:
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _attribute(node, name: str, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _replace_nodes(graph, keep: list) -> None:
    """`graph.node` becomes copies of `keep` (copied first: clearing the field may invalidate the references)."""
    copies = [type(node)() for node in keep]
    for copy, node in zip(copies, keep):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _constants_to_initializers(graph) -> int:
    """Every top-level `Constant` node holding a `value` tensor becomes an initializer; returns how many."""
    keep, moved = [], 0
    for node in graph.node:
        value = _attribute(node, "value") if node.op_type == "Constant" else None
        if value is None:
            keep.append(node)
            continue
        value.name = node.output[0]
        graph.initializer.append(value)
        moved += 1
    _replace_nodes(graph, keep)
    return moved


def _bypass_identities(graph) -> None:
    """Readers of `Identity(initializer)` (through any chain of Identities) read the initializer."""
    weights = {tensor.name for tensor in graph.initializer}
    outputs = {output.name for output in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
        if node.op_type == "Identity" and node.input[0] in weights and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    _replace_nodes(graph, keep)


def _rank(graph, name: str) -> int | None:
    """The rank of tensor `name` when the graph states it (a graph input or value_info, through Cast / Identity)."""
    producers = {output: node for node in graph.node for output in node.output}
    while name in producers and producers[name].op_type in ("Cast", "Identity"):
        name = producers[name].input[0]
    for info in (*graph.input, *graph.value_info):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _is_plain_transpose(node) -> bool:
    return node.op_type == "Transpose" and list(_attribute(node, "perm", [1, 0])) == [1, 0]


def _fold_transposed_weight(graph, weight, readers: list) -> None:
    """Store `weight` transposed for the MatMuls that read it through a Transpose (see the module docstring)."""
    import numpy as np  # here, not at import: `convert` runs without numpy (export is imported by the CLI)
    from onnx import helper, numpy_helper

    transposes = {node.output[0] for node in readers if _is_plain_transpose(node)}
    ranks = {node.output[0]: _rank(graph, node.input[1]) for node in readers if node.op_type == "Gather"}
    ranks = {key: rank for key, rank in ranks.items() if rank is not None and key not in transposes}
    single = all(node.output[0] in transposes or node.output[0] in ranks for node in readers)
    single = single and all(_attribute(node, "axis", 0) == 0 for node in readers if node.output[0] in ranks)
    name = f"{weight.name}_transposed"
    transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), name)
    graph.initializer.append(transposed)
    alias = {node.output[0]: name for node in readers if node.output[0] in transposes}
    keep = []
    for node in graph.node:
        if node.output[0] in transposes:
            continue
        for i, input_name in enumerate(node.input):
            node.input[i] = alias.get(input_name, input_name)
        if single and node.output[0] in ranks:
            rank = ranks[node.output[0]]
            gathered = f"{node.output[0]}_hidden_first"
            lookup = helper.make_node("Gather", [name, node.input[1]], [gathered], name=f"{node.name}_columns", axis=1)
            perm = [*range(1, rank + 1), 0]
            keep += [lookup, helper.make_node("Transpose", [gathered], [node.output[0]], name=node.name, perm=perm)]
            continue
        keep.append(node)
    _replace_nodes(graph, keep)
    if single:
        index = next(i for i, tensor in enumerate(graph.initializer) if tensor.name == weight.name)
        del graph.initializer[index]


def _fold_transposes(graph) -> None:
    """Every 2-D initializer that a MatMul reads through `Transpose(perm=[1, 0])` is stored transposed."""
    readers = _consumers(graph)
    matmul_inputs = {node.input[1] for node in graph.node if node.op_type == "MatMul"}
    for weight in list(graph.initializer):
        if len(weight.dims) != 2:
            continue
        transposes = [node for node in readers.get(weight.name, []) if _is_plain_transpose(node)]
        if any(node.output[0] in matmul_inputs for node in transposes):
            _fold_transposed_weight(graph, weight, readers[weight.name])
            readers = _consumers(graph)


def _drop_unread(graph) -> None:
    """Initializers that no node reads and that are no graph output are removed (paddle2onnx leaves some)."""
    read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    unread = [i for i, tensor in enumerate(graph.initializer) if tensor.name not in read]
    for i in reversed(unread):
        del graph.initializer[i]


def weights_to_initializers(model) -> None:
    """Rewrite `model` (an `onnx.ModelProto` from paddle2onnx) in place as the module docstring says."""
    graph = model.graph
    _constants_to_initializers(graph)
    _bypass_identities(graph)
    _fold_transposes(graph)
    _drop_unread(graph)


def tensor_bytes(model) -> int:
    """Bytes of all initializer data held in `model` (its external data not counted)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        else:
            total += tensor.ByteSize()
    return total


def save_model(model, folder: Path, threshold: int | None = None) -> dict[str, str]:
    """Write `model` as `folder/model.onnx`, with its tensors in `folder/model.onnx.data` when they exceed
    `threshold` bytes (default `EXTERNAL_DATA_THRESHOLD`); both written in a scratch folder and renamed into place.
    Returns the files written: `{"onnx": "model.onnx"}` plus `"onnx_data": "model.onnx.data"` with external data."""
    import onnx

    limit = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    external = tensor_bytes(model) > limit
    scratch = folder / ".onnx-save"
    scratch.mkdir()
    try:
        if external:
            onnx.save_model(
                model,
                str(scratch / "model.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=EXTERNAL_DATA_FILE,
                size_threshold=_INLINE_BYTES,
            )
        else:
            onnx.save_model(model, str(scratch / "model.onnx"))
        files = {"onnx": "model.onnx", **({"onnx_data": EXTERNAL_DATA_FILE} if external else {})}
        for name in files.values():
            os.replace(scratch / name, folder / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files
