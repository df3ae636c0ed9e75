"""`paddle-qwen2 export`: a checkpoint as a static program for Paddle Inference (or ONNX), with all a deployment needs.

    paddle-qwen2 export --model DIR --out EXP --task causal-lm|embedding|sequence-classification|decode
                        [--format paddle|onnx] [--dtype float32|bfloat16|float16]

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

`--dtype` sets the weights' (and the KV cache's) dtype; outputs stay float32. bfloat16 and float16 programs need a
GPU to run (Paddle has no CPU kernels for their matmuls).

`--format paddle` writes `paddle.jit.save`'s files (Paddle 3.x: `model.json` + `model.pdiparams`; Paddle 2.6:
`model.pdmodel` + `model.pdiparams`), `--format onnx` writes `model.onnx` (paddle2onnx). Both add
`export_meta.json` (task, files, inputs, outputs in order, the model config, the embedding pipeline's pooling,
prompts and max length) and the tokenizer / config / generation config files. The folder is written into a
temporary folder beside `--out` and renamed at the end; a non-empty `--out` needs `--force`.

This module imports no paddle until an export runs (the CLI builds its parser from it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..conversion.names import TOKENIZER_FILES

__all__ = ["ExportError", "TASKS", "FORMATS", "DTYPES", "add_arguments", "run", "export_model", "read_meta"]

TASKS = ("causal-lm", "embedding", "sequence-classification", "decode")
DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("paddle", "onnx")
META_FILE = "export_meta.json"
META_VERSION = 1
ONNX_OPSET = 14
INPUT_NAMES = ("input_ids", "attention_mask")
FUSED = {"fuse_attention_qkv": True, "fuse_attention_ffn": True}  # how the programs hold the projections
# copied from the model folder when present
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)

DESCRIPTION = (
    "Export a Qwen2 checkpoint (HF or Paddle layout) or a sentence-transformers folder as a static program for "
    "Paddle Inference (--format paddle: model.json / model.pdiparams) or ONNX (--format onnx: model.onnx), with "
    "export_meta.json and the tokenizer and config files. Inputs input_ids and attention_mask (int64 [batch, seq], "
    "dynamic); output 0: logits [batch, seq, vocab] (causal-lm), [batch, num_labels] (sequence-classification) or "
    "the sentence embeddings [batch, dim] (embedding); decode: one generation step with the KV cache as inputs and "
    "outputs (the program paddle-qwen2 generate and serve run)."
)


class ExportError(ValueError):
    """A model folder, task or output path `export` cannot use; reads after `error: `."""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `export` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", required=True, help="Qwen2 checkpoint or sentence-transformers folder")
    p.add_argument("--out", metavar="EXP", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--task", required=True, choices=TASKS, help="what the program computes")
    p.add_argument("--format", default="paddle", choices=FORMATS, help="paddle (default) or onnx")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype (default float32)")
    p.add_argument("--force", action="store_true", help="replace a non-empty EXP")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    return p


def run(args: argparse.Namespace) -> int:
    """Export as `args` say; prints a one-line summary. Raises `ExportError` on bad input."""
    out = export_model(args.model, args.out, args.task, format=args.format, dtype=args.dtype, force=args.force)
    if not args.quiet:
        print(f"exported {args.task} ({args.format}, {args.dtype}) -> {out}")
    return 0


# --------------------------------------------------------------------------------------------------- checks
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the {what}: {exc}") from None


def _qwen2_config(folder: Path) -> dict:
    """config.json of a Qwen2 folder, or ExportError."""
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder}: not a Qwen2 model (no config.json)")
    config = _read_json(path, "model config")
    if not isinstance(config, dict) or config.get("model_type") != "qwen2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ExportError(f"{path}: not a Qwen2 model (model_type {kind!r}, expected 'qwen2')")
    return config


def _check_paths(model: Path, out: Path, force: bool) -> None:
    if not model.is_dir():
        raise ExportError(f"{model}: no such model folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: folder is not empty (use --force to replace it)")
    resolved_model, resolved_out = model.resolve(), out.resolve()
    if resolved_out == resolved_model or resolved_out in resolved_model.parents:
        raise ExportError(f"{out}: would replace the model folder {model}")


# ------------------------------------------------------------------------------------------------- programs
def _programs():
    from .programs import PROGRAMS

    return PROGRAMS


def _load_head(cls, folder: Path, task: str, dtype: str):
    """`cls.from_pretrained(folder)` with the q/k/v and gate/up projections fused (fewer, larger matmuls: ~10%
    faster decode); a weight the checkpoint lacks (the head of another task) is an error."""
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
    is_st = (model_dir / "modules.json").is_file()
    if task == "embedding":
        if not is_st:
            _qwen2_config(model_dir)
            raise ExportError(f"{model_dir}: cannot export task embedding: no modules.json (not a "
                              "sentence-transformers folder)")  # fmt: skip
        from ..embedding import EmbeddingError
        from ..embedding.folder import DenseSpec, NormalizeSpec, read_folder

        try:
            spec = read_folder(model_dir)
            _qwen2_config(spec.transformer.path)
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
        return _programs()["embedding"](model), meta, outputs, Path(spec.transformer.path)

    config = _qwen2_config(model_dir)
    if is_st:
        raise ExportError(f"{model_dir}: cannot export task {task}: a sentence-transformers folder exports only "
                          "the embedding task")  # fmt: skip
    from ..modeling import Qwen2ForCausalLM, Qwen2ForSequenceClassification

    if task == "causal-lm":
        model = _load_head(Qwen2ForCausalLM, model_dir, task, dtype)
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", model.config.vocab_size]}]
    elif task == "decode":
        model = _load_head(Qwen2ForCausalLM, model_dir, task, dtype)
        return (
            _programs()[task](model),
            {"decode": _decode_meta(model.config, dtype)},
            _decode_outputs(model.config, dtype),
            model_dir,
        )
    else:
        if not config.get("id2label") and not config.get("num_labels"):
            raise ExportError(f"{model_dir}: cannot export task {task}: config.json has no labels (id2label)")
        model = _load_head(Qwen2ForSequenceClassification, model_dir, task, dtype)
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", model.config.num_labels]}]
        meta = {"id2label": {str(k): v for k, v in (config.get("id2label") or {}).items()}}
        return _programs()[task](model), meta, outputs, model_dir
    return _programs()[task](model), {}, outputs, model_dir


def _cache_names(config, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(config.num_hidden_layers) for kind in ("key", "value")]


def _decode_meta(config, dtype: str) -> dict:
    """What the engine needs to feed the decode program its cache."""
    return {
        "num_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.attention_head_dim,
        "cache_dtype": dtype,
        "cache_layout": list(_programs()["decode"].CACHE_LAYOUT),
        "cache_inputs": _cache_names(config, "past"),
        "cache_outputs": _cache_names(config, "present"),
        "padding_side": "left",
    }


def _cache_shape(decode: dict, past: str | None) -> list:
    """A cache tensor's shape in the decode program's layout: named axes, the sizes of the fixed ones (`past` as
    None: the `InputSpec` form)."""
    sizes = {"batch": None if past is None else "batch", "kv_heads": decode["num_key_value_heads"],
             "past": past, "head_dim": decode["head_dim"]}  # fmt: skip
    return [sizes[axis] for axis in decode["cache_layout"]]


def _decode_outputs(config, dtype: str) -> list[dict]:
    cache = _cache_shape(_decode_meta(config, dtype), "past+new")
    return [{"name": "logits", "dtype": "float32", "shape": ["batch", config.vocab_size]}] + [
        {"name": name, "dtype": dtype, "shape": cache} for name in _cache_names(config, "present")
    ]


# --------------------------------------------------------------------------------------------------- export
def _input_spec(task: str, decode: dict | None):
    from paddle.static import InputSpec

    spec = [InputSpec([None, None], "int64", name) for name in INPUT_NAMES]
    if task == "decode":
        shape = _cache_shape(decode, None)
        spec.append([InputSpec(shape, decode["cache_dtype"], name) for name in decode["cache_inputs"]])
    return spec


def _input_meta(task: str, decode: dict | None) -> list[dict]:
    dims = {"0": "batch", "1": "seq"}
    inputs = [{"name": name, "dtype": "int64", "shape": ["batch", "seq"], "dynamic_axes": dims} for name in INPUT_NAMES]
    if task == "decode":
        inputs[0].update(shape=["batch", "new"], dynamic_axes={"0": "batch", "1": "new"})
        inputs[1].update(shape=["batch", "past+new"], dynamic_axes={"0": "batch", "1": "past+new"})
        shape, past_axis = _cache_shape(decode, "past"), str(decode["cache_layout"].index("past"))
        inputs += [{"name": name, "dtype": decode["cache_dtype"], "shape": shape,
                    "dynamic_axes": {"0": "batch", past_axis: "past"}} for name in decode["cache_inputs"]]  # fmt: skip
    return inputs


def _save_paddle(layer, folder: Path, spec: list) -> dict[str, str]:
    """`paddle.jit.save` of the traced `layer` into `folder/model.*`; returns the program and params file names."""
    import paddle

    static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(folder / "model"), input_spec=spec)
    program = next((n for n in ("model.json", "model.pdmodel") if (folder / n).is_file()), None)
    if program is None or not (folder / "model.pdiparams").is_file():
        raise ExportError(f"paddle.jit.save wrote no program into {folder}: {sorted(os.listdir(folder))}")
    return {"program": program, "params": "model.pdiparams"}


def _paddle2onnx():
    try:
        import paddle2onnx
    except (ImportError, ValueError) as exc:  # paddle2onnx 2.x refuses to import on paddle < 3 (ValueError)
        raise ExportError(f"--format onnx needs paddle2onnx: {str(exc).splitlines()[0]}") from None
    return paddle2onnx


def _save_onnx(layer, folder: Path, spec: list, opset: int) -> dict[str, str]:
    paddle2onnx = _paddle2onnx()
    work = folder / ".paddle"
    work.mkdir()
    files = _save_paddle(layer, work, spec)
    # optimize_tool: paddle2onnx's default ("polygraphy") turns on POLYGRAPHY_AUTOINSTALL_DEPS, which pip-installs
    # onnx_graphsurgeon and with it numpy 2 into the running environment
    paddle2onnx.export(str(work / files["program"]), str(work / files["params"]), str(folder / "model.onnx"),
                       opset_version=opset, optimize_tool="onnxoptimizer")  # fmt: skip
    shutil.rmtree(work)
    if not (folder / "model.onnx").is_file():
        raise ExportError("paddle2onnx wrote no model.onnx")
    return {"onnx": "model.onnx"}


def _generation_config(folder: Path) -> dict:
    """generation_config.json of `folder` ({} when it has none): the generation defaults, stop token ids."""
    path = folder / "generation_config.json"
    return _read_json(path, "generation config") if path.is_file() else {}


def _inference_settings(paddle_version: str) -> dict:
    """Whether oneDNN runs these programs correctly: Paddle 2.6's oneDNN passes fail on them ("could not reshape a
    memory descriptor")."""
    return {"onednn": int(paddle_version.split(".")[0]) != 2}


