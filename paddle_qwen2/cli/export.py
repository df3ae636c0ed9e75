"""`paddle-qwen2 export`: a checkpoint as a static program for Paddle Inference (or ONNX), with all a deployment
needs (`paddle_qwen2.export` describes the folder it writes).

    paddle-qwen2 export --model DIR --out EXP --task causal-lm|embedding|sequence-classification|decode
                        [--format paddle|onnx] [--dtype float32|bfloat16|float16]
                        [--weights float32|bfloat16|int8|int4]

`--weights int8|int4` (with `--format onnx`) writes every projection and the LM head block-quantized (onnxruntime's
MatMulNBits); `--weights bfloat16` (with `--format paddle`) marks a float32 program for Paddle Inference's oneDNN
bf16 passes. A combination the format cannot hold is refused before anything is written.

No paddle import until the export runs.
"""

from __future__ import annotations

import argparse

from ..export import DTYPES, FORMATS, TASKS, WEIGHT_FORMATS, WEIGHTS

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "a static program for Paddle Inference or ONNX"
DESCRIPTION = (
    "Export a Qwen2 checkpoint (HF or Paddle layout) or a sentence-transformers folder as a static program for "
    "Paddle Inference (--format paddle: model.json / model.pdiparams) or ONNX (--format onnx: model.onnx), with "
    "export_meta.json and the tokenizer and config files. Inputs input_ids and attention_mask (int64 [batch, seq], "
    "dynamic); output 0: logits [batch, seq, vocab] (causal-lm), [batch, num_labels] (sequence-classification) or "
    "the sentence embeddings [batch, dim] (embedding); decode: one generation step with the KV cache as inputs and "
    "outputs (the program paddle-qwen2 generate and serve run)."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `export` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", required=True, help="Qwen2 checkpoint or sentence-transformers folder")
    p.add_argument("--out", metavar="EXP", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--task", required=True, choices=TASKS, help="what the program computes")
    p.add_argument("--format", default="paddle", choices=FORMATS, help="paddle (default) or onnx")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' dtype (default float32)")
    held = "; ".join(f"{w}: --format {' or '.join(f)}" for w, f in WEIGHT_FORMATS.items())
    p.add_argument(
        "--weights",
        default="float32",
        metavar="|".join(WEIGHTS),
        help=f"precision of the weights the engine reads (default float32; {held}): int8 / int4 block-quantize "
        "every projection and the LM head (onnxruntime MatMulNBits), bfloat16 runs on Paddle Inference's oneDNN "
        "bf16 passes",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty EXP")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Export as `args` say; prints a one-line summary. Raises `ExportError` on bad input. (`own_process`: the
    subcommands' shared signature, unused.)"""
    from ..export import export_model

    out = export_model(
        args.model,
        args.out,
        args.task,
        format=args.format,
        dtype=args.dtype,
        force=args.force,
        weights=args.weights,
    )
    if not args.quiet:
        print(f"exported {args.task} ({args.format}, {args.dtype}, {args.weights} weights) -> {out}")
    return 0
