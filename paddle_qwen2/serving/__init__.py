"""`paddle-qwen2 serve`: an OpenAI-compatible HTTP server with continuous batching.

- `api_server.py`: `create_app(ServerState)`, the FastAPI application: API key and request-metrics middleware,
  error handlers, `/health`, `/v1/models`, `/metrics`, and the routes of the handlers below.
- `serving_chat.py`: `/v1/chat/completions` and `/v1/completions`: sampling settings, SSE streaming, chunks.
- `serving_embedding.py`: `/v1/embeddings`: truncation to `dimensions`, float or base64 vectors.
- `state.py`: `ServerState`, what the routes serve (models, names, scheduler, key, metrics) and their checks.
- `protocol.py`: request schemas (pydantic, strict), `APIError` and the OpenAI error object, response pieces.
- `scheduler.py`: `Scheduler`, the one thread that runs the engine: continuous batching of generation requests
  (prefill joins at the next step, finished or cancelled rows leave at once) and batched embedding requests.
- `engine_process.py`: `EngineProcess`, the models and the scheduler in a process of their own (Paddle Inference
  holds the GIL for a whole run), with the scheduler's client side, request metrics and the 429 check here.
- `metrics.py`: `ServerMetrics`, the Prometheus metrics on `prometheus_client`, a registry per server.

Importing this package loads neither fastapi nor paddle; `api_server` and the handlers import fastapi, and the
models load in the engine process.
"""

from __future__ import annotations

__all__ = ["create_app", "ServerState", "Scheduler", "ServerMetrics", "APIError"]


def __getattr__(name: str):
    if name == "create_app":
        from .api_server import create_app

        return create_app
    if name == "ServerState":
        from .state import ServerState

        return ServerState
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
