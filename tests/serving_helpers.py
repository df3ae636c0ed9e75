"""`paddle-qwen2 serve` in a child process for the serving tests, and what they read back from it.

    server = ServerProcess.start(["--model", str(folder), "--api-key", "sk-test"], log_dir=tmp_path)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    parse_metrics(server.get("/metrics").text)["paddle_qwen2_running_sequences"]
    server.stop()    # SIGTERM, returns the exit code

The server listens on a free loopback port (`--port 0`; the port is read from its first stdout line). Its output
goes to a log file (never an unread pipe), shown in the message of a failed start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "sk-serving-test"
_LISTENING = re.compile(r"paddle-qwen2 serve: .* on (http://[\w.\[\]:]+:\d+)")


class ServerProcess:
    """A running `python -m paddle_qwen2 serve` child."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.url = ""

    @classmethod
    def start(cls, args: list[str], log_dir: Path, timeout: float = 120.0, env: dict | None = None) -> ServerProcess:
        """Start the server with `args` (plus `--port 0`) and wait until `/health` answers 200."""
        log_path = Path(log_dir) / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
        child_env = {**os.environ, "PADDLE_QWEN2_CACHE": str(Path(log_dir) / "export-cache"), **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "paddle_qwen2", "serve", "--host", "127.0.0.1", "--port", "0", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
        server = cls(proc, log_path)
        server._wait_healthy(timeout)
        return server

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if not self.url:
                found = _LISTENING.search(self.log())
                self.url = found.group(1) if found else ""
            if self.url:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError(f"the server did not become healthy within {timeout:.0f}s:\n{self.log()[-4000:]}")

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, key: str | None = API_KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, headers={**headers, **kwargs.pop("headers", {})}, timeout=60, **kwargs)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics").text)

    def wait_metric(self, name: str, value: float, timeout: float = 10.0) -> float:
        """Poll /metrics until `name` equals `value`; returns the last value read."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.metrics().get(name, 0.0)
            if current == value or time.monotonic() > deadline:
                return current
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def dygraph_server_args(model: str, step_delay: float, *extra: str) -> list[str]:
    """`serve` arguments for a dygraph engine that serves `model` as "chat", each step slowed by `step_delay`
    seconds (so a test can act while a request runs), quiet logs; `extra` options follow."""
    return [
        "--model",
        model,
        "--served-model-name",
        "chat",
        "--engine",
        "dygraph",
        "--debug-step-delay",
        str(step_delay),
        "--log-level",
        "warning",
        *extra,
    ]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{label="v",...}': value} (labels as written), comments skipped."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent-events body."""
    return [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]


class HFReference:
    """transformers' own answers on a chat checkpoint: its tokenizer, chat template and greedy `generate`."""

    MIN_RUN = 40

    def __init__(self, folder: Path, eos: list[int]) -> None:
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        self.eos = list(eos)
        self.max_model_len = self.model.config.max_position_embeddings
        self._answers: dict[tuple, tuple[list[int], int]] = {}

    def chat_ids(self, messages: list[dict]) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompt_ids: list[int], max_new_tokens: int, extra_eos: tuple[int, ...] = ()) -> list[int]:
        """Greedy new token ids (a stop token included, as `generate` returns it). One run of at least
        `MIN_RUN` tokens per prompt is remembered: a shorter greedy answer is its prefix."""
        import torch

        key = (tuple(prompt_ids), tuple(extra_eos))
        ids, n = self._answers.get(key, ([], 0))
        if n < max_new_tokens and not (ids and ids[-1] in self.eos + list(extra_eos)):
            n = max(max_new_tokens, self.MIN_RUN)
            prompt = torch.tensor([prompt_ids])
            with torch.no_grad():
                out = self.model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=False,
                    max_new_tokens=n,
                    eos_token_id=self.eos + list(extra_eos),
                    pad_token_id=self.eos[0],
                )
            ids = out[0, len(prompt_ids) :].tolist()
            self._answers[key] = (ids, n)
        return ids[:max_new_tokens]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
