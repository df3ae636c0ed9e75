"""The FastAPI application: OpenAI-compatible routes over a `Scheduler`.

    state = ServerState(llm=llm, embedder=embedder, scheduler=scheduler, api_key="sk-...")
    app = create_app(state)              # run with uvicorn; the lifespan starts and stops the scheduler

Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
`POST /v1/embeddings`, `GET /metrics`. Every error is OpenAI's `{"error": {"message", "type", "param", "code"}}`
(see `protocol.APIError`). Streams are server-sent events ending with `data: [DONE]`; a client that disconnects
cancels its sequences (they leave the batch at the scheduler's next step).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_body,
    new_id,
    now,
    parse_request,
    usage,
)
from .scheduler import EmbeddingJob, GenerationRequest, QueueFull, Scheduler, SchedulerClosed, TokenEvent

__all__ = ["ServerState", "create_app", "ENDPOINTS"]

logger = logging.getLogger("paddle_qwen2.serving")

ENDPOINTS = ("/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/metrics")


@dataclass
class ServerState:
    """What the routes serve: the models (either may be None), their names, the scheduler, the key."""

    scheduler: Scheduler
    llm: Any = None
    embedder: Any = None
    llm_name: str | None = None
    embedder_name: str | None = None
    api_key: str | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    accepting: Callable[[], bool] = lambda: True  # False once the server drains for shutdown
    created: int = field(default_factory=now)

    def __post_init__(self) -> None:
        if self.llm is not None and self.llm_name is None:
            self.llm_name = self.llm.name
        self.scheduler.metrics = self.metrics

    def model_names(self) -> list[str]:
        return [n for n in (self.llm_name, self.embedder_name) if n is not None]

    def check_model(self, name: str, task: str) -> None:
        """404 unless `name` is the served model of `task` ("generation" or "embedding")."""
        served = self.llm_name if task == "generation" else self.embedder_name
        if name == served:
            return
        detail = f"this server's {task} model is `{served}`" if served else f"this server has no {task} model"
        raise APIError(404, f"The model `{name}` does not exist ({detail})", param="model", code="model_not_found")

    def check_accepting(self) -> None:
        if not self.accepting() or not self.scheduler.alive:
            raise APIError(503, self.scheduler.error or "the server is shutting down", code="unavailable")


# ---------------------------------------------------------------------------------------------- streaming
class _Events:
    """Scheduler events (on its thread) into an asyncio queue (on the event loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()

    def put(self, event: TokenEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class _Choice:
    """The accumulated result of one sequence."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def _submit(state: ServerState, sequences: list, events: _Events) -> list[GenerationRequest]:
    requests = [GenerationRequest(s, events.put, index) for index, s in enumerate(sequences)]
    state.check_accepting()
    with _scheduler_errors():
        state.scheduler.submit(requests)
    return requests


@contextlib.contextmanager
def _scheduler_errors():
    """The scheduler's refusals as OpenAI errors: a full queue is 429, a closing server 503."""
    try:
        yield
    except QueueFull as exc:
        raise APIError(429, str(exc), code="rate_limit_exceeded") from None
    except SchedulerClosed as exc:
        raise APIError(503, str(exc), code="unavailable") from None


def _cancel(state: ServerState, requests: list[GenerationRequest]) -> None:
    live = [r for r in requests if not r.done]
    for request in live:
        request.cancel()
    if live:
        state.scheduler.wake()


class _ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _watch_disconnect(http: Request, events: _Events) -> None:
    """Wait for the client to disconnect (its body is read: the next ASGI message is `http.disconnect`), then
    wake the collector with a `None` event."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    events.queue.put_nowait(None)


def _check_event(event: TokenEvent) -> None:
    if event.error is not None:
        raise APIError(500, event.error, type="server_error", code="engine_error")


async def _collect(state: ServerState, requests: list[GenerationRequest], events: _Events, http: Request):
    """Wait for every sequence to finish; their choices in order. `_ClientGone` if the client disconnects first."""
    choices = [_Choice() for _ in requests]
    watcher = asyncio.create_task(_watch_disconnect(http, events))
    try:
        pending = len(requests)
        while pending:
            event = await events.queue.get()
            if event is None:
                raise _ClientGone()
            _check_event(event)
            choice = choices[event.index]
            choice.text.append(event.text)
            choice.token_ids += event.token_ids
            if event.finish_reason is not None:
                choice.finish_reason = event.finish_reason
                pending -= 1
    finally:
        watcher.cancel()
        _cancel(state, requests)
    return choices


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(
    state: ServerState,
    requests: list[GenerationRequest],
    events: _Events,
    chunks: _ChunkMaker,
) -> AsyncIterator[str]:
    """Server-sent events: the maker's first chunks, a chunk per text piece, the finish chunk of each choice, the
    usage chunk when asked for, `[DONE]`. Held-back tokens (no text yet) ride along with the next piece."""
    held: dict[int, list[int]] = {}
    completion_tokens = 0
    try:
        for chunk in chunks.start(len(requests)):
            yield _sse(chunk)
        pending = len(requests)
        while pending:
            event = await events.queue.get()
            if event.error is not None:
                yield _sse(APIError(500, event.error, type="server_error", code="engine_error").body())
                break
            completion_tokens += len(event.token_ids)
            ids = held.pop(event.index, []) + event.token_ids
            if event.text:
                yield _sse(chunks.piece(event.index, event.text, ids, event.finish_reason))
            elif event.finish_reason is not None:
                yield _sse(chunks.piece(event.index, "", ids, event.finish_reason))
            else:
                held[event.index] = ids
            if event.finish_reason is not None:
                pending -= 1
        else:
            if chunks.include_usage:
                prompt_tokens = sum(len(r.sequence.prompt_ids) for r in requests)
                yield _sse(chunks.usage(usage(prompt_tokens, completion_tokens)))
        yield "data: [DONE]\n\n"
    finally:
        _cancel(state, requests)


class _EventStream(StreamingResponse):
    """An SSE response that cancels its sequences when it ends however it ends (also when the client left before
    the stream's generator started, so its own `finally` never ran)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _ChunkMaker:
    """The chunk objects of one streamed response (chat or text completion)."""

    def __init__(self, chat: bool, model: str, include_usage: bool, return_token_ids: bool) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        self.model = model
        self.include_usage = include_usage
        self.return_token_ids = return_token_ids

    def _chunk(self, choices: list[dict]) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}  # fmt: skip
        if self.include_usage:
            out["usage"] = None
        return out

    def _choice(self, index: int, content: dict, token_ids: list[int] | None, finish_reason: str | None) -> dict:
        choice = {"index": index, **content, "logprobs": None, "finish_reason": finish_reason}
        if self.return_token_ids and token_ids is not None:
            choice["token_ids"] = token_ids
        return choice

    def start(self, n: int) -> list[dict]:
        if not self.chat:
            return []
        return [self._chunk([self._choice(i, {"delta": {"role": "assistant", "content": ""}}, [], None)
                             for i in range(n)])]  # fmt: skip

    def piece(self, index: int, text: str, token_ids: list[int], finish_reason: str | None) -> dict:
        content = {"delta": {"content": text} if text else {}} if self.chat else {"text": text}
        return self._chunk([self._choice(index, content, token_ids, finish_reason)])

    def usage(self, counts: dict) -> dict:
        return {**self._chunk([]), "usage": counts}


# ------------------------------------------------------------------------------------------- generation
def _check_fit(prompt_tokens: int, max_tokens: int | None, context: int, what: str) -> None:
    """400 when the prompt (with `max_tokens`, if given) does not fit the context; both lengths named."""
    if prompt_tokens >= context:
        raise APIError(400, f"This model's maximum context length is {context} tokens, and the {what} has "
                       f"{prompt_tokens} tokens: nothing is left to generate. Shorten the {what}.", param=what,
                       code="context_length_exceeded")  # fmt: skip
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} for the "
                       f"completion). Reduce the {what} or max_tokens (at most {context - prompt_tokens} here).",
                       param="max_tokens", code="context_length_exceeded")  # fmt: skip