def read_meta(folder: str | os.PathLike) -> dict:
    """`export_meta.json` of an export folder, or ExportError."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ExportError(f"{folder}: not an export folder (no {META_FILE})")
    meta = _read_json(path, "export metadata")
    version = meta.get("export_meta_version") if isinstance(meta, dict) else None
    if version != META_VERSION:
        raise ExportError(f"{path}: export_meta_version {version!r}, expected {META_VERSION}")
    return meta


def export_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    task: str,
    format: str = "paddle",
    dtype: str = "float32",
    force: bool = False,
    opset: int = ONNX_OPSET,
) -> Path:
    """Export `model_dir` for `task` into the folder `out` (see the module docstring); returns `out`."""
    model_dir, out = Path(model_dir), Path(out)
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    _check_paths(model_dir, out, force)
    from ..runtime import configure_cpu_threads

    configure_cpu_threads()
    import paddle

    from .. import __version__

    if format == "onnx":
        _paddle2onnx()  # before the model loads

    layer, task_meta, outputs, source = build_program(model_dir, task, dtype)
    spec = _input_spec(task, task_meta.get("decode"))
    config = _read_json(source / "config.json", "model config")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        try:
            files = _save_paddle(layer, work, spec) if format == "paddle" else _save_onnx(layer, work, spec, opset)
        except TypeError as exc:  # CPU builds check op dtypes against their kernels while tracing
            if dtype == "float32" or "Check data type error" not in str(exc):
                raise
            reason = next(line for line in str(exc).splitlines() if "Check data type error" in line)
            raise ExportError(f"--dtype {dtype}: this Paddle build ({paddle.__version__}, "
                              f"{'GPU' if paddle.is_compiled_with_cuda() else 'CPU'}) cannot trace the model in "
                              f"{dtype}: {reason.strip().split(' (at ')[0]}; half-precision programs need "
                              "paddlepaddle-gpu") from None  # fmt: skip
        copied = []
        for name in SIDE_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, work / name)
                copied.append(name)
        meta = {
            "export_meta_version": META_VERSION,
            "task": task,
            "format": format,
            "dtype": dtype,
            "files": files,
            "inputs": _input_meta(task, task_meta.get("decode")),
            "outputs": outputs,
            "output_note": "outputs in this order; Paddle Inference names them fetch_name_N (use the index)",
            "paddle_inference": _inference_settings(paddle.__version__),
            **task_meta,
            "config": config,
            "generation_config": _generation_config(source) if task in ("causal-lm", "decode") else None,
            "tokenizer_files": [n for n in copied if n not in ("config.json", "generation_config.json")],
            "source": str(model_dir),
            "versions": {"paddle": paddle.__version__, "paddle_qwen2": __version__},
        }
        if format == "onnx":
            meta["onnx_opset"] = opset
        (work / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
