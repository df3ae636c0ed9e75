"""The hermes tool-call parser (`paddle_qwen2.serving.tool_parsers`): whole answers in a table, and the streaming
parser fed every split of them (two pieces at every position, three pieces at every pair of positions of the short
ones, one character at a time): its deltas, assembled as an OpenAI client assembles them, equal the whole-answer
result, and no content delta carries any part of a valid block."""

from __future__ import annotations

import itertools
import json

import pytest

from paddle_qwen2.serving.tool_parsers import StreamingToolParser, parse_tool_calls

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "东京"}}\n</tool_call>'
WEATHER_CALL = ("get_weather", '{"city": "Paris", "unit": "c"}')
TIME_CALL = ("get_time", '{"zone": "东京"}')
STRING_ARGUMENTS = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
BAD_JSON = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'

# name -> (answer, expected content, expected [(name, arguments)])
CASES = {
    "one call": (WEATHER, None, [WEATHER_CALL]),
    "two parallel calls": (WEATHER + "\n" + TIME, None, [WEATHER_CALL, TIME_CALL]),
    "text before": ("Let me check.\n" + WEATHER, "Let me check.\n", [WEATHER_CALL]),
    "text after": (WEATHER + "\nDone <tool", "\nDone <tool", [WEATHER_CALL]),
    "text around two": ("A " + WEATHER + " b " + TIME + " c", "A  b  c", [WEATHER_CALL, TIME_CALL]),
    "no whitespace": ('<tool_call>{"name":"f","arguments":{}}</tool_call>', None, [("f", "{}")]),
    "no arguments": ('<tool_call>{"name": "f"}</tool_call>', None, [("f", "{}")]),
    "string arguments": (STRING_ARGUMENTS, None, [("f", '{"a": 1}')]),
    "invalid JSON kept": (BAD_JSON, BAD_JSON, []),
    "invalid JSON beside a call": (BAD_JSON + "\n" + TIME, BAD_JSON + "\n", [TIME_CALL]),
    "no name kept": ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    "list arguments kept": (
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        [],
    ),
    "unterminated": ("Hi " + WEATHER[:-3], "Hi " + WEATHER[:-3], []),
    "unterminated after a call": (TIME + "\n<tool_call>\n{", "\n<tool_call>\n{", [TIME_CALL]),
    "plain text": ("The weather is sunny. <b>ok</b> <tool", "The weather is sunny. <b>ok</b> <tool", []),
    "whitespace only, no call": ("\n \n", "\n \n", []),
    "empty": ("", "", []),
    "stray end tag": ("a </tool_call> b", "a </tool_call> b", []),
}


def _assemble(deltas: list[dict]) -> tuple[str | None, list[dict], list[str]]:
    """Content, tool calls and the content pieces, put together as the openai SDK's stream helpers do."""
    pieces, calls = [], {}
    for delta in deltas:
        assert set(delta) in ({"content"}, {"tool_calls"}), delta
        if "content" in delta:
            assert delta["content"], "an empty content delta"
            pieces.append(delta["content"])
            continue
        (call,) = delta["tool_calls"]
        if "id" in call:
            assert call["index"] not in calls and call["index"] == len(calls), "calls are announced in order"
            assert call["type"] == "function" and call["function"]["arguments"] == ""
            calls[call["index"]] = {"id": call["id"], "name": call["function"]["name"], "arguments": ""}
        else:
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            calls[call["index"]]["arguments"] += call["function"]["arguments"]
    content = "".join(pieces) if pieces else None
    return content, [calls[i] for i in sorted(calls)], pieces


def _stream(pieces: list[str]) -> list[dict]:
    parser = StreamingToolParser()
    deltas = [d for piece in pieces for d in parser.feed(piece)]
    return deltas + parser.finish()


def _splits(text: str):
    yield [text]
    yield list(text)
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    if len(text) <= 60:
        for i, j in itertools.combinations(range(len(text) + 1), 2):
            yield [text[:i], text[i:j], text[j:]]


@pytest.mark.parametrize("name", CASES)
def test_whole_answer(name):
    text, content, expected = CASES[name]
    got_content, calls = parse_tool_calls(text)
    assert got_content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == expected
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > 10
        json.loads(call["function"]["arguments"])
    assert len({c["id"] for c in calls}) == len(calls)


@pytest.mark.parametrize("name", CASES)
def test_streamed_in_every_split_equals_whole(name):
    text, content, expected = CASES[name]
    blocks = [b for b in (WEATHER, TIME) if b in text]
    for pieces in _splits(text):
        got_content, calls, content_pieces = _assemble(_stream(pieces))
        if content == "":
            assert got_content is None, pieces  # nothing to send: no content delta at all
        else:
            assert got_content == content, pieces
        assert [(c["name"], c["arguments"]) for c in calls] == expected, pieces
        assert all(c["id"].startswith("call_") for c in calls)
        for piece in content_pieces:  # no content delta carries a valid block's text
            assert not any(b in piece for b in blocks), (pieces, piece)


def test_partial_tag_is_held_until_decided():
    parser = StreamingToolParser()
    assert parser.feed("Sure <tool") == [{"content": "Sure "}]
    assert parser.feed("_ca") == []
    assert parser.feed("ll>") == []
    assert parser.feed('{"name": "f", "arguments": {"x": 1}}</tool_') == []
    first, arguments = parser.feed("call>")
    assert first["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}
    assert parser.feed("<tooth") == [{"content": "<tooth"}]  # not a tag after all
    assert parser.finish() == []


def test_whitespace_between_calls_is_not_content():
    parser = StreamingToolParser()
    out = parser.feed(WEATHER) + parser.feed("\n\n") + parser.feed(TIME) + parser.feed("\n") + parser.finish()
    assert [d for d in out if "content" in d] == []
    parser = StreamingToolParser()
    out = parser.feed(WEATHER) + parser.feed("\n") + parser.feed("ok") + parser.finish()
    assert [d for d in out if "content" in d] == [{"content": "\nok"}]
