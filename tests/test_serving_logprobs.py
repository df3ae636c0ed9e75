"""`logprobs` / `top_logprobs` on chat, `logprobs` and `echo` on completions, through the official `openai` client
against `paddle-qwen2 serve`: the logprobs are transformers' log-softmax of the raw logits at each step (<= 1e-4),
the greedy token is the top one, and streamed logprobs are the whole response's."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import API_KEY

openai = pytest.importorskip("openai")
torch = pytest.importorskip("torch")

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
PROMPT = "The capital of France is"
TOL = 1e-4


@pytest.fixture(scope="module")
def client(serving_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def _reference(hf, prompt_ids: list[int], generated: list[int]) -> np.ndarray:
    """transformers' log-softmax [len(generated), vocab] (float64) of the logits that chose each generated id."""
    with torch.no_grad():
        logits = hf.model(torch.tensor([prompt_ids + generated])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1 : -1].numpy()


def _token(hf, token_id: int) -> str:
    return hf.tokenizer.decode([token_id], skip_special_tokens=False)


def _check_top(hf, expected_row: np.ndarray, top: list[tuple[str, float]], k: int) -> None:
    """`top` is the k most likely tokens (as strings) with transformers' logprobs."""
    order = np.argsort(-expected_row, kind="stable")[:k]
    assert len(top) == k
    np.testing.assert_allclose([v for _, v in top], expected_row[order], atol=TOL)
    for (text, _), token_id in zip(top, order):
        # equal logprobs may come in either order; the strings match where the logprobs are distinct
        if np.sum(np.abs(expected_row - expected_row[token_id]) < TOL) == 1:
            assert text == _token(hf, int(token_id))


def test_chat_logprobs_are_transformers_log_softmax(client, hf_chat_reference):
    hf = hf_chat_reference
    out = client.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        extra_body={"return_token_ids": True},
    )
    choice = out.choices[0]
    generated = choice.model_extra["token_ids"]
    content = choice.logprobs.content
    assert len(content) == len(generated) > 0
    expected = _reference(hf, hf.chat_ids(MESSAGES), generated)
    for step, entry in enumerate(content):
        token_id = generated[step]
        assert entry.token == _token(hf, token_id)
        assert entry.bytes == list(entry.token.encode("utf-8")) or "\ufffd" in entry.token
        assert abs(entry.logprob - expected[step, token_id]) <= TOL
        assert int(np.argmax(expected[step])) == token_id  # greedy: the chosen token is the top one
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        _check_top(hf, expected[step], [(t.token, t.logprob) for t in entry.top_logprobs], 5)
        assert all(t.bytes == list(t.token.encode("utf-8")) or "\ufffd" in t.token for t in entry.top_logprobs)
    assert "".join(e.token for e in content).startswith(choice.message.content)


def test_chat_streamed_logprobs_equal_the_whole_response(client):
    kwargs = dict(model="chat", messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    streamed = []
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed += choice.logprobs.content
    assert [e.token for e in streamed] == [e.token for e in whole]
    np.testing.assert_allclose([e.logprob for e in streamed], [e.logprob for e in whole], atol=1e-5)
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in whole]


def test_chat_without_logprobs_has_none_and_top_logprobs_zero_lists_none(client):
    plain = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None
    zero = client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=0
    )
    assert zero.choices[0].message.content == plain.choices[0].message.content  # the answer does not change
    assert all(e.top_logprobs == [] for e in zero.choices[0].logprobs.content)


def test_completion_logprobs_are_transformers_log_softmax(client, hf_chat_reference):
    hf = hf_chat_reference
    out = client.completions.create(
        model="chat", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=3, extra_body={"return_token_ids": True}
    )
    choice = out.choices[0]
    generated = choice.model_extra["token_ids"]
    logprobs = choice.logprobs
    assert logprobs.tokens == [_token(hf, t) for t in generated]
    expected = _reference(hf, hf.text_ids(PROMPT), generated)
    for step, token_id in enumerate(generated):
        assert abs(logprobs.token_logprobs[step] - expected[step, token_id]) <= TOL
        assert int(np.argmax(expected[step])) == token_id
        top = sorted(logprobs.top_logprobs[step].items(), key=lambda kv: -kv[1])
        assert top[0][0] == logprobs.tokens[step]
        _check_top(hf, expected[step], top, min(3, len(top)))
        assert len(top) <= 3
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(generated))]


def test_completion_streamed_logprobs_equal_the_whole_response(client):
    kwargs = dict(model="chat", prompt=PROMPT, max_tokens=10, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0].logprobs
    tokens, values, tops, offsets = [], [], [], []
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                values += choice.logprobs.token_logprobs
                tops += choice.logprobs.top_logprobs
                offsets += choice.logprobs.text_offset
    assert tokens == whole.tokens and offsets == whole.text_offset
    np.testing.assert_allclose(values, whole.token_logprobs, atol=1e-5)
    assert [sorted(t) for t in tops] == [sorted(t) for t in whole.top_logprobs]


