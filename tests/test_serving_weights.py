"""`paddle-qwen2 serve --weights int8` through the official `openai` client: the causal LM runs its int8 export on
onnxruntime and the embedding model its int8 embedding export. Concurrent greedy requests (rows joining and leaving
one running batch) get the answers the int8 engine gives each prompt alone, in-process; the embeddings stay within
int8's gate of float32's (computed in the test)."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from conftest import SERVE_CHAT_VARIANT

openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime")

from paddle_qwen2.inference import LLM, SamplingParams  # noqa: E402
from paddle_qwen2.inference.embedding import InferenceEmbeddingModel  # noqa: E402

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three.", "Say hello.", "Who are you?"]
TEXTS = ["The capital of France is Paris.", "猫喜欢吃鱼。", "a", "hello world"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(chat_checkpoint, st_folder, tmp_path_factory):
    from serving_helpers import API_KEY, ServerProcess

    args = ["--model", str(chat_checkpoint(SERVE_CHAT_VARIANT)), "--served-model-name", "chat", "--weights", "int8"]
    args += ["--embedding-model", str(st_folder("last")), "--embedding-model-name", "embed", "--api-key", API_KEY]
    args += ["--max-batch-size", "4", "--log-level", "warning"]
    process = ServerProcess.start(args, tmp_path_factory.mktemp("serve-int8"))
    yield openai.OpenAI(base_url=process.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    process.stop()


def test_concurrent_chats_get_the_int8_engines_lone_answers(server, chat_checkpoint):
    llm = LLM.from_pretrained(chat_checkpoint(SERVE_CHAT_VARIANT), weights="int8")  # the export the server made
    assert (llm.engine, llm.weights) == ("onnxruntime", "int8")
    params = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    alone = [llm.generate([llm.tokenizer.encode_chat(m)], params)[0].text for m in messages]

    def ask(m):
        return server.chat.completions.create(model="chat", messages=m, temperature=0, max_tokens=MAX_TOKENS)

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(ask, messages))
    assert [a.choices[0].message.content for a in answers] == alone
    assert len(set(alone)) > 1  # the prompts' answers differ: a row mixed up with another would show


def test_embeddings_are_int8_within_the_gate_of_float32(server, st_folder):
    got = np.asarray([d.embedding for d in server.embeddings.create(model="embed", input=TEXTS).data])
    want = InferenceEmbeddingModel.from_pretrained(st_folder("last")).encode(TEXTS)
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.99, cosines
    assert np.abs(got - want).max() > 1e-5  # int8 weights, not the float32 program
