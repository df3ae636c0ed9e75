"""Continuous batching: one thread runs every model call of the server, the decode steps of all running sequences
together.

    scheduler = Scheduler(llm, embedder, max_batch_size=16, max_queue_size=128, metrics=ServerMetrics())
    scheduler.start()
    request = GenerationRequest(GenerationSequence(prompt_ids, params, llm.tokenizer, llm.max_model_len), emit)
    scheduler.submit([request])        # QueueFull when the bounded queue has no room; emit(TokenEvent) per token
    request.cancel()                   # the row leaves the batch at the next step
    scheduler.close()

Each step: cancelled rows leave the batch; pending embedding requests run as one `encode` batch; waiting sequences
are prefilled together (up to the free slots of `max_batch_size`), sample their first token and join the batch
(`Batch.concat`); then one `llm.decode` advances every running row by a token and finished rows leave at once
(`Batch.select`). Rows are left-padded with their own position ids, so a greedy answer is the same alone or in a
batch. The engine is not thread-safe: only this thread touches it (the embedding model too).

With a `prefix_cache` (an `inference.PrefixCache`; `serve` makes one unless `--no-prefix-cache`), prompts are
prefilled from their cached prefixes, their full blocks go into the cache after the prefill, and a row's whole
sequence (prompt and answer) when it leaves the batch; the metrics follow the cache's counters.

Events go back through each request's `emit` callback, called on this thread (the server hands them to its event
loop with `call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PaddleQwen2Error
from .metrics import ServerMetrics

__all__ = ["Scheduler", "GenerationRequest", "EmbeddingJob", "TokenEvent", "QueueFull", "SchedulerClosed"]

logger = logging.getLogger("paddle_qwen2.serving")


class QueueFull(PaddleQwen2Error):
    """The bounded waiting queue has no room (HTTP 429)."""


class SchedulerClosed(PaddleQwen2Error):
    """The scheduler is shutting down or has stopped (HTTP 503)."""


@dataclass
class TokenEvent:
    """What a sequence produced in one step: the text that can be shown now (whole UTF-8 text, maybe empty), the
    token ids, and on its last event the finish reason ("stop", "length") or an `error` message. `logprobs`: one
    `inference.TokenLogprob` per token id when the request asked for them, else None. `prompt_logprobs`, on the
    first event of a request that asked for them: one per prompt token (None for the first token)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list | None = None
    prompt_logprobs: list | None = None


