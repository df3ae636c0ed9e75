"""Run a worker script under `python -m paddle.distributed.launch` on CPU (gloo) and collect its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def launch(script: str, spec: dict, workdir: Path, nproc: int = 2, timeout: int = 240) -> list[dict]:
    """Launch `script spec.json` on `nproc` CPU ranks; return each rank's `<prefix>.rank<r>.json` results.

    The worker writes its results to `spec["out"]` (set here to `workdir`) as `<name>.rank<r>.json`, where
    `<name>` is the script name without `worker_` and `.py`. On failure the tail of every rank's log is raised.
    """
    workdir = Path(workdir)
    spec = dict(spec, out=str(workdir))
    spec_file = workdir / f"{Path(script).stem}.spec.json"
    spec_file.write_text(json.dumps(spec))
    log_dir = workdir / f"{Path(script).stem}.logs"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(HERE), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"  # two ranks share the cores (MKL_DEBUG_CPU_TYPE: set by conftest)
    cmd = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(nproc),
        "--max_restart",
        "0",
        "--log_dir",
        str(log_dir),
        str(HERE / script),
        str(spec_file),
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    name = Path(script).stem.replace("worker_", "")
    files = [workdir / f"{name}.rank{r}.json" for r in range(nproc)]
    if proc.returncode != 0 or not all(f.exists() for f in files):
        logs = "\n".join(
            f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            for log in sorted(log_dir.glob("workerlog.*"))
        )
        raise AssertionError(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}\n{logs}")
    return [json.loads(f.read_text()) for f in files]


class UnsupportedOnCpu(Exception):
    """A rank's result is the error Paddle raises for a feature it runs on GPU only (the tests mark those cases
    `xfail(raises=UnsupportedOnCpu, strict=True)`: any other failure fails, and so does a success)."""


def raise_if_unsupported_on_cpu(result: dict, error: str) -> None:
    """Raise `UnsupportedOnCpu` if `error` is in `result`'s "error" or "message"."""
    text = f"{result.get('message', '')}\n{result.get('error', '')}"
    if error in text:
        raise UnsupportedOnCpu(error)
