"""`serving.Scheduler` in process on the dygraph engine: requests that join a running batch, wait in the queue or
are cancelled get transformers' greedy answers; the batch never exceeds `max_batch_size`; the queue is bounded;
embedding requests that arrive together run as one batch."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from conftest import SERVE_CHAT_VARIANT
from paddle_qwen2.inference import LLM, GenerationSequence, SamplingParams
from paddle_qwen2.serving.metrics import ServerMetrics
from paddle_qwen2.serving.scheduler import EmbeddingJob, GenerationRequest, QueueFull, Scheduler

PROMPTS = ["The capital of France is", "1 2 3 4", "猫喜欢", "hello world"]


class RecordingLLM:
    """An `LLM` that records the rows of every prefill and decode call."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.prefills: list[int] = []
        self.decodes: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.llm, name)

    def prefill(self, prompts):
        self.prefills.append(len(prompts))
        return self.llm.prefill(prompts)

    def decode(self, batch, tokens):
        self.decodes.append(len(tokens))
        return self.llm.decode(batch, tokens)


class Collector:
    """The events of one request, gathered from the scheduler thread."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason = None
        self.error = None
        self.count = threading.Semaphore(0)

    def __call__(self, event) -> None:
        self.events.put(event)
        self.count.release()

    def wait_tokens(self, n: int, timeout: float = 30) -> None:
        for _ in range(n):
            assert self.count.acquire(timeout=timeout), f"fewer than {n} tokens within {timeout}s"

    def result(self, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.finish_reason is None:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            self.token_ids += event.token_ids
            self.text += event.text
            self.finish_reason, self.error = event.finish_reason, event.error
        return self.token_ids, self.text, self.finish_reason


@pytest.fixture(scope="module")
def llm(chat_checkpoint) -> RecordingLLM:
    return RecordingLLM(LLM.from_pretrained(chat_checkpoint(SERVE_CHAT_VARIANT), engine="dygraph"))


@pytest.fixture(scope="module")
def inference_llm(chat_checkpoint, tmp_path_factory) -> LLM:
    cache = tmp_path_factory.mktemp("export-cache")
    return LLM.from_pretrained(chat_checkpoint(SERVE_CHAT_VARIANT), engine="inference", cache_dir=cache)


def request(llm, text: str, max_tokens: int, **params) -> tuple[GenerationRequest, Collector]:
    ids = llm.tokenizer.encode(text, special=False)
    sampling = SamplingParams(max_new_tokens=max_tokens, temperature=0, **params)
    collector = Collector()
    return GenerationRequest(GenerationSequence(ids, sampling, llm.tokenizer, llm.max_model_len), collector), collector


@pytest.fixture
def scheduler_factory(llm):
    started = []

    def make(**kwargs) -> Scheduler:
        scheduler = Scheduler(llm, **kwargs).start()
        started.append(scheduler)
        return scheduler

    yield make
    for scheduler in started:
        scheduler.close()


def test_requests_joining_a_running_batch_get_the_answers_they_get_alone(llm, scheduler_factory, hf_chat_reference):
    scheduler = scheduler_factory(max_batch_size=3)
    llm.decodes.clear()
    first, first_out = request(llm, PROMPTS[0], 30)
    scheduler.submit([first])
    first_out.wait_tokens(5)  # running alone for a while
    later = [request(llm, text, n) for text, n in zip(PROMPTS[1:], (12, 20, 8))]
    scheduler.submit([r for r, _ in later])  # two join at the next step, the third waits for a free slot
    for text, n, (_, out) in zip(PROMPTS, (30, 12, 20, 8), [(first, first_out), *later]):
        ids, answer, finish = out.result()
        expected = hf_chat_reference.generate(hf_chat_reference.text_ids(text), n)
        assert (ids, answer, finish) == (expected, hf_chat_reference.decode(expected), "length"), text
    assert max(llm.decodes) == 3 and llm.decodes[0] == 1
    assert 2 in llm.decodes  # the fourth joined when the second left


# 12 requests of 4 prompts and different lengths, arriving in 3 waves into a batch of at most 4: rows join while
# others run (Batch.concat of left-padded caches) and leave in the middle (Batch.select)
WAVES = [[(0, 24), (1, 6)], [(2, 15), (3, 9), (0, 4), (1, 20)], [(2, 7), (3, 30), (0, 11), (1, 13), (2, 5), (3, 3)]]


def test_waves_of_requests_get_the_answers_they_get_alone(llm):
    llm = llm.llm
    greedy = {
        (p, n): llm.generate(
            [llm.tokenizer.encode(PROMPTS[p], special=False)], SamplingParams(temperature=0, max_new_tokens=n)
        )[0].token_ids
        for wave in WAVES
        for p, n in wave
    }
    scheduler = Scheduler(llm, max_batch_size=4, step_delay=0.02).start()  # the next wave joins at a known step
    try:
        outputs = []
        for wave in WAVES:
            pairs = [request(llm, PROMPTS[p], n) for p, n in wave]
            scheduler.submit([r for r, _ in pairs])
            outputs += [((p, n), out) for (p, n), (_, out) in zip(wave, pairs)]
            pairs[0][1].wait_tokens(2)
        got = {key: out.result()[0] for key, out in outputs}
    finally:
        scheduler.close()
    assert got == {key: greedy[key] for key, _ in outputs}


# (prompt tokens, max_tokens): prefilled together (left-padded to 19), the first three finish after 3 tokens and
# leave; the two left keep a cache whose 3 leading columns (padding in both) are dropped (`Batch.select`)
LEAVE = [(10, 3), (11, 3), (19, 3), (16, 20), (13, 20)]


@pytest.mark.parametrize("engine", ["dygraph", "inference"])
def test_rows_left_by_finished_ones_keep_their_answers(request_engine_llm, engine):
    llm = request_engine_llm(engine)
    prompts = [list(range(100 + 50 * i, 100 + 50 * i + n)) for i, (n, _) in enumerate(LEAVE)]
    params = [SamplingParams(temperature=0, max_new_tokens=m) for _, m in LEAVE]
    alone = [llm.generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)]
    collectors = [Collector() for _ in LEAVE]
    requests = [
        GenerationRequest(GenerationSequence(p, sp, llm.tokenizer, llm.max_model_len), c)
        for p, sp, c in zip(prompts, params, collectors)
    ]
    scheduler = Scheduler(llm, max_batch_size=len(LEAVE)).start()
    try:
        scheduler.submit(requests)  # all five in one prefill
        got = [c.result()[0] for c in collectors]
    finally:
        scheduler.close()
    assert got == alone


@pytest.fixture
def request_engine_llm(llm, inference_llm):
    return lambda engine: llm.llm if engine == "dygraph" else inference_llm


def test_a_cancelled_request_leaves_at_the_next_step(llm, scheduler_factory):
    metrics = ServerMetrics()
    scheduler = scheduler_factory(max_batch_size=2, metrics=metrics, step_delay=0.01)
    long, long_out = request(llm, PROMPTS[0], 100, ignore_eos=True)
    short, short_out = request(llm, PROMPTS[1], 40)
    scheduler.submit([long, short])
    long_out.wait_tokens(3)
    long.cancel()
    scheduler.wake()
    short_ids, _, _ = short_out.result()
    assert len(short_ids) == 40
    deadline = time.monotonic() + 5
    while metrics.value("paddle_qwen2_running_sequences") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metrics.value("paddle_qwen2_running_sequences") == 0
    assert metrics.value("paddle_qwen2_sequences_finished_total", reason="cancelled") == 1
    assert long_out.events.qsize() < 50  # it stopped long before its 100 tokens


def test_the_queue_is_bounded_and_submit_is_all_or_nothing(llm, scheduler_factory):
    scheduler = scheduler_factory(max_batch_size=1, max_queue_size=1, step_delay=0.02)
    running, running_out = request(llm, PROMPTS[0], 100, ignore_eos=True)
    scheduler.submit([running])
    running_out.wait_tokens(1)
    waiting, waiting_out = request(llm, PROMPTS[1], 5)
    scheduler.submit([waiting])
    with pytest.raises(QueueFull, match="1 sequences running .at most 1. and 1 waiting .at most 1."):
        scheduler.submit([request(llm, PROMPTS[2], 5)[0]])
    running.cancel()
    assert waiting_out.result()[2] == "length"
    # idle now: room for one running and one waiting sequence, so three at once are refused and none of them runs
    trio = [request(llm, text, 5) for text in PROMPTS[1:]]
    with pytest.raises(QueueFull):
        scheduler.submit([r for r, _ in trio])
    time.sleep(0.1)
    assert all(out.events.empty() for _, out in trio)


def test_a_prompt_the_engine_rejects_fails_alone(llm, scheduler_factory, hf_chat_reference):
    scheduler = scheduler_factory(max_batch_size=4)
    good, good_out = request(llm, PROMPTS[0], 6)
    bad, bad_out = request(llm, PROMPTS[1], 6)
    bad.sequence.prompt_ids = [llm.vocab_size + 5]  # outside the vocabulary: the engine's prefill raises
    scheduler.submit([bad, good])
    assert bad_out.result()[2] == "error" and "outside the vocabulary" in bad_out.error
    expected = hf_chat_reference.generate(hf_chat_reference.text_ids(PROMPTS[0]), 6)
    assert good_out.result()[0] == expected
    assert scheduler.alive


class GatedEmbedder:
    """An embedding model whose first `embed_inputs` waits for `gate`; records the input count of each call."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def embed_inputs(self, inputs, **kwargs):
        self.calls.append(len(inputs))
        self.entered.set()
        self.gate.wait(30)
        return self.model.embed_inputs(inputs, **kwargs)


