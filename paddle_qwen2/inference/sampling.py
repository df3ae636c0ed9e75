"""Host-side next-token sampling for the inference engine (numpy only, no paddle).

`SamplingParams` holds the per-request decoding settings (OpenAI / vLLM style names) and checks them;
`SamplingParams.from_generation_config` reads a checkpoint's `generation_config.json` the way vLLM does.
`Sampler.sample` turns one row of float32 logits into a token id in vLLM's order: logit_bias -> repetition penalty
(HF's rule, over prompt and generated ids) -> frequency and presence penalties (OpenAI's formula, over the generated
ids only) -> (greedy: argmax) -> temperature -> top-k -> top-p -> softmax (float64) -> draw. Without logit_bias and
the OpenAI penalties this is exactly the order of HF transformers' `generate`. `processed_logits` is that pipeline
up to (not including) the softmax, with -inf for the removed tokens. `token_logprob` is the log-softmax of the raw
logits (before any of that, as OpenAI reports logprobs) at the chosen token and the most likely ones.

Everything is O(vocab) per token with small constants: top-k uses selection (`np.partition`, no sort), and
top-p sorts only the tokens that can matter to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .guided import GuidedSpec

__all__ = [
    "MAX_LOGIT_BIAS",
    "MAX_LOGPROBS",
    "MAX_PENALTY",
    "MAX_STOP_STRINGS",
    "MAX_TEMPERATURE",
    "SamplingParams",
    "Sampler",
    "TokenLogprob",
    "apply_penalties",
    "processed_logits",
    "probabilities",
    "token_logprob",
]

MAX_STOP_STRINGS = 16
MAX_TEMPERATURE = 100.0
MAX_PENALTY = 2.0  # OpenAI's range for presence_penalty / frequency_penalty is [-2, 2]
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value is [-100, 100]
MAX_LOGPROBS = 20  # OpenAI's largest top_logprobs
# generation_config.json keys taken over when `do_sample` is true (repetition_penalty is taken in any case)
_SAMPLING_KEYS = ("temperature", "top_p", "top_k")


@dataclass
class SamplingParams:
    """Decoding settings of one request.

    `max_new_tokens=None` means "up to the context limit"; `temperature=0` is greedy decoding; `top_k=0` and
    `top_p=1` disable those filters; `repetition_penalty=1` disables the penalty; `seed=None` draws from fresh
    OS entropy. `presence_penalty` / `frequency_penalty` (OpenAI's, in [-2, 2], 0 disables them) subtract
    `count * frequency_penalty + (count > 0) * presence_penalty` from each token's logit, `count` being how often
    the token was generated so far (the prompt does not count); `logit_bias` maps token ids to a value in
    [-100, 100] added to their logits. `stop` strings end the generation and are not part of the returned text;
    `stop_token_ids` end it too (in addition to the model's eos ids unless `ignore_eos`). `logprobs` (0 to
    `MAX_LOGPROBS`) asks for each chosen token's log-probability and those of the `logprobs` most likely tokens
    (`token_logprob`); None computes none. `prompt_logprobs` (same range) asks for them of the prompt's tokens
    too (`prompt_logprobs.prompt_logprobs`). `guided` (a `guided.GuidedSpec`) constrains the answer to a grammar:
    each step's logits are masked to the tokens it allows before anything above is applied (logprobs stay the raw
    logits'), and the answer ends at the eos token once the grammar is complete, `ignore_eos` or not.
    """

    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    guided: GuidedSpec | None = None

    def __post_init__(self) -> None:
        # The OpenAI API accepts a single string for `stop`; tuples are accepted for convenience.
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, tuple):
            self.stop = list(self.stop)
        if isinstance(self.stop_token_ids, tuple):
            self.stop_token_ids = list(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature 0, or top-k 1)."""
        return self.temperature == 0 or self.top_k == 1

    def validate(self) -> SamplingParams:
        """Raise `ValueError` naming the field and its allowed range for the first bad setting; return self."""
        _check_int("max_new_tokens", self.max_new_tokens, ">= 1 or None", minimum=1, optional=True)
        temperature_range = f"in [0, {MAX_TEMPERATURE:g}] (0 is greedy)"
        _check_float("temperature", self.temperature, temperature_range, lambda v: 0 <= v <= MAX_TEMPERATURE)
        _check_float("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_int("top_k", self.top_k, ">= 0 (0 disables it)", minimum=0)
        _check_float("repetition_penalty", self.repetition_penalty, "> 0 (1 disables it)", lambda v: v > 0)
        _check_int("seed", self.seed, "an integer >= 0 or None", minimum=0, optional=True)
        _check_stop(self.stop)
        if not isinstance(self.stop_token_ids, list) or not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a list of integers >= 0, got {self.stop_token_ids!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        penalty_range = f"in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}] (0 disables it)"
        for name in ("presence_penalty", "frequency_penalty"):
            _check_float(name, getattr(self, name), penalty_range, lambda v: -MAX_PENALTY <= v <= MAX_PENALTY)
        _check_logit_bias(self.logit_bias)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check_int(name, value, f"in [0, {MAX_LOGPROBS}] or None", minimum=0, optional=True)
            if value is not None and value > MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}] or None, got {value!r}")
        if self.guided is not None and not isinstance(self.guided, GuidedSpec):
            raise ValueError(f"guided must be a GuidedSpec or None, got {type(self.guided).__name__}")
        return self

    @classmethod
    def from_generation_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> SamplingParams:
        """Defaults from an HF `generation_config.json` dict, then `overrides` (None values ignored), validated.

        With `do_sample` true, temperature / top_p / top_k are taken from `cfg` when present (absent keys keep this
        class's defaults, as in vLLM; note HF's own `generate` would use top_k=50 when the key is absent). With
        `do_sample` false or absent the result is greedy (temperature 0). `repetition_penalty` and `max_new_tokens`
        are taken in both cases. Eos ids are left to the caller (they are model-level, not per-request).
        """
        values: dict[str, Any] = {}
        keys = ("repetition_penalty", "max_new_tokens") + (_SAMPLING_KEYS if cfg.get("do_sample") else ())
        for key in keys:
            if cfg.get(key) is not None:
                values[key] = cfg[key]
        if not cfg.get("do_sample"):
            values["temperature"] = 0.0
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validate()

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (not validated)."""
        return dataclasses.replace(self, **changes)


class Sampler:
    """Draws next tokens for one sequence with fixed `SamplingParams` and its own seeded random generator."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params.validate()
        seed = params.seed
        self.rng = np.random.Generator(np.random.PCG64(seed)) if seed is not None else np.random.default_rng()

    def sample(self, logits: np.ndarray, history: Sequence[int], output_ids: Sequence[int] | None = None) -> int:
        """Next token id from one row of logits [vocab]; `history` = prompt ids + ids generated so far,
        `output_ids` = the ids generated so far (None: all of `history`)."""
        scores = apply_penalties(_as_row(logits), history, self.params, output_ids)
        if self.params.greedy:
            return int(np.argmax(scores))  # first maximal index, as torch.argmax
        scores = _warp(scores, self.params)
        filtered = 0 < self.params.top_k < scores.size or self.params.top_p < 1.0
        keep = np.flatnonzero(scores != -np.inf) if filtered else None
        cdf = _softmax64(scores if keep is None else scores[keep])
        np.cumsum(cdf, out=cdf)
        if not cdf[-1] > 0:
            raise ValueError("logits contain NaN or no finite value")
        # first index whose cdf exceeds u: never a zero-probability token (-inf logits included)
        pick = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), cdf.size - 1)
        return pick if keep is None else int(keep[pick])


