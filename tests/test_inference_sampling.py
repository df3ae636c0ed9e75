"""paddle_qwen2.inference.sampling against HF transformers' own logits processors (the reference for `generate`)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
logits_process = pytest.importorskip("transformers.generation.logits_process")

from paddle_qwen2.inference.sampling import (
    Sampler,
    SamplingParams,
    probabilities,
    processed_logits,
    token_logprob,
)

VOCAB = 1000

# (temperature, top_k, top_p, repetition_penalty)
COMBOS = [
    (1.0, 0, 1.0, 1.0),
    (0.7, 0, 1.0, 1.0),
    (1.3, 50, 1.0, 1.0),
    (1.0, 0, 0.9, 1.0),
    (0.6, 20, 0.8, 1.1),
    (0.8, 0, 0.5, 1.3),
    (2.0, 200, 0.95, 0.8),
    (1.0, 5, 1.0, 1.05),
    (0.5, 0, 0.01, 1.0),  # top-p that keeps only the top token
    (1.0, 2000, 0.99, 1.2),  # top-k larger than the vocabulary
    (3.0, 0, 0.3, 2.0),
]


def _logits(seed: int, vocab: int = VOCAB, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def _history(seed: int, vocab: int = VOCAB, n: int = 60) -> list[int]:
    return np.random.default_rng(seed + 1000).integers(0, vocab, size=n).tolist()


def _hf_scores(logits: np.ndarray, history: list[int], temperature: float, top_k: int, top_p: float, penalty: float):
    """Scores after HF's processors in `generate`'s order (repetition penalty, temperature, top-k, top-p)."""
    input_ids = torch.tensor([history], dtype=torch.long)
    scores = torch.from_numpy(logits.copy())[None, :]
    processors = []
    if penalty != 1.0:
        processors.append(logits_process.RepetitionPenaltyLogitsProcessor(float(penalty)))
    if temperature != 0:
        processors.append(logits_process.TemperatureLogitsWarper(float(temperature)))
        if top_k > 0:
            processors.append(logits_process.TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(logits_process.TopPLogitsWarper(top_p))
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores[0].numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature,top_k,top_p,penalty", COMBOS)
def test_probabilities_match_transformers(seed, temperature, top_k, top_p, penalty):
    logits, history = _logits(seed), _history(seed)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    ours = processed_logits(logits, history, params)
    ref = _hf_scores(logits, history, temperature, top_k, top_p, penalty)
    assert ours.dtype == np.float32 and ours.shape == (VOCAB,)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))  # identical masked sets
    ref_probs = torch.from_numpy(ref).double().softmax(-1).numpy()
    np.testing.assert_allclose(probabilities(logits, history, params), ref_probs, rtol=0, atol=1e-6)
    finite = ~np.isneginf(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


def test_processed_logits_does_not_modify_input():
    logits = _logits(3)
    before = logits.copy()
    processed_logits(logits, _history(3), SamplingParams(temperature=0.5, top_k=10, top_p=0.9, repetition_penalty=1.5))
    np.testing.assert_array_equal(logits, before)


def test_top_k_keeps_ties_like_transformers():
    logits = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.5], dtype=np.float32)
    params = SamplingParams(top_k=3)
    ours = processed_logits(logits, [], params)
    ref = _hf_scores(logits, [0], 1.0, 3, 1.0, 1.0)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    assert np.isfinite(ours).sum() == 4  # 3, 3, 2, 2: ties with the 3rd largest are kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [1.0, 1.3, 0.7])
def test_greedy_is_argmax_after_penalty(seed, penalty):
    logits, history = _logits(seed), _history(seed, n=200)
    params = SamplingParams(temperature=0.0, repetition_penalty=penalty)
    assert params.greedy
    penalized = _hf_scores(logits, history, 0.0, 0, 1.0, penalty)
    expected = int(torch.argmax(torch.from_numpy(penalized)))
    assert Sampler(params).sample(logits, history) == expected
    np.testing.assert_array_equal(probabilities(logits, history, params), np.eye(VOCAB)[expected])


def test_greedy_penalty_changes_choice_and_ties_pick_first():
    logits = np.array([0.0, 5.0, 4.9, 5.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []) == 1  # first of the tied maxima
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=1.5)).sample(logits, [1, 3, 1]) == 2
    assert Sampler(SamplingParams(temperature=0.8, top_k=1, seed=0)).sample(logits, []) == 1


def test_seeded_sampling_is_reproducible():
    logits, history = _logits(7), _history(7)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, repetition_penalty=1.1, seed=1234)
    assert len({Sampler(params).sample(logits, history) for _ in range(5)}) == 1
    first, second = Sampler(params), Sampler(params)
    seq_a = [first.sample(logits, history) for _ in range(200)]
    seq_b = [second.sample(logits, history) for _ in range(200)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 5  # it does sample
    other = Sampler(params.replace(seed=4321))
    assert [other.sample(logits, history) for _ in range(200)] != seq_a


def test_unseeded_samplers_differ():
    logits = np.zeros(VOCAB, dtype=np.float32)
    a, b = Sampler(SamplingParams()), Sampler(SamplingParams())
    assert [a.sample(logits, []) for _ in range(50)] != [b.sample(logits, []) for _ in range(50)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=0),
        SamplingParams(temperature=0.7, seed=1),
        SamplingParams(temperature=1.5, top_k=5, seed=2),
        SamplingParams(temperature=1.0, top_p=0.7, seed=3),
        SamplingParams(temperature=0.9, top_k=6, top_p=0.9, repetition_penalty=1.4, seed=4),
    ],
)
def test_empirical_frequencies_match_distribution(params):
    logits = np.array([1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2], dtype=np.float32)
    history = [3, 0, 3]
    expected = probabilities(logits, history, params)
    sampler = Sampler(params)
    n = 20000
    counts = np.bincount([sampler.sample(logits, history) for _ in range(n)], minlength=logits.size)
    assert np.abs(counts / n - expected).max() < 0.02
    assert np.all(counts[expected == 0] == 0)  # masked tokens are never drawn


@pytest.mark.parametrize(
    "temperature,top_k,top_p,penalty",
    [(0.7, 20, 0.8, 1.05), (1.0, 0, 0.9, 1.0), (0.6, 0, 0.999, 1.1), (1.0, 1000, 1.0, 1.0), (0.9, 64, 0.95, 1.0)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_large_vocab_matches_transformers(temperature, top_k, top_p, penalty, ties):
    """A Qwen2-size vocabulary (top-k's block-maxima selection, top-p's partial sort), with and without ties."""
    vocab = 151_936
    logits = _logits(11, vocab=vocab, scale=4.0)
    if ties:
        logits = np.round(logits * 2) / 2  # many equal values, also at the top-k boundary
    history = _history(11, vocab=vocab, n=2000)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty, seed=0)
    ours = processed_logits(logits, history, params)
    ref = _hf_scores(logits, history, temperature, top_k, top_p, penalty)
    if not (ties and top_p < 1):  # with ties at the top-p boundary the kept set depends on the sort's tie order
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
        ref_probs = torch.from_numpy(ref).double().softmax(-1).numpy()
        np.testing.assert_allclose(probabilities(logits, history, params), ref_probs, rtol=0, atol=1e-6)
    token = Sampler(params).sample(logits, history)
    assert np.isfinite(ours[token])


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(temperature=-0.1), r"temperature must be in \[0, 100\]"),
        (dict(temperature=101.0), r"temperature must be in \[0, 100\]"),
        (dict(temperature=float("nan")), r"temperature must be in \[0, 100\]"),
        (dict(temperature="hot"), r"temperature must be in \[0, 100\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), r"top_k must be >= 0"),
        (dict(top_k=2.5), r"top_k must be >= 0"),
        (dict(repetition_penalty=0.0), r"repetition_penalty must be > 0"),
        (dict(repetition_penalty=-1.0), r"repetition_penalty must be > 0"),
        (dict(max_new_tokens=0), r"max_new_tokens must be >= 1 or None"),
        (dict(max_new_tokens=2.0), r"max_new_tokens must be >= 1 or None"),
        (dict(seed=-3), r"seed must be an integer >= 0 or None"),
        (dict(stop=[""]), r"stop must be a list of non-empty strings"),
        (dict(stop=["ok", 3]), r"stop must be a list of non-empty strings"),
        (dict(stop=[f"s{i}" for i in range(17)]), r"stop must have at most 16 strings"),
        (dict(stop_token_ids=[-1]), r"stop_token_ids must be a list of integers >= 0"),
        (dict(ignore_eos="yes"), r"ignore_eos must be a bool"),
        (dict(presence_penalty=2.5), r"presence_penalty must be in \[-2, 2\]"),
        (dict(frequency_penalty=-2.01), r"frequency_penalty must be in \[-2, 2\]"),
        (dict(frequency_penalty=float("nan")), r"frequency_penalty must be in \[-2, 2\]"),
        (dict(logit_bias=[(1, 2.0)]), r"logit_bias must be a dict"),
        (dict(logit_bias={"7": 1.0}), r"logit_bias: key '7' must be a token id"),
        (dict(logit_bias={-1: 1.0}), r"logit_bias: key -1 must be a token id"),
        (dict(logit_bias={7: 100.5}), r"logit_bias: the value of key 7 must be in \[-100, 100\]"),
        (dict(logit_bias={7: True}), r"logit_bias: the value of key 7 must be in \[-100, 100\]"),
    ],
)
def test_validate_rejects(changes, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**changes).validate()
    with pytest.raises(ValueError, match=message):
        Sampler(SamplingParams(**changes))


def test_validate_accepts_edges():
    for params in [
        SamplingParams(),
        SamplingParams(temperature=0, top_p=1.0, top_k=0, max_new_tokens=1, seed=0),
        SamplingParams(temperature=100, top_p=1e-9, top_k=1, repetition_penalty=1e-3),
        SamplingParams(stop=[f"s{i}" for i in range(16)], stop_token_ids=[0, 7]),
        SamplingParams(presence_penalty=-2, frequency_penalty=2.0, logit_bias={0: -100, 7: 100.0, 9: 0.5}),
    ]:
        assert params.validate() is params


def test_stop_string_and_greedy_property():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert not SamplingParams(temperature=0.1, top_k=2).greedy
    assert SamplingParams().stop is not SamplingParams().stop  # no shared mutable default


QWEN_CHAT_CFG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
}


@pytest.mark.parametrize(
    "cfg,overrides,expected",
    [
        (QWEN_CHAT_CFG, {}, dict(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)),
        (
            QWEN_CHAT_CFG,
            dict(temperature=0.2, top_p=None, seed=5, max_new_tokens=None),
            dict(temperature=0.2, top_k=20, top_p=0.8, repetition_penalty=1.05, seed=5, max_new_tokens=None),
        ),
        # do_sample false / absent: greedy, but the repetition penalty is kept
        ({**QWEN_CHAT_CFG, "do_sample": False}, {}, dict(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.05)),
        ({"temperature": 0.7, "top_k": 20}, {}, dict(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)),
        ({"eos_token_id": 4000, "do_sample": False}, {}, dict(temperature=0.0, repetition_penalty=1.0)),
        ({}, dict(temperature=0.9), dict(temperature=0.9, top_k=0, top_p=1.0)),
        # do_sample true with keys absent: this class's defaults (as vLLM), nulls ignored
        ({"do_sample": True, "top_p": None}, {}, dict(temperature=1.0, top_k=0, top_p=1.0)),
        ({"do_sample": True, "max_new_tokens": 64}, dict(stop=["\n\n"]), dict(max_new_tokens=64, stop=["\n\n"])),
    ],
)
def test_from_generation_config(cfg, overrides, expected):
    params = SamplingParams.from_generation_config(cfg, **overrides)
    for name, value in expected.items():
        assert getattr(params, name) == value, name
    assert params.stop_token_ids == []  # eos ids are not handled here


def test_from_generation_config_validates_and_rejects_unknown_overrides():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams.from_generation_config({"do_sample": True, "top_p": 0.0})
    with pytest.raises(TypeError):
        SamplingParams.from_generation_config({}, temprature=0.5)


def test_bundled_generation_config_is_greedy():
    import json
    from pathlib import Path

    cfg = json.loads((Path(__file__).parents[1] / "examples/model/generation_config.json").read_text())
    assert SamplingParams.from_generation_config(cfg).greedy


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 0.5], [-np.inf, -np.inf]])
def test_sample_rejects_nan_or_all_masked_logits(bad):
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match="NaN or no finite value"):
        Sampler(SamplingParams(seed=0)).sample(np.array(bad, dtype=np.float32), [])


def test_logits_shape_is_checked():
    with pytest.raises(ValueError, match="1-D"):
        Sampler(SamplingParams()).sample(np.zeros((2, 5), dtype=np.float32), [])


# ----------------------------------------------------------------------------- presence / frequency / logit_bias
def _openai_reference(logits, history, output_ids, presence=0.0, frequency=0.0, bias=None, repetition=1.0):
    """vLLM's order written out in torch: logit_bias, HF's repetition penalty over prompt + output, then OpenAI's
    `logit[j] -= c[j] * frequency + (c[j] > 0) * presence` with c the counts of the generated ids."""
    scores = torch.from_numpy(np.array(logits, dtype=np.float32))
    for token, value in (bias or {}).items():
        scores[token] += value
    if repetition != 1.0:
        scores = logits_process.RepetitionPenaltyLogitsProcessor(repetition)(torch.tensor([history]), scores[None])[0]
    counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=scores.numel()).float()
    return (scores - counts * frequency - (counts > 0).float() * presence).numpy()


@pytest.mark.parametrize(
    "presence, frequency, bias, repetition",
    [
        (0.5, 0.0, None, 1.0),
        (0.0, 1.2, None, 1.0),
        (-1.0, 0.3, None, 1.0),
        (0.0, 0.0, {3: 5.0, 10: -100.0, 999: 0.25}, 1.0),
        (1.5, -0.7, {3: -3.0}, 1.3),
    ],
)
def test_penalties_and_logit_bias_follow_the_openai_formula(presence, frequency, bias, repetition):
    logits, history = _logits(5), _history(5)
    output_ids = history[-25:] + [3, 3, 3]
    params = SamplingParams(
        temperature=0.8,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=bias or {},
        repetition_penalty=repetition,
    )
    expected = _openai_reference(logits, history + [3, 3, 3], output_ids, presence, frequency, bias, repetition)
    ours = processed_logits(logits, history + [3, 3, 3], params.replace(temperature=1.0), output_ids)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    greedy = params.replace(temperature=0)
    assert Sampler(greedy).sample(logits, history + [3, 3, 3], output_ids) == int(np.argmax(expected))


def test_penalties_count_only_generated_ids_and_default_to_the_whole_history():
    logits = np.zeros(8, dtype=np.float32)
    params = SamplingParams(presence_penalty=1.0, frequency_penalty=0.5)
    got = processed_logits(logits, [1, 1, 2, 5, 5, 5], params, output_ids=[5, 5, 5])
    np.testing.assert_allclose(got, [0, 0, 0, 0, 0, -2.5, 0, 0])
    np.testing.assert_allclose(processed_logits(logits, [1, 1, 2], params), [0, -2, -1.5, 0, 0, 0, 0, 0])
    assert np.array_equal(logits, np.zeros(8, dtype=np.float32))  # the input is not modified


def test_logit_bias_outside_the_vocabulary_is_an_error():
    with pytest.raises(ValueError, match=r"logit_bias: token id 1000 is outside the vocabulary \[0, 1000\)"):
        Sampler(SamplingParams(temperature=0, logit_bias={1000: 1.0})).sample(_logits(0), [])


def test_defaults_change_nothing():
    logits, history = _logits(2), _history(2)
    plain = SamplingParams(temperature=0.7, top_k=50, repetition_penalty=1.2)
    explicit = plain.replace(presence_penalty=0.0, frequency_penalty=0.0, logit_bias={})
    np.testing.assert_array_equal(processed_logits(logits, history, plain), processed_logits(logits, history, explicit))
    np.testing.assert_array_equal(
        processed_logits(logits, history, plain), _hf_scores(logits, history, 0.7, 50, 1.0, 1.2)
    )


# ---------------------------------------------------------------------- LLM.generate against a reference loop
ENGINE_STEPS = 16
ENGINE_CASES = {
    "presence": dict(presence_penalty=1.5),
    "frequency": dict(frequency_penalty=0.8),
    "negative": dict(presence_penalty=-0.5, frequency_penalty=0.4),
    "bias": dict(logit_bias={"first": -100.0, 42: 4.0}),
    "all": dict(presence_penalty=0.6, frequency_penalty=0.6, logit_bias={"first": -100.0}, repetition_penalty=1.2),
}


@pytest.fixture(scope="module")
def engine_reference(chat_checkpoint):
    """(LLM on the dygraph engine, transformers' model, a chat prompt's ids) of the served tiny checkpoint."""
    from conftest import SERVE_CHAT_VARIANT

    transformers = pytest.importorskip("transformers")
    from paddle_qwen2.inference import LLM

    folder = chat_checkpoint(SERVE_CHAT_VARIANT)
    llm = LLM.from_pretrained(folder, engine="dygraph")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    prompt = llm.tokenizer.encode_chat([{"role": "user", "content": "Tell me a story about a cat."}])
    return llm, model, prompt


def reference_greedy(model, prompt, steps, eos, presence=0.0, frequency=0.0, bias=None, repetition=1.0):
    """Greedy decoding on transformers' logits (a full forward per step) with the processors applied by hand."""
    ids, out = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float().numpy()
        token = int(np.argmax(_openai_reference(logits, ids, out, presence, frequency, bias, repetition)))
        out.append(token)
        ids.append(token)
        if token in eos:
            break
    return out


