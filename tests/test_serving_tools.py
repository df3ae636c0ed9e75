"""Tool calling through the official `openai` client against `paddle-qwen2 serve`, on a tiny Qwen2 that this file
trains (torch, transformers' model and Qwen2.5-Instruct's tool template) until its greedy answers are: one tool call
(prompt A), two parallel calls (B), a plain answer (C), text and a call (E), and an answer after a tool result (D).

Checked: the parsed `tool_calls` (names, arguments strings), `finish_reason`, content null or text, streamed (the
deltas assembled by the SDK's own stream accumulator, no content piece carrying a block) and not; tool_choice
"none" gives the raw text; the prompt of a history with JSON-string arguments has the ids transformers gives
(`usage.prompt_tokens` and the answer); a named `tool_choice` forces that call; bad inputs are 400s naming the
field and the server answers afterwards."""

from __future__ import annotations

import json

import pytest
from serving_helpers import API_KEY, ServerProcess, dygraph_server_args, sse_events
from tool_template import write_tool_tokenizer

from conftest import CHAT_EOS

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}
TOOLS = [WEATHER, TIME]


def _block(name: str, arguments: dict) -> str:
    """A call as Qwen2.5 writes it (and as its template renders an assistant's tool_calls)."""
    return '<tool_call>\n{"name": "' + name + '", "arguments": ' + json.dumps(arguments) + "}\n</tool_call>"


PARIS = {"city": "Paris"}
TOKYO = {"zone": "Asia/Tokyo"}
ASK_A = [{"role": "user", "content": "What is the weather in Paris?"}]
ASK_B = [{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}]
ASK_C = [{"role": "user", "content": "Say hello."}]
ASK_E = [{"role": "user", "content": "Tokyo time, please."}]
RESULT = '{"temperature": 21, "sky": "clear"}'
# the history of D as an OpenAI client sends it: arguments a JSON string, content null
ASK_D_CLIENT = [
    *ASK_A,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(PARIS)}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": RESULT},
]
# ... and as transformers' apply_chat_template takes it: arguments an object
ASK_D_TEMPLATE = [
    *ASK_A,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": RESULT},
]
ANSWERS = {
    "A": (ASK_A, _block("get_weather", PARIS)),
    "B": (ASK_B, _block("get_weather", PARIS) + "\n" + _block("get_time", TOKYO)),
    "C": (ASK_C, "Hello! How can I help you today?"),
    "D": (ASK_D_TEMPLATE, "It is 21 degrees and clear in Paris."),
    "E": (ASK_E, "Let me look.\n" + _block("get_time", TOKYO)),
}
MODEL = dict(
    vocab_size=4096,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=4000,
    eos_token_id=CHAT_EOS,
)
MAX_STEPS = 600
MAX_TOKENS = 120
LR = 1e-2
CHECK_EVERY = 25


def _greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=CHAT_EOS,
            pad_token_id=CHAT_EOS[0],
        )
    return out[0, len(prompt) :].tolist()


