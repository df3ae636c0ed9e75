"""The Paddle Inference files of a traced program: `paddle.jit.save`'s `model.json` (Paddle 3.x) or
`model.pdmodel` (Paddle 2.6), and `model.pdiparams`."""

from __future__ import annotations

import os
from pathlib import Path

from ..trace_state import forget_failed_traces
from .errors import ExportError

__all__ = ["save_paddle"]


def save_paddle(layer, folder: Path, spec: list) -> dict[str, str]:
    """`paddle.jit.save` of the traced `layer` (inputs: `spec`, the `InputSpec`s) into `folder/model.*`; returns
    `{"program": file name, "params": "model.pdiparams"}`, or ExportError when the files are not there. A trace
    that fails leaves no dy2static state behind (`trace_state.forget_failed_traces`), so the process can trace
    again."""
    import paddle

    with forget_failed_traces():
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(folder / "model"), input_spec=spec)
    program = next((n for n in ("model.json", "model.pdmodel") if (folder / n).is_file()), None)
    if program is None or not (folder / "model.pdiparams").is_file():
        raise ExportError(f"paddle.jit.save wrote no program into {folder}: {sorted(os.listdir(folder))}")
    return {"program": program, "params": "model.pdiparams"}
