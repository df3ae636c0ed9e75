"""The real-size section of bench_inference.py: a random-weight Qwen2.5-0.5B (configs/qwen2.5-0.5b.json, written
by transformers in bf16, with the bundled tokenizer) decoded by the engine at every weight precision, by HF
transformers fp32 and by llama.cpp (f32 / bf16 / Q8_0 / Q4_0 GGUF files), on the same thread count.

Rows: `hf` (transformers fp32, sdpa), the engine's `LLM.from_pretrained(checkpoint, weights=W)` for W in float32
(Paddle Inference), float32 on onnxruntime (`engine="onnxruntime"`), bfloat16, int8 and int4, and llama.cpp's
`llama_f32`, `llama_bf16`, `llama_q8_0`, `llama_q4_0` (benchmarks/llama_cpp_peer.py: the GGUF files written by
llama.cpp's converter, Q4_0 by its quantizer; skipped with a note when `llama_cpp` is not importable or the
converter's source is not found). A precision the engine refuses on this machine (or does not have yet) is
reported with the refusal's text instead of numbers.

Per row, each in a fresh child process (the children alternating, the order rotated per repeat; one untimed
warm-up in each child), medians over the children and the best run:
* decode, 1 stream and 8 rows: greedy, eos ignored, 16-token prompts; seconds per step = (time of
  `--new-tokens` + 1 new tokens - time of 1 new token) / `--new-tokens`; tokens/s = rows / that.
* prefill 1x512: the last-token logits and the cache of one 512-token prompt.
* peak RSS of the child (VmHWM) through the timed work (loading, decode, prefill).
* the relative logits error ||logits - reference|| / ||reference|| of the last-token logits of 4 prompts of 32
  tokens (the largest of the 4): the engine's precisions against the engine's float32, llama.cpp's against
  llama.cpp's f32, and llama.cpp f32 and HF against the engine's float32 (the same weights: a check of the setup).
* the limit of each row: the bytes a decode step reads at its precision over the machine's read bandwidth
  (benchmarks/bandwidth.py, probed between the children, as bench_inference.py does): every weight once except
  the embedding table (one row), the tied head read whole: the engine's Paddle Inference rows from the parameter
  count (4 or 2 bytes a weight), its onnxruntime rows from the ONNX model's initializers (n-bit weights with
  their scales; a table only `Gather` reads counts one row), llama.cpp's rows from the GGUF file's tensor bytes.
Where a target of issue 23 is missed, the results say where a step's time goes: onnxruntime's operator-type
totals of decode steps (`enable_profiling`) for the onnxruntime rows, Paddle Inference's operator profile for the
Paddle Inference rows.

To keep a full run near 20 minutes on 2 cores, the default is 32 new tokens (bench_inference.py's `small` config
uses 128), 2 repeats and one timed run per child; the results are written after every repeat, so a run cut short
keeps the repeats it finished (`settings.repeats`).

    python benchmarks/bench_precision.py --llama-cpp-src SDIST_OR_FOLDER   # full run (~20 min on 2 idle cores)
    python benchmarks/bench_precision.py --quick       # smoke run: 1 repeat, 8 new tokens (into the workdir)
    python benchmarks/bench_precision.py --only hf float32 llama_q8_0 --keep-exports
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from paddle_qwen2.runtime import configure_cpu_threads  # noqa: E402  (sets threads before paddle loads)

THREADS = int(configure_cpu_threads()["OMP_NUM_THREADS"])

import llama_cpp_peer  # noqa: E402
import numpy as np  # noqa: E402
from bandwidth import ReadProbe, read_bandwidth  # noqa: E402
from common import (  # noqa: E402
    machine_info,
    run_result_child,
    status_bytes,
    timed,
    write_hf_checkpoint,
    write_results,
)
from model_configs import load_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "precision.json"
CONFIG = "qwen2.5-0.5b"
PROMPT_TOKENS, NEW_TOKENS, ROWS, PREFILL_TOKENS = 16, 32, 8, 512
LOGIT_PROMPTS, LOGIT_TOKENS = 4, 32
PAD_ID = 4000  # the bundled tokenizer's <|endoftext|>; prompts use ids below it
PROFILE_STEPS = 8  # decode steps a profile covers
N_CTX = 2048  # llama.cpp's context: 8 rows of 16 + 65 tokens, or one 512-token prompt

# the engine's rows: LLM.from_pretrained keyword arguments
OURS = {
    "float32": {},
    "float32_onnxruntime": {"weights": "float32", "engine": "onnxruntime"},
    "bfloat16": {"weights": "bfloat16"},
    "int8": {"weights": "int8"},
    "int4": {"weights": "int4"},
}
LLAMA = {"llama_f32": "f32", "llama_bf16": "bf16", "llama_q8_0": "q8_0", "llama_q4_0": "q4_0"}
ROW_NAMES = ["hf", *OURS, *LLAMA]
LABELS = {
    "hf": "HF transformers fp32 (sdpa)",
    "float32": "engine float32 (Paddle Inference)",
    "float32_onnxruntime": "engine float32 (onnxruntime)",
    "bfloat16": "engine bfloat16",
    "int8": "engine int8",
    "int4": "engine int4",
    "llama_f32": "llama.cpp f32",
    "llama_bf16": "llama.cpp bf16",
    "llama_q8_0": "llama.cpp Q8_0",
    "llama_q4_0": "llama.cpp Q4_0",
}
# the precision each row's weights are read in, and the llama.cpp row it is compared with
PRECISION = {
    "hf": "float32",
    "float32": "float32",
    "float32_onnxruntime": "float32",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int4": "int4",
    "llama_f32": "float32",
    "llama_bf16": "bfloat16",
    "llama_q8_0": "int8",
    "llama_q4_0": "int4",
}
PEER = {"float32": "llama_f32", "bfloat16": "llama_bf16", "int8": "llama_q8_0", "int4": "llama_q4_0"}
LOGITS_GATE = {"bfloat16": 0.01, "int8": 0.01, "int4": 0.05}
# nominal bytes per matmul weight of the engine's quantized exports when their metadata does not say (n bits and
# one float32 scale per block of 32)
NOMINAL_BITS = {"int8": 8, "int4": 4}
NOMINAL_BLOCK = 32


# ------------------------------------------------------------------------------------------------- inputs, bytes


def model_config() -> dict:
    return {k: v for k, v in load_config(CONFIG).items() if k not in ("architectures", "torch_dtype", "dtype")}


def prompts(rows: int, length: int, seed: int) -> list[list[int]]:
    return np.random.RandomState(seed).randint(3, PAD_ID, size=(rows, length)).tolist()


def parameter_counts(config: dict) -> dict:
    """The parameters a decode step reads: `matmul` (every projection and the head, tied or not: read whole) and
    `other` (biases, norms, one embedding row)."""
    h, i, v, n = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv, d = config.get("num_key_value_heads") or heads, config.get("head_dim") or h // heads
    matmul = n * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i) + h * v
    other = n * (heads * d + 2 * kv * d + 2 * h) + h + h
    return {"matmul": matmul, "other": other}


def engine_step_bytes(config: dict, precision: str, quantization: dict | None = None) -> int:
    """Bytes of weights a decode step of the engine reads at `precision`: matmul weights at 4 / 2 bytes (float32 /
    bfloat16) or n bits plus a float32 scale per block (`quantization`: {"bits", "block_size"}; the nominal
    int8 / int4 with blocks of 32 without it); everything else float32."""
    counts = parameter_counts(config)
    if precision in NOMINAL_BITS:
        q = quantization or {}
        bits, block = q.get("bits", NOMINAL_BITS[precision]), q.get("block_size", NOMINAL_BLOCK)
        per_weight = bits / 8 + 4 / block + (bits / 8 / block if q.get("zero_points") else 0)
    else:
        per_weight = {"float32": 4, "bfloat16": 2}[precision]
    return int(counts["matmul"] * per_weight + counts["other"] * 4)


# -------------------------------------------------------------------------------------------------- child side


def decode_rates(generate, rows: int, new_tokens: int, runs: int) -> dict:
    """Seconds per decode step of `rows` rows: (generate(rows, n + 1) - generate(rows, 1)) / n, for `runs` pairs
    (alternating order); the rows' tokens of the last long run."""
    samples, tokens = [], None
    for run in range(runs):
        pair = [1, new_tokens + 1] if run % 2 == 0 else [new_tokens + 1, 1]
        seconds = {}
        for n in pair:
            seconds[n], out = timed(generate, rows, n)
            tokens = out if n > 1 else tokens
        samples.append((seconds[new_tokens + 1] - seconds[1]) / new_tokens)
    return {"seconds_per_step": statistics.median(samples), "runs": samples, "tokens": tokens}