def _sequences(state: ServerState, body, prompts: list[list[int]], what: str) -> list:
    """A `GenerationSequence` per prompt with the request's sampling settings (on top of the model's
    generation_config.json); 400 for a prompt that does not fit or a setting the sampler rejects."""
    from ..inference import GenerationSequence, SamplingParams

    llm = state.llm
    for ids in prompts:
        _check_fit(len(ids), body.token_limit, llm.max_model_len, what)
    try:
        params = SamplingParams.from_generation_config(
            llm.generation_config, max_new_tokens=body.token_limit, **body.sampling_overrides()
        )
    except (ValueError, TypeError) as exc:
        field_name = str(exc).split(" ", 1)[0]
        param = "max_tokens" if field_name == "max_new_tokens" else field_name
        raise APIError(400, str(exc).replace("max_new_tokens", "max_tokens"), param=param,
                       code="invalid_value") from None  # fmt: skip
    return [GenerationSequence(ids, params, llm.tokenizer, llm.max_model_len) for ids in prompts]


async def _generate(state: ServerState, http: Request, body, prompts: list[list[int]], what: str, chat: bool):
    sequences = _sequences(state, body, prompts, what)
    events = _Events()
    requests = _submit(state, sequences, events)
    if body.stream:
        maker = _ChunkMaker(chat, state.llm_name, body.include_usage, bool(body.return_token_ids))
        return _EventStream(_stream(state, requests, events, maker), lambda: _cancel(state, requests))
    try:
        choices = await _collect(state, requests, events, http)
    except _ClientGone:  # its sequences are cancelled; nobody reads this (499: nginx's "client closed request")
        return Response(status_code=499)
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices)
    out = {
        "id": new_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion" if chat else "text_completion",
        "created": now(),
        "model": state.llm_name,
        "choices": [_choice_body(i, c, chat, bool(body.return_token_ids)) for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, completion_tokens),
    }
    if body.return_token_ids:
        out["prompt_token_ids"] = prompts[0] if chat else prompts
    return JSONResponse(out)


