"""Guided decoding (`inference.guided`) on the random-weight tiny chat checkpoint: over many seeds and schemas every
sampled answer ends by itself ("stop") and validates with `jsonschema`; forced tool calls are hermes blocks naming a
tool with arguments valid for its parameters; greedy answers of unconstrained requests are transformers' (also in a
batch with guided rows), guided greedy answers are the masked argmax of transformers' logits; features the grammar
engine cannot enforce are a `GuidedDecodingError` naming the field and the feature."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from test_inference_sampling import reference_greedy

from conftest import CHAT_EOS, SERVE_CHAT_VARIANT

jsonschema = pytest.importorskip("jsonschema")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from paddle_qwen2.inference import SamplingParams  # noqa: E402
from paddle_qwen2.inference.guided import GuidedDecodingError, GuidedSpec, GuidedState  # noqa: E402
from paddle_qwen2.inference.sequence import GenerationSequence  # noqa: E402
from paddle_qwen2.inference.tokenization import ChatTokenizer  # noqa: E402

SEEDS = range(10)


def _object(properties: dict, required: list[str] | None = None) -> dict:
    required = list(properties) if required is None else required
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


SCHEMAS = {
    "enum_and_bounded_integer": _object(
        {"color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": -3, "maximum": 20}}
    ),
    "nested_object_and_array": _object(
        {
            "point": _object(
                {
                    "x": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.25},
                    "y": {"type": "integer", "exclusiveMinimum": 0, "maximum": 5},
                }
            ),
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
        }
    ),
    "strings_and_optional_properties": _object(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 4},
            "ok": {"type": "boolean"},
            "note": {"type": "null"},
        },
        required=["name"],
    ),
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "maxItems": 4},
    "ref_and_any_of": {
        "$defs": {"level": {"enum": [1, 2, 3]}},
        **_object({"level": {"$ref": "#/$defs/level"}, "when": {"anyOf": [{"type": "boolean"}, {"const": "now"}]}}),
    },
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city.",
            "parameters": _object(
                {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                required=["city"],
            ),
        },
    },
    {"type": "function", "function": {"name": "now", "description": "The time."}},
    {
        "type": "function",
        "function": {"name": "search", "parameters": _object({"query": {"type": "string", "maxLength": 5}})},
    },
]
BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)


@pytest.fixture(scope="module")
def llm(chat_checkpoint):
    from paddle_qwen2.inference import LLM

    return LLM.from_pretrained(chat_checkpoint(SERVE_CHAT_VARIANT), engine="dygraph")


@pytest.fixture(scope="module")
def hf_model(chat_checkpoint):
    return transformers.AutoModelForCausalLM.from_pretrained(
        chat_checkpoint(SERVE_CHAT_VARIANT), attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def prompt(llm) -> list[int]:
    """A short prompt: the tiny model's context is 128 tokens."""
    return llm.tokenizer.encode("Answer in JSON:", special=False)


def _generate(llm, prompt, spec, seeds=SEEDS, **settings):
    settings = {"temperature": 1.0, **settings}
    params = [SamplingParams(seed=s, guided=spec, **settings) for s in seeds]
    return llm.generate([prompt] * len(params), params)


def _assert_stopped(out) -> None:
    assert out.finish_reason == "stop", (out.finish_reason, out.text)
    assert out.token_ids[-1] in CHAT_EOS  # the grammar was complete: only eos was allowed


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_answers_follow_the_schema(llm, prompt, name):
    schema = SCHEMAS[name]
    outs = _generate(llm, prompt, GuidedSpec.json_schema(schema))
    outs += _generate(llm, prompt, GuidedSpec.json_schema(schema), range(3), temperature=1.5, top_p=0.9, top_k=50)
    for out in outs:
        _assert_stopped(out)
        jsonschema.validate(json.loads(out.text), schema)
    assert len({out.text for out in outs}) > 3  # sampled, not one forced answer


def test_json_object_answers_are_objects_even_against_the_bias(llm, prompt):
    """The sampler is pushed toward quotes and braces (logit_bias, applied after the mask): the answers end quickly
    and still parse as JSON objects."""
    vocab = llm.tokenizer.backend.get_vocab()
    bias = {i: 15.0 for text, i in vocab.items() if '"' in text or "}" in text}
    outs = _generate(llm, prompt, GuidedSpec.json_object(), logit_bias=bias)
    for out in outs:
        _assert_stopped(out)
        assert isinstance(json.loads(out.text), dict)
    assert len({out.text for out in outs}) > 3


def _calls(text: str) -> list[dict]:
    """The JSON of each hermes block; the text is nothing but blocks separated by newlines."""
    blocks = BLOCK.findall(text)
    assert text == "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in blocks), text
    return [json.loads(b) for b in blocks]


def _assert_valid_call(call: dict) -> None:
    tools = {t["function"]["name"]: t["function"] for t in TOOLS}
    assert list(call) == ["name", "arguments"] and call["name"] in tools
    parameters = tools[call["name"]].get("parameters") or {"type": "object", "maxProperties": 0}
    jsonschema.validate(call["arguments"], parameters)


