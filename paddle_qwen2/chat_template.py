"""Chat templates: rendering a conversation with a Jinja template the way transformers does (sandboxed,
`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`, `strftime_now`), ChatML when the tokenizer files bring
none. Tool definitions go to the template as `tools=` (JSON-schema dicts, as transformers passes them); messages
may carry `tool_calls` (an assistant's, its `content` then None or absent) and `role: "tool"` results.

No paddle or paddlenlp here: the tokenizers (`paddle_qwen2.tokenizer`), the training data and the inference engine
share it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "ENDOFTEXT",
    "IM_START",
    "IM_END",
    "SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "Message",
    "Conversation",
    "render_chat",
    "check_conversation",
]

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# ChatML, with Qwen2's default system message when the conversation has none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = dict[str, Any]
Conversation = list[Message]


def _raise_exception(message: str):
    raise TemplateError(message)


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_template(template: str):
    """Jinja environment as HF uses for chat templates (sandboxed, trim_blocks, lstrip_blocks)."""
    if template not in _TEMPLATE_CACHE:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
        env.filters["tojson"] = _tojson
        _TEMPLATE_CACHE[template] = env.from_string(template)
    return _TEMPLATE_CACHE[template]


def _tojson(x: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """transformers' `tojson` filter: `json.dumps` without HTML escaping, non-ASCII kept by default."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _check_tool_calls(i: int, tool_calls: Any) -> None:
    if not isinstance(tool_calls, (list, tuple)) or not tool_calls:
        raise ValueError(f"message {i}: 'tool_calls' must be a non-empty list, got {tool_calls!r}")
    for j, call in enumerate(tool_calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(
                f"message {i}, tool call {j}: expected {{'function': {{'name': ..., 'arguments': ...}}}} "
                f"or {{'name': ..., 'arguments': ...}}, got {call!r}"
            )


def check_conversation(conversation: Sequence[Message], allow_empty: bool = False) -> None:
    """ValueError naming the message unless every message is a dict with a string `role` and a string `content`;
    an assistant message with `tool_calls` (each `{"function": {"name", "arguments"}}` or `{"name", "arguments"}`)
    may have `content` None or leave it out."""
    if not isinstance(conversation, (list, tuple)) or (not conversation and not allow_empty):
        raise ValueError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        if not isinstance(message["role"], str):
            raise ValueError(f"message {i}: 'role' must be a string, got {message['role']!r}")
        calls = message.get("tool_calls")
        if calls is not None:
            _check_tool_calls(i, calls)
        if calls and message.get("content") is None:
            continue
        if "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {i}: 'content' must be a string, got {type(message['content']).__name__}")


def render_chat(
    conversation: Sequence[Message],
    template: str | None = None,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, Any] | None = None,
    **template_kwargs,
) -> str:
    """Render `conversation` (list of {'role', 'content'} dicts) with a Jinja chat template (ChatML by default);
    `template_kwargs` (e.g. `tools=[{"type": "function", "function": {...}}]`) are template variables.

    An empty conversation is allowed here (it renders just the generation prompt, if asked for)."""
    check_conversation(conversation, allow_empty=True)
    context = dict(special_tokens or {})
    context.update(template_kwargs)
    return _compile_template(template or CHATML_TEMPLATE).render(
        messages=list(conversation), add_generation_prompt=add_generation_prompt, **context
    )
