"""Prometheus metrics of the server, in the text exposition format (version 0.0.4), written here: no dependency.

    metrics = ServerMetrics()
    metrics.requests.inc(endpoint="/v1/chat/completions", status="200")
    metrics.time_to_first_token.observe(0.12)
    text = metrics.render()      # GET /metrics

Every metric is thread-safe (the scheduler thread and the event loop both update them). Names carry the
`paddle_qwen2_` prefix; counters end in `_total`, durations are in seconds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "ServerMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "paddle_qwen2_"
# seconds: 5 ms .. 60 s for the time to first token, 1 ms .. 5 s between tokens
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} given, expected {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, key)} {_number(v)}" for key, v in items]


class Gauge(Counter):
    """A value that goes up and down (set by the scheduler each step)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    """Observations counted into cumulative `le` buckets, with their sum and count (no labels)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(float(b) for b in buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = next(i for i, bound in enumerate(self.buckets) if value <= bound)
        with self._lock:
            self._counts[index] += 1
            self._sum += float(value)

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def lines(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip(self.buckets, counts):
            running += n
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        return out + [f"{self.name}_sum {_number(total)}", f"{self.name}_count {running}"]


class Registry:
    """Metrics in registration order; `render()` is the whole exposition text."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self.metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.header() + metric.lines()
        return "\n".join(lines) + "\n"


class ServerMetrics(Registry):
    """The server's metrics: requests by endpoint and status, tokens in and out, the scheduler's running and
    queued sequences, finished sequences by reason, time to first token and time per output token."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.add(
            Counter(PREFIX + "requests_total", "HTTP requests by endpoint and status code", ("endpoint", "status"))
        )
        self.prompt_tokens = self.add(Counter(PREFIX + "prompt_tokens_total", "prompt tokens of generation requests"))
        self.generation_tokens = self.add(Counter(PREFIX + "generation_tokens_total", "tokens generated"))
        self.embedding_tokens = self.add(Counter(PREFIX + "embedding_tokens_total", "input tokens of embeddings"))
        self.running = self.add(Gauge(PREFIX + "running_sequences", "sequences in the decode batch"))
        self.queued = self.add(Gauge(PREFIX + "queued_sequences", "sequences waiting for a slot in the batch"))
        reasons = "sequences ended, by reason (stop, length, cancelled, error)"
        self.finished = self.add(Counter(PREFIX + "sequences_finished_total", reasons, ("reason",)))
        self.time_to_first_token = self.add(
            Histogram(PREFIX + "time_to_first_token_seconds", "request arrival to its first token", TTFT_BUCKETS)
        )
        self.time_per_output_token = self.add(
            Histogram(PREFIX + "time_per_output_token_seconds", "time between consecutive tokens", TPOT_BUCKETS)
        )