@pytest.mark.paddle26
def test_required_tool_calls_are_hermes_blocks_of_the_tools(llm, prompt):
    outs = _generate(llm, prompt, GuidedSpec.tool_calls(TOOLS))
    counts = []
    for out in outs:
        _assert_stopped(out)
        calls = _calls(out.text)
        counts.append(len(calls))
        for call in calls:
            _assert_valid_call(call)
    assert min(counts) >= 1
    assert len({c["name"] for out in outs for c in _calls(out.text)}) > 1  # any tool may be called


def test_required_without_parallel_calls_is_one_block(llm, prompt):
    seeds = range(12, 16)  # seeds whose answers hold two calls when several are allowed
    parallel = [out.text.count("<tool_call>") for out in _generate(llm, prompt, GuidedSpec.tool_calls(TOOLS), seeds)]
    assert max(parallel) >= 2
    for out in _generate(llm, prompt, GuidedSpec.tool_calls(TOOLS, parallel=False), seeds):
        _assert_stopped(out)
        [call] = _calls(out.text)
        _assert_valid_call(call)


@pytest.mark.parametrize("name", ["get_weather", "now", "search"])
def test_a_named_tool_is_called_exactly_once(llm, prompt, name):
    for out in _generate(llm, prompt, GuidedSpec.tool_calls(TOOLS, name), range(4)):
        _assert_stopped(out)
        [call] = _calls(out.text)
        assert call["name"] == name
        _assert_valid_call(call)


def test_tool_tags_are_the_tokenizers_own_tokens(llm):
    """With `<tool_call>` / `</tool_call>` added tokens (as Qwen2.5's tokenizer has them) the tags are those single
    tokens, never spelled out in pieces."""
    from tokenizers import AddedToken

    base = llm.tokenizer
    backend = type(base.backend).from_str(base.backend.to_str())
    backend.add_tokens([AddedToken("<tool_call>", special=False), AddedToken("</tool_call>", special=False)])
    tokenizer = ChatTokenizer(backend, base.config, base.chat_template, base.eos_token_ids)
    open_id, close_id = backend.token_to_id("<tool_call>"), backend.token_to_id("</tool_call>")
    rng = np.random.default_rng(0)
    for seed in range(3):
        sequence = GenerationSequence(
            [1, 2], SamplingParams(seed=seed, guided=GuidedSpec.tool_calls(TOOLS)), tokenizer, 400
        )
        while not sequence.finished:
            sequence.append(sequence.choose(rng.normal(size=4096).astype(np.float32)))
        assert sequence.finish_reason == "stop"
        calls = _calls(sequence.text)
        assert sequence.token_ids.count(open_id) == sequence.token_ids.count(close_id) == len(calls) >= 1
        assert "<" not in backend.decode([t for t in sequence.token_ids if t not in (open_id, close_id)])


@pytest.mark.paddle26
def test_greedy_guided_answer_is_the_masked_argmax_of_transformers_logits(llm, hf_model, prompt):
    spec = GuidedSpec.json_schema(SCHEMAS["nested_object_and_array"])
    [out] = llm.generate([prompt], [SamplingParams(temperature=0, guided=spec)])
    state, ids, expected = GuidedState(spec, llm.tokenizer), list(prompt), []
    while not expected or expected[-1] not in CHAT_EOS:
        with torch.no_grad():
            logits = hf_model(torch.tensor([ids])).logits[0, -1].float().numpy()
        token = int(np.argmax(state.mask(logits)))
        state.advance(token)
        expected.append(token)
        ids.append(token)
    assert out.token_ids == expected
    _assert_stopped(out)


def test_unconstrained_greedy_rows_are_unchanged_beside_guided_rows(llm, hf_model, prompt):
    other = llm.tokenizer.encode_chat([{"role": "user", "content": "Tell me a story about a cat."}])
    plain = SamplingParams(temperature=0, max_new_tokens=12)
    guided = SamplingParams(temperature=1.0, seed=3, guided=GuidedSpec.json_schema(SCHEMAS["top_level_array"]))
    alone = [c.token_ids for c in llm.generate([prompt, other], [plain, plain])]
    mixed = llm.generate([prompt, other, prompt], [plain, guided, plain])
    assert [mixed[0].token_ids, mixed[2].token_ids] == [alone[0], alone[0]]
    assert alone == [reference_greedy(hf_model, p, 12, CHAT_EOS) for p in (prompt, other)]
    jsonschema.validate(json.loads(mixed[1].text), SCHEMAS["top_level_array"])


