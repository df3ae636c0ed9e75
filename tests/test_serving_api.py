"""`paddle-qwen2 serve` through the official `openai` client: the answers are transformers' greedy `generate` on the
same checkpoint (token ids, text, finish_reason, usage); embeddings are `EmbeddingModel.encode`'s."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from serving_helpers import API_KEY

from conftest import CAPITALS

openai = pytest.importorskip("openai")

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Tell me a story."}],
    "multi_turn": [
        {"role": "user", "content": "法国的首都是哪里？"},
        {"role": "assistant", "content": "巴黎。"},
        {"role": "user", "content": "And Japan?"},
    ],
}
PROMPTS = ["The capital of France is", "1 2 3 4", "猫喜欢"]
# ~110 tokens: without max_tokens the answer fills the rest of the 128-token context
LONG_PROMPT = " ".join(f"{country} {capital}." for country, capital in CAPITALS) * 3


@pytest.fixture(scope="module")
def client(serving_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def _extra(obj, name: str):
    """A response field beyond OpenAI's schema (kept by the SDK's models as extras)."""
    return (obj.model_extra or {})[name]


def test_models_lists_the_generation_and_embedding_models(client):
    models = {m.id: m for m in client.models.list().data}
    assert sorted(models) == ["chat", "embed"]
    assert _extra(models["chat"], "max_model_len") == 128
    assert models["embed"].object == "model"


@pytest.mark.parametrize("conversation, max_tokens", [("user", 24), ("system", 12), ("multi_turn", 30)])
def test_chat_greedy_answer_is_transformers_generate(client, hf_chat_reference, conversation, max_tokens):
    messages = CONVERSATIONS[conversation]
    hf = hf_chat_reference
    prompt = hf.chat_ids(messages)
    expected = hf.generate(prompt, max_tokens)
    out = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=max_tokens, temperature=0, extra_body={"return_token_ids": True}
    )
    assert out.object == "chat.completion" and out.model == "chat"
    assert _extra(out, "prompt_token_ids") == prompt
    choice = out.choices[0]
    assert _extra(choice, "token_ids") == expected
    assert choice.message.role == "assistant"
    assert choice.message.content == hf.decode(expected)
    assert choice.finish_reason == ("stop" if expected[-1] in hf.eos else "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt), len(expected))
    assert out.usage.total_tokens == len(prompt) + len(expected)


def test_chat_max_completion_tokens_wins_over_max_tokens(client, hf_chat_reference):
    messages = CONVERSATIONS["user"]
    out = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=20, max_completion_tokens=5, temperature=0
    )
    expected = hf_chat_reference.generate(hf_chat_reference.chat_ids(messages), 5)
    assert out.usage.completion_tokens == 5
    assert out.choices[0].message.content == hf_chat_reference.decode(expected)


@pytest.mark.parametrize("conversation", ["user", "multi_turn"])
def test_chat_stream_pieces_add_up_to_the_answer(client, hf_chat_reference, conversation):
    messages = CONVERSATIONS[conversation]
    expected = hf_chat_reference.generate(hf_chat_reference.chat_ids(messages), 30)
    stream = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert "".join(content) == hf_chat_reference.decode(expected)
    assert len(content) > 5  # streamed in pieces, not in one
    assert finishes == ["length"] and chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_pieces_are_whole_characters_and_carry_every_token(serving_server, hf_chat_reference):
    """Token ids of pieces held back (an incomplete UTF-8 character) ride with the next piece."""
    expected = hf_chat_reference.generate(hf_chat_reference.text_ids(PROMPTS[2]), 40)
    body = {
        "model": "chat",
        "prompt": PROMPTS[2],
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
        "return_token_ids": True,
    }
    with httpx.stream(
        "POST",
        serving_server.base_url + "/completions",
        json=body,
        timeout=60,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    choices = [json.loads(line[6:])["choices"][0] for line in lines[:-1]]
    assert sum((c["token_ids"] for c in choices), []) == expected
    assert "".join(c["text"] for c in choices) == hf_chat_reference.decode(expected)
    assert all("\ufffd" not in c["text"] or "\ufffd" in hf_chat_reference.decode(expected) for c in choices)


def test_completions_of_a_list_of_prompts_are_transformers_generate(client, hf_chat_reference):
    hf = hf_chat_reference
    out = client.completions.create(
        model="chat", prompt=PROMPTS, max_tokens=16, temperature=0, extra_body={"return_token_ids": True}
    )
    assert out.object == "text_completion"
    assert [c.index for c in out.choices] == [0, 1, 2]
    prompt_tokens = 0
    for text, choice in zip(PROMPTS, out.choices):
        ids = hf.text_ids(text)
        prompt_tokens += len(ids)
        expected = hf.generate(ids, 16)
        assert _extra(choice, "token_ids") == expected
        assert (choice.text, choice.finish_reason) == (hf.decode(expected), "length")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, 48)


def test_completions_stream_adds_up(client, hf_chat_reference):
    expected = hf_chat_reference.generate(hf_chat_reference.text_ids(PROMPTS[0]), 20)
    chunks = list(client.completions.create(model="chat", prompt=PROMPTS[0], max_tokens=20, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == hf_chat_reference.decode(expected)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"


def test_stop_string_ends_the_answer_before_it(client, hf_chat_reference):
    hf = hf_chat_reference
    messages = CONVERSATIONS["user"]
    ids = hf.generate(hf.chat_ids(messages), 40)
    text = hf.decode(ids)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    # the answer ends with the token that completes the stop string
    used = next(k for k in range(1, len(ids) + 1) if stop in hf.decode(ids[:k]))
    out = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=40, temperature=0, stop=["no such text", stop]
    )
    assert out.choices[0].message.content == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == used


def test_stop_token_ids_end_with_stop_as_an_eos_does(client, hf_chat_reference):
    """`stop_token_ids` (vLLM's extension) act as extra eos ids: the token ids are transformers' with those eos ids;
    as in vLLM, the stop token's text is not part of the answer (as a stop string is not)."""
    hf = hf_chat_reference
    prompt = hf.text_ids(PROMPTS[1])
    free_run = hf.generate(prompt, 16)
    token = next(t for i, t in enumerate(free_run) if i >= 3 and t not in free_run[:i])
    expected = hf.generate(prompt, 16, extra_eos=(token,))
    assert expected[-1] == token and len(expected) < 16
    out = client.completions.create(
        model="chat",
        prompt=PROMPTS[1],
        max_tokens=16,
        temperature=0,
        extra_body={"stop_token_ids": [token], "return_token_ids": True},
    )
    assert _extra(out.choices[0], "token_ids") == expected
    assert (out.choices[0].text, out.choices[0].finish_reason) == (hf.decode(expected[:-1]), "stop")


def test_without_max_tokens_the_answer_fills_the_context(client, hf_chat_reference):
    hf = hf_chat_reference
    prompt = hf.text_ids(LONG_PROMPT)
    room = hf.max_model_len - len(prompt)
    assert 5 < room < 30
    out = client.completions.create(model="chat", prompt=LONG_PROMPT, temperature=0)
    assert (out.usage.completion_tokens, out.choices[0].finish_reason) == (room, "length")
    assert out.choices[0].text == hf.decode(hf.generate(prompt, room))


def test_seeded_sampling_repeats(client):
    kwargs = dict(model="chat", prompt=PROMPTS[1], max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    first, second = (client.completions.create(**kwargs).choices[0].text for _ in range(2))
    other = client.completions.create(**{**kwargs, "seed": 8}).choices[0].text
    assert first == second
    assert other != first


# --------------------------------------------------------------------------------------------------- embeddings
EMBED_TEXTS = ["The capital of France is Paris.", "猫喜欢吃鱼。", "a", "hello world"]


@pytest.fixture(scope="module")
def embedding_model(st_folder):
    from paddle_qwen2.embedding.model import EmbeddingModel

    return EmbeddingModel.from_pretrained(st_folder("last"))


@pytest.mark.parametrize("dimensions", [None, 16])
def test_embeddings_float_are_encode(client, embedding_model, dimensions):
    kwargs = {} if dimensions is None else {"dimensions": dimensions}
    out = client.embeddings.create(model="embed", input=EMBED_TEXTS, encoding_format="float", **kwargs)
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    expected = embedding_model.encode(EMBED_TEXTS, truncate_dim=dimensions)
    assert got.shape == (len(EMBED_TEXTS), dimensions or embedding_model.dimension)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    prompt = embedding_model.resolve_prompt() or ""
    tokens = sum(len(ids) for ids in embedding_model.tokenizer.encode_ids([prompt + t for t in EMBED_TEXTS]))
    assert out.usage.prompt_tokens == out.usage.total_tokens == tokens


def test_embeddings_base64_is_little_endian_float32(client, embedding_model):
    out = client.embeddings.create(model="embed", input=EMBED_TEXTS[0], encoding_format="base64")
    (item,) = out.data
    vector = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
    assert np.abs(vector - embedding_model.encode([EMBED_TEXTS[0]])[0]).max() <= 1e-5


def test_health_and_metrics_count_requests(serving_server, client):
    assert serving_server.get("/health").json()["status"] == "ok"
    before = serving_server.metrics()
    client.completions.create(model="chat", prompt=PROMPTS[0], max_tokens=3, temperature=0)
    after = serving_server.metrics()
    key = 'paddle_qwen2_requests_total{endpoint="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["paddle_qwen2_generation_tokens_total"] - before["paddle_qwen2_generation_tokens_total"] == 3
    assert after["paddle_qwen2_time_to_first_token_seconds_count"] >= 1
    assert after["paddle_qwen2_running_sequences"] == 0


def test_the_http_process_leaves_paddle_to_the_engine_process(serving_server):
    """The models run in the engine process: the HTTP process (uvicorn) has no paddle library mapped, so no
    predictor run can hold its GIL; the engine process has. Its startup line names the engine and the CPU settings
    it runs with (OpenMP workers that sleep between runs, not spin on the HTTP process's core)."""
    from pathlib import Path

    def paddle_mapped(pid: int) -> bool:
        return "libpaddle" in Path(f"/proc/{pid}/maps").read_text()

    children = [
        int(p)
        for t in Path(f"/proc/{serving_server.proc.pid}/task").iterdir()
        for p in (t / "children").read_text().split()
    ]
    assert not paddle_mapped(serving_server.proc.pid)
    assert any(paddle_mapped(pid) for pid in children)
    (line,) = [x for x in serving_server.log().splitlines() if x.startswith("paddle-qwen2 serve: engine process:")]
    assert "paddle.inference (cpu" in line and "KMP_BLOCKTIME=0" in line and "OMP_NUM_THREADS=" in line, line