class TokenLogprob(NamedTuple):
    """A chosen token's log-probability and the `k` most likely tokens' `(id, logprob)`, most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(logits: np.ndarray, token: int, k: int = 0) -> TokenLogprob:
    """The float64 log-softmax of the raw logits `[vocab]` at `token` and at the `k` largest logits (most likely
    first, equal ones by id). One pass over the vocabulary plus a selection of `k`."""
    row = np.asarray(logits, dtype=np.float64)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array [vocab], got shape {row.shape}")
    peak = float(np.max(row))
    log_total = peak + float(np.log(np.sum(np.exp(row - peak))))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, row.size)
        ids = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
        ids = ids[np.lexsort((ids, -row[ids]))]
        top = tuple((int(i), float(row[i] - log_total)) for i in ids)
    return TokenLogprob(int(token), float(row[int(token)] - log_total), top)


def processed_logits(
    logits: np.ndarray, history: Sequence[int], params: SamplingParams, output_ids: Sequence[int] | None = None
) -> np.ndarray:
    """The float32 logits `Sampler.sample` draws from: biased and penalized, then (unless temperature is 0)
    tempered, top-k and top-p filtered with -inf for removed tokens. With temperature 0 the sampler takes their
    argmax. `history` and `output_ids` as in `Sampler.sample`."""
    scores = apply_penalties(_as_row(logits), history, params, output_ids)
    return scores if params.temperature == 0 else _warp(scores, params)


def probabilities(
    logits: np.ndarray, history: Sequence[int], params: SamplingParams, output_ids: Sequence[int] | None = None
) -> np.ndarray:
    """The float64 distribution [vocab] `Sampler.sample` draws from (one-hot at the argmax when greedy)."""
    if params.greedy:
        scores = apply_penalties(_as_row(logits), history, params, output_ids)
        probs = np.zeros(scores.shape, dtype=np.float64)
        probs[int(np.argmax(scores))] = 1.0
        return probs
    return _softmax64(processed_logits(logits, history, params, output_ids))


def apply_penalties(
    scores: np.ndarray, history: Sequence[int], params: SamplingParams, output_ids: Sequence[int] | None = None
) -> np.ndarray:
    """`params`' logit_bias, repetition penalty, then frequency and presence penalties on a float32 row [vocab]
    (vLLM's order). `history` = prompt + generated ids (the repetition penalty's), `output_ids` = the generated ids
    (the OpenAI penalties'; None: all of `history`). Returns a new array (the input is not modified)."""
    out = apply_repetition_penalty(_apply_logit_bias(scores, params.logit_bias), history, params.repetition_penalty)
    if params.frequency_penalty or params.presence_penalty:
        generated = history if output_ids is None else output_ids
        if len(generated):
            ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
            penalty = counts * np.float32(params.frequency_penalty) + np.float32(params.presence_penalty)
            out[ids] -= penalty.astype(np.float32)
    return out


def _apply_logit_bias(scores: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    """`scores` with `bias[id]` added to each biased id (the input itself when there is no bias)."""
    if not bias:
        return scores
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    if ids.max() >= scores.size:
        raise ValueError(f"logit_bias: token id {int(ids.max())} is outside the vocabulary [0, {scores.size})")
    out = scores.copy()
    out[ids] += np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return out


def apply_repetition_penalty(scores: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """HF's RepetitionPenaltyLogitsProcessor: for each distinct id in `history`, score<0 -> *penalty, else /penalty.
    Returns a new array (the input is not modified)."""
    if penalty == 1.0 or len(history) == 0:
        return scores.copy()
    out = scores.copy()
    ids = np.unique(np.asarray(history, dtype=np.int64))
    picked = out[ids]
    out[ids] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))
    return out


def _warp(scores: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Temperature, top-k, top-p (HF's warpers in HF's order) applied in place to a float32 row; returns it."""
    if params.temperature != 1.0:
        np.divide(scores, np.float32(params.temperature), out=scores)
    if 0 < params.top_k < scores.size:
        _top_k_inplace(scores, params.top_k)
    if params.top_p < 1.0:
        _top_p_inplace(scores, params.top_p)
    return scores


def _top_k_inplace(scores: np.ndarray, k: int) -> None:
    """TopKLogitsWarper: -inf for every score below the k-th largest (ties with it are kept)."""
    scores[scores < _kth_largest(scores, k)] = -np.inf


def _kth_largest(scores: np.ndarray, k: int, block: int = 64) -> float:
    """The k-th largest value. The k-th largest of the block maxima is a lower bound for it, so only the (few)
    scores at or above that bound go through `np.partition`, not the whole vocabulary."""
    blocks = scores.size // block
    if blocks < 4 * k:
        return scores[np.argpartition(scores, scores.size - k)[scores.size - k]]
    maxima = scores[: blocks * block].reshape(blocks, block).max(axis=1)
    candidates = scores[scores >= np.partition(maxima, blocks - k)[blocks - k]]
    return np.partition(candidates, candidates.size - k)[candidates.size - k]


def _top_p_inplace(scores: np.ndarray, top_p: float) -> None:
    """TopPLogitsWarper: sort ascending, remove tokens whose cumulative probability is <= 1 - top_p, keep >= 1.

    Tokens with probability <= (1 - top_p) / vocab together hold at most 1 - top_p, and they come first in the
    ascending order, so they are removed without sorting; only the others are sorted (usually a few hundred).
    """
    probs = _softmax64(scores)
    unlikely = probs <= (1.0 - top_p) / probs.size
    candidates = np.flatnonzero(~unlikely)  # never empty: the top token has probability >= 1 / vocab
    order = candidates[np.argsort(scores[candidates])]  # ties in any order, as torch.sort
    cumulative = np.cumsum(probs[order])
    cumulative += probs.sum(where=unlikely)
    remove = cumulative <= 1.0 - top_p
    remove[-1] = False
    scores[unlikely] = -np.inf
    scores[order[remove]] = -np.inf


def _softmax64(scores: np.ndarray) -> np.ndarray:
    """Softmax in float64 (-inf entries give 0). In place on one new buffer: fresh temporaries of a 150k vocab
    cost more than the arithmetic."""
    out = scores.astype(np.float64)
    out -= float(np.max(scores))
    np.exp(out, out=out)
    out /= out.sum()
    return out


def _as_row(logits: np.ndarray) -> np.ndarray:
    """One row of logits as a float32 numpy vector (not a copy when it already is one)."""
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1 or row.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array [vocab], got shape {row.shape}")
    return row


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, allowed: str, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_float(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not ok(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_logit_bias(bias: Any) -> None:
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be a dict {{token id: bias}}, got {bias!r}")
    for key, value in bias.items():
        if not _is_int(key) or key < 0:
            raise ValueError(f"logit_bias: key {key!r} must be a token id (an integer >= 0)")
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if not ok or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            allowed = f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]"
            raise ValueError(f"logit_bias: the value of key {key} must be in {allowed}, got {value!r}")


def _check_stop(stop: Any) -> None:
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"stop must have at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
