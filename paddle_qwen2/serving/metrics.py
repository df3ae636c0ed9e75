"""Prometheus metrics of the server on `prometheus_client`, one `CollectorRegistry` per server.

    metrics = ServerMetrics()
    metrics.requests.labels(endpoint="/v1/chat/completions", status="200").inc()
    metrics.time_to_first_token.observe(0.12)
    metrics.value("paddle_qwen2_requests_total", endpoint="/v1/chat/completions", status="200")   # 1.0
    text = metrics.render()      # GET /metrics, text format 0.0.4

The metrics are recorded in the HTTP process (the scheduler thread, or `EngineProcess`'s reader thread, and the
event loop; `prometheus_client`'s metrics are thread-safe). Names carry the `paddle_qwen2_` prefix; counters end in
`_total`, durations are in seconds. No `_created` samples are exposed.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["ServerMetrics", "CONTENT_TYPE", "TTFT_BUCKETS", "TPOT_BUCKETS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what `generate_latest` writes
PREFIX = "paddle_qwen2_"
# seconds: 5 ms .. 60 s for the time to first token, 1 ms .. 5 s between tokens
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    """The server's metrics in a registry of their own: requests by endpoint and status, tokens in and out, the
    scheduler's running and queued sequences, finished sequences by reason (stop, length, cancelled, error), engine
    restarts and whether the engine is up, the prefix cache's lookups, hits, tokens saved and bytes, time to first
    token and time per output token.

    Creating one turns off `prometheus_client`'s `_created` samples for the process
    (`prometheus_client.disable_created_metrics()`).
    """

    def __init__(self) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "HTTP requests by endpoint and status code",
            ("endpoint", "status"),
            registry=registry,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens_total", "prompt tokens of generation requests", registry=registry
        )
        self.generation_tokens = Counter(PREFIX + "generation_tokens_total", "tokens generated", registry=registry)
        self.embedding_tokens = Counter(
            PREFIX + "embedding_tokens_total", "input tokens of embeddings", registry=registry
        )
        self.running = Gauge(PREFIX + "running_sequences", "sequences in the decode batch", registry=registry)
        self.queued = Gauge(PREFIX + "queued_sequences", "sequences waiting for a slot in the batch", registry=registry)
        self.finished = Counter(
            PREFIX + "sequences_finished_total",
            "sequences ended, by reason (stop, length, cancelled, error)",
            ("reason",),
            registry=registry,
        )
        self.engine_restarts = Counter(
            PREFIX + "engine_restarts_total",
            "engine processes started again after the engine process died",
            registry=registry,
        )
        self.engine_up = Gauge(
            PREFIX + "engine_up", "1 while the engine serves, 0 while it is down or restarting", registry=registry
        )
        self.prefix_cache_queries = Counter(
            PREFIX + "prefix_cache_queries_total", "prompts looked up in the prefix cache", registry=registry
        )
        self.prefix_cache_hits = Counter(
            PREFIX + "prefix_cache_hits_total", "prompts that found a cached prefix", registry=registry
        )
        self.prefix_cache_hit_tokens = Counter(
            PREFIX + "prefix_cache_hit_tokens_total",
            "prompt tokens taken from the prefix cache instead of prefilled",
            registry=registry,
        )
        self.prefix_cache_bytes = Gauge(
            PREFIX + "prefix_cache_bytes", "bytes of KV cache blocks held by the prefix cache", registry=registry
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "request arrival to its first token",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            PREFIX + "time_per_output_token_seconds",
            "time between consecutive tokens",
            buckets=TPOT_BUCKETS,
            registry=registry,
        )

    def render(self) -> str:
        """The whole exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry).decode("utf-8")

    def value(self, sample: str, **labels: str) -> float:
        """The current value of one sample, e.g. `value("paddle_qwen2_sequences_finished_total", reason="stop")`
        or `value("paddle_qwen2_time_to_first_token_seconds_count")`; 0.0 for a label set not seen yet."""
        found = self.registry.get_sample_value(sample, labels)
        return 0.0 if found is None else found
