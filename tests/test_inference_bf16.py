"""bfloat16 weights on Paddle Inference: a `--weights bfloat16` export runs on oneDNN's bf16 passes (outputs within a
bf16-sized error of float32's, and not equal to them), and is refused with a clear error where it cannot run fast
(the CPU feature named), on Paddle 2.6 (oneDNN does not run these programs) and with `onednn=False`.

The CPU probe (`runtime.bfloat16_missing`) is monkeypatched where a case needs the other answer, so every case runs
on every machine whose oneDNN can compute in bf16 at all (avx512 or newer)."""

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_qwen2 import runtime
from paddle_qwen2.export import ExportError, export_model
from paddle_qwen2.inference.predictor import Predictor

PADDLE3 = int(paddle.__version__.split(".")[0]) >= 3
needs_bf16 = pytest.mark.skipif(
    not getattr(paddle.base.core, "supports_bfloat16", bool)(),
    reason="this CPU has no avx512: oneDNN cannot compute in bf16 here",
)
WEIGHTS = ("float32", "bfloat16")
NO_CPU_FEATURE = "this CPU has neither avx512_bf16 nor amx_bf16 (/proc/cpuinfo flags), which bf16 matmuls need"


@pytest.fixture(scope="module")
def exports(hf_checkpoint, tmp_path_factory):
    """float32 and bfloat16 `decode` exports of the tiny checkpoint."""
    root = tmp_path_factory.mktemp("bf16")
    src = hf_checkpoint("gqa")
    return {w: export_model(src, root / w, "decode", weights=w) for w in WEIGHTS}


@pytest.fixture
def fast_bf16(monkeypatch):
    """The CPU probe says bf16 runs fast (oneDNN emulates bf16 on CPUs without avx512_bf16: same numbers)."""
    monkeypatch.setattr(runtime, "bfloat16_missing", lambda *a, **k: None)


def prefill_and_step(predictor: Predictor) -> list[np.ndarray]:
    """A prefill of two rows, the second left-padded by 3 (empty cache), then a step of one more token each on its
    cache: both logits, and the prefill's cache. (A padded query row has every key masked: with float32's minimum
    in the mask, -inf in bf16, its softmax would be NaN.)"""
    rng = np.random.default_rng(0)
    decode = predictor.meta["decode"]
    shape = [2, decode["num_key_value_heads"], 0, decode["head_dim"]]
    cache = [paddle.zeros(shape, dtype="float32") for _ in decode["cache_inputs"]]
    ids = paddle.to_tensor(rng.integers(0, 128, (2, 12)).astype("int64"))
    mask = np.ones((2, 12), dtype="int64")
    mask[1, :3] = 0
    first = predictor.run([ids, paddle.to_tensor(mask), *cache])
    first = [x.numpy() for x in first]  # before the next run reuses the outputs' buffers
    step_ids = paddle.to_tensor(rng.integers(0, 128, (2, 1)).astype("int64"))
    step_mask = paddle.to_tensor(np.concatenate([mask, np.ones((2, 1), dtype="int64")], axis=1))
    step = predictor.run([step_ids, step_mask, *(paddle.to_tensor(x) for x in first[1:])])
    return [first[0], step[0].numpy(), np.stack(first[1:])]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@needs_bf16
@pytest.mark.skipif(not PADDLE3, reason="Paddle 2.6's oneDNN does not run these programs (refused: see below)")
def test_bf16_export_runs_in_bf16(exports, fast_bf16):
    want = prefill_and_step(Predictor(exports["float32"], onednn=False))
    onednn_fp32 = prefill_and_step(Predictor(exports["float32"], onednn=True))
    predictor = Predictor(exports["bfloat16"])
    assert predictor.onednn and predictor.weights == "bfloat16" and predictor.device == "cpu"
    bf16 = prefill_and_step(predictor)  # the prefill's empty cache: Predictor runs it with one masked position
    assert [x.shape for x in bf16] == [x.shape for x in want]
    for got, fp32, reference in zip(bf16, onednn_fp32, want):
        # bf16 has an 8-bit mantissa (relative rounding 2^-9 ~ 2e-3 per value): the outputs move by about that
        # much; float32 on oneDNN stays at float32's rounding, so the difference is the bf16 passes' doing
        assert relative_error(fp32, reference) < 1e-5
        assert 2e-4 < relative_error(got, reference) < 2e-2, relative_error(got, reference)