def _choice_body(index: int, choice: _Choice, chat: bool, return_token_ids: bool) -> dict:
    text = "".join(choice.text)
    content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    out = {"index": index, **content, "logprobs": None, "finish_reason": choice.finish_reason}
    if return_token_ids:
        out["token_ids"] = choice.token_ids
    return out


async def _chat(state: ServerState, http: Request) -> Response:
    body = parse_request(await http.body(), ChatCompletionRequest)
    state.check_model(body.model, "generation")
    messages = [m.template_dict() for m in body.messages]
    try:
        prompt = state.llm.tokenizer.encode_chat(messages)
    except Exception as exc:  # ValueError from the checks, jinja2's TemplateError from the template itself
        raise APIError(400, f"messages: {exc}", param="messages", code="invalid_value") from None
    return await _generate(state, http, body, [prompt], "messages", chat=True)


async def _completions(state: ServerState, http: Request) -> Response:
    body = parse_request(await http.body(), CompletionRequest)
    state.check_model(body.model, "generation")
    prompts = [state.llm.tokenizer.encode(text, special=False) for text in body.prompt]
    for i, ids in enumerate(prompts):
        if not ids:
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise APIError(400, f"{param}: the prompt is empty (at least one token is needed)", param=param,
                           code="invalid_value")  # fmt: skip
    return await _generate(state, http, body, prompts, "prompt", chat=False)


# -------------------------------------------------------------------------------------------- embeddings
def _truncate(vectors: np.ndarray, dimensions: int | None, normalizes: bool) -> np.ndarray:
    """`[n, dim]` -> `[n, dimensions]`, L2-normalised again when the model's embeddings are unit vectors (as
    `EmbeddingModel.encode(truncate_dim=...)`)."""
    if dimensions is None:
        return vectors
    out = vectors[:, :dimensions]
    if normalizes:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def _encode_vector(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


async def _embeddings(state: ServerState, http: Request) -> Response:
    body = parse_request(await http.body(), EmbeddingRequest)
    state.check_model(body.model, "embedding")
    dim = state.embedder.dimension
    if body.dimensions is not None and body.dimensions > dim:
        raise APIError(400, f"dimensions: at most {dim} (the model's embedding size), got {body.dimensions}",
                       param="dimensions", code="invalid_value")  # fmt: skip
    state.check_accepting()
    loop = asyncio.get_running_loop()
    result: asyncio.Future = loop.create_future()

    def done(vectors, counts, error=None) -> None:
        def settle() -> None:
            if not result.done():
                result.set_exception(error) if error is not None else result.set_result((vectors, counts))

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    job = EmbeddingJob(body.input, done)
    with _scheduler_errors():
        state.scheduler.submit_embedding(job)
    try:
        vectors, counts = await result
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    except Exception as exc:
        raise APIError(500, f"embedding failed: {type(exc).__name__}: {exc}", type="server_error") from None
    vectors = _truncate(vectors, body.dimensions, state.embedder.normalizes())
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)]  # fmt: skip
    return JSONResponse({"object": "list", "data": data, "model": state.embedder_name,
                         "usage": usage(sum(counts), embedding=True)})  # fmt: skip


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
            error = self._auth_error(scope) if path.startswith("/v1/") else None
            if error is not None:
                await JSONResponse(error.body(), status_code=401)(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            endpoint = path if path in ENDPOINTS else "other"
            self.state.metrics.requests.inc(endpoint=endpoint, status=str(status))

    def _auth_error(self, scope) -> APIError | None:
        key = self.state.api_key
        if not key:
            return None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not given.startswith("Bearer "):
            return APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(given[len("Bearer ") :].encode(), key.encode()):
            return APIError(401, "Incorrect API key provided", code="invalid_api_key")
        return None


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(APIError(400, f"invalid request: {exc.errors()[:1]}", code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), 500)


# ---------------------------------------------------------------------------------------------------- app
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
        if not state.scheduler.alive:
            return JSONResponse(error_body(state.scheduler.error or "not running", "server_error"), 503)
        return JSONResponse({"status": "ok", "models": state.model_names()})

    @app.get("/v1/models")
    async def models() -> Response:
        data = []
        for name, kind in ((state.llm_name, "generation"), (state.embedder_name, "embedding")):
            if name is not None:
                entry = {"id": name, "object": "model", "created": state.created, "owned_by": "paddle_qwen2",
                         "task": kind}  # fmt: skip
                if kind == "generation":
                    entry["max_model_len"] = state.llm.max_model_len
                data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _chat(state, request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _completions(state, request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await _embeddings(state, request)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    return app
