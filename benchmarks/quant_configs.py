"""Which MatMulNBits settings `--weights int8|int4` exports use: each candidate measured on a random-weight
Qwen2.5-0.5B (bf16 checkpoint written by transformers, exported once as the float32 `decode` program in ONNX).

Per candidate (block size, symmetric or not, `accuracy_level`, the LM head's bits): ms per one-token decode step
with 32 cached tokens on onnxruntime at 1 and 2 intra-op threads (median of `--steps` runs after warm-up), the size
of model.onnx, and the relative logits error ||logits - logits_fp32|| / ||logits_fp32|| over the prefill (last
position) and the next decode step of a few prompts, against the float32 export on onnxruntime. The float32 export
itself is measured too. Then the float32 export and the chosen settings (`quantize.SETTINGS`) are timed again in
alternation (`defaults`), also with idle intra-op workers sleeping instead of spinning (`--defaults-only`: only
this part, into the existing results file).

    .venv/bin/python benchmarks/quant_configs.py [--workdir DIR] [--steps 15] [--out FILE.json]

The checkpoint and the float32 export stay in `--workdir` across runs; the quantized files are rewritten each run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_hf_checkpoint, write_results  # noqa: E402
from model_configs import load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "quant_configs.json"
PAST = 32
PROMPTS = 4
PROMPT_LEN = 16

# (weights, block_size, symmetric, accuracy_level, head_bits); accuracy_level 0 (float32 products) is measured
# once per precision with fewer steps: on 8 bits it is an order of magnitude slower
CANDIDATES = [
    ("int8", 32, True, 4, 8),
    ("int8", 16, True, 4, 8),
    ("int8", 128, True, 4, 8),
    ("int8", 32, True, 0, 8),
    ("int4", 32, True, 4, 8),
    ("int4", 32, True, 4, 4),
    ("int4", 32, False, 4, 8),
    ("int4", 16, True, 4, 8),
    ("int4", 16, False, 4, 8),
    ("int4", 64, True, 4, 8),
    ("int4", 32, True, 0, 8),
]
SLOW_STEPS = 3


def prepare(workdir: Path, config_name: str) -> Path:
    """The float32 ONNX decode export of a random-weight checkpoint of `config_name` (both kept in `workdir`)."""
    checkpoint, export = workdir / f"ckpt-{config_name}", workdir / f"onnx-{config_name}-float32"
    if not (checkpoint / "config.json").is_file():
        print(f"writing a random {config_name} checkpoint (bf16) ...", flush=True)
        config = {k: v for k, v in load_config(config_name).items() if k != "transformers_version"}
        write_hf_checkpoint(checkpoint, config, dtype="bfloat16", tokenizer=True)
    if not (export / "export_meta.json").is_file():
        print("exporting the float32 decode program (onnx, in a child process: paddle's memory goes with it) ...")
        program = "import sys; from paddle_qwen2.export import export_model; export_model(*sys.argv[1:3], 'decode', "
        program += "format='onnx', force=True)"
        subprocess.run([sys.executable, "-c", program, str(checkpoint), str(export)], check=True)
    return export


def quantized_folder(export: Path, out: Path, weights: str, settings: dict) -> float:
    """`out`: `export` quantized with `settings`; returns the seconds the quantization took."""
    from paddle_qwen2.export.quantize import quantize_folder

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in export.iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    start = time.perf_counter()
    quantize_folder(out, weights, **settings)
    return time.perf_counter() - start


def feeds(meta: dict, vocab: int) -> tuple[list, list]:
    """The prefill inputs of `PROMPTS` random prompts and of one `PAST`-token prompt (for the timed steps)."""
    rng = np.random.RandomState(0)
    decode = meta["decode"]

    def empty(rows):
        return [np.zeros((rows, decode["num_key_value_heads"], 0, decode["head_dim"]), np.float32)] * len(
            decode["cache_inputs"]
        )

    ids = rng.randint(0, vocab, size=(PROMPTS, PROMPT_LEN)).astype(np.int64)
    past = rng.randint(0, vocab, size=(1, PAST)).astype(np.int64)
    return [ids, np.ones_like(ids), *empty(PROMPTS)], [past, np.ones_like(past), *empty(1)]


def logits_of(predictor, prompts: list) -> np.ndarray:
    """Logits of the prompts' last positions and of one more step (token 1 on each row), stacked."""
    first, *cache = predictor.run(prompts)
    rows = first.shape[0]
    mask = np.ones((rows, prompts[1].shape[1] + 1), np.int64)
    second = predictor.run([np.ones((rows, 1), np.int64), mask, *cache])[0]
    return np.concatenate([first, second])


