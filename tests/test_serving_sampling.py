"""`n`, presence / frequency penalties and `logit_bias` through the official `openai` client against
`paddle-qwen2 serve`: the greedy answers are the reference loop of tests/test_inference_sampling.py on transformers'
logits; `n` choices are sequences of their own (indexed, seeded, streamed by index, counted in `usage`)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from serving_helpers import API_KEY
from test_inference_sampling import reference_greedy

from conftest import CHAT_EOS

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
PROMPTS = ["The capital of France is", "1 2 3 4"]


@pytest.fixture(scope="module")
def client(serving_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def _token_ids(choice) -> list[int]:
    return (choice.model_extra or {})["token_ids"]


def test_n_seeded_choices_are_reproducible_distinct_and_counted(client, hf_chat_reference):
    kwargs = dict(model="chat", messages=MESSAGES, max_tokens=10, temperature=1.0, n=3, seed=11)
    first = client.chat.completions.create(**kwargs, extra_body={"return_token_ids": True})
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert [c.message.content for c in again.choices] == texts
    assert len(set(texts)) == 3  # each choice samples with its own seed
    assert first.usage.prompt_tokens == len(hf_chat_reference.chat_ids(MESSAGES))  # the prompt is counted once
    assert first.usage.completion_tokens == sum(len(_token_ids(c)) for c in first.choices)
    # choice j is the n=1 request seeded with seed + j
    single = client.chat.completions.create(**{**kwargs, "n": 1, "seed": 12})
    assert single.choices[0].message.content == texts[1]


def test_n_streamed_pieces_add_up_per_index(client):
    kwargs = dict(model="chat", messages=MESSAGES, max_tokens=10, temperature=0.9, n=3, seed=5)
    whole = client.chat.completions.create(**kwargs)
    expected = [c.message.content for c in whole.choices]
    pieces: dict[int, list[str]] = defaultdict(list)
    finished = {}
    usage = None
    for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces[choice.index].append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert sorted(pieces) == [0, 1, 2] and sorted(finished) == [0, 1, 2]
    assert ["".join(pieces[i]) for i in range(3)] == expected
    assert usage.model_dump() == whole.usage.model_dump()  # the prompt once, the tokens of every choice


def test_n_greedy_choices_are_equal(client, hf_chat_reference):
    out = client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=8, temperature=0, n=2, extra_body={"return_token_ids": True}
    )
    expected = hf_chat_reference.generate(hf_chat_reference.chat_ids(MESSAGES), 8)
    assert [_token_ids(c) for c in out.choices] == [expected, expected]
    assert out.usage.completion_tokens == 2 * len(expected)


def test_completions_n_numbers_choices_prompt_major(client, hf_chat_reference):
    out = client.completions.create(model="chat", prompt=PROMPTS, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    hf = hf_chat_reference
    answers = [hf.decode(hf.generate(hf.text_ids(p), 6)) for p in PROMPTS]
    assert [c.text for c in out.choices] == [answers[0], answers[0], answers[1], answers[1]]
    assert out.usage.prompt_tokens == sum(len(hf.text_ids(p)) for p in PROMPTS)
    streamed: dict[int, str] = defaultdict(str)
    for chunk in client.completions.create(model="chat", prompt=PROMPTS, max_tokens=6, temperature=0, n=2, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [streamed[i] for i in range(4)] == [c.text for c in out.choices]


@pytest.mark.parametrize(
    "settings",
    [
        dict(presence_penalty=1.5),
        dict(frequency_penalty=0.8),
        dict(presence_penalty=0.6, frequency_penalty=0.6, logit_bias={"first": -100}, repetition_penalty=1.2),
        dict(logit_bias={"first": -100}),
    ],
    ids=["presence", "frequency", "all", "bias"],
)
def test_penalties_and_logit_bias_are_the_reference_loop(client, hf_chat_reference, settings):
    hf = hf_chat_reference
    prompt = hf.chat_ids(MESSAGES)
    plain = reference_greedy(hf.model, prompt, 12, CHAT_EOS)
    settings = dict(settings)
    bias = {plain[0]: -100.0} if "logit_bias" in settings else None
    if bias:
        settings["logit_bias"] = {str(k): v for k, v in bias.items()}
    expected = reference_greedy(
        hf.model,
        prompt,
        12,
        CHAT_EOS,
        settings.get("presence_penalty", 0.0),
        settings.get("frequency_penalty", 0.0),
        bias,
        settings.get("repetition_penalty", 1.0),
    )
    extra = {"return_token_ids": True}
    if "repetition_penalty" in settings:
        extra["repetition_penalty"] = settings.pop("repetition_penalty")
    out = client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=12, temperature=0, extra_body=extra, **settings
    )
    assert _token_ids(out.choices[0]) == expected
    assert expected != plain
    if bias:
        assert expected[0] != plain[0]  # a bias of -100 on the greedy first token makes another first token
