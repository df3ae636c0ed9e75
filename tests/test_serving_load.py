"""Many clients at once: 8 threads, each several chat / streamed chat / completion requests, against the shared
server (at most 4 running sequences, the rest queued) get exactly the answers they get alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_helpers import API_KEY

from conftest import CAPITALS

openai = pytest.importorskip("openai")

CLIENTS = 8


def jobs(client_index: int) -> list[tuple[str, dict]]:
    """Three different requests per client (prompts and lengths vary by client)."""
    country, capital = CAPITALS[client_index]
    return [
        (
            "chat",
            dict(
                messages=[{"role": "user", "content": f"What is the capital of {country}?"}],
                max_tokens=6 + 2 * client_index,
            ),
        ),
        (
            "chat_stream",
            dict(
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{capital} is in"}],
                max_tokens=10 + client_index,
            ),
        ),
        ("completion", dict(prompt=f"{country} {capital}. " * (1 + client_index % 3), max_tokens=5 + 3 * client_index)),
    ]


def answer(client: openai.OpenAI, kind: str, kwargs: dict) -> tuple[list[int], str, str]:
    """(token ids, text, finish_reason) of one greedy request."""
    extra = {"extra_body": {"return_token_ids": True}, "temperature": 0}
    if kind == "chat":
        out = client.chat.completions.create(model="chat", **kwargs, **extra).choices[0]
        return out.model_extra["token_ids"], out.message.content, out.finish_reason
    if kind == "completion":
        out = client.completions.create(model="chat", **kwargs, **extra).choices[0]
        return out.model_extra["token_ids"], out.text, out.finish_reason
    ids, text, finish = [], "", None
    for chunk in client.chat.completions.create(model="chat", stream=True, **kwargs, **extra):
        choice = chunk.choices[0]
        ids += (choice.model_extra or {}).get("token_ids") or []
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
    return ids, text, finish


def test_eight_clients_at_once_get_the_answers_they_get_alone(serving_server):
    client = openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    alone = {(i, k): answer(client, *job) for i in range(CLIENTS) for k, job in enumerate(jobs(i))}
    running_seen: list[float] = []
    done = threading.Event()

    def watch() -> None:  # the running set, as /metrics shows it during the run
        while not done.is_set():
            running_seen.append(serving_server.metrics()["paddle_qwen2_running_sequences"])
            time.sleep(0.005)

    def client_run(i: int) -> dict:
        own = openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
        return {(i, k): answer(own, *job) for k, job in enumerate(jobs(i))}

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            together = {key: value for part in pool.map(client_run, range(CLIENTS)) for key, value in part.items()}
    finally:
        done.set()
        watcher.join()
    assert together == alone
    assert all(
        finish == "length" and len(ids) == jobs(i)[k][1]["max_tokens"] for (i, k), (ids, _, finish) in alone.items()
    )
    assert max(running_seen) <= 4  # --max-batch-size
    assert max(running_seen) >= 2  # they did run together
    assert serving_server.wait_metric("paddle_qwen2_running_sequences", 0) == 0
    assert serving_server.metrics()["paddle_qwen2_queued_sequences"] == 0


def test_concurrent_embedding_requests_get_their_own_rows(serving_server):
    """(The SDK asks for base64 by default and decodes it.)"""
    client = openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    inputs = [[f"{country} {capital}", country] for country, capital in CAPITALS[:CLIENTS]]

    def embed(texts):
        return [d.embedding for d in client.embeddings.create(model="embed", input=texts).data]

    alone = [embed(texts) for texts in inputs]
    with ThreadPoolExecutor(CLIENTS) as pool:
        together = list(pool.map(embed, inputs))
    for a, b in zip(alone, together):
        assert max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)) <= 1e-5