def step_ms(predictor, past: list, steps: int) -> float:
    """Median ms of a one-token step on the cache of the `PAST`-token prompt."""
    _, *cache = predictor.run(past)
    inputs = [np.array([[7]], np.int64), np.ones((1, PAST + 1), np.int64), *cache]
    for _ in range(3):
        predictor.run(inputs)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        predictor.run(inputs)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def measure(folder: Path, reference: np.ndarray | None, prompts: list, past: list, steps: int) -> dict:
    from paddle_qwen2.inference import onnx_predictor

    row = {"file_mb": round(sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 2**20, 1)}
    for threads in (1, 2):
        predictor = onnx_predictor.OnnxPredictor(folder, threads=threads)
        row[f"ms_per_step_{threads}t"] = step_ms(predictor, past, steps)
        if threads == 1:
            logits = logits_of(predictor, prompts)
        del predictor
        gc.collect()
    if reference is not None:
        row["relative_logits_error"] = float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))
        row["top1_agreement"] = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    return row, logits


def session_ms(folder: Path, past: list, steps: int, threads: int, spin: bool) -> float:
    """ms per step of `folder` on a fresh session of `threads` threads, idle workers spinning or not."""
    from paddle_qwen2.inference import onnx_predictor

    onnx_predictor.SPIN = spin
    try:
        return step_ms(onnx_predictor.OnnxPredictor(folder, threads=threads), past, steps)
    finally:
        onnx_predictor.SPIN = True
        gc.collect()


