"""Chat templates: rendering a conversation with a Jinja template the way transformers does (sandboxed,
`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`), ChatML when the tokenizer files bring none.

No paddle or paddlenlp here: the tokenizers (`paddle_qwen2.tokenizer`), the training data and the inference engine
share it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        _TEMPLATE_CACHE[template] = env.from_string(template)
    return _TEMPLATE_CACHE[template]


def check_conversation(conversation: Sequence[Message], allow_empty: bool = False) -> None:
    if not isinstance(conversation, (list, tuple)) or (not conversation and not allow_empty):
        raise ValueError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {message!r}")
        if not isinstance(message["role"], str):
            raise ValueError(f"message {i}: 'role' must be a string, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {i}: 'content' must be a string, got {type(message['content']).__name__}")


def render_chat(
    conversation: Sequence[Message],
    template: str | None = None,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, Any] | None = None,
    **template_kwargs,
) -> str:
    """Render `conversation` (list of {'role', 'content'} dicts) with a Jinja chat template (ChatML by default).

    An empty conversation is allowed here (it renders just the generation prompt, if asked for)."""
    check_conversation(conversation, allow_empty=True)
    context = dict(special_tokens or {})
    context.update(template_kwargs)
    return _compile_template(template or CHATML_TEMPLATE).render(
        messages=list(conversation), add_generation_prompt=add_generation_prompt, **context
    )
