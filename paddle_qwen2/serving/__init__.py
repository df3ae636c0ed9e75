"""`paddle-qwen2 serve`: an OpenAI-compatible HTTP server with continuous batching.

- `protocol.py`: request schemas (pydantic, strict), `APIError` and the OpenAI error object, response pieces.
- `scheduler.py`: `Scheduler`, the one thread that runs the engine: continuous batching of generation requests
  (prefill joins at the next step, finished or cancelled rows leave at once) and batched embedding requests.
- `engine_process.py`: `EngineProcess`, the models and the scheduler in a process of their own (Paddle Inference
  holds the GIL for a whole run), with the scheduler's client side, request metrics and the 429 check here.
- `app.py`: `create_app(ServerState)`, the FastAPI routes, SSE streaming, API key and request metrics.
- `metrics.py`: the Prometheus metrics and their text exposition format.
- `command.py`: the `serve` subcommand (argument parsing, binding, loading, uvicorn and its signals).

Importing this package (or `command`) loads neither fastapi nor paddle; the submodules `app` and `scheduler` do
their imports when used.
"""

from __future__ import annotations

__all__ = ["create_app", "ServerState", "Scheduler", "ServerMetrics", "APIError"]


def __getattr__(name: str):
    if name in ("create_app", "ServerState"):
        from . import app

        return getattr(app, name)
    if name == "Scheduler":
        from .scheduler import Scheduler

        return Scheduler
    if name == "ServerMetrics":
        from .metrics import ServerMetrics

        return ServerMetrics
    if name == "APIError":
        from .protocol import APIError

        return APIError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
