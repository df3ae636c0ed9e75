"""The server survives its engine process dying: SIGKILL the engine mid-stream and the stream ends with an error
object, a plain request in flight gets 503, requests during the restart get 503, /health goes 503 ("restarting")
then 200, /metrics counts the restart, and the next greedy answer equals the one before the kill. Killed again each
time it comes back, more than --max-engine-restarts times, the server exits 1 by itself.

Each test starts its own server (it kills that server's engine), on the dygraph engine slowed to `STEP_DELAY`
seconds per decode step so that a stream is still running when the engine dies."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from serving_helpers import API_KEY, ServerProcess, dygraph_server_args

from conftest import SERVE_CHAT_VARIANT

pytestmark = pytest.mark.slow

STEP_DELAY = 0.03
PROMPT = "The capital of France is"
WAIT = 120.0  # seconds: bound of every wait on a restart or an exit


def server_args(chat_checkpoint, max_restarts: int) -> list[str]:
    model = str(chat_checkpoint(SERVE_CHAT_VARIANT))
    return dygraph_server_args(
        model,
        STEP_DELAY,
        "--max-batch-size",
        "2",
        "--max-model-len",
        "96",
        "--max-engine-restarts",
        str(max_restarts),
        "--api-key",
        API_KEY,
    )


def engine_pid(server_pid: int, other_than: int | None = None) -> int | None:
    """The pid of the server's engine process (the child that multiprocessing spawned; the other child is its
    resource tracker), None while there is none (or only `other_than`)."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and int(pid) != other_than:
                return int(pid)
    return None


def wait_for(condition, timeout: float = WAIT, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def greedy(client: openai.OpenAI) -> str:
    answer = client.completions.create(model="chat", prompt=PROMPT, max_tokens=8, temperature=0)
    return answer.choices[0].text


def test_a_killed_engine_fails_its_requests_and_restarts(chat_checkpoint, tmp_path):
    server = ServerProcess.start(server_args(chat_checkpoint, 3), tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
        before = greedy(client)
        first_engine = engine_pid(server.proc.pid)
        assert first_engine is not None

        plain: dict = {}  # a non-streamed request in flight when the engine dies

        def post_plain() -> None:
            body = {"model": "chat", "prompt": PROMPT, "max_tokens": 60, "temperature": 0, "ignore_eos": True}
            plain["response"] = server.post("/v1/completions", json=body)

        stream = client.completions.create(
            model="chat", prompt=PROMPT, max_tokens=60, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        pieces = [next(iter(stream)).choices[0].text]
        thread = threading.Thread(target=post_plain, daemon=True)
        thread.start()
        wait_for(lambda: server.metrics().get("paddle_qwen2_running_sequences") == 2, 30, "two running sequences")
        os.kill(first_engine, signal.SIGKILL)
        with pytest.raises(openai.APIError) as raised:
            for chunk in stream:
                pieces.append(chunk.choices[0].text)
        thread.join(30)

        health = server.get("/health")
        refused = server.post("/v1/completions", json={"model": "chat", "prompt": PROMPT, "max_tokens": 4})
        wait_for(lambda: server.get("/health").status_code == 200, what="the engine's restart")
        after = greedy(client)
        metrics = server.metrics()
        second_engine = engine_pid(server.proc.pid)
    finally:
        code = server.stop()
    log = server.log()
    assert "engine process exited unexpectedly" in raised.value.message, raised.value.message
    assert len(pieces) < 60  # it ended early
    assert plain["response"].status_code == 503, plain["response"].text
    assert "engine process" in plain["response"].json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "restarting", health.text
    assert "engine process" in health.json()["error"]["message"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable", refused.text
    assert after == before
    assert metrics["paddle_qwen2_engine_restarts_total"] == 1
    assert metrics["paddle_qwen2_engine_up"] == 1
    assert second_engine not in (None, first_engine)
    assert "restarting it in" in log and "the engine process is back" in log, log[-3000:]
    assert code == 0 and "Traceback" not in log, log[-3000:]


def test_an_engine_that_keeps_dying_makes_the_server_exit_1(chat_checkpoint, tmp_path):
    server = ServerProcess.start(server_args(chat_checkpoint, 2), tmp_path)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 3 * WAIT
        while server.proc.poll() is None and time.monotonic() < deadline:
            pid = engine_pid(server.proc.pid, other_than=killed[-1] if killed else None)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)
        code = server.proc.wait(30)
    finally:
        server.stop()
    log = server.log()
    assert code == 1, log[-3000:]
    assert 3 <= len(killed), killed  # the first engine and the two restarts (a kill while loading counts too)
    assert "giving up; exiting with code 1" in log, log[-3000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)
