"""The server's pieces without a server: the Prometheus exposition text, request parsing (which field an error
names), embedding truncation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paddle_qwen2.serving.app import _truncate
from paddle_qwen2.serving.metrics import Counter, Histogram, Registry, ServerMetrics
from paddle_qwen2.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request


def test_metrics_exposition_format():
    registry = Registry()
    requests = registry.add(Counter("x_requests_total", "requests", ("endpoint", "status")))
    latency = registry.add(Histogram("x_latency_seconds", "latency", (0.1, 1.0)))
    requests.inc(endpoint='/a"b\\c', status="200")
    requests.inc(2, endpoint="/v1/models", status="401")
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    assert registry.render().splitlines() == [
        "# HELP x_requests_total requests",
        "# TYPE x_requests_total counter",
        'x_requests_total{endpoint="/a\\"b\\\\c",status="200"} 1.0',
        'x_requests_total{endpoint="/v1/models",status="401"} 2.0',
        "# HELP x_latency_seconds latency",
        "# TYPE x_latency_seconds histogram",
        'x_latency_seconds_bucket{le="0.1"} 2',
        'x_latency_seconds_bucket{le="1.0"} 3',
        'x_latency_seconds_bucket{le="+Inf"} 4',
        "x_latency_seconds_sum 3.65",
        "x_latency_seconds_count 4",
    ]


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda m: m.requests.inc(endpoint="/health"), "labels .'endpoint'. given, expected .'endpoint', 'status'."),
        (lambda m: m.generation_tokens.inc(-1), "a counter cannot decrease"),
        (lambda m: m.add(Counter("paddle_qwen2_generation_tokens_total", "again")), "registered twice"),
    ],
)
def test_metrics_misuse_is_an_error(action, message):
    with pytest.raises(ValueError, match=message):
        action(ServerMetrics())


def test_server_metrics_start_at_zero():
    text = ServerMetrics().render()
    for line in ("paddle_qwen2_running_sequences 0.0", "paddle_qwen2_queued_sequences 0.0",
                 "paddle_qwen2_generation_tokens_total 0.0", "paddle_qwen2_time_to_first_token_seconds_count 0",
                 'paddle_qwen2_time_per_output_token_seconds_bucket{le="+Inf"} 0'):  # fmt: skip
        assert line in text.splitlines()


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
    chat = parse_request(b'{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", '
                         b'"text": "a"}, {"type": "text", "text": "b"}]}]}', ChatCompletionRequest)  # fmt: skip
    assert chat.messages[0].template_dict() == {"role": "system", "content": "ab"}


def test_truncated_embeddings_are_normalised_again():
    vectors = np.random.RandomState(0).randn(3, 8).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = _truncate(vectors, 3, normalizes=True)
    assert out.shape == (3, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert np.allclose(out, vectors[:, :3] / np.linalg.norm(vectors[:, :3], axis=1, keepdims=True))
    assert np.array_equal(_truncate(vectors, 3, normalizes=False), vectors[:, :3])
    assert _truncate(vectors, None, normalizes=True) is vectors