def defaults(export: Path, workdir: Path, past: list, steps: int, rounds: int = 2) -> dict:
    """The float32 export and the default int8 / int4 settings (`quantize.SETTINGS`), timed in alternation (each
    round runs every folder and session setting once): ms per step at 1 and 2 threads with spinning workers, and
    at 2 threads with sleeping ones; the median over rounds."""
    from paddle_qwen2.export.quantize import SETTINGS

    folders = {"float32": export}
    for weights in ("int8", "int4"):
        folders[weights] = workdir / f"default-{weights}"
        quantized_folder(export, folders[weights], weights, {k: v for k, v in SETTINGS[weights].items() if k != "bits"})
    sessions = {"1t": (1, True), "2t": (2, True), "2t_no_spin": (2, False)}
    times: dict = {name: {key: [] for key in sessions} for name in folders}
    for _ in range(rounds):
        for name, folder in folders.items():
            for key, (threads, spin) in sessions.items():
                times[name][key].append(session_ms(folder, past, steps, threads, spin))
    out = {}
    for name, folder in folders.items():
        settings = SETTINGS.get(name)
        mb = round(sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 2**20, 1)
        out[name] = {"settings": settings, "file_mb": mb}
        out[name].update({f"ms_per_step_{key}": statistics.median(v) for key, v in times[name].items()})
        print(f"{name}: {out[name]}", flush=True)
    for weights in ("int8", "int4"):
        shutil.rmtree(folders[weights], ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/paddle_qwen2_quant_configs", help="checkpoint and exports")
    parser.add_argument("--config", default="qwen2.5-0.5b", help="benchmarks/model_configs.py name")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON")
    parser.add_argument(
        "--defaults-only", action="store_true", help="time only the defaults, into the existing results file"
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    export = prepare(workdir, args.config)
    meta = json.loads((export / "export_meta.json").read_text())
    prompts, past = feeds(meta, int(meta["config"]["vocab_size"]))
    if args.defaults_only:
        result = json.loads(Path(args.out).read_text())
        result.pop("spinning_off", None)  # an earlier version's section
        result["defaults"] = defaults(export, workdir, past, args.steps)
        result["defaults_load_average"] = list(os.getloadavg())
        write_results(args.out, {k: v for k, v in result.items() if k not in ("date", "machine")})
        print(f"wrote {args.out}")
        return 0
    float32, reference = measure(export, None, prompts, past, args.steps)
    print(f"float32: {float32}", flush=True)
    result = {
        "benchmark": "quant_configs",
        "onnxruntime": metadata.version("onnxruntime"),
        "config": args.config,
        "checkpoint": "random weights (seed 0), bf16, written by transformers",
        "step": f"one token, {PAST} cached tokens, median of {args.steps} ({SLOW_STEPS} at accuracy_level 0)",
        "error": f"{PROMPTS} random prompts of {PROMPT_LEN} tokens: last prefill position + one decode step",
        "load_average_at_start": list(os.getloadavg()),
        "float32": float32,
        "candidates": [],
    }
    for weights, block, symmetric, level, head in CANDIDATES:
        settings = {"block_size": block, "symmetric": symmetric, "accuracy_level": level, "head_bits": head}
        folder = workdir / "quantized"
        seconds = quantized_folder(export, folder, weights, settings)
        row, _ = measure(folder, reference, prompts, past, args.steps if level else SLOW_STEPS)
        row = {"weights": weights, **settings, "quantize_s": round(seconds, 1), **row}
        print(json.dumps(row), flush=True)
        result["candidates"].append(row)
        write_results(args.out, {**result, "complete": False})  # what is measured so far
    shutil.rmtree(workdir / "quantized", ignore_errors=True)
    result["load_average_at_end"] = list(os.getloadavg())
    result["defaults"] = defaults(export, workdir, past, args.steps)
    result["defaults_load_average"] = list(os.getloadavg())
    write_results(args.out, {**result, "complete": True})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _settings_text(c: dict) -> str:
    kind = "symmetric" if c["symmetric"] else "asymmetric"
    level, head = c["accuracy_level"], c["head_bits"]
    return f"{c['weights']}, block {c['block_size']}, {kind}, accuracy_level {level}, head {head}-bit"


def table(result: dict) -> str:
    """The markdown tables of a result (benchmarks/results/quant_configs.json): every candidate, then the chosen
    settings timed against float32 in alternation."""
    lines = [
        f"Random-weight `{result['config']}` decode export on onnxruntime {result['onnxruntime']}; step: "
        f"{result['step']}; error: ||dlogits|| / ||logits|| against float32 ({result['error']}). Load average "
        f"{result['load_average_at_start'][0]:.1f} at the start: the candidates' times are single runs on a busy "
        "machine, the chosen settings' times below alternate.",
        "",
        "| candidate | file MB | ms / step, 1 thread | ms / step, 2 threads | logits error | top-1 agreement |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["candidates"]:
        lines.append(
            f"| {_settings_text(c)} | {c['file_mb']:.0f} | {c['ms_per_step_1t']:.1f} | {c['ms_per_step_2t']:.1f} | "
            f"{c['relative_logits_error']:.1%} | {c['top1_agreement']:.0%} |"
        )
    defaults = result.get("defaults") or {}
    if defaults:
        lines += [
            "",
            "| chosen (`quantize.SETTINGS`) | file MB | ms / step, 1 thread | 2 threads | 2 threads, workers asleep |",
            "| --- | --- | --- | --- | --- |",
        ]
        for weights, d in defaults.items():
            lines.append(
                f"| {weights} | {d['file_mb']:.0f} | {d['ms_per_step_1t']:.1f} | {d['ms_per_step_2t']:.1f} | "
                f"{d['ms_per_step_2t_no_spin']:.1f} |"
            )
    return "\n".join(lines)
