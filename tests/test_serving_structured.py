"""`response_format` through the official `openai` client against `paddle-qwen2 serve` (the random-weight tiny chat
checkpoint): `json_schema` and `json_object` answers, sampled over seeds, streamed and not, end by themselves and
validate with `jsonschema`; the SDK's `parse` with a pydantic model; `{"type": "text"}` changes nothing; every bad
`response_format` is a 400 whose `param` names the field, and the server answers normally after."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Literal

import pytest
from serving_helpers import API_KEY

from conftest import SERVE_CHAT_VARIANT

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

MESSAGES = [{"role": "user", "content": "Describe the weather as JSON."}]
WEATHER = {
    "type": "object",
    "properties": {
        "sky": {"enum": ["sunny", "cloudy", "rainy"]},
        "celsius": {"type": "integer", "minimum": -20, "maximum": 45},
        "wind": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2},
        "city": {"type": "string", "maxLength": 3},
    },
    "required": ["sky", "celsius"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "day": {
            "type": "object",
            "properties": {"rain": {"type": "boolean"}, "hours": {"type": "array", "items": {"type": "integer"}}},
            "required": ["rain"],
            "additionalProperties": False,
        }
    },
    "required": ["day"],
    "additionalProperties": False,
}


def _json_schema(schema: dict, name: str = "weather") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def client(serving_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.mark.parametrize("schema", [WEATHER, NESTED], ids=["weather", "nested"])
def test_json_schema_answers_validate_streamed_and_not(client, schema):
    kwargs = dict(model="chat", messages=MESSAGES, temperature=1.0, seed=7, n=4, response_format=_json_schema(schema))
    out = client.chat.completions.create(**kwargs)
    texts = []
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
        texts.append(choice.message.content)
    assert len(set(texts)) > 1  # sampled
    pieces: dict[int, list[str]] = defaultdict(list)
    finished = {}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            pieces[choice.index].append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert ["".join(pieces[i]) for i in range(4)] == texts  # same seeds, same answers
    assert finished == {i: "stop" for i in range(4)}


def test_json_object_answers_are_objects(client, chat_checkpoint):
    """The sampler is pushed toward quotes and braces (logit_bias) so that the random model's strings end."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(chat_checkpoint(SERVE_CHAT_VARIANT) / "tokenizer.json")).get_vocab()
    bias = {str(i): 15 for text, i in vocab.items() if '"' in text or "}" in text}
    for stream in (False, True):
        kwargs = dict(model="chat", messages=MESSAGES, temperature=1.0, seed=3, n=3, logit_bias=bias)
        kwargs["response_format"] = {"type": "json_object"}
        if stream:
            texts: dict[int, str] = defaultdict(str)
            for chunk in client.chat.completions.create(**kwargs, stream=True):
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
            answers = [texts[i] for i in range(3)]
        else:
            out = client.chat.completions.create(**kwargs)
            assert [c.finish_reason for c in out.choices] == ["stop"] * 3, [c.message.content for c in out.choices]
            answers = [c.message.content for c in out.choices]
        assert all(isinstance(json.loads(text), dict) for text in answers), answers


def test_sdk_parse_with_a_pydantic_model(client):
    class Forecast(pydantic.BaseModel):
        sky: Literal["sunny", "cloudy"]
        celsius: int = pydantic.Field(ge=0, le=30)
        windy: bool

    for seed in range(3):
        out = client.chat.completions.parse(
            model="chat", messages=MESSAGES, temperature=1.0, seed=seed, response_format=Forecast
        )
        parsed = out.choices[0].message.parsed
        assert isinstance(parsed, Forecast) and 0 <= parsed.celsius <= 30


def test_text_format_changes_nothing(client):
    kwargs = dict(model="chat", messages=MESSAGES, temperature=0, max_tokens=12)
    plain = client.chat.completions.create(**kwargs)
    text = client.chat.completions.create(**kwargs, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


TOOLS = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]
BAD_FORMATS = {
    "not_an_object": ("json", "response_format", "valid dictionary"),
    "unknown_type": ({"type": "xml"}, "response_format.type", "text, json_object, json_schema"),
    "unknown_field": ({"type": "json_object", "schema": {}}, "response_format.schema", "unknown field"),
    "no_json_schema": ({"type": "json_schema"}, "response_format.json_schema", "name and schema"),
    "no_name": ({"type": "json_schema", "json_schema": {"schema": WEATHER}}, "response_format.json_schema.name", ""),
    "bad_name": (_json_schema(WEATHER, "a b"), "response_format.json_schema.name", "a b"),
    "no_schema": (
        {"type": "json_schema", "json_schema": {"name": "w"}},
        "response_format.json_schema.schema",
        "field required",
    ),
    "strict_not_bool": (
        {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": "yes"}},
        "response_format.json_schema.strict",
        "boolean",
    ),
    "extra_json_schema_key": (
        {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "format": 1}},
        "response_format.json_schema.format",
        "unknown field",
    ),
    "schema_not_an_object": (_json_schema([1]), "response_format.json_schema.schema", "must be an object"),
    "unsupported_keyword": (
        _json_schema({"type": "array", "uniqueItems": True}),
        "response_format.json_schema.schema",
        "uniqueItems",
    ),
    "unsupported_format": (
        _json_schema({"type": "string", "format": "color"}),
        "response_format.json_schema.schema",
        "format: color",
    ),
    "unsatisfiable": (
        _json_schema({"type": "integer", "minimum": 5, "maximum": 1}),
        "response_format.json_schema.schema",
        "",
    ),
    "with_tools": ({"type": "json_object"}, "response_format", "tool_choice is 'none'"),
}


@pytest.mark.parametrize("case", list(BAD_FORMATS))
def test_bad_response_format_is_a_400_naming_the_field(serving_server, client, case):
    response_format, param, words = BAD_FORMATS[case]
    body = {"model": "chat", "messages": MESSAGES, "max_tokens": 4, "response_format": response_format}
    if case == "with_tools":
        body["tools"] = TOOLS
    response = serving_server.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")
    assert words in error["message"] and error["message"].startswith(param), error["message"]
    out = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2  # the server lives on


def test_json_format_with_tools_not_called(client):
    """tool_choice "none": the tools are only shown to the model, the answer follows the schema."""
    out = client.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        temperature=1.0,
        seed=1,
        tools=TOOLS,
        tool_choice="none",
        response_format=_json_schema(WEATHER),
    )
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), WEATHER)
