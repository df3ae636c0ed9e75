"""A checkpoint as a static program for Paddle Inference (or ONNX), with all a deployment needs.

    from paddle_qwen2.export import export_model
    export_model("DIR", "EXP", task="decode", format="paddle", dtype="float32")
    export_model("DIR", "EXP", task="decode", format="onnx", weights="int4")

(the command line: `paddle-qwen2 export --model DIR --out EXP --task ... [--format onnx] [--weights int8]`)

Inputs `input_ids` and `attention_mask`, int64 `[batch, seq]`, both dims dynamic. Output 0:
- causal-lm: logits `[batch, seq, vocab]` float32; position ids are derived from the mask inside the program
  (`cumsum(mask) - 1`), so a left-padded row gives the logits of its unpadded self.
- embedding: `[batch, dim]` float32, the whole sentence-transformers pipeline of the folder (Transformer, Pooling,
  Dense..., Normalize; bidirectional when config.json says `is_causal: false`).
- sequence-classification: logits `[batch, num_labels]` float32.
- decode: one generation step, what `paddle_qwen2.inference` loops over: inputs `input_ids` `[batch, new]`,
  `attention_mask` `[batch, past + new]` and the KV cache `past_key_0, past_value_0, ...` `[batch, kv_heads, past,
  head_dim]` (past = 0 for the prefill; `export_meta.json`'s `decode.cache_layout` names the axes); outputs the
  logits of the last position `[batch, vocab]` float32 and the present cache `present_key_0, present_value_0, ...`
  (past + new). Rows are left-padded.

`dtype` sets the weights' (and the KV cache's) dtype; outputs stay float32. bfloat16 and float16 programs need a
GPU to run (Paddle has no CPU kernels for their matmuls).

`weights` is the precision of the weights the engine reads (`meta.WEIGHTS`, the formats holding each in
`meta.WEIGHT_FORMATS`): "float32"; "bfloat16" (`format="paddle"`: float32 files that Paddle Inference's oneDNN bf16
passes convert when the predictor loads); "int8" / "int4" (`format="onnx"`: every projection and the LM head
block-quantized as onnxruntime's `MatMulNBits`, `quantize.py`; `export_meta.json` records the settings under
`"quantization"`: bits, block_size, symmetric, accuracy_level, head_bits). Activations and the KV cache stay
float32.

`format="paddle"` writes `paddle.jit.save`'s files (Paddle 3.x: `model.json` + `model.pdiparams`; Paddle 2.6:
`model.pdmodel` + `model.pdiparams`), `format="onnx"` writes `model.onnx` (paddle2onnx; every weight an initializer,
the tensors in `model.onnx.data` above `onnx_graph.EXTERNAL_DATA_THRESHOLD`). Both add
`export_meta.json` (task, files, inputs, outputs in order, the model config, the embedding pipeline's pooling,
prompts and max length) and the tokenizer / config / generation config files. The folder is written into a
temporary folder beside `out` and renamed at the end; a non-empty `out` needs `force=True`.

The modules, in the order an export uses them:

- `meta.py`: the constants (`TASKS`, `FORMATS`, `DTYPES`, `META_FILE`), the inputs' `InputSpec`s, the input and
  output descriptions of `export_meta.json`, `read_meta`.
- `loading.py`: the folder checked, the model of the task loaded (projections fused), `build_program`.
- `programs.py`: the layers traced for each task (`DecodeProgram`, ...); imports paddle.
- `paddle_saver.py`: `paddle.jit.save` (Paddle Inference files).
- `onnx_saver.py`: `model.onnx` through paddle2onnx (weights above its 2 GiB limit added after it).
- `onnx_graph.py`: the weights as initializers (what weight-only quantizers read), `save_model` with external data.
- `quantize.py`: int8 / int4 weights (`MatMulNBits`) in a saved `model.onnx`, the settings chosen by measurement.
- `exporter.py`: `export_model`, the folder written and renamed into place.
- `errors.py`: `ExportError`.

Importing this package loads no paddle (an export imports it when it runs).
"""

from __future__ import annotations

from .errors import ExportError
from .exporter import SIDE_FILES, export_model
from .loading import FUSED, build_program
from .meta import DTYPES, FORMATS, INPUT_NAMES, META_FILE, META_VERSION, TASKS, WEIGHT_FORMATS, WEIGHTS, read_meta
from .onnx_saver import ONNX_OPSET

__all__ = [
    "DTYPES",
    "FORMATS",
    "FUSED",
    "INPUT_NAMES",
    "META_FILE",
    "META_VERSION",
    "ONNX_OPSET",
    "SIDE_FILES",
    "TASKS",
    "WEIGHTS",
    "WEIGHT_FORMATS",
    "ExportError",
    "build_program",
    "export_model",
    "read_meta",
]