def test_embedding_requests_that_arrive_together_run_as_one_batch(st_folder):
    from paddle_qwen2.embedding.model import EmbeddingModel

    model = EmbeddingModel.from_pretrained(st_folder("last"))
    embedder = GatedEmbedder(model)
    scheduler = Scheduler(embedder=embedder).start()
    results: queue.Queue = queue.Queue()
    texts = [["a", "b"], ["hello world"], ["猫", "dog", "fish"]]
    try:
        scheduler.submit_embedding(EmbeddingJob(texts[0], lambda v, c, e=None: results.put((0, v, c))))
        assert embedder.entered.wait(30)
        for i in (1, 2):
            scheduler.submit_embedding(EmbeddingJob(texts[i], lambda v, c, e=None, i=i: results.put((i, v, c))))
        embedder.gate.set()
        got = dict((i, (v, c)) for i, v, c in (results.get(timeout=30) for _ in texts))
    finally:
        scheduler.close()
    assert embedder.calls == [2, 4]
    for i, batch in enumerate(texts):
        vectors, counts = got[i]
        assert abs(vectors - model.encode(batch)).max() <= 1e-5
        prompt = model.resolve_prompt() or ""
        assert counts == [len(ids) for ids in model.tokenizer.encode_ids([prompt + t for t in batch])]
