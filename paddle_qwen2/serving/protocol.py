"""The OpenAI wire format: request schemas (pydantic), the error object, and the response / chunk bodies.

    request = parse_request(raw_body, ChatCompletionRequest)       # APIError(400) on bad JSON or a bad field
    raise APIError(404, "The model `x` does not exist", code="model_not_found")
    error.body() == {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Requests are validated strictly, as OpenAI does: a wrong type is not coerced ("0.5" is not a temperature), an
unknown field is an error naming it, and every error is a 400 whose `param` is the field. Fields beyond OpenAI's
are vLLM's names for the same settings (`top_k`, `repetition_penalty`, `stop_token_ids`, `ignore_eos`) and
`return_token_ids` (vLLM's too: the response then carries `prompt_token_ids` and each choice's `token_ids`).
Chat takes `logprobs` + `top_logprobs` (0 to `MAX_LOGPROBS`), completions `logprobs` (an int, 0 to `MAX_LOGPROBS`
as vLLM allows) and `echo`; `echo` with `logprobs` asks for the prompt's logprobs too (`prompt_logprobs`).

Chat takes OpenAI's tools: `tools` (function definitions, names as OpenAI allows them, `parameters` a JSON-schema
object, no name twice), `tool_choice` ("none", "auto", "required" or a named function, only with `tools`),
`parallel_tool_calls`, assistant messages with `tool_calls` (`arguments` a JSON string as OpenAI clients send it,
parsed into the object the chat template writes, as vLLM does) and `role: "tool"` messages whose `tool_call_id`
answers an earlier assistant tool call. `ChatCompletionRequest.template_messages()` / `template_tools()` are what the
chat template gets (the tools exactly as sent); their checks are 400s naming the field (`tools[1].function.name`,
`messages[3].tool_call_id`, `messages[2].tool_calls[0].function.arguments`, `tool_choice`).

No `from __future__ import annotations` here: pydantic evaluates the annotations at runtime, and `X | None` would
need Python 3.10.
"""

import copy
import json
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..errors import PaddleQwen2Error

__all__ = [
    "APIError",
    "ChatMessage",
    "ToolDefinition",
    "ToolCall",
    "NamedToolChoice",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "parse_request",
    "error_body",
    "new_id",
    "usage",
    "MAX_TEMPERATURE",
    "MAX_CHOICES",
    "MAX_LOGPROBS",
]

MAX_TEMPERATURE = 2.0  # OpenAI's range is [0, 2]
MAX_CHOICES = 16  # the largest `n`: each choice is a sequence of its own in the batch and counts against the queue
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value is [-100, 100]
MAX_LOGPROBS = 20  # OpenAI's largest top_logprobs; completions' `logprobs` takes the same bound (vLLM's)


