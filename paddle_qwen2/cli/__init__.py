"""The `paddle-qwen2` command line (also `python -m paddle_qwen2`): `main.py` holds the top parser, the dispatch
and the exit codes; each subcommand has a module of its own giving `DESCRIPTION`, `add_arguments(parser)` and
`run(args, own_process)`:

    convert.py    checkpoint folders between the HF and Paddle layouts (no paddle import)
    finetune.py   paddlenlp Trainer runs; the options and their `--config` JSON defaults
    embed.py      sentence embeddings of a .txt / .jsonl / .parquet file
    export.py     a static program for Paddle Inference or ONNX
    generate.py   stream a model's answer to one prompt
    serve.py      the OpenAI-compatible HTTP server
    errors.py     `ServeError`

Building the parser imports neither paddle nor numpy nor fastapi: each subcommand imports what it runs in `run`.
No other package of paddle_qwen2 imports argparse or this package.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
