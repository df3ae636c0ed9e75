"""The generation routes: `POST /v1/chat/completions` and `POST /v1/completions`.

    response = await chat(state, http_request)           # JSONResponse, or an SSE stream when `stream` is set
    response = await completions(state, http_request)

Each prompt becomes `n` `GenerationSequence`s (the request's sampling settings on top of the model's
generation_config.json; with a `seed`, choice j of a prompt samples with seed + j, as vLLM seeds them) submitted
to the scheduler; their `TokenEvent`s come back through an asyncio queue. Choice `index` is prompt * n + j (as
OpenAI numbers the choices of several completion prompts); `usage` counts each prompt once and the tokens of every
choice. A plain
request waits for every choice (a client that disconnects first cancels its sequences and gets 499); a streamed one
is server-sent events: the chunks of each text piece, each choice's finish chunk, the usage chunk when asked for,
then `data: [DONE]`. However a stream ends, its sequences are cancelled. With logprobs asked for, each choice (and
each streamed chunk, for its new tokens) carries them in OpenAI's shape (`logprobs.TokenStrings`); completions'
`echo` puts the prompt text before each choice's text (as the first chunk when streamed).

Chat with `tools` renders them through the model's chat template (`tools=`, as transformers does); unless
`tool_choice` is "none", the answer's hermes `<tool_call>` blocks become `message.tool_calls` (`tool_parsers`), the
content is the text outside them and the finish reason "tool_calls" when there are calls and the answer stopped by
itself; streamed, each choice's text goes through a `StreamingToolParser` (no part of a block is sent as content;
each call is a delta with its index, id and name, then its arguments). `tool_choice` "required" or a named function
constrains decoding to tool-call blocks (`inference.guided.GuidedSpec.tool_calls`), a JSON `response_format` to
JSON (`structured.response_format_spec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .logprobs import TokenStrings
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, new_id, now, parse_request, usage
from .scheduler import GenerationRequest, TokenEvent
from .state import ServerState
from .structured import response_format_spec
from .tool_parsers import StreamingToolParser, parse_tool_calls

__all__ = ["chat", "completions"]


async def chat(state: ServerState, http: Request) -> Response:
    """`POST /v1/chat/completions`: the messages through the model's chat template, `n` choices."""
    body = parse_request(await http.body(), ChatCompletionRequest)
    state.check_model(body.model, "generation")
    tools = body.template_tools()
    messages = body.template_messages()
    _force_tool_calls(body, tools)
    response_format = response_format_spec(body)  # 400 for a bad response_format, before anything is queued
    if response_format is not None:
        body.set_guided(response_format)
    try:
        tool_kwargs = {} if tools is None else {"tools": tools}
        prompt = state.llm.tokenizer.encode_chat(messages, **tool_kwargs)
    except Exception as exc:  # ValueError from the checks, jinja2's TemplateError from the template itself
        raise APIError(400, f"messages: {exc}", param="messages", code="invalid_value") from None
    return await _generate(state, http, body, [prompt], "messages", chat=True)


def _force_tool_calls(body: ChatCompletionRequest, tools: list[dict] | None) -> None:
    """For tool_choice "required" or a named function: the guided-decoding spec of hermes tool-call blocks (one
    or more of any tool, exactly one with `parallel_tool_calls` false, or one of the named tool); 400 naming the
    field when a tool's parameters cannot be enforced."""
    name = body.forced_tool
    if name is None:
        return
    from ..inference.guided import GuidedDecodingError, GuidedSpec

    try:
        spec = GuidedSpec.tool_calls(
            tools, name or None, field="tool_choice", parallel=body.parallel_tool_calls is not False
        )
        body.set_guided(spec)
    except GuidedDecodingError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None


async def completions(state: ServerState, http: Request) -> Response:
    """`POST /v1/completions`: `n` choices per prompt (a string or a list of strings), no special tokens added."""
    body = parse_request(await http.body(), CompletionRequest)
    state.check_model(body.model, "generation")
    prompts = [state.llm.tokenizer.encode(text, special=False) for text in body.prompt]
    for i, ids in enumerate(prompts):
        if not ids:
            param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise APIError(
                400, f"{param}: the prompt is empty (at least one token is needed)", param=param, code="invalid_value"
            )
    return await _generate(state, http, body, prompts, "prompt", chat=False)


