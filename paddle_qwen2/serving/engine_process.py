"""The engine in a process of its own, as vLLM runs its engine core: `EngineProcess` gives the HTTP process the
`Scheduler`'s client side (`submit`, `submit_embedding`, `wake`, `close`, `alive`, `error`; also `restarting`,
`gave_up`) while the models and the scheduler run in a child process, on its one thread (`_EngineLoop`).

Why a process: Paddle Inference holds the GIL for the whole of a predictor run (its Python binding releases it
only for custom devices), and so does much of dygraph paddle. With the engine on a thread of the HTTP process,
every decode step and prefill would stop the event loop, and each streamed token would wait for the loop's work
on top of the step. In a process of its own the engine steps while the event loop streams.

    engine = EngineProcess(EngineSpec(model="ckpt", max_batch_size=16), max_queue_size=128, metrics=metrics)
    llm, embedder = engine.start()         # the child loads the models; EngineStartError if it cannot
    engine.submit([GenerationRequest(sequence, emit)])     # emit(TokenEvent) is called on a reader thread
    engine.close()

What crosses the pipe: the prompt ids and `SamplingParams` of each sequence (the child builds its own
`GenerationSequence`, whose detokenizer makes the text), cancellations, embedding texts; back come each step's
`TokenEvent`s with the running and waiting counts, the prefix cache's counters (when they moved), and embedding
results. The capacity check (429), the request metrics (tokens, time to first token, time per output token, finish
reasons, prefix cache) and the model facts the routes need (`GenerationModelCard`, `EmbeddingModelCard`) live in
this process, which never imports paddle. The child ignores SIGINT / SIGTERM (this process drains, then closes it)
and exits when this process goes away.

When the child dies (an OOM kill, a crash), what is in flight ends with an error event, `alive` turns False and
`restarting` True (HTTP 503 on new requests and on /health) and the reader thread starts a new child after a backoff
(`RESTART_BACKOFF` seconds, doubling up to `RESTART_BACKOFF_MAX`). A child that dies or fails to load counts as one
failure; the count is reset when a restarted child finishes a request. After more than `max_restarts` failures in
a row `gave_up` turns True and `on_give_up(message)` is called (the server then exits non-zero).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PaddleQwen2Error
from .metrics import ServerMetrics
from .scheduler import EmbeddingJob, GenerationRequest, QueueFull, Scheduler, SchedulerClosed, TokenEvent

__all__ = [
    "EngineSpec",
    "EngineProcess",
    "EngineStartError",
    "GenerationModelCard",
    "EmbeddingModelCard",
    "ENGINE_ENVIRONMENT",
    "RESTART_BACKOFF",
    "RESTART_BACKOFF_MAX",
]

logger = logging.getLogger("paddle_qwen2.serving")

_UNBOUNDED = 1 << 30  # the child's own queue: this process does the capacity check
RESTART_BACKOFF = 0.5  # seconds before the first restart of a dead engine process; doubles with each failure
RESTART_BACKOFF_MAX = 8.0
_RESTART_TIMEOUT_MIN = 120.0  # seconds a restarted child gets to load (or 5x the first load, if longer)


class EngineStartError(PaddleQwen2Error):
    """The engine process could not load its models (the message names the folder and the problem)."""


@dataclass
class EngineSpec:
    """What the engine process loads and how it schedules (the `serve` options)."""

    model: str | None = None
    engine: str | None = None  # None: chosen by `weights` (LLM.from_pretrained)
    onednn: bool | None = None
    max_model_len: int | None = None
    name: str | None = None
    embedding_model: str | None = None
    max_batch_size: int = 16
    step_delay: float = 0.0
    prefix_cache_mb: int = 512  # the prefix cache's budget in MiB; 0: no prefix cache
    weights: str | None = None  # the models' weights' precision (None: an export's own, else float32)


@dataclass
class GenerationModelCard:
    """What the routes need of the causal LM: its name, tokenizer (chat template), context and defaults."""

    name: str
    folder: str
    max_model_len: int
    generation_config: dict
    description: str
    tokenizer: Any = None  # a ChatTokenizer, loaded in this process from `folder`


@dataclass
class EmbeddingModelCard:
    """What the routes need of the embedding model."""

    dimension: int
    unit_vectors: bool
    vocab_size: int | None = None  # token ids of `input` are in [0, vocab_size)

    def normalizes(self) -> bool:
        return self.unit_vectors


@dataclass
class _InFlight:
    request: GenerationRequest
    first: bool = True
    last: float = field(default_factory=time.perf_counter)


class EngineProcess:
    """`Scheduler`'s client API over a child process that runs the models and the scheduler."""

    def __init__(
        self,
        spec: EngineSpec,
        max_queue_size: int = 128,
        metrics: ServerMetrics | None = None,
        max_restarts: int = 3,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        if spec.max_batch_size < 1 or max_queue_size < 0 or max_restarts < 0:
            raise PaddleQwen2Error(
                "max_batch_size must be >= 1, max_queue_size >= 0 and max_restarts >= 0, got "
                f"{spec.max_batch_size}, {max_queue_size}, {max_restarts}"
            )
        self.spec = spec
        self.max_batch_size = spec.max_batch_size
        self.max_queue_size = max_queue_size
        self.metrics = metrics or ServerMetrics()
        self.error: str | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._inflight: dict[int, _InFlight] = {}
        self._jobs: dict[int, EmbeddingJob] = {}
        self._running = 0
        self._closing = False
        self._process = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self.max_restarts = max_restarts
        self.on_give_up = on_give_up
        self.restarting = False  # a dead child is being replaced
        self.gave_up = False  # more than max_restarts failures in a row: no more restarts
        self.restarts = 0  # children started after the first
        self._failures = 0  # deaths and failed loads since a child last finished a request
        self._up = False
        self._closed = threading.Event()
        self._restart_timeout = _RESTART_TIMEOUT_MIN

    # ---------------------------------------------------------------------------------------------- lifecycle
    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def alive(self) -> bool:
        return self._up and not self._closing and self._process is not None and self._process.is_alive()

    def start(self, timeout: float | None = None) -> tuple[GenerationModelCard | None, EmbeddingModelCard | None]:
        """Start the child and wait until its models are loaded; their cards. EngineStartError when it cannot."""
        began = time.monotonic()
        llm, embedder = self._spawn(timeout)
        self._restart_timeout = max(_RESTART_TIMEOUT_MIN, 5 * (time.monotonic() - began))
        if llm is not None:
            from ..inference import ChatTokenizer

            llm.tokenizer = ChatTokenizer.from_folder(Path(llm.folder))
        return llm, embedder

    def _spawn(self, timeout: float | None, restart: bool = False):
        """Start a child, wait for its "ready" and start its reader thread; the child's model cards."""
        context = multiprocessing.get_context("spawn")
        conn, child = context.Pipe()
        process = context.Process(target=_engine_main, args=(child, self.spec), name="paddle-qwen2-engine", daemon=True)
        process.start()
        child.close()
        try:
            kind, payload = _wait_ready(conn, process, timeout)
        except BaseException:
            conn.close()
            _stop(process)
            raise
        with self._lock:
            if self._closing:  # closed while this child loaded
                conn.close()
                _stop(process)
                raise EngineStartError("the server is shutting down")
            self._conn, self._process = conn, process
            self._up, self.error, self.restarting = True, None, False
            if restart:
                self.restarts += 1
                self.metrics.engine_restarts.inc()
        self._reader = threading.Thread(
            target=self._read, args=(conn, process), name="paddle-qwen2-engine-reader", daemon=True
        )
        self._reader.start()
        return payload

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (sequences still queued or running end with an error event) and wait for it."""
        with self._lock:
            if self._closing or self._process is None:
                return
            self._closing = True
        self._closed.set()
        with contextlib.suppress(SchedulerClosed):
            self._send(("close",))
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        _stop(self._process)

    # ------------------------------------------------------------------------------------------- client side
    def submit(self, requests: list[GenerationRequest]) -> None:
        """Queue all of `requests` or none: QueueFull when the running set and the queue cannot take them all."""
        with self._lock:
            self._check_open()
            self._forget_cancelled()
            room = self.max_queue_size + self.max_batch_size - len(self._inflight)
            if len(requests) > room:
                running = min(self._running, len(self._inflight))
                raise QueueFull(
                    f"the server is at capacity: {running} sequences running (at most "
                    f"{self.max_batch_size}) and {len(self._inflight) - running} waiting (at most "
                    f"{self.max_queue_size}); retry later"
                )
            now = time.perf_counter()
            items = []
            for request in requests:
                rid = next(self._ids)
                request.arrival = now
                self._inflight[rid] = _InFlight(request, last=now)
                sequence = request.sequence
                items.append((rid, list(sequence.prompt_ids), sequence.params, request.index))
                self.metrics.prompt_tokens.inc(len(sequence.prompt_ids))
            self.metrics.queued.set(len(self._inflight) - min(self._running, len(self._inflight)))
        self._send(("generate", items))

    def submit_embedding(self, job: EmbeddingJob) -> None:
        with self._lock:
            self._check_open()
            if len(self._jobs) >= max(self.max_queue_size, 1):
                raise QueueFull(f"the server is at capacity: {len(self._jobs)} embedding requests waiting")
            jid = next(self._ids)
            self._jobs[jid] = job
        self._send(("embed", jid, list(job.texts)))

    def wake(self) -> None:
        """Pass the cancellations (`request.cancel()`) on: those rows leave the batch at the child's next step."""
        with self._lock:
            cancelled = self._forget_cancelled()
        if cancelled:
            with contextlib.suppress(SchedulerClosed):  # nothing left to cancel in a process that is gone
                self._send(("cancel", cancelled))

    def _forget_cancelled(self) -> list[int]:
        cancelled = [rid for rid, entry in self._inflight.items() if entry.request.cancelled]
        for rid in cancelled:
            del self._inflight[rid]
            self.metrics.finished.labels(reason="cancelled").inc()
        return cancelled

    def _check_open(self) -> None:
        if not self.alive:
            raise SchedulerClosed(self.error or "the server is shutting down")

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone; the reader fails what is in flight
            if not self._closing:
                self.error = self.error or f"the engine process is gone: {exc}"
                raise SchedulerClosed(self.error) from None

    # ------------------------------------------------------------------------------------------- reader side
    def _read(self, conn, process) -> None:
        """Deliver the child's messages until it stops; then fail whatever is still in flight and, unless the
        server closes, replace the child."""
        error = None
        try:
            while True:
                kind, *payload = conn.recv()
                if kind == "events":
                    self._deliver(*payload)
                elif kind == "embedded":
                    self._embedded(*payload)
                elif kind == "prefix_cache":
                    self._prefix_cache(*payload)
                elif kind == "stopped":
                    error = None if self._closing else payload[0] or "the engine process stopped"
                    break
        except (EOFError, OSError):
            if not self._closing:
                process.join(5)
                error = f"the engine process exited unexpectedly (exit code {process.exitcode})"
        except BaseException as exc:  # a bug here must not leave requests hanging
            error = f"the engine reader stopped: {type(exc).__name__}: {exc}"
            logger.exception("engine reader")
        finally:
            self._lost(error)
        if error is not None and not self._closing:
            conn.close()
            _stop(process)
            self._recover(error)

    def _lost(self, error: str | None) -> None:
        """The child is gone (or going): fail what is in flight with `error` (or "shutting down")."""
        with self._lock:
            self._up = False
            if error is not None and not self._closing:
                self.restarting = self._failures < self.max_restarts
                self.error = f"{error}; the engine is restarting" if self.restarting else error
        self._fail_all(self.error or "the server is shutting down")

    def _recover(self, error: str) -> None:
        """Start a new child after a backoff; again while that fails, until `max_restarts` failures in a row."""
        while not self._closing:
            self._failures += 1
            if self._failures > self.max_restarts:
                self._give_up(error)
                return
            delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (self._failures - 1))
            attempt = f"attempt {self._failures} of {self.max_restarts}"
            with self._lock:
                self.restarting = True
                self.error = f"{error}; the engine is restarting ({attempt})"
            logger.warning("%s; restarting it in %.1fs (%s)", error, delay, attempt)
            if self._closed.wait(delay):
                return
            try:
                self._spawn(self._restart_timeout, restart=True)
            except (EngineStartError, OSError) as exc:
                error = f"the restarted engine process failed: {exc}"
                continue
            logger.warning("the engine process is back (restart %d, pid %d)", self.restarts, self._process.pid)
            return

    def _give_up(self, error: str) -> None:
        message = (
            f"{error}; the engine process failed {self._failures} times in a row (more than "
            f"--max-engine-restarts {self.max_restarts}): giving up"
        )
        with self._lock:
            self.restarting, self.gave_up, self.error = False, True, message
        logger.error("%s", message)
        if self.on_give_up is not None:
            self.on_give_up(message)

    def _deliver(self, events: list[tuple], running: int, waiting: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self._running = running
            self.metrics.running.set(running)
            self.metrics.queued.set(waiting)
            delivered = []
            for rid, event in events:
                entry = self._inflight.get(rid)
                if entry is None:  # cancelled here already
                    continue
                self._count(entry, now, len(event.token_ids), event.finish_reason)
                if event.finish_reason is not None:
                    del self._inflight[rid]
                    if event.error is None:
                        self._failures = 0  # this child serves: a later death starts a new count
                delivered.append((entry.request, event))
        for request, event in delivered:
            if not request.cancelled:
                request.emit(event)

    def _count(self, entry: _InFlight, now: float, tokens: int, finish_reason: str | None) -> None:
        if tokens:
            self.metrics.generation_tokens.inc(tokens)
            if entry.first:
                self.metrics.time_to_first_token.observe(now - entry.request.arrival)
            else:
                self.metrics.time_per_output_token.observe(now - entry.last)
            entry.first, entry.last = False, now
        if finish_reason is not None:
            self.metrics.finished.labels(reason=finish_reason).inc()

    def _prefix_cache(self, queries: int, hits: int, hit_tokens: int, nbytes: int) -> None:
        """The child's prefix cache since its last report: lookups, hits and tokens saved added, bytes now held."""
        self.metrics.prefix_cache_queries.inc(queries)
        self.metrics.prefix_cache_hits.inc(hits)
        self.metrics.prefix_cache_hit_tokens.inc(hit_tokens)
        self.metrics.prefix_cache_bytes.set(nbytes)

    def _embedded(self, jid: int, vectors, counts, error: str | None) -> None:
        with self._lock:
            job = self._jobs.pop(jid, None)
        if job is None or job.cancelled:
            return
        if error is not None:
            job.done(None, None, RuntimeError(error))
            return
        self._failures = 0
        self.metrics.embedding_tokens.inc(sum(counts))
        job.done(vectors, counts)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            inflight, self._inflight = list(self._inflight.values()), {}
            jobs, self._jobs = list(self._jobs.values()), {}
            self.metrics.running.set(0)
            self.metrics.queued.set(0)
        for entry in inflight:
            self.metrics.finished.labels(reason="error").inc()
            if not entry.request.cancelled:
                entry.request.emit(TokenEvent(entry.request.index, finish_reason="error", error=message))
        for job in jobs:
            if not job.cancelled:
                job.done(None, None, RuntimeError(message))


def _wait_ready(conn, process, timeout: float | None) -> tuple[str, Any]:
    """The child's ("ready", cards) message; EngineStartError when it fails, exits or takes longer than `timeout`."""
    if not conn.poll(timeout):
        raise EngineStartError(f"the engine process did not load its models within {timeout:.0f}s")
    try:
        kind, payload = conn.recv()
    except (EOFError, OSError):
        process.join(5)
        raise EngineStartError(
            f"the engine process exited with code {process.exitcode} while loading (see the log above)"
        ) from None
    if kind != "ready":
        raise EngineStartError(payload)
    return kind, payload


def _stop(process) -> None:
    """Wait a little for `process` to end, then kill it."""
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


# ------------------------------------------------------------------------------------------------- the child
class _EngineLoop(Scheduler):
    """The child's `Scheduler`, run on the process's one thread: each step first takes every message the parent
    sent meanwhile (new sequences join at this step's prefill, cancelled ones leave), then runs the step, then
    sends what the step's sequences emitted as one message. One thread because a predictor run holds the GIL: a
    second thread reading the pipe got the GIL only between steps, so requests arriving together reached the
    scheduler steps apart and were prefilled one call each."""

    def __init__(self, conn, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conn = conn
        self.outbox: list[tuple] = []
        self.finished_embeddings: list[tuple] = []
        self.reported = (0, 0)  # the running and waiting counts the parent last heard of
        self.requests: dict[int, GenerationRequest] = {}  # by the parent's id, until they finish
        self.prefix_reported = (0, 0, 0, 0)  # the prefix cache's counters and bytes the parent last heard of

    def run(self) -> None:
        """Serve until the parent says close or goes away (then fail what is left)."""
        self._thread = threading.current_thread()
        self._loop()

    def _idle(self) -> bool:
        return not (self._waiting or self._embeddings or self._running)

    def _step(self) -> bool:
        if not self._receive(block=self._idle()):
            return False
        if self._idle():  # only cancellations of sequences already gone
            return True
        alive = super()._step()
        self.flush()
        return alive

    def _fail_all(self, message: str) -> None:
        super()._fail_all(message)
        self.flush()

    # --------------------------------------------------------------------------------------------- messages
    def _receive(self, block: bool) -> bool:
        """Handle every waiting message (wait for one first when `block`); False when the parent is done."""
        try:
            if block:
                self.conn.poll(None)
            while self.conn.poll(0):
                kind, *payload = self.conn.recv()
                if kind == "close":
                    return False
                getattr(self, f"_on_{kind}")(*payload)
        except (EOFError, OSError):  # the parent is gone
            return False
        return True

    def _on_generate(self, items: list[tuple]) -> None:
        from ..inference import GenerationSequence

        for rid in [rid for rid, request in self.requests.items() if request.done]:
            del self.requests[rid]
        batch = []
        for rid, prompt_ids, params, index in items:
            try:  # the parent built the same sequence already: this fails only on a bug, for this request alone
                sequence = GenerationSequence(prompt_ids, params, self.llm.tokenizer, self.llm.max_model_len)
            except Exception as exc:
                self.emitter(rid)(TokenEvent(index, finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                continue
            self.requests[rid] = GenerationRequest(sequence, self.emitter(rid), index)
            batch.append(self.requests[rid])
        self.submit(batch)

    def _on_cancel(self, rids: list[int]) -> None:
        for rid in rids:
            request = self.requests.pop(rid, None)
            if request is not None:
                request.cancel()

    def _on_embed(self, jid: int, texts: list[str]) -> None:
        def done(vectors, counts, error=None) -> None:
            message = None if error is None else f"{type(error).__name__}: {error}"
            self.finished_embeddings.append(("embedded", jid, vectors, counts, message))

        self.submit_embedding(EmbeddingJob(texts, done))

    def emitter(self, rid: int):
        def emit(event: TokenEvent) -> None:
            self.outbox.append((rid, event))

        return emit

    def flush(self) -> None:
        """Send the step's events (with the running and waiting counts) and finished embeddings."""
        running, waiting = len(self._running), len(self._waiting)
        events, self.outbox = self.outbox, []
        embedded, self.finished_embeddings = self.finished_embeddings, []
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            self._report_prefix_cache()  # before the events: a finished request's hits are counted when it ends
            if events or (running, waiting) != self.reported:
                self.conn.send(("events", events, running, waiting))
                self.reported = (running, waiting)
            for message in embedded:
                self.conn.send(message)

    def _report_prefix_cache(self) -> None:
        if self.prefix_cache is None:
            return
        stats = self.prefix_cache.stats
        now = (stats.queries, stats.hits, stats.hit_tokens, stats.bytes)
        if now != self.prefix_reported:
            added = [after - before for after, before in zip(now[:3], self.prefix_reported[:3])]
            self.conn.send(("prefix_cache", *added, now[3]))
            self.prefix_reported = now


# Set in the engine process before paddle loads (a value already in the environment wins). KMP_BLOCKTIME=0: OpenMP
# workers go to sleep as soon as a parallel region ends instead of spinning (Intel OpenMP spins 200 ms by default),
# so a spinning worker does not hold the core the HTTP process needs to send each step's events; prefills (oneDNN's
# many short parallel regions) are slower for it.
ENGINE_ENVIRONMENT = {"KMP_BLOCKTIME": "0"}


def _engine_main(conn, spec: EngineSpec) -> None:
    """The engine process: load the models, report their cards, then run the engine loop."""
    # the HTTP process owns SIGINT / SIGTERM (a Ctrl-C reaches the whole process group): it drains, then closes us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ..console import configure_console
    from ..runtime import configure_cpu_threads, keep_freed_memory

    configure_console()  # quiet unless the parent was verbose (PADDLE_QWEN2_LOG=debug, inherited)
    for key, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    settings = {**configure_cpu_threads(), **{key: os.environ[key] for key in ENGINE_ENVIRONMENT}}
    keep_freed_memory()  # this process computes with paddle only (see runtime.keep_freed_memory)
    try:
        llm, embedder, cards = _load(spec, " ".join(f"{k}={v}" for k, v in settings.items()))
    except (ValueError, OSError) as exc:  # EngineError, EmbeddingError, ExportError, unreadable files
        conn.send(("failed", str(exc)))
        conn.close()
        return
    prefix_cache = llm.make_prefix_cache(spec.prefix_cache_mb << 20) if llm and spec.prefix_cache_mb else None
    engine = _EngineLoop(
        conn, llm, embedder, spec.max_batch_size, _UNBOUNDED, None, spec.step_delay, prefix_cache=prefix_cache
    )
    conn.send(("ready", cards))
    engine.run()
    with contextlib.suppress(OSError):
        conn.send(("stopped", engine.error))
    conn.close()


def _load(spec: EngineSpec, cpu_settings: str):
    """The models of `spec` and their cards (the generation card's description ends with `cpu_settings`)."""
    llm = embedder = None
    llm_card = embedder_card = None
    if spec.model:
        from ..inference import LLM

        llm = LLM.from_pretrained(
            spec.model,
            engine=spec.engine,
            weights=spec.weights,
            onednn=spec.onednn,
            max_model_len=spec.max_model_len,
            name=spec.name,
        )
        llm_card = GenerationModelCard(
            llm.name, str(llm.folder), llm.max_model_len, llm.generation_config, f"{llm.describe()}; {cpu_settings}"
        )
    if spec.embedding_model and spec.engine != "dygraph":
        from ..inference.embedding import InferenceEmbeddingModel

        embedder = InferenceEmbeddingModel.from_pretrained(spec.embedding_model, weights=spec.weights)
    elif spec.embedding_model:
        from ..embedding.model import EmbeddingModel

        embedder = EmbeddingModel.from_pretrained(spec.embedding_model)
    if embedder is not None:
        embedder_card = EmbeddingModelCard(int(embedder.dimension), bool(embedder.normalizes()), embedder.vocab_size)
    return llm, embedder, (llm_card, embedder_card)