@pytest.mark.paddle26
@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_llm_generate_penalties_and_logit_bias_are_the_reference_loop(engine_reference, case):
    from conftest import CHAT_EOS

    llm, model, prompt = engine_reference
    plain = reference_greedy(model, prompt, ENGINE_STEPS, CHAT_EOS)
    changes = dict(ENGINE_CASES[case])
    if "logit_bias" in changes:
        changes["logit_bias"] = {plain[0] if k == "first" else k: v for k, v in changes["logit_bias"].items()}
    expected = reference_greedy(
        model,
        prompt,
        ENGINE_STEPS,
        CHAT_EOS,
        changes.get("presence_penalty", 0.0),
        changes.get("frequency_penalty", 0.0),
        changes.get("logit_bias"),
        changes.get("repetition_penalty", 1.0),
    )
    params = SamplingParams(temperature=0, max_new_tokens=ENGINE_STEPS, **changes)
    (ours,) = llm.generate([prompt], params)
    assert ours.token_ids == expected
    assert expected != plain  # the setting changes the greedy answer
    (unchanged,) = llm.generate([prompt], SamplingParams(temperature=0, max_new_tokens=ENGINE_STEPS))
    assert unchanged.token_ids == plain


# ------------------------------------------------------------------------------------------------ logprobs
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_token_logprob_is_torch_log_softmax_of_the_raw_logits(seed, k):
    logits = _logits(seed, scale=8.0)
    expected = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    token = int(np.random.default_rng(seed).integers(VOCAB))
    out = token_logprob(logits, token, k)
    assert out.token == token and abs(out.logprob - expected[token]) < 1e-9
    order = np.argsort(-expected, kind="stable")[:k]
    assert [t for t, _ in out.top] == order.tolist()
    np.testing.assert_allclose([v for _, v in out.top], expected[order], atol=1e-9)