def measure(runner, settings: dict) -> dict:
    """Decode (1 stream, `ROWS` rows), prefill 1x512 and, if `settings["logits"]`, the last-token logits of the
    logit prompts of `runner` (generate(rows, n) -> tokens, prefill(ids) -> None, last_logits(prompts) -> array)."""
    new_tokens, runs = settings["new_tokens"], settings["runs"]
    runner.generate(1, 2)  # warm-up (the 8-row shape is warmed up before its own timing)
    peak = {"loaded": status_bytes("VmHWM") / 2**20}
    out = {"decode_1": decode_rates(runner.generate, 1, new_tokens, runs)}
    peak["decode_1"] = status_bytes("VmHWM") / 2**20
    runner.generate(ROWS, 2)
    out["decode_rows"] = decode_rates(runner.generate, ROWS, new_tokens, runs)
    peak["decode_rows"] = status_bytes("VmHWM") / 2**20
    ids = prompts(1, PREFILL_TOKENS, 1)[0]
    runner.prefill(ids)
    out["prefill_1x512"] = {"runs": [timed(runner.prefill, ids)[0] for _ in range(runs)]}
    peak["prefill_1x512"] = status_bytes("VmHWM") / 2**20
    out["peak_rss_mb_after"] = peak
    if settings.get("logits"):
        logits = np.asarray(runner.last_logits(prompts(LOGIT_PROMPTS, LOGIT_TOKENS, 2)), dtype=np.float32)
        np.save(Path(settings["workdir"]) / "logits" / f"{settings['name']}.npy", logits)
    return out


