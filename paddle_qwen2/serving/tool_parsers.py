"""The hermes tool-call format (Qwen2, Qwen2.5, QwQ, Qwen3): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
blocks in the model's answer become OpenAI `tool_calls`.

    content, calls = parse_tool_calls(text)          # whole answer -> (content or None, [tool call dicts])
    parser = StreamingToolParser()
    for piece in text_pieces:
        deltas = parser.feed(piece)                  # [{"content": ...} or {"tool_calls": [...]}, ...]
    deltas = parser.finish()

A tool call is `{"id": "call_<hex>", "type": "function", "function": {"name": str, "arguments": str}}`, the
arguments a JSON string (`json.dumps` of the block's `arguments` object; a string there is taken as written; no
`arguments` is `"{}"`). A block whose JSON does not parse, is not an object or has no string `name` stays in the
content as written, and so does an unterminated block: nothing is lost. The content is the text outside the valid
blocks; when there are calls and that text is only whitespace, it is None.

The streaming parser gives the same result piece by piece, in OpenAI's delta protocol: content deltas for text
outside blocks (a tail that may begin `<tool_call>` and whitespace-only runs are held back until decided, so no
part of a valid block is ever content), and for each valid block, once its `</tool_call>` arrives, a delta with
`index`, `id`, `type` and `function.name` (`arguments: ""`), then one with the `function.arguments` string.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["TOOL_CALL_START", "TOOL_CALL_END", "parse_tool_calls", "StreamingToolParser", "new_call_id"]

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"

Delta = dict[str, Any]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call_fields(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON string) of a block's inner text; None when it is not a valid call."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        return call["name"], arguments
    if not isinstance(arguments, dict):
        return None
    return call["name"], json.dumps(arguments, ensure_ascii=False)


def _tool_call(name: str, arguments: str, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_tool_calls(text: str, make_id: Callable[[], str] = new_call_id) -> tuple[str | None, list[dict]]:
    """The content (text outside valid blocks; None when there are calls and it is only whitespace) and the tool
    calls of a whole answer, in order."""
    outside, calls = [], []
    rest = text
    while True:
        start = rest.find(TOOL_CALL_START)
        end = rest.find(TOOL_CALL_END, start + len(TOOL_CALL_START)) if start >= 0 else -1
        if end < 0:
            outside.append(rest)
            break
        outside.append(rest[:start])
        fields = _call_fields(rest[start + len(TOOL_CALL_START) : end])
        if fields is None:
            outside.append(rest[start : end + len(TOOL_CALL_END)])
        else:
            calls.append(_tool_call(*fields, make_id()))
        rest = rest[end + len(TOOL_CALL_END) :]
    content = "".join(outside)
    return (None if calls and not content.strip() else content), calls


def _held_prefix(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `<tool_call>` (it may still become one)."""
    for size in range(min(len(text), len(TOOL_CALL_START) - 1), 0, -1):
        if TOOL_CALL_START.startswith(text[-size:]):
            return size
    return 0


class StreamingToolParser:
    """Text deltas in, OpenAI delta pieces out; the concatenated pieces equal `parse_tool_calls` of the whole text.

    Each output item is `{"content": str}` or `{"tool_calls": [{"index", "id", "type", "function": {"name",
    "arguments"}}]}` (the first delta of a call) or `{"tool_calls": [{"index", "function": {"arguments"}}]}`."""

    def __init__(self, make_id: Callable[[], str] = new_call_id) -> None:
        self.make_id = make_id
        self.buffer = ""  # text not yet decided (a tail that may start a tag, or an open block's body)
        self.in_block = False
        self.held_space = ""  # a whitespace-only run of content, sent once more content follows
        self.sent_content = False
        self.calls = 0

    def feed(self, text: str) -> list[Delta]:
        """The pieces that `text` (the next part of the answer) decides."""
        out: list[Delta] = []
        self.buffer += text
        while True:
            if not self.in_block:
                start = self.buffer.find(TOOL_CALL_START)
                if start < 0:
                    keep = _held_prefix(self.buffer)
                    self._content(self.buffer[: len(self.buffer) - keep], out)
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    return out
                self._content(self.buffer[:start], out)
                self.buffer = self.buffer[start + len(TOOL_CALL_START) :]
                self.in_block = True
            end = self.buffer.find(TOOL_CALL_END)
            if end < 0:
                return out
            self._block(self.buffer[:end], out)
            self.buffer = self.buffer[end + len(TOOL_CALL_END) :]
            self.in_block = False

    def finish(self) -> list[Delta]:
        """The pieces left at the end of the answer: an unterminated block or a held tail as content, and held
        whitespace unless the answer is only tool calls."""
        out: list[Delta] = []
        self._content((TOOL_CALL_START if self.in_block else "") + self.buffer, out)
        self.buffer, self.in_block = "", False
        if self.held_space and (self.sent_content or not self.calls):
            out.append({"content": self.held_space})
        self.held_space = ""
        return out

    def _content(self, text: str, out: list[Delta]) -> None:
        if not text:
            return
        text = self.held_space + text
        if not text.strip():
            self.held_space = text
            return
        self.held_space = ""
        self.sent_content = True
        out.append({"content": text})

    def _block(self, body: str, out: list[Delta]) -> None:
        fields = _call_fields(body)
        if fields is None:
            self._content(TOOL_CALL_START + body + TOOL_CALL_END, out)
            return
        name, arguments = fields
        index, self.calls = self.calls, self.calls + 1
        first = {"index": index, "id": self.make_id(), "type": "function", "function": {"name": name, "arguments": ""}}
        out.append({"tool_calls": [first]})
        if arguments:
            out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
