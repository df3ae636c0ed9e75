"""`GenerationSequence`: one prompt's generation state, shared by `LLM.generate` and the server's scheduler.

Each step the engine hands a row of logits to `choose`, which samples the next token, then `append`s it: the
token is detokenized incrementally (text deltas are whole UTF-8 text), stop strings are matched across deltas, and
the sequence finishes with `finish_reason` "stop" (a stop token or stop string) or "length" (`max_new_tokens`, or
the context is full). With `params.logprobs` set, `choose` also records each chosen token's `TokenLogprob` (the
raw logits' log-softmax) in `logprobs`; otherwise nothing is computed and `logprobs` is None. With `params.guided`
set, `choose` samples from the logits masked by the sequence's `guided.GuidedState` (the logprobs are still the raw
logits'), `append` advances it, and the eos ids always stop the sequence; should the grammar engine fail (a
tokenizer it cannot use, a resource limit) the sequence ends with finish reason "error" and the engine's message as
`stop_reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .detokenize import IncrementalDetokenizer, StopMatcher
from .guided import GuidedState
from .sampling import Sampler, SamplingParams, TokenLogprob, token_logprob
from .tokenization import ChatTokenizer

__all__ = ["Completion", "GenerationSequence"]


@dataclass
class Completion:
    """A finished generation: the generated ids (a stop token included, as transformers and vLLM count it), the
    text (stop token and stop string excluded), why it ended, and the prompt's length; `logprobs` one
    `TokenLogprob` per generated id when they were asked for; `prompt_logprobs` one per prompt token (None for the
    first) when `SamplingParams.prompt_logprobs` asked for them."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    stop_reason: int | str | None = None
    extra: dict = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class GenerationSequence:
    """The state of one prompt being generated; `max_model_len` bounds prompt + generated tokens."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, tokenizer: ChatTokenizer, max_model_len: int):
        if not prompt_ids:
            raise ValueError("the prompt is empty: at least one token is needed")
        if len(prompt_ids) >= max_model_len:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {max_model_len}, and at "
                "least one must be left to generate"
            )
        params.validate()
        self.prompt_ids = list(prompt_ids)
        self.params = params
        room = max_model_len - len(self.prompt_ids)
        self.max_new_tokens = room if params.max_new_tokens is None else min(params.max_new_tokens, room)
        eos = set() if params.ignore_eos and params.guided is None else set(tokenizer.eos_token_ids)
        self.stop_ids = set(params.stop_token_ids) | eos
        self.guided = None if params.guided is None else GuidedState(params.guided, tokenizer)
        self.sampler = Sampler(params)
        self.detokenizer = IncrementalDetokenizer(tokenizer.backend)
        self.stops = StopMatcher(params.stop)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.logprobs: list[TokenLogprob] | None = None if params.logprobs is None else []
        self._history = list(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def choose(self, logits: np.ndarray) -> int:
        """The next token from this row's logits `[vocab]` (its `TokenLogprob` recorded when asked for)."""
        row = logits if self.guided is None else self.guided.mask(logits)
        token = self.sampler.sample(row, self._history, self.token_ids)
        if self.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.params.logprobs or 0))
        return token

    def append(self, token: int) -> str:
        """Add `token`; returns the text that can be shown now (may be empty)."""
        token = int(token)
        self.token_ids.append(token)
        self._history.append(token)
        if self.guided is not None and token not in self.stop_ids:
            self.guided.advance(token)
        if self.guided is not None and self.guided.error is not None:
            return self._finish("error", self.guided.error, self._drain())
        if token in self.stop_ids:
            return self._finish("stop", token, self._drain())
        delta, stopped = self.stops.push(self.detokenizer.push(token))
        if stopped:
            return self._finish("stop", self.stops.matched, delta)
        if len(self.token_ids) >= self.max_new_tokens:
            return self._finish("length", None, delta + self._drain())
        self.text += delta
        return delta

    def _drain(self) -> str:
        """The text held back (an incomplete character, a possible stop string's start) at the end."""
        text, stopped = self.stops.push(self.detokenizer.flush())
        return text if stopped else text + self.stops.flush()

    def _finish(self, reason: str, stop_reason: int | str | None, delta: str) -> str:
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.text += delta
        return delta

    def completion(self) -> Completion:
        return Completion(
            list(self.token_ids),
            self.text,
            self.finish_reason or "length",
            len(self.prompt_ids),
            self.stop_reason,
            logprobs=None if self.logprobs is None else list(self.logprobs),
        )