class EngineRunner:
    def __init__(self, llm) -> None:
        from paddle_qwen2.inference import SamplingParams

        self.llm, self.SamplingParams = llm, SamplingParams
        self.prompts = prompts(ROWS, PROMPT_TOKENS, 0)

    def generate(self, rows: int, n: int) -> list[list[int]]:
        params = self.SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        return [c.token_ids for c in self.llm.generate(self.prompts[:rows], params)]

    def prefill(self, ids: list[int]):
        return self.llm.prefill([ids])[0]

    def last_logits(self, batch: list[list[int]]) -> np.ndarray:
        return np.stack([self.llm.prefill([p])[0][0] for p in batch])


class HFRunner:
    def __init__(self, checkpoint: Path) -> None:
        import torch
        import transformers

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, attn_implementation="sdpa", torch_dtype=torch.float32
        ).eval()
        self.prompts = torch.tensor(prompts(ROWS, PROMPT_TOKENS, 0))

    def generate(self, rows: int, n: int) -> list[list[int]]:
        ids = self.prompts[:rows]
        with self.torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=self.torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=PAD_ID,
            )
        return out[:, ids.shape[1] :].tolist()

    def prefill(self, ids: list[int]):
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids]), use_cache=True)

    def last_logits(self, batch: list[list[int]]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor(batch)).logits[:, -1].numpy()


class LlamaRows:
    """`llama_cpp_peer.LlamaRunner` behind the interface `measure` takes."""

    def __init__(self, path: Path) -> None:
        self.runner = llama_cpp_peer.LlamaRunner(path, THREADS, ROWS, N_CTX)
        self.prompts = prompts(ROWS, PROMPT_TOKENS, 0)

    def generate(self, rows: int, n: int) -> list[list[int]]:
        return self.runner.generate(self.prompts[:rows], n)

    def prefill(self, ids: list[int]):
        return self.runner.prefill(ids)

    def last_logits(self, batch: list[list[int]]) -> np.ndarray:
        return np.stack([self.runner.prefill(p) for p in batch])


def load_engine(checkpoint: Path, name: str):
    """`LLM.from_pretrained(checkpoint, **OURS[name])`, or the refusal's text (a precision this code or machine
    does not run)."""
    from paddle_qwen2.inference import LLM

    try:
        return LLM.from_pretrained(checkpoint, **OURS[name]), None
    except TypeError as exc:
        return None, f"not available in this version of the engine: {exc}"
    except Exception as exc:  # noqa: BLE001  (the refusal is the result)
        return None, f"{type(exc).__name__}: {exc}"


def child(name: str, workdir: Path, settings: dict) -> dict:
    settings = dict(settings, name=name, workdir=str(workdir))
    checkpoint = workdir / "ckpt"
    if name.startswith("export:"):
        seconds, (llm, refusal) = timed(load_engine, checkpoint, name.split(":", 1)[1])
        return {"refused": refusal} if refusal else {"export_seconds": seconds, "description": llm.describe()}
    start = time.perf_counter()
    if name == "hf":
        import transformers

        runner, description = HFRunner(checkpoint), f"transformers {transformers.__version__} sdpa, fp32"
    elif name in OURS:
        llm, refusal = load_engine(checkpoint, name)
        if refusal:
            return {"refused": refusal}
        runner, description = EngineRunner(llm), llm.describe()
    else:
        path = workdir / "gguf" / f"model-{LLAMA[name]}.gguf"
        runner = LlamaRows(path)
        description = f"llama-cpp-python {llama_cpp_peer.llama_cpp_version()}, {path.name}"
    load_seconds = time.perf_counter() - start
    out = measure(runner, settings)
    if settings.get("profile") and name in OURS:
        out["profile"] = engine_profile(runner.llm, PROFILE_STEPS)
    return dict(out, description=description, load_seconds=load_seconds, peak_rss_mb=status_bytes("VmHWM") / 2**20)


