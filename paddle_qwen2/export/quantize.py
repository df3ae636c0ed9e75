"""Weight-only quantization of an exported `model.onnx` (`--format onnx --weights int8|int4`): every MatMul that reads
a 2-D weight initializer (every linear projection and the LM head, see `onnx_graph`) becomes onnxruntime's
`MatMulNBits` with block-quantized weights, by `onnxruntime.quantization`'s MatMul n-bits quantizer (round to
nearest per block of `block_size` input rows, one scale per block, and a zero point when not symmetric).
Activations stay float32; `accuracy_level` 4 lets onnxruntime compute the products with int8 activations (quantized
per block at run time) where the CPU has int8 dot products, 0 computes them in float32.

`SETTINGS` holds the settings of each precision, chosen by measurement (benchmarks/quant_configs.py, results in
benchmarks/results/quant_configs.json: ms per decode step, file size and logits error of each candidate on a
random-weight Qwen2.5-0.5B). `head_bits` is the bits of the LM head (int4 exports may keep it in 8 bits: it is the
largest single matrix and the one whose error reaches the logits directly).

    quantize_folder(folder, "int4")   # folder/model.onnx (+ .data) rewritten in place; returns (files, settings)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import ExportError

__all__ = ["BITS", "SETTINGS", "head_node", "quantize_folder", "quantize_model", "settings_for"]

BITS = {"int8": 8, "int4": 4}
# chosen from benchmarks/results/quant_configs.json (see the module docstring): accuracy_level 4 (accuracy_level 0
# is an order of magnitude slower per step in 8 bits and ~8x in 4 bits, for a small gain in error); blocks of 32
# (16 cut the error a little for ~7% more bytes per step, 64 and 128 raise it); int4 asymmetric (lower error than
# symmetric for <1% more bytes) with the LM head in 8 bits
SETTINGS = {
    "int8": {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4, "head_bits": 8},
    "int4": {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 4, "head_bits": 8},
}
BLOCK_SIZES = (16, 32, 64, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def settings_for(weights: str, **overrides) -> dict:
    """The quantization settings of `weights` ("int8" / "int4"), `overrides` (non-None values) on top; ExportError
    on an unknown precision or a bad value."""
    if weights not in SETTINGS:
        raise ExportError(f"weights {weights!r} are not quantized; quantized precisions: {', '.join(SETTINGS)}")
    settings = {**SETTINGS[weights], **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(settings) - set(SETTINGS[weights]))
    if unknown:
        raise ExportError(f"unknown quantization settings: {', '.join(unknown)}")
    if settings["block_size"] not in BLOCK_SIZES:
        raise ExportError(f"block_size {settings['block_size']}; expected one of {BLOCK_SIZES}")
    if settings["accuracy_level"] not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level {settings['accuracy_level']}; expected one of {ACCURACY_LEVELS}")
    if settings["head_bits"] not in (4, 8) or settings["head_bits"] < settings["bits"]:
        raise ExportError(f"head_bits {settings['head_bits']}; expected 4 or 8, at least bits ({settings['bits']})")
    return settings


def head_node(model) -> str | None:
    """The name of the MatMul that computes the first graph output (the logits): the nearest MatMul reached from it
    walking back through the graph's nodes; None when there is none."""
    producers = {output: node for node in model.graph.node for output in node.output}
    pending, seen = [model.graph.output[0].name], set()
    while pending:
        name = pending.pop(0)
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul":
            return node.name
        pending += [input_name for input_name in node.input if input_name]
    return None


def _name_nodes(model) -> None:
    """Every node gets a unique name (the quantizer selects nodes by name; paddle2onnx leaves some unnamed)."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _pass(model, bits: int, settings: dict, include: list[str] | None, exclude: list[str] | None):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=settings["block_size"],
        is_symmetric=settings["symmetric"],
        accuracy_level=settings["accuracy_level"],
        bits=bits,
    )
    quantizer = nbits.MatMulNBitsQuantizer(
        model, nodes_to_exclude=exclude, nodes_to_include=include, algo_config=config
    )
    quantizer.process()
    return quantizer.model.model


def quantize_model(model, settings: dict):
    """`model` (an `onnx.ModelProto` whose weights are initializers) with every weight MatMul as MatMulNBits per
    `settings` (`settings_for`); returns the new ModelProto. ExportError when onnxruntime is missing or a weight
    MatMul is left unquantized."""
    try:
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"--weights int8/int4 needs onnxruntime's quantization tools: {exc}") from None
    _name_nodes(model)
    head = head_node(model)
    split = head is not None and settings["head_bits"] != settings["bits"]
    quiet = logging.getLogger("onnxruntime.quantization")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        model = _pass(model, settings["bits"], settings, None, [head] if split else None)
        if split:
            model = _pass(model, settings["head_bits"], settings, [head], None)
    finally:
        quiet.setLevel(level)
    weights = {tensor.name for tensor in model.graph.initializer}
    left = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    if left:
        raise ExportError(f"the quantizer left weight MatMuls unquantized: {', '.join(left[:5])}")
    return model


def quantize_folder(folder: str | os.PathLike, weights: str, **overrides) -> tuple[dict[str, str], dict]:
    """Rewrite `folder/model.onnx` (and its external data) with `weights`' quantized weights, saved as
    `onnx_graph.save_model` saves (external data above its threshold; stale files removed). Returns the files
    written (`export_meta.json`'s `files`) and the settings used."""
    import onnx

    from .onnx_graph import EXTERNAL_DATA_FILE, save_model

    folder = Path(folder)
    settings = settings_for(weights, **overrides)
    model = onnx.load_model(str(folder / "model.onnx"))  # external data, if any, loaded into memory
    model = quantize_model(model, settings)
    for name in ("model.onnx", EXTERNAL_DATA_FILE):
        (folder / name).unlink(missing_ok=True)
    return save_model(model, folder), settings
