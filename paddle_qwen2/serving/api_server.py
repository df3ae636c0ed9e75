"""The FastAPI application: OpenAI-compatible routes over a `Scheduler`, with API key, error handlers and metrics.

    state = ServerState(scheduler, llm=llm, embedder=embedder, api_key="sk-...")
    app = create_app(state)              # run with uvicorn; the lifespan starts and stops the scheduler

Routes: `GET /health`, `GET /v1/models`, `GET /metrics` (here), `POST /v1/chat/completions`,
`POST /v1/completions` (`serving_chat`), `POST /v1/embeddings` (`serving_embedding`). Every error is OpenAI's
`{"error": {"message", "type", "param", "code"}}` (see `protocol.APIError`). Every request is counted in
`paddle_qwen2_requests_total` by endpoint and status; `/v1/*` routes need `Authorization: Bearer <api_key>` when
the state has a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metrics import CONTENT_TYPE
from .protocol import APIError, error_body
from .serving_chat import chat, completions
from .serving_embedding import embeddings
from .state import ServerState

__all__ = ["ServerState", "create_app", "ENDPOINTS"]

logger = logging.getLogger("paddle_qwen2.serving")

ENDPOINTS = ("/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/metrics")


def create_app(state: ServerState) -> FastAPI:
    """The application; its lifespan starts the scheduler and, on shutdown (after uvicorn has let the running
    requests finish), closes it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not state.scheduler.started:
            state.scheduler.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.scheduler.close)

    app = FastAPI(title="paddle_qwen2", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    _install_error_handlers(app)
    app.add_middleware(_Middleware, state=state)

    @app.get("/health")
    async def health() -> Response:
        status, body = state.health()
        return JSONResponse(body, status)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": _model_cards(state)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat_route(request: Request) -> Response:
        return await chat(state, request)

    @app.post("/v1/completions")
    async def completions_route(request: Request) -> Response:
        return await completions(state, request)

    @app.post("/v1/embeddings")
    async def embeddings_route(request: Request) -> Response:
        return await embeddings(state, request)

    return app


def _model_cards(state: ServerState) -> list[dict]:
    """The `/v1/models` entries: the generation model (with its context length), then the embedding model."""
    data = []
    for name, kind in ((state.llm_name, "generation"), (state.embedder_name, "embedding")):
        if name is not None:
            entry = {"id": name, "object": "model", "created": state.created, "owned_by": "paddle_qwen2", "task": kind}
            if kind == "generation":
                entry["max_model_len"] = state.llm.max_model_len
            data.append(entry)
    return data


# ------------------------------------------------------------------------------------------- middleware
class _Middleware:
    """Counts every request by endpoint and status (`/metrics`), and checks the API key of `/v1/*` routes."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status = 500

        async def counting_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            error = _auth_error(scope, self.state.api_key) if path.startswith("/v1/") else None
            if error is not None:
                await JSONResponse(error.body(), status_code=401)(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            endpoint = path if path in ENDPOINTS else "other"
            self.state.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


def _auth_error(scope, key: str | None) -> APIError | None:
    """The 401 of a request without `Authorization: Bearer <key>` (None when it has it, or no key is set)."""
    if not key:
        return None
    headers = dict(scope.get("headers") or [])
    given = headers.get(b"authorization", b"").decode("latin-1")
    if not given.startswith("Bearer "):
        return APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(given[len("Bearer ") :].encode(), key.encode()):
        return APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return None


# ------------------------------------------------------------------------------------------- errors
def _install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error object: `APIError` as raised, validation errors 400, Starlette's HTTP errors
    (404 route, 405 method) with the method and path, anything else 500 (logged with its traceback)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = APIError(400, f"invalid request: {exc.errors()[:1]}", code="invalid_value")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)
