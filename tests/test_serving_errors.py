"""Bad requests get OpenAI's error object with the right status (400 / 401 / 404, never FastAPI's 422), and the
server answers the next request normally; bad `serve` command lines are one `error:` line and exit code 1."""

from __future__ import annotations

import socket

import pytest
from serving_helpers import API_KEY

from paddle_qwen2 import cli

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
MESSAGES = [{"role": "user", "content": "Hi"}]
LONG_TEXT = "France Paris. Japan Tokyo. Italy Rome. " * 30  # > 128 tokens


def chat(**fields) -> dict:
    return {"model": "chat", "messages": MESSAGES, **fields}


def embed(value) -> dict:
    return {"model": "embed", "input": value}


# (case, path, body: dict | raw bytes, key, status, param, code, words the message contains)
BAD_REQUESTS = [
    ("malformed JSON", CHAT, b'{"model": "chat", "messages": [', API_KEY, 400, None, "invalid_json", ["JSON"]),
    ("not an object", CHAT, b"[1, 2]", API_KEY, 400, None, "invalid_json", ["object"]),
    ("messages missing", CHAT, {"model": "chat"}, API_KEY, 400, "messages", "invalid_value", ["required"]),
    ("messages a string", CHAT, chat(messages="Hi"), API_KEY, 400, "messages", "invalid_value", ["list"]),
    ("messages empty", CHAT, chat(messages=[]), API_KEY, 400, "messages", "invalid_value", ["at least 1"]),
    ("unknown role", CHAT, chat(messages=[{"role": "robot", "content": "x"}]), API_KEY, 400, "messages[0].role",
     "invalid_value", ["robot"]),
    ("content a number", CHAT, chat(messages=[{"role": "user", "content": 5}]), API_KEY, 400, "messages[0].content",
     "invalid_value", ["string"]),
    ("max_tokens 0", CHAT, chat(max_tokens=0), API_KEY, 400, "max_tokens", "invalid_value", ["greater", "0"]),
    ("max_tokens a float", CHAT, chat(max_tokens=2.5), API_KEY, 400, "max_tokens", "invalid_value", ["integer"]),
    ("max_completion_tokens -1", CHAT, chat(max_completion_tokens=-1), API_KEY, 400, "max_completion_tokens",
     "invalid_value", ["greater"]),
    ("temperature 2.5", CHAT, chat(temperature=2.5), API_KEY, 400, "temperature", "invalid_value", ["2", "2.5"]),
    ("temperature negative", CHAT, chat(temperature=-0.1), API_KEY, 400, "temperature", "invalid_value", ["0"]),
    ("temperature a string", CHAT, chat(temperature="0.5"), API_KEY, 400, "temperature", "invalid_value",
     ["number"]),
    ("top_p 0", CHAT, chat(top_p=0), API_KEY, 400, "top_p", "invalid_value", ["greater than 0"]),
    ("n 0", CHAT, chat(n=0), API_KEY, 400, "n", "invalid_value", ["greater than or equal to 1"]),
    ("n 17", CHAT, chat(n=17), API_KEY, 400, "n", "invalid_value", ["less than or equal to 16"]),
    ("n 17 on completions", "/v1/completions", {"model": "chat", "prompt": "a", "n": 17}, API_KEY, 400, "n",
     "invalid_value", ["16"]),
    ("presence_penalty 2.5", CHAT, chat(presence_penalty=2.5), API_KEY, 400, "presence_penalty", "invalid_value",
     ["2", "2.5"]),
    ("frequency_penalty -3", CHAT, chat(frequency_penalty=-3), API_KEY, 400, "frequency_penalty", "invalid_value",
     ["-2", "-3"]),
    ("logit_bias a list", CHAT, chat(logit_bias=[1]), API_KEY, 400, "logit_bias", "invalid_value", ["dictionary"]),
    ("logit_bias key not an int", CHAT, chat(logit_bias={"abc": 1}), API_KEY, 400, "logit_bias", "invalid_value",
     ["'abc'", "token id"]),
    ("logit_bias key negative", CHAT, chat(logit_bias={"-1": 1}), API_KEY, 400, "logit_bias", "invalid_value",
     ["'-1'", "token id"]),
    ("logit_bias key outside the vocab", CHAT, chat(logit_bias={"4096": 1}), API_KEY, 400, "logit_bias",
     "invalid_value", ["'4096'", "vocabulary", "4095"]),
    ("logit_bias value 150", CHAT, chat(logit_bias={"5": 150}), API_KEY, 400, "logit_bias", "invalid_value",
     ["'5'", "100", "150"]),
    ("logit_bias value a string", "/v1/completions", {"model": "chat", "prompt": "a", "logit_bias": {"5": "x"}},
     API_KEY, 400, "logit_bias", "invalid_value", ["'5'", "number"]),
    ("stop a number", CHAT, chat(stop=3), API_KEY, 400, "stop", "invalid_value", ["string"]),
    ("stop empty", CHAT, chat(stop=[""]), API_KEY, 400, "stop", "invalid_value", ["non-empty"]),
    ("stream a string", CHAT, chat(stream="yes"), API_KEY, 400, "stream", "invalid_value", ["boolean"]),
    ("unknown field", CHAT, chat(functions=[]), API_KEY, 400, "functions", "invalid_value", ["unknown field"]),
    ("top_logprobs 21", CHAT, chat(logprobs=True, top_logprobs=21), API_KEY, 400, "top_logprobs", "invalid_value",
     ["20", "21"]),
    ("top_logprobs negative", CHAT, chat(logprobs=True, top_logprobs=-1), API_KEY, 400, "top_logprobs",
     "invalid_value", ["0", "-1"]),
    ("top_logprobs without logprobs", CHAT, chat(top_logprobs=2), API_KEY, 400, "top_logprobs", "invalid_value",
     ["needs logprobs"]),
    ("top_logprobs with logprobs false", CHAT, chat(logprobs=False, top_logprobs=2), API_KEY, 400, "top_logprobs",
     "invalid_value", ["needs logprobs"]),
    ("chat logprobs an integer", CHAT, chat(logprobs=3), API_KEY, 400, "logprobs", "invalid_value", ["boolean"]),
    ("unknown model", CHAT, chat(model="gpt-4"), API_KEY, 404, "model", "model_not_found", ["gpt-4", "chat"]),
    ("embedding model for chat", CHAT, chat(model="embed"), API_KEY, 404, "model", "model_not_found", ["embed"]),
    ("prompt + max_tokens over the context", CHAT, chat(max_tokens=120), API_KEY, 400, "max_tokens",
     "context_length_exceeded", ["128 tokens", "120 for the completion", "41 in the messages"]),
    ("prompt alone over the context", "/v1/completions", {"model": "chat", "prompt": LONG_TEXT}, API_KEY, 400,
     "prompt", "context_length_exceeded", ["128 tokens", "the prompt has"]),
    ("prompt empty", "/v1/completions", {"model": "chat", "prompt": ""}, API_KEY, 400, "prompt", "invalid_value",
     ["empty"]),
    ("prompt list empty", "/v1/completions", {"model": "chat", "prompt": []}, API_KEY, 400, "prompt",
     "invalid_value", ["at least one"]),
    ("completion logprobs 21", "/v1/completions", {"model": "chat", "prompt": "a", "logprobs": 21}, API_KEY, 400,
     "logprobs", "invalid_value", ["20", "21"]),
    ("completion logprobs a boolean", "/v1/completions", {"model": "chat", "prompt": "a", "logprobs": True}, API_KEY,
     400, "logprobs", "invalid_value", ["integer"]),
    ("input missing", "/v1/embeddings", {"model": "embed"}, API_KEY, 400, "input", "invalid_value", ["required"]),
    ("encoding hex", "/v1/embeddings", {"model": "embed", "input": "a", "encoding_format": "hex"}, API_KEY, 400,
     "encoding_format", "invalid_value", ["base64"]),
    ("dimensions too many", "/v1/embeddings", {"model": "embed", "input": "a", "dimensions": 65}, API_KEY, 400,
     "dimensions", "invalid_value", ["64", "65"]),
    ("chat model for embeddings", "/v1/embeddings", {"model": "chat", "input": "a"}, API_KEY, 404, "model",
     "model_not_found", ["chat"]),
    ("input empty list", EMBED, embed([]), API_KEY, 400, "input", "invalid_value", ["at least one"]),
    ("input a number", EMBED, embed(5), API_KEY, 400, "input", "invalid_value", ["token ids", "got 5"]),
    ("input nested empty", EMBED, embed([[1, 2], []]), API_KEY, 400, "input", "invalid_value",
     ["item 1", "empty list of token ids"]),
    ("input id negative", EMBED, embed([5, -1]), API_KEY, 400, "input", "invalid_value", ["item 1", "-1"]),
    ("input id a float", EMBED, embed([[1, 2.5]]), API_KEY, 400, "input", "invalid_value",
     ["item 0, token 1", "2.5"]),
    ("input id a boolean", EMBED, embed([[True]]), API_KEY, 400, "input", "invalid_value",
     ["item 0, token 0", "true"]),
    ("input id out of vocab", EMBED, embed([[1, 2], [3, 4096]]), API_KEY, 400, "input", "invalid_value",
     ["item 1, token 1", "4096", "vocabulary"]),
    ("input strings and ids", EMBED, embed(["a", 1]), API_KEY, 400, "input", "invalid_value", ["item 1"]),
    ("input strings and id lists", EMBED, embed(["a", [1]]), API_KEY, 400, "input", "invalid_value",
     ["item 1", "item 0 is a string"]),
    ("input ids and strings", EMBED, embed([1, "a"]), API_KEY, 400, "input", "invalid_value", ["item 1", '"a"']),
    ("no API key", CHAT, chat(), None, 401, None, "invalid_api_key", ["Bearer"]),
    ("wrong API key", CHAT, chat(), "sk-wrong", 401, None, "invalid_api_key", ["Incorrect"]),
    ("no key, bad JSON", CHAT, b"{", None, 401, None, "invalid_api_key", ["Bearer"]),
    ("unknown route", "/v1/nothing", {}, API_KEY, 404, None, None, ["Not Found"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "path, body, key, status, param, code, words",
    [pytest.param(*row[1:], id=row[0]) for row in BAD_REQUESTS],
)
def test_bad_request_gets_its_status_and_error_object(serving_server, path, body, key, status, param, code, words):
    kwargs = (
        {"content": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = serving_server.post(path, key=key, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert all(w in error["message"] for w in words), error["message"]
    # the next request is served normally
    ok = serving_server.post(CHAT, json=chat(max_tokens=2, temperature=0))
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_the_sdk_raises_its_typed_errors(serving_server):
    client = openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=0)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    wrong_key = openai.OpenAI(base_url=serving_server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.models.list()


def test_health_and_metrics_need_no_key(serving_server):
    assert serving_server.get("/health").status_code == 200
    assert serving_server.get("/metrics").status_code == 200
    assert serving_server.get("/v1/models").status_code == 401


def test_errors_are_counted_by_status(serving_server):
    before = serving_server.metrics()
    serving_server.post(CHAT, json=chat(max_tokens=0))
    key = 'paddle_qwen2_requests_total{endpoint="/v1/chat/completions",status="400"}'
    assert serving_server.metrics()[key] == before.get(key, 0) + 1


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve"], "give --model and/or --embedding-model"),
        (["serve", "--model", "{tmp}/missing"], "--model {tmp}/missing: no such model folder"),
        (["serve", "--embedding-model", "{tmp}/missing"], "--embedding-model {tmp}/missing: no such model folder"),
        (["serve", "--model", "{chat}", "--port", "{busy}"], "cannot listen on 127.0.0.1:{busy}"),
        (["serve", "--model", "{chat}", "--max-batch-size", "0"], "--max-batch-size must be >= 1, got 0"),
        (["serve", "--model", "{chat}", "--port", "70000"], "--port must be in [0, 65535], got 70000"),
        (["serve", "--model", "{tmp}", "--port", "0", "--engine", "dygraph"], "not a Qwen2 model"),
        (
            ["serve", "--model", "{chat}", "--port", "0", "--engine", "dygraph", "--max-model-len", "1000"],
            "max_model_len must be in [1, 128]",
        ),
    ],
)
def test_bad_command_line_is_one_error_line_and_exit_1(chat_checkpoint, tmp_path, busy_port, capsys, argv, message):
    values = {"tmp": tmp_path, "chat": chat_checkpoint("mha"), "busy": busy_port}
    assert cli.main([a.format(**values) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message.format(**values) in err[-1], err