def _without_onednn(folder, tmp_path):
    """A copy of `folder` whose export_meta.json says oneDNN cannot run it (what Paddle 2.6 writes)."""
    copy = shutil.copytree(folder, tmp_path / "no-onednn")
    meta = json.loads((copy / "export_meta.json").read_text())
    meta["paddle_inference"]["onednn"] = False
    (copy / "export_meta.json").write_text(json.dumps(meta))
    return copy


REFUSED = [
    # (how the case is set up, Predictor keyword arguments, what the error says)
    pytest.param("cpu", {}, "bfloat16 weights: " + NO_CPU_FEATURE, id="no-cpu-feature"),
    pytest.param("cpu", {"onednn": True}, "bfloat16 weights: " + NO_CPU_FEATURE, id="no-cpu-feature-onednn"),
    pytest.param("fast", {"onednn": False}, "bfloat16 weights run on oneDNN; onednn=False cannot run them", id="off"),
    pytest.param(
        "paddle26",
        {},
        "bfloat16 weights run on Paddle Inference's oneDNN bf16 passes, and oneDNN does not run these programs",
        id="paddle26",
        marks=pytest.mark.paddle26,
    ),
]


@pytest.mark.parametrize("case, kwargs, message", REFUSED)
def test_bf16_refused(exports, monkeypatch, tmp_path, case, kwargs, message):
    real = runtime.bfloat16_missing
    if case == "cpu":  # a CPU without the feature: the real probe, on /proc/cpuinfo text without it
        monkeypatch.setattr(runtime, "bfloat16_missing", lambda: real("flags\t\t: fpu avx2 avx512f\n", False))
    else:
        monkeypatch.setattr(runtime, "bfloat16_missing", lambda *a, **k: None)
    folder = exports["bfloat16"]
    if case != "paddle26" and not PADDLE3:
        pytest.skip("Paddle 2.6 refuses every bf16 export for its oneDNN first (the paddle26 case)")
    if case == "paddle26" and PADDLE3:
        folder = _without_onednn(folder, tmp_path)
    with pytest.raises(ExportError) as info:
        Predictor(folder, **kwargs)
    assert str(info.value).startswith(f"{folder}: "), str(info.value)
    assert message in str(info.value), str(info.value)


EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "model"
# examples/demo.py's prompts
DEMO_PROMPTS = [
    "What is the capital of Japan?",
    "法国的首都是哪里？",
    "How many legs does a spider have?",
    "Who are you?",
]


@needs_bf16
@pytest.mark.skipif(not PADDLE3, reason="Paddle 2.6's oneDNN does not run these programs (refused: see above)")
def test_engine_with_bf16_weights_generates_as_float32(tmp_path_factory, fast_bf16):
    """The bundled trained model: last-token logits within bf16's error of float32's, and greedy generation equal
    to float32's for its first 6 tokens (every oneDNN op computes in bf16, the residual adds too: the logits move
    by ~1%, which flips a near-tie later on one of these prompts)."""
    from tokenizers import Tokenizer

    from paddle_qwen2.inference.engine import LLM
    from paddle_qwen2.inference.sampling import SamplingParams

    root = tmp_path_factory.mktemp("bf16-engine")
    llms = {w: LLM.from_pretrained(export_model(EXAMPLE_MODEL, root / w, "decode", weights=w)) for w in WEIGHTS}
    assert (llms["bfloat16"].engine, llms["bfloat16"].weights) == ("inference", "bfloat16")
    tokenizer = Tokenizer.from_file(str(EXAMPLE_MODEL / "tokenizer.json"))
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    for text in DEMO_PROMPTS:  # one prompt at a time: a left-padded row is NaN in bf16 (see prefill_and_step)
        ids = tokenizer.encode(text).ids
        want, got = (llms[w].prefill([ids])[0] for w in WEIGHTS)
        assert 2e-4 < relative_error(got, want) < 3e-2, relative_error(got, want)
        want, got = (llms[w].generate([ids], greedy)[0].token_ids for w in WEIGHTS)
        assert got[:6] == want[:6], text
