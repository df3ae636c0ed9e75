"""`paddle-qwen2 serve`: the OpenAI-compatible server (FastAPI on uvicorn) with continuous batching.

    paddle-qwen2 serve --model DIR [--embedding-model DIR] [--served-model-name NAME] [--host 127.0.0.1]
                       [--port 8000] [--engine inference|onnxruntime|dygraph]
                       [--weights float32|bfloat16|int8|int4] [--max-batch-size N] [--max-model-len N]
                       [--api-key KEY] [--max-engine-restarts N] [--prefix-cache-mb N | --no-prefix-cache]

The port is bound and the folders are checked before any model loads, so a port in use or a missing folder is
one `error: ...` line and exit code 1 at once. uvicorn owns SIGTERM / SIGINT while it serves: the listening
socket closes, requests already running finish (at most `--grace-period` seconds), the scheduler stops, and the
command returns 0. When the engine process dies, it is started again (with a backoff; the requests in flight fail,
new ones get 503 meanwhile); after more than `--max-engine-restarts` failures in a row the command exits 1, for a
supervisor to restart the server. Nothing here imports fastapi, uvicorn or paddle until `run` (the CLI builds its
parser from it); the server itself is `paddle_qwen2.serving`.

The prefix cache (on unless `--no-prefix-cache`) holds the KV cache of recent prompts and answers in host memory;
its default budget, 512 MiB, holds about 21,000 tokens of Qwen2.5-0.5B's float32 cache (24 KiB a token: a dozen
1,500-token system prompts with room for chats) or about 4,700 of Qwen2.5-7B's (112 KiB a token), a fraction of
either model's weights.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from ..export import WEIGHTS
from .errors import ServeError
from .generate import ENGINES

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "engine_spec", "run"]

DEFAULT_PREFIX_CACHE_MB = 512
HELP = "an OpenAI-compatible HTTP server (continuous batching)"
DESCRIPTION = (
    "Serve a causal LM (--model: a Qwen2 checkpoint or a decode export folder) and/or a sentence-embedding model "
    "(--embedding-model: a sentence-transformers folder) over an OpenAI-compatible HTTP API: /v1/chat/completions, "
    "/v1/completions, /v1/embeddings, /v1/models, /health and /metrics (Prometheus). Requests are batched "
    "continuously: up to --max-batch-size sequences decode together, the rest wait in a queue of "
    "--max-queue-size (beyond that: 429). SIGTERM lets running requests finish, then exits 0."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `serve` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", help="causal LM: Qwen2 checkpoint (HF or Paddle) or decode export")
    p.add_argument("--embedding-model", metavar="DIR", help="sentence-transformers (or Qwen2 embedding) folder")
    p.add_argument("--served-model-name", metavar="NAME", help="the API name of --model (default: its folder's name)")
    p.add_argument(
        "--embedding-model-name", metavar="NAME", help="the API name of --embedding-model (default: its folder's name)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="inference: Paddle Inference on the exported decode and embedding programs (a checkpoint is exported "
        "once into the export cache); onnxruntime: the causal LM's ONNX export (float32, int8 or int4 weights; the "
        "embedding model runs as --weights says); dygraph: the paddle models (default: chosen by --weights: "
        "onnxruntime for int8 / int4 weights or an ONNX export, else inference)",
    )
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="precision of the weights the engine reads, for --model and --embedding-model (default: an export "
        "folder's own, else float32); int8 / int4 run on onnxruntime, bfloat16 on Paddle Inference's oneDNN bf16 "
        "passes",
    )
    p.add_argument(
        "--onednn",
        choices=("auto", "on", "off"),
        default="off",
        help="oneDNN on CPU for --engine inference (default off: the engine process's OpenMP workers sleep between "
        "parallel regions, where MKL runs prompts faster than oneDNN and one predictor holds the weights once; "
        "auto: prompts with oneDNN, as `generate` does)",
    )
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N", help="sequences decoded together (16)")
    p.add_argument(
        "--max-queue-size",
        type=int,
        default=128,
        metavar="N",
        help="sequences waiting for a slot before requests get 429 (128)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        metavar="N",
        help="context limit, prompt + completion (default: the model's max_position_embeddings)",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=DEFAULT_PREFIX_CACHE_MB,
        metavar="N",
        help="memory for the KV cache of recent prompts and answers, reused by requests that start with the same "
        f"tokens (automatic prefix caching), in MiB ({DEFAULT_PREFIX_CACHE_MB})",
    )
    p.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="prefill every prompt in full (no prefix cache)",
    )
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds running requests get to finish (30)",
    )
    p.add_argument(
        "--max-engine-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restart a dead engine process at most N times in a row (a restart that serves a request resets the "
        "count), then exit 1 (3)",
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--debug-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow decoding
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Check, bind, load, serve until SIGTERM / SIGINT. Returns 0, or 1 after one `error: ...` line. (`own_process`:
    the subcommands' shared signature; the engine runs in a process of its own anyway.)"""
    try:
        _check_args(args)
        sock = _bind(args.host, args.port)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        state = _load(args)
    except (ValueError, OSError) as exc:  # EngineError, EmbeddingError, ExportError, unreadable files
        sock.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _serve(args, state, sock)


