"""Log-probabilities of a prompt's own tokens (completions' `echo` with `logprobs`, what lm-eval's
`local-completions` scores), with the one-step decode program the engine already runs.

    scores = prompt_logprobs(llm, prompt_ids, k=5)   # [None, TokenLogprob of prompt[1], ..., of prompt[-1]]

The decode program returns the logits of the last position of a run only. So the prompt but its last token is
prefilled once (its last logits score the prompt's last token) and its cache is reused for the other positions:
row `j` of a follow-up run is token `j` on top of the cache with only positions `< j` unmasked. The mask gives the
row's position (`j`) and hides the later keys, so each row is the model at position `j` alone: the logits that
score token `j + 1`. Rows go in runs of at most `ROW_TOKENS` cached tokens (the cache is repeated per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .sampling import TokenLogprob, token_logprob

__all__ = ["prompt_logprobs", "ROW_TOKENS"]

ROW_TOKENS = 16384  # cached tokens (rows x prompt length) one follow-up run may hold


def prompt_logprobs(llm: Any, prompt_ids: Sequence[int], k: int = 0) -> list[TokenLogprob | None]:
    """One entry per prompt token: None for the first (nothing precedes it), then each token's `TokenLogprob`
    (float64 log-softmax of the raw logits that predict it, with the `k` most likely tokens) given the tokens
    before it. `llm` is an `LLM` (either engine)."""
    prompt = [int(t) for t in prompt_ids]
    if len(prompt) < 2:
        return [None] * len(prompt)
    last, batch = llm.prefill([prompt[:-1]])
    scores: list[TokenLogprob | None] = [None]
    width = len(prompt) - 1  # cached prompt positions
    rows_per_run = max(1, ROW_TOKENS // batch.mask.shape[1])
    for start in range(0, width - 1, rows_per_run):
        rows = list(range(start, min(start + rows_per_run, width - 1)))
        logits = _run_positions(llm, batch, prompt, rows)
        scores += [token_logprob(logits[i], prompt[j + 1], k) for i, j in enumerate(rows)]
    scores.append(token_logprob(last[0], prompt[-1], k))
    return scores


def _run_positions(llm: Any, batch: Any, prompt: list[int], rows: list[int]) -> np.ndarray:
    """Logits `[len(rows), vocab]` at positions `rows`: token `j` over the cache with columns `< j` unmasked."""
    from .engine import Batch

    width = batch.mask.shape[1]
    real = np.flatnonzero(batch.mask[0])  # the cache's columns of prompt positions 0, 1, ... (padding skipped)
    mask = np.zeros((len(rows), width + 1), dtype=np.int64)
    for i, j in enumerate(rows):
        mask[i, real[:j]] = 1
    mask[:, width] = 1
    cache = batch.tile(len(rows))
    ids = np.asarray([prompt[j] for j in rows], dtype=np.int64).reshape(-1, 1)
    return llm._run(ids, Batch(cache, mask, batch.past_axis))
