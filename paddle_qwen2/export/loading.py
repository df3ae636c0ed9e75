"""The model to export: the folder checked (a Qwen2 checkpoint or a sentence-transformers folder), the model of the
task loaded with fused projections, and wrapped in its program (`programs.py`) with the task's metadata."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import ExportError
from .meta import TASKS, decode_meta, decode_outputs, read_json

__all__ = ["FUSED", "build_program", "qwen2_config"]

FUSED = {"fuse_attention_qkv": True, "fuse_attention_ffn": True}  # how the programs hold the projections


def qwen2_config(folder: Path) -> dict:
    """config.json of a Qwen2 folder, or ExportError."""
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder}: not a Qwen2 model (no config.json)")
    config = read_json(path, "model config")
    if not isinstance(config, dict) or config.get("model_type") != "qwen2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ExportError(f"{path}: not a Qwen2 model (model_type {kind!r}, expected 'qwen2')")
    return config


def _load_head(cls, folder: Path, task: str, dtype: str):
    """`cls.from_pretrained(folder)` with the q/k/v and gate/up projections fused (fewer, larger matmuls); a weight
    the checkpoint lacks (the head of another task) is an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = cls.from_pretrained(str(folder), dtype=dtype, **FUSED)
    for w in caught:
        text = str(w.message)
        if "not in the checkpoint were initialised" in text or "shapes differ" in text:
            raise ExportError(f"{folder}: cannot export task {task}: {text.split(': ', 1)[-1]}")
    model.eval()
    return model


def build_program(model_dir: str | os.PathLike, task: str, dtype: str = "float32"):
    """(the layer to trace, the task's metadata, its outputs, the folder holding the tokenizer / config files)."""
    model_dir = Path(model_dir)
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "embedding":
        return _embedding_program(model_dir, dtype)
    config = qwen2_config(model_dir)
    if (model_dir / "modules.json").is_file():
        raise ExportError(
            f"{model_dir}: cannot export task {task}: a sentence-transformers folder exports only the embedding task"
        )
    from ..modeling import Qwen2ForCausalLM, Qwen2ForSequenceClassification
    from .programs import PROGRAMS

    if task == "causal-lm":
        model = _load_head(Qwen2ForCausalLM, model_dir, task, dtype)
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", model.config.vocab_size]}]
        return PROGRAMS[task](model), {}, outputs, model_dir
    if task == "decode":
        model = _load_head(Qwen2ForCausalLM, model_dir, task, dtype)
        meta = {"decode": decode_meta(model.config, dtype)}
        return PROGRAMS[task](model), meta, decode_outputs(model.config, dtype), model_dir
    if not config.get("id2label") and not config.get("num_labels"):
        raise ExportError(f"{model_dir}: cannot export task {task}: config.json has no labels (id2label)")
    model = _load_head(Qwen2ForSequenceClassification, model_dir, task, dtype)
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", model.config.num_labels]}]
    meta = {"id2label": {str(k): v for k, v in (config.get("id2label") or {}).items()}}
    return PROGRAMS[task](model), meta, outputs, model_dir


def _embedding_program(model_dir: Path, dtype: str):
    """`build_program` of a sentence-transformers folder: the whole pipeline, `[batch, dim]`."""
    if not (model_dir / "modules.json").is_file():
        qwen2_config(model_dir)
        raise ExportError(
            f"{model_dir}: cannot export task embedding: no modules.json (not a sentence-transformers folder)"
        )
    from ..embedding import EmbeddingError
    from ..embedding.folder import DenseSpec, NormalizeSpec, read_folder

    try:
        spec = read_folder(model_dir)
        qwen2_config(spec.transformer.path)
        from ..embedding.model import EmbeddingModel

        model = EmbeddingModel.from_pretrained(model_dir, dtype=dtype, **FUSED)
    except EmbeddingError as exc:
        raise ExportError(str(exc)) from None
    if not model.spec.pooling.include_prompt and model.prompts:
        warnings.warn(
            f"{model_dir}: the Pooling module leaves the prompt out (include_prompt false); the exported "
            "program pools over every token, so prompted texts embed differently from sentence-transformers"
        )
    meta = {
        "embedding": {
            "dimension": model.dimension,
            "pooling": list(model.spec.pooling.modes),
            "include_prompt": bool(model.spec.pooling.include_prompt),
            "dense": [
                {"in_features": m.in_features, "out_features": m.out_features, "activation": m.activation}
                for m in model.spec.modules
                if isinstance(m, DenseSpec)
            ],
            "normalize": any(isinstance(m, NormalizeSpec) for m in model.spec.modules),
            "is_causal": bool(model.spec.is_causal),
            "max_seq_length": int(model.max_seq_length),
            "do_lower_case": bool(model.spec.transformer.do_lower_case),
            "prompts": dict(model.prompts),
            "default_prompt_name": model.default_prompt_name,
        }
    }
    outputs = [{"name": "embeddings", "dtype": "float32", "shape": ["batch", model.dimension]}]
    from .programs import PROGRAMS

    return PROGRAMS["embedding"](model), meta, outputs, Path(spec.transformer.path)