def _check_args(args: argparse.Namespace) -> None:
    if not args.model and not args.embedding_model:
        raise ServeError("give --model and/or --embedding-model")
    for option, folder in (("--model", args.model), ("--embedding-model", args.embedding_model)):
        if folder is not None and not Path(folder).is_dir():
            raise ServeError(f"{option} {folder}: no such model folder")
    checks = [("--port", args.port, 0 <= args.port <= 65535, "in [0, 65535]"),
              ("--max-batch-size", args.max_batch_size, args.max_batch_size >= 1, ">= 1"),
              ("--max-queue-size", args.max_queue_size, args.max_queue_size >= 0, ">= 0"),
              ("--max-model-len", args.max_model_len, args.max_model_len is None or args.max_model_len >= 1, ">= 1"),
              ("--grace-period", args.grace_period, args.grace_period >= 0, ">= 0"),
              ("--max-engine-restarts", args.max_engine_restarts, args.max_engine_restarts >= 0, ">= 0"),
              ("--prefix-cache-mb", args.prefix_cache_mb, args.prefix_cache_mb >= 1, ">= 1")]  # fmt: skip
    for option, value, ok, expected in checks:
        if not ok:
            raise ServeError(f"{option} must be {expected}, got {value}")


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; ServeError naming the address when that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def engine_spec(args: argparse.Namespace):
    """The `serving.engine_process.EngineSpec` of the parsed options (what the engine process loads and runs)."""
    from ..serving.engine_process import EngineSpec

    onednn = {"auto": None, "on": True, "off": False}[args.onednn]
    name = args.served_model_name or (Path(args.model).resolve().name if args.model else None)
    return EngineSpec(
        args.model,
        args.engine,
        onednn,
        args.max_model_len,
        name,
        args.embedding_model,
        args.max_batch_size,
        args.debug_step_delay,
        0 if args.no_prefix_cache else args.prefix_cache_mb,
        weights=args.weights,
    )


def _load(args: argparse.Namespace):
    """The engine process (it loads the models) and the server state (no HTTP yet)."""
    from ..runtime import configure_cpu_threads

    configure_cpu_threads()  # before the engine process starts: it inherits the environment
    from ..serving import ServerMetrics, ServerState
    from ..serving.engine_process import EngineProcess

    spec = engine_spec(args)
    metrics = ServerMetrics()
    engine = EngineProcess(spec, args.max_queue_size, metrics, max_restarts=args.max_engine_restarts)
    llm, embedder = engine.start()
    embedder_name = args.embedding_model_name or (Path(args.embedding_model).resolve().name if embedder else None)
    return ServerState(engine, llm, embedder, llm.name if llm else None, embedder_name, args.api_key, metrics)


def _ignore_signal(signum, frame) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; by then there is nothing left to do."""


def _serve(args: argparse.Namespace, state, sock: socket.socket) -> int:
    import uvicorn

    from ..serving import create_app

    config = uvicorn.Config(
        create_app(state),
        http="h11",
        ws="none",
        lifespan="on",
        loop="asyncio",
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.grace_period,
    )
    server = uvicorn.Server(config)
    state.accepting = lambda: not server.should_exit

    def give_up(message: str) -> None:  # on the engine's reader thread: uvicorn's main loop sees should_exit
        print(f"paddle-qwen2 serve: {message}; exiting with code 1", file=sys.stderr, flush=True)
        server.should_exit = True

    state.scheduler.on_give_up = give_up
    _configure_logging(args.log_level)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    models = ", ".join(f"{name!r}" for name in state.model_names())
    if state.llm is not None:  # what runs it, e.g. "paddle.inference (cpu 1 thread, oneDNN off, ...)"
        print(f"paddle-qwen2 serve: engine process: {state.llm.description}", flush=True)
    print(f"paddle-qwen2 serve: {models} on http://{host}:{port}", flush=True)
    in_main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in handled} if in_main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.scheduler.close()
        sock.close()
    return 1 if getattr(state.scheduler, "gave_up", False) else 0


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("paddle_qwen2.serving")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     paddle_qwen2: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