def engine_profile(llm, steps: int) -> list[str]:
    """Where a decode step's time goes: the operator-type totals of `steps` one-stream decode steps, from the
    runtime the engine runs on (onnxruntime's `enable_profiling`, or Paddle Inference's profile)."""
    if getattr(llm, "engine", "inference") == "onnxruntime":
        return onnxruntime_profile(llm, steps)
    ids = prompts(1, PROMPT_TOKENS, 0)[0]
    predictor = getattr(llm.step, "step", None) or getattr(llm.step, "predictor", None)
    if predictor is not None and hasattr(predictor, "meta") and "files" in predictor.meta:
        from bench_inference import inference_profile, profile_summary

        logits, batch = llm.prefill([ids])

        def decode(run):
            import paddle

            token = int(logits[0].argmax())
            for _ in range(steps):
                mask = np.concatenate([batch.mask, np.ones((1, 1), dtype=np.int64)], axis=1)
                outputs = run([paddle.to_tensor(np.asarray([[token]])), paddle.to_tensor(mask), *batch.cache])
                batch.cache, batch.mask = list(outputs[1:]), mask
                token = int(outputs[0].numpy()[0].argmax())

        try:
            return profile_summary(inference_profile(predictor, decode), top=12)
        except Exception as exc:  # noqa: BLE001  (a profile is a note; the numbers stand without it)
            return [f"Paddle Inference profile failed: {type(exc).__name__}: {exc}"]
    return [f"{llm.describe()}: no profile for this engine"]