def test_unconstrained_generation_does_not_load_the_grammar_engine():
    code = (
        "import sys\n"
        "from paddle_qwen2.inference import sampling, sequence\n"
        "from paddle_qwen2.serving import protocol, structured\n"
        "sampling.SamplingParams(temperature=0.5).validate()\n"
        "assert 'llguidance' not in sys.modules, 'llguidance was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_logprobs_stay_the_raw_logits_and_limits_still_apply(llm):
    """Logprobs are the raw logits' log-softmax (not the masked ones); max_new_tokens cuts a guided answer
    ("length"); the grammar's end stops it even with ignore_eos; a disallowed token ends it with "error"."""
    from paddle_qwen2.inference.sampling import token_logprob

    spec = GuidedSpec.json_schema(SCHEMAS["enum_and_bounded_integer"])
    rng = np.random.default_rng(1)
    sequence = GenerationSequence([1, 2], SamplingParams(seed=0, logprobs=2, guided=spec), llm.tokenizer, 100)
    while not sequence.finished:
        logits = rng.normal(size=4096).astype(np.float32)
        token = sequence.choose(logits)
        assert sequence.logprobs[-1] == token_logprob(logits, token, 2)
        sequence.append(token)
    assert sequence.finish_reason == "stop"
    jsonschema.validate(json.loads(sequence.text), SCHEMAS["enum_and_bounded_integer"])

    cut = GenerationSequence([1, 2], SamplingParams(max_new_tokens=3, guided=spec), llm.tokenizer, 100)
    ignore = GenerationSequence([1, 2], SamplingParams(seed=4, ignore_eos=True, guided=spec), llm.tokenizer, 100)
    for seq in (cut, ignore):
        while not seq.finished:
            seq.append(seq.choose(rng.normal(size=4096).astype(np.float32)))
    assert cut.finish_reason == "length" and len(cut.token_ids) == 3
    assert ignore.finish_reason == "stop" and ignore.token_ids[-1] in CHAT_EOS

    wrong = GenerationSequence([1, 2], SamplingParams(guided=spec), llm.tokenizer, 100)
    masked = wrong.guided.mask(np.zeros(4096, dtype=np.float32))
    allowed = np.flatnonzero(masked != -np.inf)
    assert allowed.size > 0 and allowed.max() < len(llm.tokenizer.backend.get_vocab())  # padded rows are masked
    wrong.append(next(t for t in range(4096) if masked[t] == -np.inf))
    assert wrong.finish_reason == "error" and wrong.stop_reason

    base = llm.tokenizer
    no_eos = ChatTokenizer(base.backend, base.config, base.chat_template, [])
    ended = GenerationSequence([1, 2], SamplingParams(seed=0, guided=spec), no_eos, 100)
    assert ended.guided.compiled is None  # nothing is compiled until the first step (the HTTP process never steps)
    ended.append(ended.choose(rng.normal(size=4096).astype(np.float32)))
    assert ended.finish_reason == "error" and "no eos token" in ended.stop_reason


def test_spec_is_small_and_picklable():
    spec = GuidedSpec.tool_calls(TOOLS, "now")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert SamplingParams(guided=spec).validate().guided is spec
    with pytest.raises(ValueError, match="guided must be a GuidedSpec"):
        SamplingParams(guided={"type": "object"}).validate()


UNSUPPORTED = {
    "not": ({"not": {"type": "string"}}, '"not"'),
    "uniqueItems": ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    "if_then": ({"type": "object", "if": {}, "then": {}}, '"if"'),
    "dependentRequired": ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    "propertyNames": ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
    "contains": ({"type": "array", "contains": {"type": "integer"}}, "contains"),
    "unknown_format": ({"type": "string", "format": "color"}, "format: color"),
    "lookaround_pattern": ({"type": "string", "pattern": "(?=a)a"}, "look-around"),
    "one_of": ({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}, "oneOf"),
    "min_properties_with_optional": (
        {"type": "object", "properties": {"a": {}}, "minProperties": 1},
        'min/maxProperties only supported when all keys listed in "properties" are required',
    ),
    "remote_ref": ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
    "unsatisfiable": ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems (3) is greater than maxItems (1)"),
    "engine_options": ({"type": "object", "x-guidance": {"lenient": True}}, "x-guidance"),
    "not_an_object": ([{"type": "string"}], "must be an object"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_schema_features_are_errors_naming_them(case):
    schema, feature = UNSUPPORTED[case]
    with pytest.raises(GuidedDecodingError) as info:
        GuidedSpec.json_schema(schema, field="response_format.json_schema.schema")
    assert info.value.param == "response_format.json_schema.schema"
    assert str(info.value).startswith("response_format.json_schema.schema: ")
    assert feature in str(info.value)


@pytest.mark.parametrize(
    ("tools", "name", "expected"),
    [
        ([], None, "non-empty list of tools"),
        (TOOLS, "missing", "no tool named 'missing'"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}}}],
            None,
            'tools[0].function.parameters: this schema cannot be enforced: Unimplemented keys: ["uniqueItems"]',
        ),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
        (TOOLS + TOOLS[:1], None, "tools[3].function.name: 'get_weather' is defined twice"),
    ],
)
def test_bad_tool_calls_specs_name_the_field(tools, name, expected):
    with pytest.raises(GuidedDecodingError) as info:
        GuidedSpec.tool_calls(tools, name)
    assert info.value.param == "tool_choice"
    assert expected in str(info.value)
