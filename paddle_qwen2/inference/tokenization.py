"""`ChatTokenizer`: what generation needs of a checkpoint's tokenizer files, on the `tokenizers` library alone.

    tokenizer = ChatTokenizer.from_folder("Qwen2.5-0.5B-Instruct")      # tokenizer.json + tokenizer_config.json
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]), special=False)

The chat template comes from `chat_template.jinja` or `tokenizer_config.json` (ChatML when neither has one), rendered
as transformers does; the stop ids from `generation_config.json`'s `eos_token_id`, else `config.json`'s, else the
tokenizer's `eos_token`. No paddle or paddlenlp: an export folder needs only these files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..chat_template import CHATML_TEMPLATE, ENDOFTEXT, check_conversation, render_chat
from ..errors import PaddleQwen2Error

__all__ = ["ChatTokenizer", "TokenizerError"]

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TokenizerError(PaddleQwen2Error):
    """Tokenizer files that cannot be used; the message names the file."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: cannot read: {exc}") from None


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _template(folder: Path, config: dict) -> str:
    """The default chat template: chat_template.jinja, else tokenizer_config.json's, else ChatML."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else CHATML_TEMPLATE


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class ChatTokenizer:
    """Byte-level BPE from `tokenizer.json`, with the folder's chat template, special tokens and stop ids."""

    def __init__(self, backend: Tokenizer, config: dict, chat_template: str, eos_token_ids: Sequence[int]):
        self.backend = backend
        self.config = config
        self.chat_template = chat_template
        self.special_tokens = {k: _content(config[k]) for k in _SPECIAL_KEYS if _content(config.get(k))}
        self.eos_token_ids = list(dict.fromkeys(int(i) for i in eos_token_ids))
        pad = self.special_tokens.get("pad_token") or ENDOFTEXT
        self.pad_token_id = backend.token_to_id(pad) or (self.eos_token_ids or [0])[0]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ChatTokenizer:
        """The tokenizer of a checkpoint or export folder (needs `tokenizer.json`)."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{folder}: no tokenizer.json (generation needs the fast tokenizer file)")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises its own exception type
            raise TokenizerError(f"{path}: not a tokenizers file: {exc}") from None
        config_path = folder / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        eos = cls._eos_ids(folder, backend, config)
        return cls(backend, config, _template(folder, config), eos)

    @staticmethod
    def _eos_ids(folder: Path, backend: Tokenizer, config: dict) -> list[int]:
        for name in ("generation_config.json", "config.json"):
            if (folder / name).is_file():
                ids = _as_ids(_read_json(folder / name).get("eos_token_id"))
                if ids:
                    return ids
        token = _content(config.get("eos_token"))
        token_id = backend.token_to_id(token) if token else None
        return [] if token_id is None else [token_id]

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text`; `special`: the post-processor's special tokens (none for Qwen2's)."""
        return self.backend.encode(text, add_special_tokens=special).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        tools: Sequence[dict] | None = None,
        **kwargs,
    ) -> str:
        """The prompt text of a conversation (`[{"role": ..., "content": ...}, ...]`; assistant `tool_calls` with
        `arguments` objects, `role: "tool"` results), `tools` (`[{"type": "function", "function": {"name", ...}}]`)
        given to the template as transformers gives them. ValueError on a malformed conversation, jinja2's
        TemplateError when the template rejects it."""
        check_conversation(messages)
        tools = None if tools is None else list(tools)
        return render_chat(
            messages, self.chat_template, add_generation_prompt, self.special_tokens, tools=tools, **kwargs
        )

    def encode_chat(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, tools: Sequence[dict] | None = None
    ) -> list[int]:
        """The prompt ids of a conversation, as transformers' `apply_chat_template(tokenize=True, tools=tools)`."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, tools), special=False)