class APIError(PaddleQwen2Error):
    """An error answered as OpenAI does: HTTP `status` and `{"error": {message, type, param, code}}`."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_exceeded",
        503: "service_unavailable",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or self.TYPES.get(status, "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(_Strict):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class ToolDefinition(_Strict):
    """One entry of `tools`: `{"type": "function", "function": {"name", "description"?, "parameters"?}}`."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """`tool_choice` naming the function to call: `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: FunctionName


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str
    arguments: Union[str, dict[str, Any]]


class ToolCall(BaseModel):
    """A tool call of an earlier assistant message, as an OpenAI client sends it back (`arguments` a JSON string)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction

    def template_dict(self, where: str) -> dict:
        """The call with its arguments as an object (what chat templates write); 400 naming `where` + the field
        when they are not a JSON object."""
        arguments = self.function.arguments
        param = f"{where}.function.arguments"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                message = f"{param}: not valid JSON ({exc}): {arguments[:80]!r}"
                raise APIError(400, message, param=param, code="invalid_value") from None
        if not isinstance(arguments, dict):
            message = f"{param}: expected a JSON object, got {json.dumps(arguments)[:80]}"
            raise APIError(400, message, param=param, code="invalid_value")
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": arguments}}


class ChatMessage(BaseModel):
    """One message; `content` is a string or a list of text parts (joined). An assistant message may carry
    `tool_calls` (its content then may be null), a `tool` message answers one by `tool_call_id`. Other fields an
    SDK echoes back from a response (`refusal`, `audio`, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def template_dict(self, index: int = 0) -> dict:
        """The message as the chat template reads it (`developer` is OpenAI's new name for `system`); tool calls
        with their arguments as objects (400 naming `messages[index]...` when they are not JSON objects)."""
        out = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            if self.role != "assistant":
                param = f"messages[{index}].tool_calls"
                raise APIError(400, f"{param}: only assistant messages have tool calls", param=param)
            out["tool_calls"] = [
                c.template_dict(f"messages[{index}].tool_calls[{j}]") for j, c in enumerate(self.tool_calls)
            ]
            if self.content is None:
                out["content"] = None
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        return out


class _Sampling(_Strict):
    """The sampling fields shared by chat and text completions."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=MAX_TEMPERATURE)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: Optional[int] = Field(None, ge=1, le=MAX_CHOICES)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    logit_bias: Optional[dict[str, Any]] = None
    user: Optional[str] = None
    # vLLM's extensions
    top_k: Optional[int] = Field(None, ge=-1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: Optional[bool] = None
    return_token_ids: Optional[bool] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Union[str, list[str], None]) -> Optional[list[str]]:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """Keys are token ids written as strings (JSON object keys), values numbers in [-100, 100]; the vocabulary
        bound is checked by the route, which knows the model."""
        for key, bias in (value or {}).items():
            if not key.isascii() or not key.isdigit():
                raise ValueError(f"key {key!r} is not a token id (a non-negative integer written as a string)")
            if not isinstance(bias, (int, float)) or isinstance(bias, bool) or not abs(bias) <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"the bias of key {key!r} must be a number in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                    f"got {json.dumps(bias)[:40]}"
                )
        return value

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    def sampling_overrides(self) -> dict:
        """The settings this request gives, as `SamplingParams` fields (absent ones left to the model's
        generation_config.json)."""
        top_k = 0 if self.top_k == -1 else self.top_k
        values = dict(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): float(v) for k, v in self.logit_bias.items()} if self.logit_bias else None,
        )
        return {k: v for k, v in values.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[ToolDefinition]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[dict[str, Any]] = None  # checked by structured.response_format_spec (400 naming fields)
    _raw_tools: Optional[list] = PrivateAttr(default=None)
    _guided: Any = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw_tools(cls, data: Any, handler) -> "ChatCompletionRequest":
        """The tools as sent (key order and all), for the chat template."""
        request = handler(data)
        if isinstance(data, dict) and data.get("tools") is not None:
            request._raw_tools = copy.deepcopy(data["tools"])
        return request

    def template_tools(self) -> Optional[list[dict]]:
        """The `tools` as sent (for the chat template's `tools=`), after the checks across them: 400 naming
        `tools[i].function.name` for a name given twice, `tool_choice` without tools or naming an unknown one."""
        first: dict[str, int] = {}
        for i, tool in enumerate(self.tools or []):
            name, param = tool.function.name, f"tools[{i}].function.name"
            if name in first:
                message = f"{param}: {name!r} is also the name of tools[{first[name]}]; names must be unique"
                raise APIError(400, message, param=param, code="invalid_value")
            first[name] = i
        if self.tool_choice is not None and not self.tools:
            message = "tool_choice: only allowed when tools are given (the request has none)"
            raise APIError(400, message, param="tool_choice", code="invalid_value")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in first:
            known = ", ".join(repr(n) for n in first)
            message = f"tool_choice: no tool named {self.tool_choice.function.name!r} (the tools are {known})"
            raise APIError(400, message, param="tool_choice", code="invalid_value")
        return copy.deepcopy(self._raw_tools)

    def template_messages(self) -> list[dict]:
        """The messages as the chat template reads them; 400 naming the field for tool calls whose arguments are
        not a JSON object and for a `tool` message whose `tool_call_id` answers no earlier assistant tool call."""
        out, call_ids = [], set()
        for i, message in enumerate(self.messages):
            if message.role == "tool":
                param = f"messages[{i}].tool_call_id"
                if message.tool_call_id is None:
                    raise APIError(400, f"{param}: field required (a tool message answers a tool call)", param=param)
                if message.tool_call_id not in call_ids:
                    known = ", ".join(repr(c) for c in sorted(call_ids)) or "none"
                    message_text = (
                        f"{param}: {message.tool_call_id!r} is not the id of a tool call of an earlier assistant "
                        f"message (those are: {known})"
                    )
                    raise APIError(400, message_text, param=param, code="invalid_value")
            out.append(message.template_dict(i))
            call_ids.update(c.id for c in message.tool_calls or [])
        return out

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the answer's `<tool_call>` blocks become `tool_calls` (tools given, tool_choice not "none")."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tool(self) -> Optional[str]:
        """The tool-call constraint: None (none), "" (tool_choice "required": any tools) or the named tool."""
        if self.tool_choice == "required":
            return ""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return None

    def set_guided(self, spec: Any) -> None:
        """The constrained-decoding spec (`inference.guided.GuidedSpec`) that `sampling_overrides` passes on."""
        self._guided = spec

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: Optional[int], info) -> Optional[int]:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return value

    def sampling_overrides(self) -> dict:
        """`_Sampling`'s, plus `logprobs` (how many top tokens) when logprobs are asked for and `guided` when a tool
        call is forced or a JSON `response_format` is given (`set_guided`)."""
        values = super().sampling_overrides()
        if self.logprobs:
            values["logprobs"] = self.top_logprobs or 0
        if self._guided is not None:
            values["guided"] = self._guided
        return values

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions: one choice per prompt."""

    prompt: Union[str, list[str]]
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Union[str, list[str]]) -> list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("give at least one prompt")
        return prompts

    @field_validator("suffix")
    @classmethod
    def _unsupported(cls, value: Any, info) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported")
        return value

    def sampling_overrides(self) -> dict:
        """`_Sampling`'s, plus `logprobs` (how many top tokens) when asked for, of the prompt's tokens too with
        `echo`."""
        values = super().sampling_overrides()
        if self.logprobs is not None:
            values["logprobs"] = self.logprobs
            if self.echo:
                values["prompt_logprobs"] = self.logprobs
        return values

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, value: Optional[int]) -> Optional[int]:
        if value not in (None, 1):
            raise ValueError(f"only best_of=1 is supported, got {value}")
        return value

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_tokens


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings. `input` as OpenAI takes it: a text, a list of texts, a list of token ids (one input) or
    a list of lists of token ids; parsed into a list whose items are a text or a list of token ids."""

    model: str
    input: list[Union[str, list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError(f"expected {_EMBEDDING_INPUTS}, got {json.dumps(value)[:80]}")
        if not value:
            raise ValueError("give at least one input (a text or a list of token ids)")
        if isinstance(value[0], int) and not isinstance(value[0], bool):  # one input as token ids
            bad = next((j for j, t in enumerate(value) if not _is_token_id(t)), None)
            if bad is not None:
                raise ValueError(f"item {bad} is {json.dumps(value[bad])[:80]}: expected {_TOKEN_ID}, as item 0")
            return [value]
        kind = _input_kind(value[0])
        for i, item in enumerate(value):
            if _input_kind(item) is None:
                raise ValueError(f"item {i} is {json.dumps(item)[:80]}: expected a string or a list of token ids")
            if _input_kind(item) != kind:
                first = "a string" if kind == "text" else "a list of token ids"
                raise ValueError(
                    f"item {i} is {json.dumps(item)[:80]} but item 0 is {first}: all items are strings, "
                    "all are token ids or all are lists of token ids"
                )
            if kind == "ids" and not item:
                raise ValueError(f"item {i} is an empty list of token ids")
            bad = next((j for j, t in enumerate(item) if not _is_token_id(t)), None) if kind == "ids" else None
            if bad is not None:
                raise ValueError(f"item {i}, token {bad} is {json.dumps(item[bad])[:80]}: expected {_TOKEN_ID}")
        return value


_EMBEDDING_INPUTS = "a string, a list of strings, a list of token ids or a list of lists of token ids"
_TOKEN_ID = "a token id (an integer >= 0)"


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_kind(item: Any) -> Optional[str]:
    """`"text"` for a string, `"ids"` for a list (its items checked apart), None for anything else."""
    return "text" if isinstance(item, str) else "ids" if isinstance(item, list) else None


# ------------------------------------------------------------------------------------------------- parsing
_TAG_NAMES = {
    "str": "a string",
    "list[str]": "a list of strings",
    "list[TextPart]": "a list of text parts",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "literal['none','auto','required']": '"none", "auto", "required"',
    "NamedToolChoice": '{"type": "function", "function": {"name": ...}}',
}


def _is_tag(part: Any) -> bool:
    """A union branch in an error location (`str`, `list[str]`, `TextPart`), not a field name."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TAG_NAMES or part[:1].isupper())


def _split(loc: tuple) -> tuple[Optional[str], Optional[str]]:
    """`("messages", 0, "content", "str")` -> ("messages[0].content", "str"): the field, and the union branch."""
    out = ""
    for part in loc:
        if _is_tag(part):
            return out or None, part
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or None, None


def _message(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return "field required"
    if error["type"] == "extra_forbidden":
        return "unknown field (not supported by this server)"
    if error["type"] not in ("value_error",) and "input" in error and not isinstance(error["input"], (dict, list)):
        return f"{message[:1].lower()}{message[1:]}, got {json.dumps(error['input'])[:80]}"
    return message[:1].lower() + message[1:]


def _describe(errors: list) -> tuple[Optional[str], str]:
    """The field and the message of the plainest error (a union's branches summed up as "expected a or b")."""
    error = min(errors, key=lambda e: (e["type"] != "missing", len(e["loc"])))
    param, tag = _split(error["loc"])
    if tag is None:
        return param, f"{param or 'body'}: {_message(error)}"
    tags = list(dict.fromkeys(t for p, t in (_split(e["loc"]) for e in errors) if p == param and t))
    return param, f"{param}: expected {' or '.join(_TAG_NAMES.get(t, t) for t in tags)}"


def parse_request(raw: bytes, model: type) -> Any:
    """The JSON body `raw` as a `model` instance; APIError(400) naming the field for anything malformed."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        param, message = _describe(exc.errors(include_url=False))
        raise APIError(400, message, param=param, code="invalid_value") from None


# ------------------------------------------------------------------------------------------------ responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int = 0, embedding: bool = False) -> dict:
    if embedding:
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
