"""The server's pieces without a server: the Prometheus exposition text, request parsing (which field an error
names), embedding truncation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from paddle_qwen2.serving.metrics import TPOT_BUCKETS, TTFT_BUCKETS, ServerMetrics
from paddle_qwen2.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request
from paddle_qwen2.serving.serving_embedding import _truncate


def test_metrics_exposition_format():
    metrics = ServerMetrics()
    metrics.requests.labels(endpoint='/a"b\\c', status="200").inc()
    metrics.requests.labels(endpoint="/v1/models", status="401").inc(2)
    for value in (0.003, 0.005, 0.5, 9.0):
        metrics.time_per_output_token.observe(value)
    lines = metrics.render().splitlines()
    assert lines[:4] == [
        "# HELP paddle_qwen2_requests_total HTTP requests by endpoint and status code",
        "# TYPE paddle_qwen2_requests_total counter",
        'paddle_qwen2_requests_total{endpoint="/a\\"b\\\\c",status="200"} 1.0',
        'paddle_qwen2_requests_total{endpoint="/v1/models",status="401"} 2.0',
    ]
    tpot = [line for line in lines if line.startswith("paddle_qwen2_time_per_output_token_seconds")]
    assert tpot[:3] == [
        'paddle_qwen2_time_per_output_token_seconds_bucket{le="0.001"} 0.0',
        'paddle_qwen2_time_per_output_token_seconds_bucket{le="0.0025"} 0.0',
        'paddle_qwen2_time_per_output_token_seconds_bucket{le="0.005"} 2.0',
    ]
    assert tpot[-3:] == [
        'paddle_qwen2_time_per_output_token_seconds_bucket{le="+Inf"} 4.0',
        "paddle_qwen2_time_per_output_token_seconds_count 4.0",
        "paddle_qwen2_time_per_output_token_seconds_sum 9.508",
    ]
    assert "# TYPE paddle_qwen2_time_per_output_token_seconds histogram" in lines
    assert not [line for line in lines if "_created" in line]


def test_metrics_names_types_and_buckets():
    types = {
        "paddle_qwen2_requests_total": "counter",
        "paddle_qwen2_prompt_tokens_total": "counter",
        "paddle_qwen2_generation_tokens_total": "counter",
        "paddle_qwen2_embedding_tokens_total": "counter",
        "paddle_qwen2_running_sequences": "gauge",
        "paddle_qwen2_queued_sequences": "gauge",
        "paddle_qwen2_sequences_finished_total": "counter",
        "paddle_qwen2_engine_restarts_total": "counter",
        "paddle_qwen2_engine_up": "gauge",
        "paddle_qwen2_prefix_cache_queries_total": "counter",
        "paddle_qwen2_prefix_cache_hits_total": "counter",
        "paddle_qwen2_prefix_cache_hit_tokens_total": "counter",
        "paddle_qwen2_prefix_cache_bytes": "gauge",
        "paddle_qwen2_time_to_first_token_seconds": "histogram",
        "paddle_qwen2_time_per_output_token_seconds": "histogram",
    }
    text = ServerMetrics().render()
    assert [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")] == [
        [name, kind] for name, kind in types.items()
    ]
    for name, buckets in (("time_to_first_token", TTFT_BUCKETS), ("time_per_output_token", TPOT_BUCKETS)):
        found = re.findall(rf'paddle_qwen2_{name}_seconds_bucket{{le="([^"]+)"}}', text)
        assert found == [repr(b) for b in buckets] + ["+Inf"]


def test_metrics_labels_and_values():
    metrics = ServerMetrics()
    metrics.finished.labels(reason="stop").inc()
    metrics.running.set(3)
    assert metrics.value("paddle_qwen2_sequences_finished_total", reason="stop") == 1.0
    assert metrics.value("paddle_qwen2_sequences_finished_total", reason="length") == 0.0
    assert metrics.value("paddle_qwen2_running_sequences") == 3.0
    with pytest.raises(ValueError, match="Incorrect label names"):
        metrics.requests.labels(endpoint="/health")
    with pytest.raises(ValueError, match="non-negative"):
        metrics.generation_tokens.inc(-1)


def test_each_server_has_its_own_registry():
    first, second = ServerMetrics(), ServerMetrics()
    first.generation_tokens.inc(5)
    assert first.value("paddle_qwen2_generation_tokens_total") == 5.0
    assert second.value("paddle_qwen2_generation_tokens_total") == 0.0


def test_server_metrics_start_at_zero():
    lines = ServerMetrics().render().splitlines()
    for line in (
        "paddle_qwen2_running_sequences 0.0",
        "paddle_qwen2_queued_sequences 0.0",
        "paddle_qwen2_generation_tokens_total 0.0",
        "paddle_qwen2_time_to_first_token_seconds_count 0.0",
        'paddle_qwen2_time_per_output_token_seconds_bucket{le="+Inf"} 0.0',
    ):
        assert line in lines


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "model, body, param, message",
    [
        (ChatCompletionRequest, {**CHAT, "stop": [1]}, "stop", "stop: expected a string or a list of strings"),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
         "messages[0].content", "messages[0].content: expected a string or a list of text parts"),
        (ChatCompletionRequest, {**CHAT, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
         "boolean"),
        (ChatCompletionRequest, {**CHAT, "seed": -1}, "seed", "greater than or equal to 0"),
        (CompletionRequest, {"model": "m", "prompt": ["a", 3]}, "prompt", "prompt: expected a string or a list of "
         "strings"),
        (CompletionRequest, {"model": "m", "prompt": "a", "best_of": 2}, "best_of", "only best_of=1"),
        (CompletionRequest, {"model": 5, "prompt": "a"}, "model", "valid string"),
    ],
)  # fmt: skip
def test_a_bad_field_is_named(model, body, param, message):
    with pytest.raises(APIError) as error:
        parse_request(json.dumps(body).encode(), model)
    assert (error.value.status, error.value.param) == (400, param)
    assert message in error.value.message


def test_request_fields_map_to_sampling_params():
    body = parse_request(
        b'{"model": "m", "prompt": "a", "temperature": 0, "stop": "x", "top_k": -1}', CompletionRequest
    )
    assert body.prompt == ["a"] and body.stop == ["x"]
    assert body.sampling_overrides() == {"temperature": 0.0, "top_k": 0, "stop": ["x"]}
    chat = parse_request(
        b'{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", '
        b'"text": "a"}, {"type": "text", "text": "b"}]}]}',
        ChatCompletionRequest,
    )
    assert chat.messages[0].template_dict() == {"role": "system", "content": "ab"}


def test_truncated_embeddings_are_normalised_again():
    vectors = np.random.RandomState(0).randn(3, 8).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = _truncate(vectors, 3, normalizes=True)
    assert out.shape == (3, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert np.allclose(out, vectors[:, :3] / np.linalg.norm(vectors[:, :3], axis=1, keepdims=True))
    assert np.array_equal(_truncate(vectors, 3, normalizes=False), vectors[:, :3])
    assert _truncate(vectors, None, normalizes=True) is vectors