def test_token_logprob_ties_and_small_vocab():
    out = token_logprob(np.array([1.0, 3.0, 3.0, 0.0], dtype=np.float32), 0, 10)
    assert [t for t, _ in out.top] == [1, 2, 0, 3]  # equal ones by id; k larger than the vocabulary
    assert abs(sum(np.exp(v) for _, v in out.top) - 1.0) < 1e-12
    with pytest.raises(ValueError, match="1-D"):
        token_logprob(np.zeros((2, 3), dtype=np.float32), 0)


@pytest.mark.parametrize("bad", [-1, 21, 2.0, True])
def test_validate_rejects_logprobs(bad):
    with pytest.raises(ValueError, match=r"logprobs must be in \[0, 20\] or None"):
        SamplingParams(logprobs=bad).validate()


def test_sequence_records_raw_logprobs_only_when_asked():
    from paddle_qwen2.inference.sequence import GenerationSequence

    class _Tokenizer:
        eos_token_ids = [0]
        backend = None

    logits = _logits(3)
    penalized = SamplingParams(temperature=0, logit_bias={7: 100.0}, repetition_penalty=1.5, max_new_tokens=4)
    plain = GenerationSequence([1, 2], penalized, _Tokenizer(), 100)
    assert plain.logprobs is None and plain.choose(logits) == 7
    asked = GenerationSequence([1, 2], penalized.replace(logprobs=3), _Tokenizer(), 100)
    assert asked.choose(logits) == 7  # the processors choose; the logprobs stay those of the raw logits
    (entry,) = asked.logprobs
    assert entry == token_logprob(logits, 7, 3) and entry.top[0][0] == int(np.argmax(logits)) != 7


@pytest.mark.paddle26
def test_llm_generate_logprobs_are_transformers_log_softmax(engine_reference):
    from conftest import CHAT_EOS

    llm, model, prompt = engine_reference
    (ours,) = llm.generate([prompt], SamplingParams(temperature=0, max_new_tokens=8, logprobs=5))
    assert len(ours.logprobs) == len(ours.token_ids)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours.token_ids])).logits[0].double()
    expected = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1].numpy()
    for step, entry in enumerate(ours.logprobs):
        assert entry.token == ours.token_ids[step] == entry.top[0][0]  # greedy: the chosen token is the top one
        assert abs(entry.logprob - expected[step, entry.token]) <= 1e-4
        top_ids = [t for t, _ in entry.top]
        np.testing.assert_allclose([v for _, v in entry.top], expected[step, top_ids], atol=1e-4)
        np.testing.assert_allclose(sorted(expected[step])[::-1][:5], [v for _, v in entry.top], atol=1e-4)
    assert ours.token_ids[-1] in CHAT_EOS or len(ours.token_ids) == 8
