"""Chat templates with tools: `ChatTokenizer.encode_chat(messages, tools=...)` gives the ids of transformers'
`AutoTokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=True)` on Qwen2.5-Instruct's template
(tool definitions, assistant `tool_calls` with argument objects, content None or absent, one and several tool
results), as does the PaddleNLP-layout `Qwen2Tokenizer.apply_chat_template(..., tools=...)`; `check_conversation`
accepts those messages and names what is wrong in others."""

from __future__ import annotations

import pytest
from tool_template import TOOL_TOKENS, write_tool_tokenizer

from paddle_qwen2 import Qwen2Tokenizer
from paddle_qwen2.chat_template import check_conversation
from paddle_qwen2.inference.tokenization import ChatTokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city (température, 天气)",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NO_PARAMETERS = {"type": "function", "function": {"name": "ping"}}


def _call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


ASK = {"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}
CALLS = {
    "role": "assistant",
    "content": None,
    "tool_calls": [_call("call_1", "get_weather", {"city": "Paris"}), _call("call_2", "get_time", {"zone": "东京"})],
}
RESULTS = [
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "09:30"},
]

# name -> (messages, tools)
CONVERSATIONS = {
    "tools, no system": ([ASK], [WEATHER, TIME]),
    "tools and a system": ([{"role": "system", "content": "Be brief."}, ASK], [WEATHER, TIME, NO_PARAMETERS]),
    "no tools": ([ASK], None),
    "empty tools": ([ASK], []),
    "calls and two results": ([ASK, CALLS, *RESULTS], [WEATHER, TIME]),
    "call with text, content absent": (
        [
            ASK,
            {"role": "assistant", "content": "Checking.", "tool_calls": [_call("a", "get_weather", {"city": "P"})]},
            RESULTS[0],
            {"role": "assistant", "content": "It is 21 degrees."},
            {"role": "user", "content": "And the time?"},
            {"role": "assistant", "tool_calls": [_call("b", "get_time", {})]},
            RESULTS[1],
        ],
        [WEATHER, TIME],
    ),
    "flat tool call, no tools given": (
        [ASK, {"role": "assistant", "content": "", "tool_calls": [{"name": "get_time", "arguments": {"z": 1}}]}],
        None,
    ),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    import transformers

    folder = write_tool_tokenizer(tmp_path_factory.mktemp("tool-tokenizer"))
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    return ChatTokenizer.from_folder(folder), hf, Qwen2Tokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_ids_equal_transformers(tokenizers, name):
    ours, hf, paddlenlp_layout = tokenizers
    messages, tools = CONVERSATIONS[name]
    text = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    expected = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    assert ours.apply_chat_template(messages, tools=tools) == text
    assert ours.encode_chat(messages, tools=tools) == list(expected)
    assert paddlenlp_layout.apply_chat_template(messages, tools=tools, add_generation_prompt=True) == list(expected)
    if tools:
        assert "# Tools" in text and '"name": "get_weather"' in text and "天气" in text
    if any(m.get("tool_calls") for m in messages):
        assert set(TOOL_TOKENS) <= set(expected)  # the tags are single added tokens
    if any(m["role"] == "tool" for m in messages):
        assert "<tool_response>" in text


def test_tool_tags_decode_as_text(tokenizers):
    ours = tokenizers[0]
    ids = ours.encode('<tool_call>\n{"name": "f"}\n</tool_call>')
    assert ids[0] == 4003 and ids[-1] == 4004
    assert ours.decode(ids) == '<tool_call>\n{"name": "f"}\n</tool_call>'  # not special: kept by decode


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "assistant", "content": None}], r"message 0: 'content' must be a string, got NoneType"),
        ([{"role": "assistant"}], r"message 0 must be a dict with 'role' and 'content'"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], r"message 0: 'tool_calls' must be a non-empty"),
        ([ASK, {"role": "assistant", "tool_calls": [{"function": {}}]}], r"message 1, tool call 0: expected"),
        ([ASK, {"role": "tool", "content": None}], r"message 1: 'content' must be a string"),
    ],
)
def test_check_conversation_names_the_message(messages, error):
    with pytest.raises(ValueError, match=error):
        check_conversation(messages)


def test_check_conversation_accepts_tool_messages():
    check_conversation([ASK, CALLS, *RESULTS])
    check_conversation([ASK, {"role": "assistant", "tool_calls": [{"name": "f", "arguments": {}}]}])
