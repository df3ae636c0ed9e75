"""`OnnxPredictor`: an onnxruntime session of a `--format onnx` export folder (float32, int8 or int4 weights), with
the interface of `predictor.Predictor` where the two meet (`meta`, `folder`, `threads`, `input_names`, `device`,
`run`). Imports neither paddle nor anything that does: a `paddle.Tensor` input is read through its `numpy()`.

The session runs on the CPU with `threads` intra-op threads (default `OMP_NUM_THREADS`, else 1), no inter-op
parallelism and the graph optimizations of `GRAPH_OPTIMIZATION`; `SPIN` sets whether idle intra-op workers spin.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..export import ExportError, read_meta

__all__ = ["OnnxPredictor", "onnxruntime"]

# session options: all graph optimizations; idle intra-op workers sleep instead of spinning (faster per decode step
# at 2 threads on a shared machine, and they leave the cores to other work: benchmarks/results/quant_configs.json,
# "defaults")
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"
SPIN = False


def onnxruntime():
    """The `onnxruntime` module, or ExportError saying it is needed and how to get it."""
    try:
        import onnxruntime as module
    except ImportError as exc:
        raise ExportError(
            f"running an ONNX export (int8 / int4 weights, --engine onnxruntime) needs onnxruntime: {exc} "
            "(pip install onnxruntime)"
        ) from None
    return module


def _threads(threads: int | None) -> int:
    if threads is not None:
        if threads < 1:
            raise ExportError(f"threads must be at least 1, got {threads}")
        return int(threads)
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _as_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if hasattr(value, "numpy"):  # paddle.Tensor (and anything else that exports numpy)
        return np.ascontiguousarray(value.numpy())
    return np.ascontiguousarray(np.asarray(value))


class OnnxPredictor:
    """An onnxruntime `InferenceSession` of the export folder `folder` (its `export_meta.json`'s `files["onnx"]`,
    with its external data file beside it); `run(arrays) -> arrays` in the program's input and output order."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        ort = onnxruntime()
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        files = self.meta.get("files", {})
        if self.meta.get("format") != "onnx" or "onnx" not in files:
            raise ExportError(
                f"{self.folder}: an export of format {self.meta.get('format')!r}; onnxruntime runs --format onnx "
                "exports (model.onnx)"
            )
        self.device = "cpu"
        self.threads = _threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
        options.log_severity_level = 3
        path = self.folder / files["onnx"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise ExportError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        self.input_names = [value.name for value in self.session.get_inputs()]
        self.output_names = [value.name for value in self.session.get_outputs()]

    @property
    def weights(self) -> str:
        """The precision of the weights the session reads (`export_meta.json`'s `weights`)."""
        return str(self.meta.get("weights", "float32"))

    def run(self, inputs: Sequence) -> list[np.ndarray]:
        """numpy arrays (or `paddle.Tensor`s) in the program's input order -> its outputs as numpy arrays."""
        if len(inputs) != len(self.input_names):
            raise ExportError(f"{self.folder}: the program takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {name: _as_array(value) for name, value in zip(self.input_names, inputs)}
        return self.session.run(self.output_names, feed)

    def describe(self) -> str:
        return f"onnxruntime (cpu {self.threads} thread{'s' * (self.threads > 1)}, {self.weights} weights)"