class GenerationRequest:
    """One sequence handed to the scheduler. `sequence` is an `inference.GenerationSequence` (prompt, sampling,
    detokenization, stop handling); `emit(TokenEvent)` is called on the scheduler thread."""

    def __init__(self, sequence: Any, emit: Callable[[TokenEvent], None], index: int = 0) -> None:
        self.sequence = sequence
        self.emit = emit
        self.index = index
        self.cancelled = False
        self.arrival = time.perf_counter()
        self.last_token_at: float | None = None
        self.prompt_logprobs: list | None = None  # computed before the prefill when the params ask for them

    def cancel(self) -> None:
        """Stop generating (the client went away); takes effect at the scheduler's next step."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.cancelled or self.sequence.finished


@dataclass
class EmbeddingJob:
    """Inputs to embed, each a text or a list of token ids (`EmbeddingEncoder.embed_inputs`); `done(vectors [n, dim]
    float32, token counts)` or `done(None, None, exception)` is called on the scheduler thread."""

    texts: list[str | list[int]]
    done: Callable[..., None]
    cancelled: bool = False


class Scheduler:
    """The engine thread: continuous batching of generation requests plus batched embedding requests."""

    def __init__(
        self,
        llm: Any = None,
        embedder: Any = None,
        max_batch_size: int = 16,
        max_queue_size: int = 128,
        metrics: ServerMetrics | None = None,
        step_delay: float = 0.0,
        embedding_batch_size: int = 32,
        max_embedding_texts: int = 256,
        prefix_cache: Any = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 0:
            raise PaddleQwen2Error(
                f"max_batch_size must be >= 1 and max_queue_size >= 0, got {max_batch_size}, {max_queue_size}"
            )
        self.llm = llm
        self.embedder = embedder
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.metrics = metrics or ServerMetrics()
        self.step_delay = step_delay
        self.embedding_batch_size = embedding_batch_size
        self.max_embedding_texts = max_embedding_texts
        self.prefix_cache = prefix_cache  # an inference.PrefixCache, or None
        self._prefix_counted = (0, 0, 0)  # the cache's queries, hits and hit tokens already in the metrics
        self._cond = threading.Condition()
        self._waiting: deque[GenerationRequest] = deque()
        self._embeddings: deque[EmbeddingJob] = deque()
        self._running: list[GenerationRequest] = []
        self._running_count = 0  # len(self._running), readable under the lock
        self._batch = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # set when the thread died

    # ------------------------------------------------------------------------------------------- client side
    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="paddle-qwen2-scheduler", daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Queue all of `requests` or none: QueueFull when the running set and the queue cannot take them all."""
        with self._cond:
            self._check_open()
            self._drop_cancelled_waiting()
            room = self.max_queue_size + max(0, self.max_batch_size - self._running_count) - len(self._waiting)
            if len(requests) > room:
                raise QueueFull(
                    f"the server is at capacity: {self._running_count} sequences running (at most "
                    f"{self.max_batch_size}) and {len(self._waiting)} waiting (at most "
                    f"{self.max_queue_size}); retry later"
                )
            now = time.perf_counter()
            for request in requests:
                request.arrival = now
                self.metrics.prompt_tokens.inc(len(request.sequence.prompt_ids))
            self._waiting.extend(requests)
            self.metrics.queued.set(len(self._waiting))
            self._cond.notify()

    def submit_embedding(self, job: EmbeddingJob) -> None:
        with self._cond:
            self._check_open()
            if len(self._embeddings) >= max(self.max_queue_size, 1):
                raise QueueFull(f"the server is at capacity: {len(self._embeddings)} embedding requests waiting")
            self._embeddings.append(job)
            self._cond.notify()

    def wake(self) -> None:
        """Let the thread look at its sequences now (after a `cancel`)."""
        with self._cond:
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; sequences still queued or running end with an error event."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _check_open(self) -> None:
        if self._closing or self._thread is None or not self._thread.is_alive():
            raise SchedulerClosed(self.error or "the server is shutting down")

    def _drop_cancelled_waiting(self) -> None:
        if any(r.cancelled for r in self._waiting):
            kept = [r for r in self._waiting if not r.cancelled]
            for _ in range(len(self._waiting) - len(kept)):
                self.metrics.finished.labels(reason="cancelled").inc()
            self._waiting = deque(kept)

    # --------------------------------------------------------------------------------------- scheduler thread
    def _loop(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # the engine broke: fail everything, /health turns 503
            self.error = f"the scheduler stopped: {type(exc).__name__}: {exc}"
            logger.error("%s\n%s", self.error, traceback.format_exc())
        finally:
            self._fail_all(self.error or "the server is shutting down")

    def _step(self) -> bool:
        """One scheduling step; False when closing."""
        with self._cond:
            while not (self._waiting or self._embeddings or self._running or self._closing):
                self._cond.wait()
            if self._closing:
                return False
            self._drop_cancelled_waiting()
            jobs = self._take_embeddings()
            new = self._take_admissible()
        if jobs:
            self._run_embeddings(jobs)
        self._drop_cancelled_running()
        if new:
            self._score_prompts(new)
        if new:
            self._prefill(new)
        if self._running:
            self._decode()
            if self.step_delay:
                time.sleep(self.step_delay)
        self._publish_counts()
        return True

    def _take_embeddings(self) -> list[EmbeddingJob]:
        jobs, texts = [], 0
        while self._embeddings and (not jobs or texts + len(self._embeddings[0].texts) <= self.max_embedding_texts):
            job = self._embeddings.popleft()
            if not job.cancelled:
                jobs.append(job)
                texts += len(job.texts)
        return jobs

    def _take_admissible(self) -> list[GenerationRequest]:
        free = self.max_batch_size - len(self._running)
        new = []
        while self._waiting and len(new) < free:
            request = self._waiting.popleft()
            if not request.cancelled:
                new.append(request)
        self._running_count += len(new)  # they hold slots from now on (submit counts them)
        return new

    def _publish_counts(self) -> None:
        with self._cond:
            self._running_count = len(self._running)
            self.metrics.running.set(len(self._running))
            self.metrics.queued.set(len(self._waiting))

    # ------------------------------------------------------------------------------------------- generation
    def _score_prompts(self, new: list[GenerationRequest]) -> None:
        """The prompt logprobs of the requests that ask for them (once per prompt and count), before their prefill;
        a request whose scoring fails gets its error and is dropped from `new`."""
        from ..inference.prompt_logprobs import prompt_logprobs

        scored: dict[tuple, list] = {}
        for request in list(new):
            params = request.sequence.params
            if params.prompt_logprobs is None:
                continue
            key = (tuple(request.sequence.prompt_ids), params.prompt_logprobs)
            try:
                if key not in scored:
                    scored[key] = prompt_logprobs(self.llm, request.sequence.prompt_ids, params.prompt_logprobs)
            except Exception as exc:
                logger.error("prompt logprobs failed: %s\n%s", exc, traceback.format_exc())
                self._fail(request, f"prompt logprobs failed: {type(exc).__name__}: {exc}")
                new.remove(request)
                continue
            request.prompt_logprobs = scored[key]

    def _prefill(self, new: list[GenerationRequest]) -> None:
        """Prefill `new` together, sample each one's first token, and join the unfinished ones to the batch."""
        from ..inference import Batch

        prompts = [r.sequence.prompt_ids for r in new]
        try:
            if self.prefix_cache is None:
                logits, batch = self.llm.prefill(prompts)
            else:
                logits, batch = self.llm.prefill(prompts, prefix_cache=self.prefix_cache)
        except Exception as exc:  # a bad request must not take the others down: retry them one by one
            if len(new) > 1:
                for request in new:
                    self._prefill([request])
                return
            logger.error("prefill failed: %s\n%s", exc, traceback.format_exc())
            self._fail(new[0], f"prefill failed: {type(exc).__name__}: {exc}")
            return
        self._count_prefix_cache()
        now = time.perf_counter()
        for row, request in enumerate(new):
            self.metrics.time_to_first_token.observe(now - request.arrival)
            self._advance(request, logits[row], now)
        keep = [row for row, request in enumerate(new) if not request.sequence.finished]
        if not keep:
            return
        if len(keep) < len(new):
            batch = batch.select(keep)
        self._batch = batch if self._batch is None else Batch.concat([self._batch, batch])
        self._running += [new[row] for row in keep]
        self._publish_counts()

    def _decode(self) -> None:
        """One token for every running row; finished rows leave the batch."""
        tokens = [r.sequence.token_ids[-1] for r in self._running]
        try:
            logits = self.llm.decode(self._batch, tokens)
        except Exception as exc:
            logger.error("decode failed: %s\n%s", exc, traceback.format_exc())
            for request in self._running:
                self._fail(request, f"decode failed: {type(exc).__name__}: {exc}")
            self._running, self._batch = [], None
            return
        now = time.perf_counter()
        for row, request in enumerate(self._running):
            self._advance(request, logits[row], now)
        self._leave([row for row, r in enumerate(self._running) if not r.sequence.finished])

    def _advance(self, request: GenerationRequest, logits: np.ndarray, now: float) -> None:
        """Sample and append one token of `request` and emit what it adds."""
        sequence = request.sequence
        token = sequence.choose(logits)
        text = sequence.append(token)
        self.metrics.generation_tokens.inc()
        if request.last_token_at is not None:
            self.metrics.time_per_output_token.observe(now - request.last_token_at)
        request.last_token_at = now
        if sequence.finished:
            self.metrics.finished.labels(reason=sequence.finish_reason).inc()
        if not request.cancelled:
            logprobs = None if sequence.logprobs is None else sequence.logprobs[-1:]
            event = TokenEvent(request.index, text, [int(token)], sequence.finish_reason, logprobs=logprobs)
            event.prompt_logprobs, request.prompt_logprobs = request.prompt_logprobs, None
            request.emit(event)

    def _drop_cancelled_running(self) -> None:
        keep = [row for row, r in enumerate(self._running) if not r.cancelled]
        if len(keep) < len(self._running):
            for _ in range(len(self._running) - len(keep)):
                self.metrics.finished.labels(reason="cancelled").inc()
            self._leave(keep)

    def _leave(self, keep: list[int]) -> None:
        """Keep only these rows of the running set (and of the batch)."""
        if len(keep) == len(self._running):
            return
        if self.prefix_cache is not None:
            self._cache_leaving(set(range(len(self._running))) - set(keep))
        self._running = [self._running[row] for row in keep]
        self._batch = self._batch.select(keep) if keep else None
        self._publish_counts()

    def _cache_leaving(self, rows: set[int]) -> None:
        """Put the whole sequence (prompt and answer) of each leaving row into the prefix cache: the next turn of
        its chat starts with it. A failure here costs only cache hits."""
        try:
            for row in sorted(rows):
                sequence = self._running[row].sequence
                self.prefix_cache.insert(sequence.prompt_ids + sequence.token_ids, self._batch, row)
        except Exception as exc:
            logger.warning("prefix cache insert failed: %s: %s", type(exc).__name__, exc)
        self._count_prefix_cache()

    def _count_prefix_cache(self) -> None:
        """Bring the prefix-cache metrics up to the cache's own counters."""
        if self.prefix_cache is None:
            return
        stats = self.prefix_cache.stats
        now = (stats.queries, stats.hits, stats.hit_tokens)
        metrics = self.metrics
        counters = (metrics.prefix_cache_queries, metrics.prefix_cache_hits, metrics.prefix_cache_hit_tokens)
        for counter, before, after in zip(counters, self._prefix_counted, now):
            if after > before:
                counter.inc(after - before)
        self._prefix_counted = now
        metrics.prefix_cache_bytes.set(stats.bytes)

    def _fail(self, request: GenerationRequest, message: str) -> None:
        self.metrics.finished.labels(reason="error").inc()
        if not request.cancelled:
            request.emit(TokenEvent(request.index, finish_reason="error", error=message))

    def _fail_all(self, message: str) -> None:
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            jobs, self._embeddings = list(self._embeddings), deque()
        for request in self._running + waiting:
            self._fail(request, message)
        for job in jobs:
            job.done(None, None, RuntimeError(message))
        self._running, self._batch = [], None
        self._publish_counts()

    # -------------------------------------------------------------------------------------------- embeddings
    def _run_embeddings(self, jobs: list[EmbeddingJob]) -> None:
        """One `embed_inputs` over the inputs of all `jobs` (they arrived together); each gets its rows back."""
        texts = [t for job in jobs for t in job.texts]
        try:
            vectors, counts = self.embedder.embed_inputs(texts, batch_size=self.embedding_batch_size)
        except Exception as exc:
            logger.error("embedding failed: %s\n%s", exc, traceback.format_exc())
            for job in jobs:
                job.done(None, None, exc)
            return
        self.metrics.embedding_tokens.inc(sum(counts))
        start = 0
        for job in jobs:
            stop = start + len(job.texts)
            job.done(vectors[start:stop], counts[start:stop])
            start = stop
