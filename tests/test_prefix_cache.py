"""Automatic prefix caching (`inference.prefix_cache.PrefixCache`): the block store alone (hash chain, full blocks
only, least-recently-used eviction within the byte budget, never the whole prompt), then `LLM.prefill` /
`LLM.generate` from cached prefixes on both engines: the logits equal a full prefill's and greedy answers equal
those without the cache (single prompts, batches mixing hits and misses, chats that share prefixes and chats that
do not, a second turn hitting the first turn's answer, a tiny budget that evicts); then `serve` with the cache on
by default: the answers of a repeated system prompt are transformers' and /metrics counts the hits."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from conftest import SERVE_CHAT_VARIANT, assert_close
from paddle_qwen2.inference import LLM, SamplingParams
from paddle_qwen2.inference.prefix_cache import PrefixCache

pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")

BLOCK = 4
LAYERS, HEADS, HEAD_DIM = 2, 2, 3
BLOCK_BYTES = 2 * LAYERS * HEADS * BLOCK * HEAD_DIM * 4  # float32
GREEDY = SamplingParams(temperature=0, max_new_tokens=10)


class FakeBatch:
    """A batch of one row whose cache values encode (layer, head, token position, dim)."""

    def __init__(self, n: int, left_pad: int = 0) -> None:
        width = n + left_pad
        values = np.arange(2 * LAYERS * HEADS * width * HEAD_DIM, dtype=np.float32)
        values = values.reshape(2 * LAYERS, 1, HEADS, width, HEAD_DIM)
        self.cache = [paddle.to_tensor(v) for v in values]
        self.mask = np.array([[0] * left_pad + [1] * n], dtype=np.int64)
        self.past_axis = 2
        self.values = values


def ids(n: int, start: int = 100) -> list[int]:
    return list(range(start, start + n))


# ------------------------------------------------------------------------------------------------ block store
@pytest.mark.paddle26
def test_full_blocks_only_and_never_the_whole_prompt():
    cache = PrefixCache(10 * BLOCK_BYTES, BLOCK)
    batch = FakeBatch(10, left_pad=3)
    assert cache.insert(ids(10), batch, 0) == 2  # 10 tokens: two full blocks, the last 2 tokens are not stored
    assert cache.stats.blocks == 2 and cache.stats.bytes == 2 * BLOCK_BYTES
    n, blocks = cache.lookup(ids(12))
    assert n == 8 and len(blocks) == 2
    # the blocks hold the row's real columns (3.. of the padded row), every layer stacked on axis 0
    assembled = cache.assemble([blocks], 8)
    for layer, tensor in enumerate(assembled):
        np.testing.assert_array_equal(tensor.numpy(), batch.values[layer][:, :, 3:11])
    assert cache.lookup(ids(8))[0] == 4  # a prompt of exactly two cached blocks: its last token is computed
    assert cache.lookup(ids(9))[0] == 8
    assert cache.lookup(ids(4))[0] == 0 and cache.lookup(ids(1))[0] == 0
    assert cache.insert(ids(10), batch, 0) == 0  # held already
    s = cache.stats
    assert (s.queries, s.hits, s.hit_tokens) == (5, 3, 20)


@pytest.mark.paddle26
def test_a_block_matches_only_after_the_same_tokens():
    cache = PrefixCache(10 * BLOCK_BYTES, BLOCK)
    cache.insert(ids(8), FakeBatch(8), 0)
    assert cache.lookup(ids(4) + ids(4, 104) + [7])[0] == 8
    assert cache.lookup(ids(4) + ids(4, 900) + [7])[0] == 4  # second block differs
    assert cache.lookup(ids(4, 900) + ids(4, 104) + [7])[0] == 0  # same second block after another first one
    assembled = cache.assemble([cache.lookup(ids(9))[1], [], cache.lookup(ids(5))[1]], 8)
    first = assembled[0].numpy()
    assert first.shape == (3, HEADS, 8, HEAD_DIM)
    assert not first[1].any() and not first[2, :, :4].any() and first[2, :, 4:].any()


@pytest.mark.paddle26
def test_least_recently_used_blocks_leave_first_within_the_budget():
    cache = PrefixCache(5 * BLOCK_BYTES, BLOCK)
    a, b = ids(12, 100), ids(12, 500)
    assert cache.insert(a, FakeBatch(12), 0) == 3
    assert cache.insert(b, FakeBatch(12), 0) == 3  # 6 blocks > 5: the oldest goes
    assert cache.stats.evictions == 1 and cache.stats.bytes == 5 * BLOCK_BYTES
    assert cache.lookup(a + [1])[0] == 8  # a chain loses its last block first
    assert cache.lookup(b + [1])[0] == 12
    cache.lookup(a + [1])  # a used more recently than b now
    cache.insert(ids(8, 900), FakeBatch(8), 0)
    assert cache.lookup(a + [1])[0] == 8 and cache.lookup(b + [1])[0] == 4
    assert cache.stats.bytes <= 5 * BLOCK_BYTES
    tiny = PrefixCache(BLOCK_BYTES - 1, BLOCK)
    assert tiny.insert(a, FakeBatch(12), 0) == 0 and len(tiny) == 0


# ---------------------------------------------------------------------------------------------------- engines
@pytest.fixture(scope="module", params=["inference", "dygraph"])
def llm(request, chat_checkpoint, tmp_path_factory) -> LLM:
    cache_dir = tmp_path_factory.mktemp("export-cache")
    return LLM.from_pretrained(chat_checkpoint(SERVE_CHAT_VARIANT), engine=request.param, cache_dir=cache_dir)


def chat_ids(llm: LLM, messages: list[dict]) -> list[int]:
    return llm.tokenizer.encode_chat(messages)


SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer with one short sentence, in English."}
OTHER = {"role": "system", "content": "Reply in French, politely, and always name the city."}


def chats_user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


@pytest.mark.paddle26
def test_prefill_from_cached_prefixes_gives_the_full_prefill_logits(llm):
    """A batch of a long hit, a short hit and a miss: each row's logits are those of its whole prompt alone."""
    cache = llm.make_prefix_cache(1 << 24, BLOCK)
    long = chat_ids(llm, [SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
    cache.insert(long, llm.prefill([long])[1], 0)
    prompts = [
        long[:-3] + [17, 230, 1201, 9],
        long[:10] + [5, 919, 2048],
        [311, 64, 919, 5, 2048, 17],
    ]
    logits, batch = llm.prefill(prompts, prefix_cache=cache)
    assert cache.stats.hits == 2 and cache.stats.hit_tokens == (len(long) - 3) // BLOCK * BLOCK + 8
    for row, prompt in enumerate(prompts):
        want, _ = llm.prefill([prompt])
        assert_close(logits[row], want[0], max_abs=1e-4, mean_abs=1e-5, what=f"row {row}")
    assert batch.lengths == [len(p) for p in prompts]


def test_greedy_answers_equal_without_the_cache(llm):
    """Chats sharing a system prompt and chats that share nothing, one by one and batched; then a second turn
    that hits the first turn's prompt and answer."""
    questions = ["The capital of France is", "1 2 3 4", "猫喜欢", "hello world", "Paris is the"]
    texts = [f"{SYSTEM['content']} {q}" for q in questions] + [f"猫喜欢 {SYSTEM['content']}", "1 2 3 4 5 6 7 8 9"]
    chats = [[SYSTEM, {"role": "user", "content": q}] for q in questions[:3]] + [[OTHER, *chats_user("hi")]]
    prompts = [llm.tokenizer.encode(t) for t in texts] + [chat_ids(llm, m) for m in chats]
    plain = [c.token_ids for c in llm.generate(prompts, GREEDY)]
    assert len({tuple(t) for t in plain}) >= 4  # the answers differ: a wrong cache would show
    cache = llm.make_prefix_cache(1 << 24, BLOCK)
    single = [llm.generate([p], GREEDY, prefix_cache=cache)[0].token_ids for p in prompts]
    assert single == plain and cache.stats.hits >= 4
    batched = [c.token_ids for c in llm.generate(prompts[::-1], GREEDY, prefix_cache=cache)][::-1]
    assert batched == plain and cache.stats.hits >= 4 + len(prompts)

    first, index = chats[0], len(texts)
    answer = llm.tokenizer.decode(plain[index], skip_special_tokens=True)
    second = chat_ids(llm, [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}])
    saved = cache.stats.hit_tokens
    [hit] = llm.generate([second], GREEDY, prefix_cache=cache)
    assert cache.stats.hit_tokens - saved > len(prompts[index])  # the first turn's answer came from the cache too
    assert hit.token_ids == llm.generate([second], GREEDY)[0].token_ids


def test_a_tiny_budget_evicts_and_answers_stay(llm):
    chats = [[SYSTEM, {"role": "user", "content": q}] for q in ("one", "two", "three")]
    chats.append([OTHER, {"role": "user", "content": "one"}])
    prompts = [chat_ids(llm, m) for m in chats]
    plain = [c.token_ids for c in llm.generate(prompts, GREEDY)]
    probe = llm.make_prefix_cache(1 << 24, BLOCK)
    probe.insert(prompts[0], llm.prefill([prompts[0]])[1], 0)
    cache = llm.make_prefix_cache(probe.stats.bytes // probe.stats.blocks * 6, BLOCK)  # room for 6 blocks
    got = [llm.generate([p], GREEDY, prefix_cache=cache)[0].token_ids for p in prompts + prompts]
    assert got == plain + plain
    assert cache.stats.evictions > 0 and cache.stats.hits > 0 and cache.stats.blocks <= 6


# ----------------------------------------------------------------------------------------------------- server
def test_serve_reuses_a_repeated_system_prompt(serving_server, hf_chat_reference):
    """The shared server runs with the prefix cache on (the default): chats sharing a system prompt and a second
    turn get transformers' greedy answers, and /metrics counts the hits and the tokens they saved."""
    import openai
    from serving_helpers import API_KEY

    client = openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    hf = hf_chat_reference
    before = serving_server.metrics()
    system = {"role": "system", "content": "You are a terse assistant. Answer with one short sentence."}
    chats = [[system, {"role": "user", "content": q}] for q in ("What is the capital of France?", "1 2 3 4")]
    answers = []
    for messages in chats:
        out = client.chat.completions.create(model="chat", messages=messages, max_tokens=12, temperature=0)
        answers.append(out.choices[0].message.content)
        assert answers[-1] == hf.decode(hf.generate(hf.chat_ids(messages), 12))
    second = [*chats[0], {"role": "assistant", "content": answers[0]}, {"role": "user", "content": "Why?"}]
    out = client.chat.completions.create(model="chat", messages=second, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == hf.decode(hf.generate(hf.chat_ids(second), 8))
    after = serving_server.metrics()

    def added(name: str) -> float:
        return after[f"paddle_qwen2_prefix_cache_{name}"] - before.get(f"paddle_qwen2_prefix_cache_{name}", 0)

    first, other = hf.chat_ids(chats[0]), hf.chat_ids(chats[1])
    shared = next(i for i, (a, b) in enumerate(zip(first, other)) if a != b)  # the system prompt and more
    assert added("queries_total") == 3 and added("hits_total") == 2
    # the second chat: the shared beginning's whole blocks; the second turn: at least the first turn's prompt
    assert added("hit_tokens_total") >= shared // 16 * 16 + len(first) // 16 * 16 > 0
    assert after["paddle_qwen2_prefix_cache_bytes"] > 0


@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_bad_prefix_cache_budget_is_one_error_line(chat_checkpoint, capsys, value):
    from paddle_qwen2 import cli

    assert cli.main(["serve", "--model", str(chat_checkpoint("mha")), "--prefix-cache-mb", value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: --prefix-cache-mb must be >= 1, got {value}", err


def test_a_sliding_window_model_prefills_without_the_cache(chat_checkpoint):
    """A cached prefix leaves padding columns inside a row, which a sliding window would count: such a model
    ignores the cache, and its answers stay."""
    llm = LLM.from_pretrained(chat_checkpoint("sliding"), engine="dygraph")
    assert not llm.prefix_caching
    prompt = llm.tokenizer.encode(f"{SYSTEM['content']} The capital of France is")
    cache = llm.make_prefix_cache(1 << 24, BLOCK)
    plain = llm.generate([prompt], GREEDY)[0].token_ids
    assert [llm.generate([prompt], GREEDY, prefix_cache=cache)[0].token_ids for _ in range(2)] == [plain, plain]
    assert cache.stats.queries == 0 and len(cache) == 0
    assert LLM.from_pretrained(chat_checkpoint("gqa"), engine="dygraph").prefix_caching


def test_the_options_reach_the_engine_spec():
    import argparse

    from paddle_qwen2.cli import serve

    def spec(*argv: str):
        return serve.engine_spec(serve.add_arguments(argparse.ArgumentParser()).parse_args(["--model", "m", *argv]))

    assert spec().prefix_cache_mb == 512
    assert spec("--prefix-cache-mb", "64").prefix_cache_mb == 64
    assert spec("--no-prefix-cache").prefix_cache_mb == 0