def _train(folder, tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    """Fine-tune a fresh tiny model on the answers (loss on the answer tokens only) until greedy decoding gives
    each of them; saves it to `folder`. {name: (prompt ids, answer ids ending with <|im_end|>)}. It trains on one
    thread with denormal floats flushed: the tiny steps gain nothing from a second thread and lose much when the
    cores are busy, and denormals would slow every step down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        return _fit(folder, tokenizer)
    finally:
        torch.set_flush_denormal(False)  # torch's default
        torch.set_num_threads(threads)


def _fit(folder, tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**MODEL, attn_implementation="sdpa"))
    data = {}
    for name, (messages, answer) in ANSWERS.items():
        prompt = list(tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=True))
        data[name] = (prompt, tokenizer(answer, add_special_tokens=False)["input_ids"] + [CHAT_EOS[1]])
    width = max(len(p) + len(a) for p, a in data.values())
    inputs = torch.full((len(data), width), CHAT_EOS[0])
    labels = torch.full((len(data), width), -100)
    for row, (prompt, answer) in enumerate(data.values()):
        ids = torch.tensor(prompt + answer)
        inputs[row, : len(ids)] = ids
        labels[row, len(prompt) : len(ids)] = torch.tensor(answer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    answer_at = labels[:, 1:] != -100  # positions whose next token is an answer token: the only logits needed
    targets = labels[:, 1:][answer_at]
    for step in range(1, MAX_STEPS + 1):
        hidden = model.model(input_ids=inputs).last_hidden_state[:, :-1][answer_at]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0 and loss.item() < 0.05:
            model.eval()
            if all(_greedy(model, p, len(a) + 2) == a for p, a in data.values()):
                break
            model.train()
    model.eval()
    for name, (prompt, answer) in data.items():
        assert _greedy(model, prompt, len(answer) + 2) == answer, f"not memorised after {step} steps: {name}"
    model.save_pretrained(folder)
    generation = {"bos_token_id": 4000, "eos_token_id": CHAT_EOS, "pad_token_id": 4000, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = write_tool_tokenizer(tmp_path_factory.mktemp("tool-model"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return folder, tokenizer, _train(folder, tokenizer)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    folder, _, _ = trained
    args = dygraph_server_args(str(folder), 0.0, "--api-key", API_KEY)
    server = ServerProcess.start(args, tmp_path_factory.mktemp("serve-tools"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def _ask(client, messages, **kwargs):
    return client.chat.completions.create(model="chat", messages=messages, tools=TOOLS, max_tokens=MAX_TOKENS, **kwargs)


def _calls(message) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


EXPECTED = {  # name -> (content, [(name, arguments)], finish_reason)
    "A": (None, [("get_weather", json.dumps(PARIS))], "tool_calls"),
    "B": (None, [("get_weather", json.dumps(PARIS)), ("get_time", json.dumps(TOKYO))], "tool_calls"),
    "C": ("Hello! How can I help you today?", [], "stop"),
    "E": ("Let me look.\n", [("get_time", json.dumps(TOKYO))], "tool_calls"),
    "D": ("It is 21 degrees and clear in Paris.", [], "stop"),
}
CLIENT_MESSAGES = {"A": ASK_A, "B": ASK_B, "C": ASK_C, "E": ASK_E, "D": ASK_D_CLIENT}


@pytest.mark.parametrize("name", EXPECTED)
def test_answers_parsed(client, trained, name):
    _, _, data = trained
    content, calls, finish = EXPECTED[name]
    response = _ask(client, CLIENT_MESSAGES[name])
    (choice,) = response.choices
    assert choice.message.content == content
    assert _calls(choice.message) == calls
    assert choice.finish_reason == finish
    for call in choice.message.tool_calls or []:
        assert call.type == "function" and call.id.startswith("call_")
    prompt, answer = data[name]
    assert response.usage.prompt_tokens == len(prompt)  # D: JSON-string arguments give transformers' prompt
    assert response.usage.completion_tokens == len(answer)


def test_round_trip_as_the_docs_walk_it(client, trained):
    """The assistant message sent back as the SDK gives it (`model_dump`), the tool's result, the final answer."""
    _, _, data = trained
    first = _ask(client, ASK_A).choices[0].message
    (call,) = first.tool_calls
    result = {"role": "tool", "tool_call_id": call.id, "content": RESULT}
    messages = [*ASK_A, first.model_dump(exclude_none=True), result]
    final = _ask(client, messages)
    assert final.choices[0].message.content == EXPECTED["D"][0]
    assert final.usage.prompt_tokens == len(data["D"][0])


@pytest.mark.parametrize("name", EXPECTED)
def test_streamed_equals_whole(client, name):
    content, calls, finish = EXPECTED[name]
    kwargs = dict(model="chat", messages=CLIENT_MESSAGES[name], tools=TOOLS, max_tokens=MAX_TOKENS)
    pieces = []
    with client.chat.completions.stream(**kwargs) as stream:
        for event in stream:
            if event.type == "content.delta":
                pieces.append(event.delta)
        final = stream.get_final_completion()
    (choice,) = final.choices
    assert (choice.message.content or None) == content
    assert _calls(choice.message) == calls
    assert choice.finish_reason == finish
    assert "".join(pieces) == (content or "")  # the content deltas are exactly the text outside the blocks
    assert all("tool_call>" not in p and '"name"' not in p for p in pieces)
    ids = [c.id for c in choice.message.tool_calls or []]
    assert len(set(ids)) == len(calls) and all(i.startswith("call_") for i in ids)


def test_streamed_chunks_follow_openai_delta_protocol(server):
    body = {"model": "chat", "messages": ASK_B, "tools": TOOLS, "max_tokens": MAX_TOKENS, "stream": True}
    response = server.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and sse_events(response)[-1] == "[DONE]"
    chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    call_deltas = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert [(d["index"], "id" in d) for d in call_deltas] == [(0, True), (0, False), (1, True), (1, False)]
    assert call_deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert call_deltas[1]["function"] == {"arguments": json.dumps(PARIS)}
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    assert not any(d.get("content") for d in deltas)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_gives_the_raw_text(client, trained, stream):
    _, _, data = trained
    kwargs = dict(model="chat", messages=ASK_A, tools=TOOLS, max_tokens=MAX_TOKENS, tool_choice="none")
    if stream:
        with client.chat.completions.stream(**kwargs) as events:
            response = events.get_final_completion()
    else:
        response = client.chat.completions.create(**kwargs)
    (choice,) = response.choices
    assert choice.message.content == _block("get_weather", PARIS)  # the tools are in the prompt; nothing parsed
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    assert response.usage is None or response.usage.prompt_tokens == len(data["A"][0])


def test_forced_tool_choice(client):
    response = _ask(client, ASK_C, tool_choice={"type": "function", "function": {"name": "get_time"}})
    (choice,) = response.choices
    ((name, arguments),) = _calls(choice.message)
    assert name == "get_time" and isinstance(json.loads(arguments), dict)
    assert choice.finish_reason == "tool_calls"
    response = _ask(client, ASK_C, tool_choice="required")
    assert _calls(response.choices[0].message)
    # the model's own two calls fit the grammar; parallel_tool_calls false stops after the first
    assert _calls(_ask(client, ASK_B, tool_choice="required").choices[0].message) == EXPECTED["B"][1]
    one = _ask(client, ASK_B, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert _calls(one.message) == EXPECTED["B"][1][:1] and one.finish_reason == "tool_calls"


BAD_CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": '}}
BAD_INPUTS = [  # (request fields, param)
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [WEATHER, TIME, WEATHER]}, "tools[2].function.name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"messages": [*ASK_A, {"role": "tool", "tool_call_id": "x", "content": "1"}]}, "messages[1].tool_call_id"),
    ({"messages": [*ASK_A, {"role": "tool", "content": "1"}]}, "messages[1].tool_call_id"),
    (
        {"messages": [*ASK_A, {"role": "assistant", "tool_calls": [BAD_CALL]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": [BAD_CALL]}]}, "messages[0].tool_calls"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
]


def test_bad_inputs_are_400_naming_the_field(client, server):
    for fields, param in BAD_INPUTS:
        kwargs = {"model": "chat", "messages": ASK_C, "max_tokens": 5, **fields}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**kwargs)
        error = caught.value.body
        assert error["param"] == param, (fields, error)
        assert error["type"] == "invalid_request_error" and error["message"].startswith(param), error
    assert server.proc.poll() is None
    assert _calls(_ask(client, ASK_A).choices[0].message) == EXPECTED["A"][1]  # still answering
