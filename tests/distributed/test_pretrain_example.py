"""examples/pretrain_tp.sh's CPU mode: 2 processes under paddle.distributed.launch train the tiny config with
data parallelism + sharding stage 1 and save a checkpoint that loads back."""

import json
import math
import os
import subprocess
import sys
import zlib  # noqa: F401

import pytest

from launch_utils import REPO

pytestmark = pytest.mark.slow


def test_cpu_launch_trains_and_saves(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "pretrain_tp.sh"), "cpu-dp", "--steps", "3", "--sharding", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    logs = "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all(math.isfinite(entry["loss"]) and 3.0 < entry["loss"] < 7.0 for entry in log), log  # ~ln(128)

    from paddle_qwen2 import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(tmp_path), dtype="float32")
    assert model.config.num_hidden_layers == 2 and model.config.tensor_parallel_degree == 1