def onnxruntime_profile(llm, steps: int) -> list[str]:
    """onnxruntime's operator-type totals (ms per step over `steps` one-stream decode steps after a 16-token
    prompt) of the engine's own session, replaced at the end of the child by one with the same options and
    `enable_profiling` (the prefill's run left out)."""
    import onnxruntime as ort

    predictor = getattr(llm.step, "predictor", None)
    if predictor is None or not hasattr(predictor, "session"):
        return [f"{llm.describe()}: no onnxruntime session to profile"]
    options = predictor.session.get_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"ort_profile_{os.getpid()}")
    path = predictor.folder / predictor.meta["files"]["onnx"]
    predictor.session = None  # the child ends after this: one session's weights in memory at a time
    predictor.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits, batch = llm.prefill([prompts(1, PROMPT_TOKENS, 0)[0]])
    token = int(logits[0].argmax())
    for _ in range(steps):
        token = int(llm.decode(batch, [token])[0].argmax())
    trace_path = Path(predictor.session.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_prefill = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    totals: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= after_prefill:
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000
    total = sum(totals.values())
    step_ms = [e["dur"] / 1000 for e in runs[1:]]
    head = (
        f"onnxruntime {ort.__version__}, {path.name}: {steps} decode steps, model_run median "
        f"{statistics.median(step_ms) if step_ms else float('nan'):.2f} ms/step, operators {total / steps:.2f} ms/step"
    )
    rows = sorted(totals.items(), key=lambda kv: -kv[1])[:12]
    return [head] + [f"{op}: {ms / steps:.2f} ms/step ({ms / total:.0%})" for op, ms in rows]


# -------------------------------------------------------------------------------------------------- parent side


def run_child(name: str, workdir: Path, settings: dict) -> dict:
    """Run child `name` in a fresh process; its result, or {"error": ...} when it failed."""
    cmd = [sys.executable, __file__, "--child", name, "--workdir", str(workdir), "--settings", json.dumps(settings)]
    env = dict(os.environ, PADDLE_QWEN2_CACHE=str(workdir / "exports"), OMP_NUM_THREADS=str(THREADS))
    return run_result_child(cmd, env)


def prepare_checkpoint(workdir: Path) -> Path:
    """The random-weight Qwen2.5-0.5B in bf16 with the bundled tokenizer (written once, kept in `workdir`)."""
    checkpoint = workdir / "ckpt"
    if not (checkpoint / "model.safetensors").is_file():
        print(f"writing the checkpoint ({CONFIG}, bf16) ...", flush=True)
        write_hf_checkpoint(
            checkpoint, dict(model_config(), architectures=["Qwen2ForCausalLM"]), dtype="bfloat16", tokenizer=True
        )
    return checkpoint


def prepare_gguf(workdir: Path, checkpoint: Path, source: str | None, names: list[str]) -> dict:
    """The GGUF files of the llama.cpp rows in `names`: {name: {"path", "seconds", "tensors"}} or {name:
    {"skipped": why}}."""
    wanted = [n for n in names if n in LLAMA]
    if not wanted:
        return {}
    why = llama_cpp_peer.available()
    if why is None and not source:
        why = "no llama.cpp converter source: pass --llama-cpp-src (the llama-cpp-python sdist or its folder)"
    if why is None:
        try:
            folder = llama_cpp_peer.converter_folder(source, workdir / "llama-cpp-src")
        except llama_cpp_peer.PeerError as exc:
            why = str(exc)
    if why is not None:
        return {name: {"skipped": why} for name in wanted}
    out = {}
    for name in wanted:
        print(f"writing the GGUF file of {name} ...", flush=True)
        try:
            seconds, path = timed(llama_cpp_peer.write_gguf, folder, checkpoint, workdir / "gguf", LLAMA[name], THREADS)
            tensors = llama_cpp_peer.tensor_types(path, folder / "gguf-py")
            out[name] = {"path": str(path), "seconds": seconds, "tensors": tensors}
        except llama_cpp_peer.PeerError as exc:
            out[name] = {"skipped": str(exc)}
    return out


def export_folder(workdir: Path, name: str) -> Path | None:
    """The decode export the engine row `name` ran (in the workdir's export cache), found by its metadata."""
    kwargs = OURS[name]
    weights = kwargs.get("weights", "float32")
    onnx = kwargs.get("engine") == "onnxruntime" or weights in NOMINAL_BITS
    for meta in sorted((workdir / "exports").glob("*/export_meta.json")):
        data = json.loads(meta.read_text())
        same = data.get("weights", "float32") == weights and (data.get("format") == "onnx") == onnx
        if data.get("task") == "decode" and same:
            return meta.parent
    return None


def onnx_step_bytes(folder: Path) -> int | None:
    """Bytes of weights one decode step of the ONNX export in `folder` reads: every initializer, except that of a
    table only `Gather` reads (the embeddings, when the head has its own copy) one row. None without a model."""
    import onnx
    from onnx import helper

    meta = json.loads((folder / "export_meta.json").read_text())
    path = folder / meta.get("files", {}).get("onnx", "model.onnx")
    if not path.is_file():
        return None
    model = onnx.load(str(path), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        nbytes = count * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        if readers.get(init.name) == {"Gather"} and init.dims:
            nbytes //= init.dims[0]
        total += nbytes
    return total


def relative_errors(workdir: Path) -> dict:
    """The relative logits errors of the saved last-token logits (the largest over the prompts), by row."""
    folder = workdir / "logits"
    saved = {p.stem: np.load(p) for p in folder.glob("*.npy")}
    reference = {name: ("float32" if name in OURS or name in ("hf", "llama_f32") else "llama_f32") for name in saved}
    out = {}
    for name, ref in reference.items():
        if name == ref or ref not in saved:
            continue
        a, b = saved[name].astype(np.float64), saved[ref].astype(np.float64)
        errors = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
        out[name] = {"against": ref, "max": float(errors.max()), "mean": float(errors.mean())}
    return out


def summarize(runs: dict, probes: list[dict], config: dict, gguf: dict, workdir: Path, exports: dict) -> dict:
    from bench_inference import memory_bandwidth

    bandwidth = memory_bandwidth(probes, engine_step_bytes(config, "float32"), "probed between the children")
    read = bandwidth["read_gb_per_s"] * 1e9
    errors_by_row = relative_errors(workdir)
    rows = {}
    for name, results in runs.items():
        row = {"label": LABELS[name], "precision": PRECISION[name]}
        ok = [r for r in results if "error" not in r and "refused" not in r]
        refused = next((r["refused"] for r in results if "refused" in r), None) or exports.get(name, {}).get("refused")
        if name in gguf and "skipped" in gguf[name]:
            row["skipped"] = gguf[name]["skipped"]
        if refused:
            row["refused"] = refused
        if not ok:
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                row["error"] = errors[-1]
            rows[name] = row
            continue
        row["description"] = ok[0]["description"]
        for key, rows_n in (("decode_1", 1), ("decode_rows", ROWS)):
            seconds = [s for r in ok for s in r[key]["runs"]]
            row[key] = {
                "tokens_per_s": rows_n / statistics.median([r[key]["seconds_per_step"] for r in ok]),
                "best_tokens_per_s": rows_n / min(seconds),
                "runs_tokens_per_s": [rows_n / s for s in seconds],
            }
        prefill = [s for r in ok for s in r["prefill_1x512"]["runs"]]
        row["prefill_1x512"] = {"seconds": statistics.median(prefill), "best_seconds": min(prefill), "runs": prefill}
        # the peak through the timed work (the logits and a profile come after it)
        row["peak_rss_mb"] = statistics.median([r["peak_rss_mb_after"]["prefill_1x512"] for r in ok])
        row["peak_rss_mb_child"] = statistics.median([r["peak_rss_mb"] for r in ok])
        row["peak_rss_mb_after"] = ok[0]["peak_rss_mb_after"]
        row["load_seconds"] = statistics.median([r["load_seconds"] for r in ok])
        row["load_average_at_start"] = [r["load_average_at_start"] for r in ok]
        row["tokens_1"] = ok[0]["decode_1"]["tokens"][0]
        if name in gguf and "tensors" in gguf[name]:
            row["step_bytes"] = gguf[name]["tensors"]["bytes"]  # the tied embedding table read whole as the head
            row["gguf"] = {k: v for k, v in gguf[name].items() if k != "path"}
        elif name in OURS:
            folder = export_folder(workdir, name)
            onnx_bytes = onnx_step_bytes(folder) if folder and name != "float32" else None
            row["step_bytes"] = onnx_bytes or engine_step_bytes(config, PRECISION[name])
            row["step_bytes_from"] = "the ONNX model's initializers" if onnx_bytes else "the parameter count"
        else:
            row["step_bytes"] = engine_step_bytes(config, "float32")
        row["limit_tokens_per_s"] = read / row["step_bytes"]
        row["fraction_of_limit"] = row["decode_1"]["tokens_per_s"] / row["limit_tokens_per_s"]
        if name in errors_by_row:
            row["logits_error"] = errors_by_row[name]
        profile = next((r["profile"] for r in ok if "profile" in r), None)
        if profile:
            row["profile"] = profile
        if name in exports and "export_seconds" in exports[name]:
            row["export_seconds"] = exports[name]["export_seconds"]
        rows[name] = row
    reference = rows.get("float32", {}).get("tokens_1")
    for row in rows.values():
        if reference and "tokens_1" in row:
            row["tokens_same_as_float32"] = sum(a == b for a, b in zip(row["tokens_1"], reference))
    return {"memory_bandwidth": bandwidth, "rows": rows, "targets": verdicts(rows)}


def judge(target: dict, median_met: bool, best_met: bool) -> None:
    """`met` True / False when the medians and the best runs agree; None (noted) when they do not: on a shared
    machine one of them is then an artefact of the load, and the run says nothing either way."""
    target["met"] = median_met if median_met == best_met else None
    if target["met"] is None:
        target["note"] = "unclear: the medians and the best runs disagree (a loaded machine; rerun)"


def verdicts(rows: dict) -> list[dict]:
    """Issue 23's targets against the rows: decode at each precision against its llama.cpp peer (1 stream and 8
    rows; float32 by the faster of the engine's float32 rows), prefill 1x512 no slower than float32's (both judged
    on the medians and on the best runs, see `judge`), and the relative logits errors within their gates."""
    out = []

    def ours_at(precision: str) -> str | None:
        names = [n for n in OURS if PRECISION[n] == precision and "decode_1" in rows.get(n, {})]
        return max(names, key=lambda n: rows[n]["decode_1"]["tokens_per_s"], default=None)

    for precision, peer in PEER.items():
        ours = ours_at(precision)
        for key, what in (("decode_1", "1 stream"), ("decode_rows", f"{ROWS} rows")):
            target = {"what": f"decode {what}, {precision}: engine tokens/s / {LABELS[peer]}'s", "target": 1.0}
            if ours and "decode_1" in rows.get(peer, {}):
                target.update(row=ours, value=rows[ours][key]["tokens_per_s"] / rows[peer][key]["tokens_per_s"])
                target["best"] = rows[ours][key]["best_tokens_per_s"] / rows[peer][key]["best_tokens_per_s"]
                judge(target, target["value"] >= 1.0, target["best"] >= 1.0)
            else:
                target["met"] = None
                target["note"] = "not measured: " + ("no engine row" if not ours else f"no {LABELS[peer]} row")
            out.append(target)
    base = rows.get("float32", {}).get("prefill_1x512")
    for name in ("float32_onnxruntime", "bfloat16", "int8", "int4"):
        row = rows.get(name, {}).get("prefill_1x512")
        target = {"what": f"prefill 1x512, {LABELS[name]}: time / engine float32's", "target": 1.0}
        if row and base:
            target.update(value=row["seconds"] / base["seconds"], best=row["best_seconds"] / base["best_seconds"])
            judge(target, target["value"] <= 1.0, target["best"] <= 1.0)
        else:
            target["met"] = None
        out.append(target)
    for name, gate in LOGITS_GATE.items():
        error = rows.get(name, {}).get("logits_error")
        target = {"what": f"relative logits error, {LABELS[name]} vs engine float32", "target": gate}
        if error:
            target.update(value=error["max"], met=error["max"] <= gate)
        else:
            target["met"] = None
        out.append(target)
    return out


# ------------------------------------------------------------------------------------------------------ tables


def percent(fraction: float) -> str:
    """A relative error as a percentage (two decimals), or in scientific notation below 0.01%."""
    return f"{fraction:.2%}" if fraction >= 1e-4 or fraction == 0 else f"{fraction * 100:.1e}%"


def cell(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(result: dict) -> str:
    """The markdown tables of a result (benchmarks/results/precision.json)."""
    s, bw, machine = result["settings"], result["memory_bandwidth"], result["machine"]
    hf = result["rows"].get("hf", {}).get("decode_1", {}).get("tokens_per_s")
    lines = [
        f"Random-weight `{result['config']}` (bf16 checkpoint written by transformers), CPU, {result['threads']} "
        f"threads everywhere, {machine['cores']} cores ({machine['cpu']}); llama-cpp-python "
        f"{result.get('llama_cpp_python') or 'not installed'}; load average {result['load_average']['before'][0]} "
        f"before, {result['load_average']['after'][0]} after{load_range(result['rows'])}; {s['repeats']} repeats of "
        "each row in alternating "
        f"child processes. Decode: {PROMPT_TOKENS}-token prompts, {s['new_tokens']} new tokens, greedy, eos "
        f"ignored (medians; best run in brackets). Limit: the bytes a decode step reads at the row's precision over "
        f"the machine's read bandwidth ({bw['read_gb_per_s']:.1f} GB/s, best pass with {bw['threads']} threads or "
        "one; benchmarks/bandwidth.py between the children).",
        "",
        "| | decode 1 stream, tokens/s | x HF fp32 | limit, tokens/s (% reached) | decode 8 rows, tokens/s | "
        "prefill 1x512 | peak RSS | logits error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["rows"].items():
        lines.append(table_row(name, row, hf))
    notes = [
        f"{LABELS[n]}: {r.get('refused') or r.get('skipped') or r.get('error', '')}".strip()
        for n, r in result["rows"].items()
        if "decode_1" not in r
    ]
    if notes:
        lines += ["", "Not measured:", ""] + [f"- {note.splitlines()[0][:300]}" for note in notes]
    lines += ["", "| target (issue 23) | median | best runs | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for t in result["targets"]:
        verdict = {True: "met", False: "**missed**", None: t.get("note", "not measured")}[t["met"]]
        fmt = "{:.1%}" if "logits" in t["what"] else "{:.2f}x"
        sign = "<=" if "logits" in t["what"] or "prefill" in t["what"] else ">="
        lines.append(
            f"| {t['what']} | {cell(t.get('value'), fmt)} | {cell(t.get('best'), fmt)} | {sign} "
            f"{fmt.format(t['target'])} | {verdict} |"
        )
    if result.get("profile_note"):
        lines += ["", "Where a decode step's time goes (rows whose targets are missed or unclear):", "", "```text"]
        lines += result["profile_note"] + ["```"]
    return "\n".join(lines)


def load_range(rows: dict) -> str:
    """ ", from X to Y at the children's starts" (the 1-minute load average), when the rows record it."""
    loads = [x for row in rows.values() for x in row.get("load_average_at_start", [])]
    return f", from {min(loads):.1f} to {max(loads):.1f} at the children's starts" if loads else ""


def table_row(name: str, row: dict, hf: float | None) -> str:
    if "decode_1" not in row:
        why = "refused" if "refused" in row else "skipped" if "skipped" in row else "failed"
        return f"| {row['label']} | {why} (below) | | | | | | |"
    d1, d8, pre = row["decode_1"], row["decode_rows"], row["prefill_1x512"]
    error = row.get("logits_error")
    error_cell = "-" if not error else f"{percent(error['max'])} (vs {LABELS[error['against']]})"
    ratio = "-" if not hf else f"{d1['tokens_per_s'] / hf:.2f}x"
    return (
        f"| {row['label']} | **{d1['tokens_per_s']:.1f}** ({d1['best_tokens_per_s']:.1f}) | {ratio} | "
        f"{row['limit_tokens_per_s']:.0f} ({row['fraction_of_limit']:.0%}) | {d8['tokens_per_s']:.1f} "
        f"({d8['best_tokens_per_s']:.1f}) | {pre['seconds']:.2f} s ({pre['best_seconds']:.2f}) | "
        f"{row['peak_rss_mb']:.0f} MB | {error_cell} |"
    )


def profile_note(result: dict) -> list[str]:
    """The profiles of the engine rows whose speed targets are missed or unclear."""
    speed = [
        t
        for t in result["targets"]
        if t["met"] is not True and "value" in t and t["what"].startswith(("decode", "prefill"))
    ]
    missed = {t.get("row") for t in speed} | {n for n in OURS for t in speed if LABELS[n] in t["what"]}
    missed |= {n for n in OURS if PRECISION[n] in {PRECISION.get(m) for m in missed}}  # every route at that precision
    lines = []
    for name in OURS:
        profile = result["rows"].get(name, {}).get("profile")
        if name in missed and profile:
            if profile[0].lstrip().startswith("Event"):  # Paddle Inference's report: totals over the steps
                profile = [
                    f"Paddle Inference's operator profile of {PROFILE_STEPS} decode steps (ms, totals)",
                    *profile,
                ]
            lines += [f"{LABELS[name]}:"] + [f"  {line}" for line in profile]
    return lines


# ------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="child processes per row (default 2)")
    p.add_argument("--runs", type=int, default=1, help="timed runs inside each child (default 1)")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    p.add_argument("--only", nargs="*", choices=ROW_NAMES, help="run only these rows")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 8 new tokens, results in the workdir")
    p.add_argument(
        "--llama-cpp-src",
        default=os.environ.get("LLAMA_CPP_SRC"),
        help="the llama-cpp-python sdist (.tar.gz) or a folder holding convert_hf_to_gguf.py (default: $LLAMA_CPP_SRC)",
    )
    p.add_argument("--keep-exports", action="store_true", help="reuse the workdir's exports and GGUF files")
    p.add_argument("--no-profile", action="store_true", help="skip the runtimes' profiles of decode steps")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_precision"))
    p.add_argument("--out", help=f"results JSON (default {RESULTS.relative_to(ROOT)}; --quick: in the workdir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, workdir, json.loads(args.settings))), flush=True)
        return 0
    if args.quick:
        args.repeats, args.runs, args.new_tokens = 1, 1, 8
    out_path = Path(args.out) if args.out else (workdir / "precision-quick.json" if args.quick else RESULTS)
    started, load_before = time.perf_counter(), load_average()
    workdir.mkdir(parents=True, exist_ok=True)
    names = args.only or ROW_NAMES
    checkpoint = prepare_checkpoint(workdir)
    if not args.keep_exports:
        import shutil

        shutil.rmtree(workdir / "exports", ignore_errors=True)
        shutil.rmtree(workdir / "gguf", ignore_errors=True)
    (workdir / "logits").mkdir(exist_ok=True)
    for old in (workdir / "logits").glob("*.npy"):
        old.unlink()
    exports = {}
    for name in [n for n in names if n in OURS]:
        print(f"exporting {name} ...", flush=True)
        exports[name] = run_child(f"export:{name}", workdir, {})
        print(f"  {brief(exports[name])}", flush=True)
    gguf = prepare_gguf(workdir, checkpoint, args.llama_cpp_src, names)
    measured = [n for n in names if "refused" not in exports.get(n, {}) and "skipped" not in gguf.get(n, {})]
    settings = {"new_tokens": args.new_tokens, "runs": args.runs}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for name in names:
        if name not in measured:
            runs[name].append(exports.get(name) or {"refused": gguf[name]["skipped"]})
    probe, probes = ReadProbe(), []
    config = model_config()
    for repeat in range(args.repeats):
        order = measured[repeat % len(measured) :] + measured[: repeat % len(measured)] if measured else []
        for name in order:
            probes.append(read_bandwidth(THREADS, repeats=2, probe=probe))
            # the logits and the profile once, in the first repeat (the profile after the timed work)
            child_settings = dict(settings, logits=repeat == 0, profile=repeat == 0 and not args.no_profile)
            result = run_child(name, workdir, child_settings)
            runs[name].append(result)
            print(f"  repeat {repeat + 1}/{args.repeats} {name:<20} {brief(result)}", flush=True)
        probes.append(read_bandwidth(THREADS, repeats=2, probe=probe))
        # the results so far, after every repeat (a run cut short keeps its finished repeats)
        result = build_result(args, repeat + 1, runs, probes, config, gguf, workdir, exports, started, load_before)
        write_results(out_path, result)
    del probe
    print("\n" + table(result))
    print(f"\n{result['elapsed_seconds'] / 60:.1f} min; results written to {out_path}")
    return 0


def build_result(args, repeats_done, runs, probes, config, gguf, workdir, exports, started, load_before) -> dict:
    """The results file's contents after `repeats_done` repeats."""
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "config": CONFIG,
        "threads": THREADS,
        "llama_cpp_python": llama_cpp_peer.llama_cpp_version(),
        "settings": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": args.new_tokens,
            "rows": ROWS,
            "repeats": repeats_done,
            "repeats_asked": args.repeats,
            "runs_per_child": args.runs,
            "logit_prompts": [LOGIT_PROMPTS, LOGIT_TOKENS],
            "quick": args.quick,
        },
        **summarize(runs, probes, config, gguf, workdir, exports),
    }
    result["load_average"] = {"before": load_before, "after": load_average()}
    result["elapsed_seconds"] = time.perf_counter() - started
    note = profile_note(result)
    if note:
        result["profile_note"] = note
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def brief(result: dict) -> str:
    """A one-line progress note of a child's result."""
    if "error" in result:
        return "FAILED: " + result["error"].splitlines()[-1][:150]
    if "refused" in result:
        return "refused: " + result["refused"].splitlines()[0][:150]
    if "export_seconds" in result:
        return f"exported in {result['export_seconds']:.0f} s"
    d1, d8 = result["decode_1"]["seconds_per_step"], result["decode_rows"]["seconds_per_step"]
    pre = statistics.median(result["prefill_1x512"]["runs"])
    return (
        f"decode {1 / d1:.1f} tok/s, {ROWS} rows {ROWS / d8:.1f} tok/s, prefill 1x512 {pre:.2f} s, "
        f"RSS {result['peak_rss_mb']:.0f} MB ({result['process_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
