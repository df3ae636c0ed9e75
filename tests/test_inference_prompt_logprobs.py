"""`inference.prompt_logprobs`: each prompt token's log-probability (and the k most likely tokens) equals
transformers' log-softmax at the position before it (<= 1e-4), on both engines, in one follow-up run or several."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paddle_qwen2.inference.prompt_logprobs as module
from paddle_qwen2.inference import LLM
from paddle_qwen2.inference.prompt_logprobs import prompt_logprobs

pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")

PROMPT = [17, 230, 1201, 9, 3050, 77, 402, 5, 919, 2048, 64, 311, 4002, 18, 18, 18, 700]
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(chat_checkpoint) -> np.ndarray:
    """transformers' float64 log-softmax [len(PROMPT), vocab] of the "mha" chat checkpoint."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(chat_checkpoint("mha"), attn_implementation="eager")
    with torch.no_grad():
        logits = model.eval()(torch.tensor([PROMPT])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


@pytest.mark.parametrize("engine", ["inference", "dygraph"])
@pytest.mark.parametrize("row_tokens", [module.ROW_TOKENS, 40])  # one follow-up run; runs of 2 rows
def test_prompt_logprobs_equal_transformers(chat_checkpoint, reference, engine, row_tokens, monkeypatch):
    monkeypatch.setattr(module, "ROW_TOKENS", row_tokens)
    llm = LLM.from_pretrained(chat_checkpoint("mha"), engine=engine)
    scores = prompt_logprobs(llm, PROMPT, k=4)
    assert len(scores) == len(PROMPT) and scores[0] is None
    for position in range(1, len(PROMPT)):
        entry, row = scores[position], reference[position - 1]
        assert entry.token == PROMPT[position]
        assert abs(entry.logprob - row[PROMPT[position]]) <= TOL
        top_ids = [t for t, _ in entry.top]
        np.testing.assert_allclose([v for _, v in entry.top], np.sort(row)[::-1][:4], atol=TOL)
        np.testing.assert_allclose(row[top_ids], [v for _, v in entry.top], atol=TOL)


def test_short_prompts(chat_checkpoint, reference):
    llm = LLM.from_pretrained(chat_checkpoint("mha"), engine="dygraph")
    assert prompt_logprobs(llm, PROMPT[:1]) == [None]
    first, second = prompt_logprobs(llm, PROMPT[:2])
    assert first is None and abs(second.logprob - reference[0, PROMPT[1]]) <= TOL and second.top == ()


def test_generate_returns_prompt_logprobs_when_asked(chat_checkpoint, reference):
    from paddle_qwen2.inference import SamplingParams

    llm = LLM.from_pretrained(chat_checkpoint("mha"), engine="dygraph")
    asked = SamplingParams(max_new_tokens=2, temperature=0, prompt_logprobs=2)
    plain, scored = llm.generate([PROMPT, PROMPT], [SamplingParams(max_new_tokens=2, temperature=0), asked])
    assert plain.prompt_logprobs is None and scored.token_ids == plain.token_ids
    assert scored.prompt_logprobs[0] is None and len(scored.prompt_logprobs) == len(PROMPT)
    values = [entry.logprob for entry in scored.prompt_logprobs[1:]]
    np.testing.assert_allclose(values, reference[np.arange(len(PROMPT) - 1), PROMPT[1:]], atol=TOL)
