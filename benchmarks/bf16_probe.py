"""bf16 weights on Paddle Inference (oneDNN's bf16 passes) against float32, on a real-size Qwen2.5-0.5B `decode`
export (random weights written by transformers in bf16, configs/qwen2.5-0.5b.json).

Each route runs in a fresh child process (`python benchmarks/bf16_probe.py child SPEC`), which builds its own
`paddle.inference.Config` so that settings the package does not expose can be tried:

* float32 as the engine runs a one-token step (no oneDNN) on 1 and 2 threads, float32 on oneDNN;
* bf16 as `Predictor` runs a `--weights bfloat16` export (`enable_onednn_bfloat16`, without
  `predictor.BF16_DELETED_PASSES`) on 1 and 2 threads, and with a oneDNN cache capacity
  (`set_onednn_cache_capacity`);
* bf16 with every oneDNN pass (the fc and self-attention fusions too), also with `switch_ir_optim(False)` and
  with only `fc_onednn_enable_pass` left out (`set_bfloat16_op` is not tried: the PIR
  `cpu_bfloat16_placement_pass` ignores its list and places every oneDNN op it knows in bf16);
* Paddle Inference's operator profiles of the float32 and bf16 steps (`enable_profile()`).

Per route: ms per one-token step with 32 cached tokens (median of `--steps`); for the float32 and `Predictor`
routes, ms of a 1x512 prefill through the same program after a warm-up (float32: median of 2, bf16: one run; bf16
runs it as `Predictor` does, with one masked cache position, since oneDNN's bf16 kernels fail on the empty cache);
the relative error of the logits against float32's (||dlogits|| / ||logits||, of the decode step and of the
prefill's last position). The load average is recorded before and after each route (the machine may be shared).
The checkpoint and the export are kept in `--workdir`; a child gets `TIMEOUT_S`.

    python benchmarks/bf16_probe.py     # ~8 min on 2 cores once the export exists (~1 min more the first time)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_hf_checkpoint, write_results  # noqa: E402
from model_configs import load_config  # noqa: E402

from paddle_qwen2.inference.predictor import BF16_DELETED_PASSES  # noqa: E402

# a probe, not a benchmark with a docs table (benchmarks/tables.py reads results/*.json only)
RESULTS = ROOT / "benchmarks" / "results" / "probes" / "bf16_probe.json"
PAST = 32
PREFILL = 512

# name -> child settings (onednn, bf16, threads, and the variant's extra settings)
FUSED = {"delete_passes": []}  # bf16 with every oneDNN pass, `BF16_DELETED_PASSES` too
ROUTES: dict[str, dict] = {
    "float32_1t": {"onednn": False, "bf16": False, "threads": 1},
    "float32_2t": {"onednn": False, "bf16": False, "threads": 2},
    "float32_onednn_2t": {"onednn": True, "bf16": False, "threads": 2, "prefill": False},
    # as Predictor runs a bf16 export
    "bf16_1t": {"onednn": True, "bf16": True, "threads": 1},
    "bf16_2t": {"onednn": True, "bf16": True, "threads": 2},
    "bf16_cache_capacity_10_1t": {"onednn": True, "bf16": True, "threads": 1, "cache_capacity": 10, "prefill": False},
    # every oneDNN pass: the fc and self-attention fusions too
    "bf16_all_passes_1t": {"onednn": True, "bf16": True, "threads": 1, "prefill": False, **FUSED},
    "bf16_all_passes_2t": {"onednn": True, "bf16": True, "threads": 2, "prefill": False, **FUSED},
    "bf16_all_passes_no_ir_optim_2t": {
        "onednn": True,
        "bf16": True,
        "threads": 2,
        "ir_optim": False,
        "prefill": False,
        **FUSED,
    },
    "bf16_all_passes_but_fc_2t": {
        "onednn": True,
        "bf16": True,
        "threads": 2,
        "delete_passes": ["fc_onednn_enable_pass"],
        "prefill": False,
    },
}
PROFILED = ("float32_1t", "bf16_1t", "bf16_all_passes_1t")
TIMEOUT_S = 300  # per child


# ------------------------------------------------------------------------------------------------------ the child


def _config(folder: Path, spec: dict):
    from paddle import inference

    meta = json.loads((folder / "export_meta.json").read_text())
    config = inference.Config(str(folder / meta["files"]["program"]), str(folder / meta["files"]["params"]))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(spec["threads"])
    config.enable_onednn() if spec["onednn"] else config.disable_onednn()
    if spec["bf16"]:
        config.enable_onednn_bfloat16()
    if spec.get("cache_capacity"):
        config.set_onednn_cache_capacity(spec["cache_capacity"])
    if spec.get("ir_optim") is False:
        config.switch_ir_optim(False)
    for name in spec.get("delete_passes", BF16_DELETED_PASSES if spec["bf16"] else []):
        config.delete_pass(name)
    if spec.get("profile"):
        config.enable_profile()
    config.disable_glog_info()
    return config, meta


def _inputs(meta: dict, new: int, past: int):
    import numpy as np
    import paddle

    decode = meta["decode"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, meta["config"]["vocab_size"], (1, new)).astype("int64")
    shape = [1, decode["num_key_value_heads"], past, decode["head_dim"]]
    caches = [rng.standard_normal(shape).astype("float32") for _ in decode["cache_inputs"]]
    return [paddle.to_tensor(x) for x in (ids, np.ones((1, past + new), "int64"), *caches)]


def _time(predictor, inputs: list, runs: int, warmup: bool = True) -> tuple[float, object]:
    if warmup:  # oneDNN primitives for these shapes
        predictor.run(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = predictor.run(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, out[0].numpy()


def child(spec: dict) -> dict:
    import numpy as np
    from paddle import inference

    folder = Path(spec["folder"])
    config, meta = _config(folder, spec)
    start = time.perf_counter()
    predictor = inference.create_predictor(config)
    load_s = time.perf_counter() - start
    step_ms, step_logits = _time(predictor, _inputs(meta, 1, PAST), spec["steps"])
    np.save(spec["logits"] + ".step.npy", step_logits)
    if not spec.get("prefill", True):
        return {"load_s": round(load_s, 2), "step_ms": round(step_ms, 2)}
    prefill = _inputs(meta, PREFILL, 0)
    if spec["bf16"]:
        from paddle_qwen2.inference.predictor import _one_masked_position

        prefill = _one_masked_position(prefill, meta["decode"]["cache_layout"].index("past"))
    prefill_ms, prefill_logits = _time(predictor, prefill, spec["prefill_runs"], spec.get("prefill_warmup", True))
    np.save(spec["logits"] + ".prefill.npy", prefill_logits)
    del predictor  # a profiled predictor prints its report now
    return {"load_s": round(load_s, 2), "step_ms": round(step_ms, 2), "prefill_1x512_ms": round(prefill_ms, 1)}


# ----------------------------------------------------------------------------------------------------- the parent


def prepare(workdir: Path) -> Path:
    """The random bf16 Qwen2.5-0.5B checkpoint and its float32 `decode` export (kept in `workdir`); the bf16 routes
    read the same files (a `--weights bfloat16` export writes the same program and weights)."""
    from paddle_qwen2.export import export_model

    checkpoint, folder = workdir / "qwen2.5-0.5b", workdir / "decode"
    if not (checkpoint / "config.json").is_file():
        config = {k: v for k, v in load_config("qwen2.5-0.5b").items() if k not in ("torch_dtype", "dtype")}
        config.pop("transformers_version", None)
        write_hf_checkpoint(checkpoint, config, dtype="bfloat16", tokenizer=True)
    if not (folder / "export_meta.json").is_file():
        export_model(checkpoint, folder, "decode", force=True)
    return folder


def run_child(name: str, spec: dict, capture_profile: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    cmd = [sys.executable, __file__, "child", json.dumps(spec)]
    before = os.getloadavg()[0]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {TIMEOUT_S} s", "load_average": [round(before, 2)]}
    load = {"load_average": [round(before, 2), round(os.getloadavg()[0], 2)]}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:], **load}
    out = dict(json.loads(done.stdout.strip().splitlines()[-1]), **load)
    if capture_profile:
        out["profile"] = profile_rows(done.stdout)
    return out


def profile_rows(report: str, top: int = 12) -> list[str]:
    """The header and the `top` first operator rows of the report Paddle Inference prints."""
    lines = [line.rstrip() for line in report.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "Event" in line and "Calls" in line), None)
    if start is None:
        return []
    rows = [line for line in lines[start + 1 :] if not line.startswith(" ") and not line.startswith("{")]
    return [lines[start], *rows[:top]]


def relative_errors(workdir: Path, name: str) -> dict[str, float]:
    """||dlogits|| / ||logits|| of route `name` against float32_1t's, of the decode step and of the prefill."""
    import numpy as np

    out = {}
    for part in ("step", "prefill"):
        if not (workdir / f"logits-{name}.npy.{part}.npy").is_file():
            continue
        got, want = (np.load(workdir / f"logits-{n}.npy.{part}.npy") for n in (name, "float32_1t"))
        out[part] = round(float(np.linalg.norm(got - want) / np.linalg.norm(want)), 6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/paddle-qwen2-bf16-probe"))
    p.add_argument("--steps", type=int, default=10, help="timed one-token steps per route (default 10)")
    p.add_argument("--routes", nargs="*", default=list(ROUTES), help="routes to run (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", action="store_true", help="keep the other routes of an existing --out file")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = prepare(args.workdir)
    from paddle_qwen2.runtime import bfloat16_missing

    routes = json.loads(args.out.read_text())["routes"] if args.merge and args.out.is_file() else {}
    for name in args.routes:
        spec = dict(dict(steps=args.steps), **ROUTES[name], folder=str(folder))
        spec["prefill_runs"] = 1 if spec["bf16"] else 2
        spec.update(logits=str(args.workdir / f"logits-{name}.npy"), profile=name in PROFILED)
        for part in ("step", "prefill"):
            (args.workdir / f"logits-{name}.npy.{part}.npy").unlink(missing_ok=True)
        routes[name] = dict(ROUTES[name], **run_child(name, spec, name in PROFILED))
        print(name, json.dumps({k: v for k, v in routes[name].items() if k != "profile"}), file=sys.stderr)
    for name, route in routes.items():
        if "error" not in route and (args.workdir / "logits-float32_1t.npy.step.npy").is_file():
            route["relative_logits_error"] = relative_errors(args.workdir, name)
    result = {
        "model": "qwen2.5-0.5b (random weights, bf16 checkpoint written by transformers), decode export",
        "step": f"one token, {PAST} cached tokens, median of {args.steps}",
        "prefill": f"1x{PREFILL} through the decode program: float32 median of 2 after a warm-up, bf16 one run",
        "bfloat16_missing": bfloat16_missing(),
        "routes": routes,
    }
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.stdout.flush()
        sys.exit(0)
    from paddle_qwen2.runtime import configure_cpu_threads

    configure_cpu_threads()
    sys.exit(main())
