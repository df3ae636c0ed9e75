"""HF <-> Paddle checkpoint conversion: streaming, exact, safe.

A checkpoint folder holds `config.json`, the weights and tokenizer / generation files. The two layouts:

- HF (transformers): names `model.layers.0.self_attn.q_proj.weight` (`transformer.` for the QA head, no prefix
  for a bare `Qwen2Model`), Linear weights `[out, in]`, files `model.safetensors` or shards named in
  `model.safetensors.index.json`, or the PyTorch pickles `pytorch_model.bin` / `pytorch_model.bin.index.json`.
- Paddle (paddlenlp): names `qwen2.layers.0.self_attn.q_proj.weight`, Linear weights `[in, out]`, files as
  paddlenlp's `save_pretrained(safe_serialization=True)` writes them (`model.safetensors` or
  `model-00001-of-0000N.safetensors` + `model.safetensors.index.json`, metadata `{"format": "np"}`, bfloat16
  stored as its uint16 bit pattern because numpy has no bfloat16).

The package imports neither paddle nor torch, so the converter starts fast and its memory stays near one
tensor: tensors are memory-mapped one at a time, unchanged tensors are copied file to file by the kernel, and
the rest is cut into chunks that worker threads transpose (the C kernel `_transpose.c` when built, else numpy)
while the main thread writes them in place. numpy itself is imported only when needed (casts, PyTorch files,
no C kernel). Output goes to a temporary folder beside DST that is renamed into place at the end, so an
interrupted run leaves no DST.

Files, in the order a conversion uses them:

- `names.py`: the one table of HF <-> Paddle names and transposes (`HF_ARCHITECTURES`, `name_rows`; modeling.py's
  `_get_name_mappings` is built from them), shapes from the config (`ModelDims`, `expected_hf_shape`), the
  architecture of a checkpoint, file names.
- `dtypes.py`: safetensors dtype codes, bfloat16 <-> float32, `cast_array`, the lazy numpy import.
- `tensors.py`: `TensorEntry`, one tensor of a weights file (read or memory-mapped).
- `safetensors_reader.py`: safetensors headers, checked against the file.
- `torch_reader.py`: PyTorch `.bin` zip archives through a restricted unpickler (no torch).
- `checkpoint.py`: the weights of a folder (`open_checkpoint`, index shards) and `detect_layout`.
- `plan.py`: output names, dtypes and shapes, every tensor checked before anything is written.
- `writer.py`: the transposes (the optional C kernel `_transpose.c`, else numpy), pieces written by worker
  threads, headers and shards.
- `convert.py`: `convert_checkpoint`, `read_paddle_state_dict`, the output config and publishing the output.
- `loading.py`: `checkpoint_tensors`, the tensors of an HF or Paddle folder in the Paddle layout, each read on
  demand in the dtype asked for (what `from_pretrained` fills the model from).
"""

from .checkpoint import detect_layout, open_checkpoint
from .convert import DEFAULT_MAX_SHARD_SIZE, ConversionSummary, convert_checkpoint, read_paddle_state_dict
from .dtypes import DTYPE_CODES, cast_array
from .errors import ConversionError
from .loading import SourceTensor, checkpoint_tensors
from .names import HF_ARCHITECTURES, HeadSpec, ModelDims, expected_hf_shape, name_rows
from .writer import parse_size

__all__ = [
    "ConversionError",
    "HeadSpec",
    "HF_ARCHITECTURES",
    "ModelDims",
    "ConversionSummary",
    "name_rows",
    "expected_hf_shape",
    "detect_layout",
    "open_checkpoint",
    "read_paddle_state_dict",
    "checkpoint_tensors",
    "SourceTensor",
    "convert_checkpoint",
    "parse_size",
    "cast_array",
    "DEFAULT_MAX_SHARD_SIZE",
    "DTYPE_CODES",
]