def test_completion_echo_prepends_each_prompt(client):
    prompts = [PROMPT, "1 2 3 4"]
    plain = client.completions.create(model="chat", prompt=prompts, max_tokens=6, temperature=0)
    echoed = client.completions.create(model="chat", prompt=prompts, max_tokens=6, temperature=0, echo=True)
    assert [c.text for c in echoed.choices] == [p + c.text for p, c in zip(prompts, plain.choices)]
    assert echoed.usage.model_dump() == plain.usage.model_dump()
    pieces: dict[int, str] = {}
    for chunk in client.completions.create(
        model="chat", prompt=prompts, max_tokens=6, temperature=0, echo=True, stream=True
    ):
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + choice.text
    assert [pieces[i] for i in range(2)] == [c.text for c in echoed.choices]


def _full_reference(hf, ids: list[int]) -> np.ndarray:
    """transformers' log-softmax [len(ids), vocab] (float64) at every position of `ids`."""
    with torch.no_grad():
        return torch.log_softmax(hf.model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()


def _check_echo_logprobs(hf, logprobs, prompt_ids: list[int], generated: list[int], k: int) -> None:
    """An echoed choice's logprobs: the prompt's tokens (first null) then the generated ones, all transformers'
    log-softmax of the logits that predict them (<= 1e-4), with the k most likely tokens."""
    ids = prompt_ids + generated
    expected = _full_reference(hf, ids)
    assert logprobs.tokens == [_token(hf, t) for t in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position in range(1, len(ids)):
        row = expected[position - 1]
        assert abs(logprobs.token_logprobs[position] - row[ids[position]]) <= TOL, position
        top = sorted(logprobs.top_logprobs[position].items(), key=lambda kv: -kv[1])
        _check_top(hf, row, top, min(k, len(top)))
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(ids))]


def test_completion_echo_logprobs_score_the_prompt_as_transformers(client, hf_chat_reference):
    """What lm-eval's local-completions asks for a loglikelihood: echo, logprobs, one token."""
    hf = hf_chat_reference
    prompts = [PROMPT, "1 2 3 4 5 6 7 8 9 10 11 12 and so the count goes on"]
    kwargs = dict(model="chat", prompt=prompts, max_tokens=2, temperature=0, logprobs=3, echo=True)
    out = client.completions.create(**kwargs, extra_body={"return_token_ids": True})
    for prompt, choice in zip(prompts, out.choices):
        assert choice.text.startswith(prompt)
        _check_echo_logprobs(hf, choice.logprobs, hf.text_ids(prompt), choice.model_extra["token_ids"], 3)
    streamed: dict[int, dict[str, list]] = {}
    for chunk in client.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                entry = streamed.setdefault(choice.index, {"tokens": [], "values": [], "offsets": []})
                entry["tokens"] += choice.logprobs.tokens
                entry["values"] += choice.logprobs.token_logprobs
                entry["offsets"] += choice.logprobs.text_offset
    for index, choice in enumerate(out.choices):
        assert streamed[index]["tokens"] == choice.logprobs.tokens
        assert streamed[index]["offsets"] == choice.logprobs.text_offset
        assert streamed[index]["values"][0] is None
        np.testing.assert_allclose(streamed[index]["values"][1:], choice.logprobs.token_logprobs[1:], atol=1e-5)


def test_echo_logprobs_zero_gives_the_tokens_own_logprobs_only(client, hf_chat_reference):
    out = client.completions.create(model="chat", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0, echo=True)
    logprobs = out.choices[0].logprobs
    assert len(logprobs.tokens) == len(hf_chat_reference.text_ids(PROMPT)) + 1
    assert logprobs.top_logprobs[0] is None and all(top == {} for top in logprobs.top_logprobs[1:])


def test_token_strings_give_raw_bytes_of_partial_utf8_pieces(chat_checkpoint):
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    from conftest import SERVE_CHAT_VARIANT
    from paddle_qwen2.inference.tokenization import ChatTokenizer
    from paddle_qwen2.serving.logprobs import TokenStrings

    tokenizer = ChatTokenizer.from_folder(chat_checkpoint(SERVE_CHAT_VARIANT))
    strings = TokenStrings(tokenizer)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    partial = 0
    for token_id in range(tokenizer.backend.get_vocab_size()):
        text, raw = strings.get(token_id)
        assert text == tokenizer.decode([token_id], skip_special_tokens=False)
        if "\ufffd" in text:  # not valid UTF-8 alone: the piece's own bytes
            partial += 1
            assert raw == [byte_of[c] for c in tokenizer.backend.id_to_token(token_id)]
        else:
            assert raw == list(text.encode("utf-8"))
    assert partial > 0