# ------------------------------------------------------------------------------------------- generation
async def _generate(state: ServerState, http: Request, body, prompts: list[list[int]], what: str, chat: bool):
    sequences = _sequences(state, body, prompts, what)
    events = _Events()
    requests = [GenerationRequest(s, events.put, index) for index, s in enumerate(sequences)]
    tokens = TokenStrings(state.llm.tokenizer) if sequences[0].params.logprobs is not None else None
    n = body.choices_per_prompt
    echo = [body.prompt[i // n] for i in range(len(sequences))] if not chat and body.echo else None
    scoring = sequences[0].params.prompt_logprobs is not None
    scored = [prompts[i // n] for i in range(len(sequences))] if scoring else None
    state.submit(requests)
    if body.stream:
        maker = _ChunkMaker(chat, state.llm_name, body.include_usage, bool(body.return_token_ids), tokens, echo, scored)
        if chat and body.parses_tool_calls:
            maker.parse_tool_calls()
        prompt_tokens = sum(len(p) for p in prompts)
        return _EventStream(_stream(state, requests, events, maker, prompt_tokens), lambda: state.cancel(requests))
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
        "choices": [
            _choice_body(i, c, chat, bool(body.return_token_ids), tokens, echo[i] if echo else "", scored)
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }
    if chat and body.parses_tool_calls:
        for choice in out["choices"]:
            _parse_tool_calls(choice)
    if body.return_token_ids:
        out["prompt_token_ids"] = prompts[0] if chat else prompts
    return JSONResponse(out)


def _parse_tool_calls(choice: dict) -> None:
    """A chat choice's message with its tool calls parsed out of the text (content: the text outside them, None
    when only whitespace is left); finish reason "tool_calls" when there are calls and the answer stopped."""
    message = choice["message"]
    message["content"], calls = parse_tool_calls(message["content"])
    if calls:
        message["tool_calls"] = calls
        if choice["finish_reason"] == "stop":
            choice["finish_reason"] = "tool_calls"


def _check_fit(prompt_tokens: int, max_tokens: int | None, context: int, what: str) -> None:
    """400 when the prompt (with `max_tokens`, if given) does not fit the context; both lengths named."""
    if prompt_tokens >= context:
        message = (
            f"This model's maximum context length is {context} tokens, and the {what} has {prompt_tokens} tokens: "
            f"nothing is left to generate. Shorten the {what}."
        )
        raise APIError(400, message, param=what, code="context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        message = (
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} for the completion). "
            f"Reduce the {what} or max_tokens (at most {context - prompt_tokens} here)."
        )
        raise APIError(400, message, param="max_tokens", code="context_length_exceeded")


def _sequences(state: ServerState, body, prompts: list[list[int]], what: str) -> list:
    """`n` `GenerationSequence`s per prompt (prompt-major) with the request's sampling settings (on top of the
    model's generation_config.json; choice j seeded with seed + j); 400 for a prompt that does not fit or a setting
    the sampler rejects."""
    from ..inference import GenerationSequence, SamplingParams

    llm = state.llm
    for ids in prompts:
        _check_fit(len(ids), body.token_limit, llm.max_model_len, what)
    _check_logit_bias(body.logit_bias, _vocab_size(llm))
    try:
        params = SamplingParams.from_generation_config(
            llm.generation_config, max_new_tokens=body.token_limit, **body.sampling_overrides()
        )
    except (ValueError, TypeError) as exc:
        field_name = str(exc).split(" ", 1)[0]
        param = "max_tokens" if field_name == "max_new_tokens" else field_name
        message = str(exc).replace("max_new_tokens", "max_tokens")
        raise APIError(400, message, param=param, code="invalid_value") from None
    n = body.choices_per_prompt
    choice_params = [params if params.seed is None else params.replace(seed=params.seed + j) for j in range(n)]
    return [GenerationSequence(ids, p, llm.tokenizer, llm.max_model_len) for ids in prompts for p in choice_params]


def _check_logit_bias(bias: dict[str, Any] | None, vocab_size: int | None) -> None:
    """400 naming `logit_bias` and the key for a token id outside the model's vocabulary."""
    for key in bias or {}:
        if vocab_size is not None and int(key) >= vocab_size:
            message = f"logit_bias: key {key!r} is outside the vocabulary (token ids 0 to {vocab_size - 1})"
            raise APIError(400, message, param="logit_bias", code="invalid_value")


def _vocab_size(llm: Any) -> int | None:
    """The model's vocabulary size: the engine's, else `vocab_size` of the folder's config.json (None if unknown)."""
    size = getattr(llm, "vocab_size", None)
    if size is None and getattr(llm, "folder", None):
        size = _config_vocab_size(str(llm.folder))
    return size


@functools.lru_cache(maxsize=8)
def _config_vocab_size(folder: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return int(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    return None


def _choice_body(
    index: int,
    choice: _Choice,
    chat: bool,
    return_token_ids: bool,
    tokens: TokenStrings | None,
    echo: str,
    scored: list[list[int]] | None = None,
) -> dict:
    """One choice of a whole response; `tokens` formats its logprobs (None: not asked), `echo` precedes the text;
    `scored`: each choice's prompt ids when the echoed prompt's logprobs lead the choice's."""
    text = "".join(choice.text)
    content = {"message": {"role": "assistant", "content": text}} if chat else {"text": echo + text}
    logprobs = None
    if tokens is not None and chat:
        logprobs = tokens.chat(choice.logprobs)
    elif tokens is not None:
        before = tokens.prompt(scored[index], choice.prompt_logprobs) if scored else None
        logprobs = tokens.completion(choice.logprobs, len(echo), before)
    out = {"index": index, **content, "logprobs": logprobs, "finish_reason": choice.finish_reason}
    if return_token_ids:
        out["token_ids"] = choice.token_ids
    return out


# ------------------------------------------------------------------------------------------- events
class _Events:
    """Scheduler events (on its thread) into an asyncio queue (on the event loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()

    def put(self, event: TokenEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class _Choice:
    """The accumulated result of one sequence."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None


class _ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _watch_disconnect(http: Request, events: _Events) -> None:
    """Wait for the client to disconnect (its body is read: the next ASGI message is `http.disconnect`), then
    wake the collector with a `None` event."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
    events.queue.put_nowait(None)


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
            if event.error is not None:
                raise state.engine_error(event.error)
            choice = choices[event.index]
            choice.text.append(event.text)
            choice.token_ids += event.token_ids
            choice.logprobs += event.logprobs or []
            if event.prompt_logprobs is not None:
                choice.prompt_logprobs = event.prompt_logprobs
            if event.finish_reason is not None:
                choice.finish_reason = event.finish_reason
                pending -= 1
    finally:
        watcher.cancel()
        state.cancel(requests)
    return choices


# ------------------------------------------------------------------------------------------- streaming
def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(
    state: ServerState,
    requests: list[GenerationRequest],
    events: _Events,
    chunks: _ChunkMaker,
    prompt_tokens: int,
) -> AsyncIterator[str]:
    """Server-sent events: the maker's first chunks, a chunk per text piece, the finish chunk of each choice, the
    usage chunk when asked for, `[DONE]`. Held-back tokens (no text yet) ride along with the next piece."""
    held: dict[int, tuple[list[int], list]] = {}
    completion_tokens = 0
    try:
        for chunk in chunks.start(len(requests)):
            yield _sse(chunk)
        pending = len(requests)
        while pending:
            event = await events.queue.get()
            if event.error is not None:
                yield _sse(state.engine_error(event.error).body())
                break
            completion_tokens += len(event.token_ids)
            if event.prompt_logprobs is not None:
                yield _sse(chunks.echo_chunk(event.index, event.prompt_logprobs))
            ids, logprobs = held.pop(event.index, ([], []))
            ids, logprobs = ids + event.token_ids, logprobs + (event.logprobs or [])
            if chunks.tool_parsers is not None:
                pieces = chunks.tool_pieces(event.index, event.text, ids, event.finish_reason, logprobs)
            elif event.text or event.finish_reason is not None:
                pieces = [chunks.piece(event.index, event.text, ids, event.finish_reason, logprobs)]
            else:
                pieces = []
            for piece in pieces:
                yield _sse(piece)
            if not pieces:
                held[event.index] = (ids, logprobs)
            if event.finish_reason is not None:
                pending -= 1
        else:
            if chunks.include_usage:
                yield _sse(chunks.usage(usage(prompt_tokens, completion_tokens)))
        yield "data: [DONE]\n\n"
    finally:
        state.cancel(requests)


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

    def __init__(
        self,
        chat: bool,
        model: str,
        include_usage: bool,
        return_token_ids: bool,
        tokens: TokenStrings | None = None,
        echo: list[str] | None = None,
        scored: list[list[int]] | None = None,
    ) -> None:
        self.chat = chat
        self.tokens = tokens
        self.echo = echo
        self.scored = scored  # each choice's prompt ids when its echo chunk carries the prompt's logprobs
        self.offsets: dict[int, int] = {}  # completions: characters of token strings sent per choice
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        self.model = model
        self.include_usage = include_usage
        self.return_token_ids = return_token_ids
        self.tool_parsers: dict[int, StreamingToolParser] | None = None  # chat with tool calls parsed: per choice

    def parse_tool_calls(self) -> None:
        """Send each chat choice's text through a `StreamingToolParser` (`tool_pieces`)."""
        self.tool_parsers = {}

    def _chunk(self, choices: list[dict]) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def _choice(self, index: int, content: dict, token_ids: list[int] | None, finish_reason: str | None) -> dict:
        choice = {"index": index, **content, "logprobs": None, "finish_reason": finish_reason}
        if self.return_token_ids and token_ids is not None:
            choice["token_ids"] = token_ids
        return choice

    def start(self, n: int) -> list[dict]:
        """The chunks before any token: for chat, one announcing the assistant role of every choice; for echoed
        completions, each choice's prompt text (unless it waits for the prompt's logprobs: `echo_chunk`)."""
        if not self.chat:
            echo = [] if self.scored else self.echo or []
            return [self._chunk([self._choice(i, {"text": text}, [], None)]) for i, text in enumerate(echo)]
        role = {"delta": {"role": "assistant", "content": ""}}
        return [self._chunk([self._choice(i, role, [], None) for i in range(n)])]

    def piece(
        self, index: int, text: str, token_ids: list[int], finish_reason: str | None, logprobs: list | None = None
    ) -> dict:
        """The chunk of one text piece of choice `index` (with its tokens' logprobs when they are asked for)."""
        content = {"delta": {"content": text} if text else {}} if self.chat else {"text": text}
        choice = self._choice(index, content, token_ids, finish_reason)
        if self.tokens is not None:
            choice["logprobs"] = self._logprobs(index, logprobs or [])
        return self._chunk([choice])

    def echo_chunk(self, index: int, prompt_logprobs: list) -> dict:
        """The echoed prompt text of choice `index` with its tokens' logprobs (first token null)."""
        choice = self._choice(index, {"text": self.echo[index]}, [], None)
        choice["logprobs"] = self.tokens.prompt(self.scored[index], prompt_logprobs)
        return self._chunk([choice])

    def tool_pieces(
        self, index: int, text: str, token_ids: list[int], finish_reason: str | None, logprobs: list | None = None
    ) -> list[dict]:
        """The chunks that a text piece of chat choice `index` decides through its tool parser: content and tool
        call deltas (the tokens and their logprobs ride on the first), and with `finish_reason` whatever the parser
        held back and the finish chunk ("tool_calls" when the answer stopped after calls). Empty while undecided."""
        parser = self.tool_parsers.setdefault(index, StreamingToolParser())
        deltas = parser.feed(text)
        if finish_reason is not None:
            deltas += parser.finish()
            if finish_reason == "stop" and parser.calls:
                finish_reason = "tool_calls"
            deltas.append({})
        out = []
        for k, delta in enumerate(deltas):
            last = finish_reason if k == len(deltas) - 1 else None
            choice = self._choice(index, {"delta": delta}, token_ids if k == 0 else None, last)
            if self.tokens is not None and k == 0:
                choice["logprobs"] = self._logprobs(index, logprobs or [])
            out.append(self._chunk([choice]))
        return out

    def _logprobs(self, index: int, logprobs: list) -> dict:
        if self.chat:
            return self.tokens.chat(logprobs)
        start = self.offsets.get(index, len(self.echo[index]) if self.echo else 0)
        out = self.tokens.completion(logprobs, start)
        self.offsets[index] = start + sum(len(t) for t in out["tokens"])
        return out

    def usage(self, counts: dict) -> dict:
        return {**self._chunk([]), "usage": counts}
