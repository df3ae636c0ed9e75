"""bfloat16 weights on Paddle Inference: a `--weights bfloat16` export runs on oneDNN's bf16 passes (outputs within a
bf16-sized error of float32's, and not equal to them), and is refused with a clear error where it cannot run fast
(the CPU feature named), on Paddle 2.6 (oneDNN does not run these programs) and with `onednn=False`.

The CPU probe (`runtime.bfloat16_missing`) is monkeypatched where a case needs the other answer, so every case runs
on every machine whose oneDNN can compute in bf16 at all (avx512 or newer)."""

import json
import shutil

import numpy as np
import paddle
import pytest

from paddle_qwen2 import runtime
from paddle_qwen2.export import ExportError, export_model
from paddle_qwen2.inference.predictor import Predictor

PADDLE3 = int(paddle.__version__.split(".")[0]) >= 3
needs_bf16 = pytest.mark.skipif(
    not paddle.base.core.supports_bfloat16(), reason="this CPU has no avx512: oneDNN cannot compute in bf16 here"
)
NO_CPU_FEATURE = "this CPU has neither avx512_bf16 nor amx_bf16 (/proc/cpuinfo flags), which bf16 matmuls need"


@pytest.fixture(scope="module")
def exports(hf_checkpoint, tmp_path_factory):
    """float32 and bfloat16 `causal-lm` exports of the tiny checkpoint."""
    root = tmp_path_factory.mktemp("bf16")
    src = hf_checkpoint("gqa")
    return {w: export_model(src, root / w, "causal-lm", weights=w) for w in ("float32", "bfloat16")}


@pytest.fixture
def fast_bf16(monkeypatch):
    """The CPU probe says bf16 runs fast (oneDNN emulates bf16 on CPUs without avx512_bf16: same numbers)."""
    monkeypatch.setattr(runtime, "bfloat16_missing", lambda *a, **k: None)


def logits(predictor: Predictor) -> np.ndarray:
    """Logits of two unpadded rows (a padded row is NaN in bf16: the mask's float32 minimum is -inf in bf16, and
    a query row with every key masked then has a softmax of NaN)."""
    rng = np.random.default_rng(0)
    ids = paddle.to_tensor(rng.integers(0, 128, (2, 12)).astype("int64"))
    return predictor.run([ids, paddle.ones([2, 12], dtype="int64")])[0].numpy()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@needs_bf16
@pytest.mark.skipif(not PADDLE3, reason="Paddle 2.6's oneDNN does not run these programs (refused: see below)")
def test_bf16_export_runs_in_bf16(exports, fast_bf16):
    want = logits(Predictor(exports["float32"], onednn=False))
    onednn_fp32 = relative_error(logits(Predictor(exports["float32"], onednn=True)), want)
    predictor = Predictor(exports["bfloat16"])
    assert predictor.onednn and predictor.weights == "bfloat16" and predictor.device == "cpu"
    bf16 = relative_error(logits(predictor), want)
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 ~ 2e-3 per value): the logits move by about that much;
    # float32 on oneDNN stays at float32's rounding, so the difference is the bf16 passes' doing
    assert onednn_fp32 < 1e-5, onednn_fp32
    assert 2e-4 < bf16 < 2e-2, bf16


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
