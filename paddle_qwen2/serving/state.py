"""`ServerState`: what the routes serve (the models, their names, the scheduler, the API key, the metrics) and the
checks every handler makes before it submits work.

    state = ServerState(scheduler, llm=llm, embedder=embedder, api_key="sk-...")
    state.check_model(body.model, "generation")      # 404 unless it is the served model
    state.submit(requests)                           # 503 when draining, dead or restarting, 429 when full
    status, body = state.health()                    # GET /health

`scheduler` is a `Scheduler` or anything with its client side (`EngineProcess`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .metrics import ServerMetrics
from .protocol import APIError, error_body, now
from .scheduler import EmbeddingJob, GenerationRequest, QueueFull, Scheduler, SchedulerClosed

__all__ = ["ServerState"]


@dataclass
class ServerState:
    """What the routes serve: the models (either may be None), their names, the scheduler, the key."""

    scheduler: Scheduler
    llm: Any = None
    embedder: Any = None
    llm_name: str | None = None
    embedder_name: str | None = None
    api_key: str | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    accepting: Callable[[], bool] = lambda: True  # False once the server drains for shutdown
    created: int = field(default_factory=now)

    def __post_init__(self) -> None:
        if self.llm is not None and self.llm_name is None:
            self.llm_name = self.llm.name
        self.scheduler.metrics = self.metrics
        self.metrics.engine_up.set_function(lambda: float(self.scheduler.alive))

    def health(self) -> tuple[int, dict]:
        """`/health`: 200 and the model names while the engine serves; else 503 with an OpenAI error object and
        `status` "restarting" (the engine process died and a new one is loading) or "unavailable"."""
        if self.scheduler.alive:
            return 200, {"status": "ok", "models": self.model_names()}
        status = "restarting" if getattr(self.scheduler, "restarting", False) else "unavailable"
        message = self.scheduler.error or "the engine is not running"
        return 503, {"status": status, **error_body(message, "service_unavailable", code="unavailable")}

    def model_names(self) -> list[str]:
        return [n for n in (self.llm_name, self.embedder_name) if n is not None]

    def check_model(self, name: str, task: str) -> None:
        """404 unless `name` is the served model of `task` ("generation" or "embedding")."""
        served = self.llm_name if task == "generation" else self.embedder_name
        if name == served:
            return
        detail = f"this server's {task} model is `{served}`" if served else f"this server has no {task} model"
        raise APIError(404, f"The model `{name}` does not exist ({detail})", param="model", code="model_not_found")

    def check_accepting(self) -> None:
        """503 once the server drains for shutdown or the scheduler is dead."""
        if not self.accepting() or not self.scheduler.alive:
            raise APIError(503, self.scheduler.error or "the server is shutting down", code="unavailable")

    def engine_error(self, message: str) -> APIError:
        """The error of a request that the engine failed: 503 ("unavailable": retry) when the engine process is
        down or restarting, else 500 ("engine_error")."""
        if not self.scheduler.alive:
            return APIError(503, message, code="unavailable")
        return APIError(500, message, type="server_error", code="engine_error")

    def submit(self, requests: list[GenerationRequest]) -> None:
        """Queue generation requests (the sequences of one HTTP request); 503 / 429 as `APIError`."""
        self.check_accepting()
        with _scheduler_errors():
            self.scheduler.submit(requests)

    def submit_embedding(self, job: EmbeddingJob) -> None:
        """Queue an embedding job; 503 / 429 as `APIError`."""
        self.check_accepting()
        with _scheduler_errors():
            self.scheduler.submit_embedding(job)

    def cancel(self, requests: list[GenerationRequest]) -> None:
        """Cancel the requests not done yet; their rows leave the batch at the scheduler's next step."""
        live = [r for r in requests if not r.done]
        for request in live:
            request.cancel()
        if live:
            self.scheduler.wake()


@contextlib.contextmanager
def _scheduler_errors() -> Iterator[None]:
    """The scheduler's refusals as OpenAI errors: a full queue is 429, a closing server 503."""
    try:
        yield
    except QueueFull as exc:
        raise APIError(429, str(exc), code="rate_limit_exceeded") from None
    except SchedulerClosed as exc:
        raise APIError(503, str(exc), code="unavailable") from None
