"""The server at its limits, on a slowed-down server (one running sequence, one queued, 30 ms per decode step): a
full queue answers 429, a client that hangs up mid-stream frees its slot at the next step, SIGTERM lets the
running request finish and exits 0, and an engine process that dies fails its requests and /health."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import ServerProcess, dygraph_server_args

from conftest import SERVE_CHAT_VARIANT

STEP_DELAY = 0.03
LONG = {
    "model": "chat",
    "prompt": "The capital of France is",
    "max_tokens": 60,
    "temperature": 0,
    "ignore_eos": True,
    "stream": True,
    "return_token_ids": True,
}


def slow_server_args(chat_checkpoint) -> list[str]:
    model = str(chat_checkpoint(SERVE_CHAT_VARIANT))
    return dygraph_server_args(
        model, STEP_DELAY, "--max-batch-size", "1", "--max-queue-size", "1", "--max-model-len", "96"
    )


@pytest.fixture(scope="module")
def slow_server(chat_checkpoint, tmp_path_factory):
    server = ServerProcess.start(slow_server_args(chat_checkpoint), tmp_path_factory.mktemp("serve-slow"))
    yield server
    server.stop()


class Stream:
    """A streamed completion read on a thread: its chunks as they come."""

    def __init__(self, url: str, body: dict) -> None:
        self.chunks: list[dict] = []
        self.done = False
        self.status: int | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict) -> None:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    self.chunks.append(json.loads(line[6:]))
                    self.first.set()
        self.first.set()

    def join(self) -> Stream:
        self.thread.join(60)
        return self


def test_max_model_len_caps_the_context(slow_server):
    assert slow_server.get("/v1/models").json()["data"][0]["max_model_len"] == 96  # the checkpoint's is 128
    response = slow_server.post("/v1/completions", key=None, json={**LONG, "stream": False, "max_tokens": 92})
    assert response.status_code == 400
    assert "maximum context length is 96 tokens" in response.json()["error"]["message"]


def test_a_full_queue_answers_429_and_the_queue_drains(slow_server):
    running = Stream(slow_server.url, {**LONG, "max_tokens": 20})
    assert running.first.wait(30)
    queued = Stream(slow_server.url, {**LONG, "max_tokens": 3})
    assert slow_server.wait_metric("paddle_qwen2_queued_sequences", 1) == 1
    response = slow_server.post("/v1/completions", key=None, json={**LONG, "stream": False, "max_tokens": 2})
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
    assert "1 sequences running (at most 1) and 1 waiting (at most 1)" in error["message"]
    assert running.join().done and queued.join().done
    assert [c["choices"][0]["finish_reason"] for c in queued.chunks][-1] == "length"
    again = slow_server.post("/v1/completions", key=None, json={**LONG, "stream": False, "max_tokens": 2})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2
    assert slow_server.metrics()['paddle_qwen2_requests_total{endpoint="/v1/completions",status="429"}'] == 1


def test_a_client_that_hangs_up_frees_its_slot(slow_server):
    before = slow_server.metrics()
    with httpx.stream("POST", slow_server.url + "/v1/completions", json=LONG, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(5)]  # a few chunks (and blank separators), then hang up
    assert sum(line.startswith("data: ") for line in received) >= 2
    hung_up = time.monotonic()
    assert slow_server.wait_metric("paddle_qwen2_running_sequences", 0, timeout=5) == 0
    assert time.monotonic() - hung_up < LONG["max_tokens"] * STEP_DELAY / 2  # long before it would have ended
    after = slow_server.metrics()
    cancelled = 'paddle_qwen2_sequences_finished_total{reason="cancelled"}'
    assert after[cancelled] == before.get(cancelled, 0) + 1
    generated = after["paddle_qwen2_generation_tokens_total"] - before["paddle_qwen2_generation_tokens_total"]
    assert generated < LONG["max_tokens"] / 2
    # the server goes on serving, and the slot is free
    response = slow_server.post("/v1/completions", key=None, json={**LONG, "stream": False, "max_tokens": 3})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def test_a_client_that_hangs_up_before_a_plain_answer_frees_its_slot(slow_server):
    before = slow_server.metrics()
    body = {**LONG, "stream": False, "max_tokens": 80}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(slow_server.url + "/v1/completions", json=body, timeout=0.5)
    assert slow_server.wait_metric("paddle_qwen2_running_sequences", 0, timeout=5) == 0
    after = slow_server.metrics()
    generated = after["paddle_qwen2_generation_tokens_total"] - before["paddle_qwen2_generation_tokens_total"]
    assert generated < 80 / 2  # cancelled, not run to the end
    assert after['paddle_qwen2_requests_total{endpoint="/v1/completions",status="499"}'] == 1


@pytest.mark.slow
def test_sigterm_lets_the_running_request_finish_and_exits_0(chat_checkpoint, tmp_path):
    server = ServerProcess.start(slow_server_args(chat_checkpoint), tmp_path)
    try:
        stream = Stream(server.url, {**LONG, "max_tokens": 30})
        assert stream.first.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no longer accepting connections
            httpx.get(server.url + "/health", timeout=2)
        assert server.proc.wait(30) == 0
        stream.join()
    finally:
        server.stop()
    assert stream.status == 200 and stream.done
    assert sum(len(c["choices"][0]["token_ids"]) for c in stream.chunks) == 30  # all of it, after the SIGTERM
    assert [c["choices"][0]["finish_reason"] for c in stream.chunks][-1] == "length"
    assert "Traceback" not in server.log()


def engine_process(server_pid: int) -> int:
    """The pid of the server's engine process (its child running the models; the other one is multiprocessing's
    resource tracker)."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text():
                return int(pid)
    raise AssertionError("the server has no engine process")


@pytest.mark.slow
def test_an_engine_process_that_dies_fails_its_requests_and_health(chat_checkpoint, tmp_path):
    """The engine runs in a child process; when it dies the running stream ends with an error object, new requests
    get 503 with one, /health turns 503, and the HTTP process still answers and exits 0 on SIGTERM."""
    server = ServerProcess.start(slow_server_args(chat_checkpoint), tmp_path)
    try:
        stream = Stream(server.url, LONG)
        assert stream.first.wait(30)
        os.kill(engine_process(server.proc.pid), signal.SIGKILL)
        stream.join()
        health = server.get("/health")
        refused = server.post("/v1/completions", key=None, json={**LONG, "stream": False})
        assert server.stop() == 0
    finally:
        server.stop()
    errors = [c["error"] for c in stream.chunks if "error" in c]
    assert len(errors) == 1 and "engine process exited unexpectedly" in errors[0]["message"], stream.chunks[-2:]
    assert stream.done  # the stream still ends with [DONE]
    assert health.status_code == 503 and "engine process" in health.json()["error"]["message"]
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "unavailable" and "engine process" in refused.json()["error"]["message"]
