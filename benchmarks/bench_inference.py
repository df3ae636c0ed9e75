"""The inference engine (`paddle_qwen2.inference`, exported programs on Paddle Inference) next to the dygraph model,
paddlenlp and HF transformers, measured in one run: `small` config, fp32, CPU, the same thread count everywhere.

* decode: tokens/s of one stream (a 16-token prompt, 128 new tokens, greedy, eos ignored), as `generate` runs it;
  the prefill is taken out by timing `generate` of 1 and of 129 new tokens and dividing the difference by 128.
  Against the machine's memory-bandwidth limit, measured in the same run: a decode step reads every weight once
  (all parameters incl. lm_head, fp32; of the embedding table only one row), and the limit is those bytes over
  the machine's read bandwidth (benchmarks/bandwidth.py: numpy and torch read-only passes over a 1 GiB float32
  array on the engine's threads and on one thread; the best pass of those probed between the children). Also reported:
  the one-thread read bandwidth and its limit (a one-token step that runs on one thread reads at most that fast).
  Target: the engine at >= 70% of the limit.
  Implementations: `engine` (`LLM.from_pretrained(folder)`: the exported `decode` program on Paddle Inference),
  `engine_serve` (`onednn=False` after `runtime.keep_freed_memory()` with `ENGINE_ENVIRONMENT`, as
  `paddle-qwen2 serve` runs it), `engine_onednn` (oneDNN for every run), `dygraph`
  (`LLM.from_pretrained(folder, engine="dygraph")`), `hf` (transformers `generate`, sdpa) and `paddlenlp`
  (paddlenlp 3.0.0b2's `Qwen2ForCausalLM.generate`, the checkpoint's weights). The engine also runs its bare
  `llm.prefill` + `llm.decode` + argmax loop, and one decode step split into its parts (inputs, program run,
  `.numpy()` of the logits, argmax).
* prefill 1x512 and 4x256: the engine's `llm.prefill` (last-token logits and the cache) against an HF sdpa forward
  with `use_cache=True` (logits of every position); the exported `causal-lm` program on Paddle Inference besides.
  Target: the engine at <= 0.85x HF sdpa's time. The minor page faults of each run are counted too.
* embeddings: bench_embed.py's workload (the `small` sentence-transformers folder, mixed-length texts, batch 32)
  through `InferenceEmbeddingModel.encode` (as a library user gets it, and after `runtime.keep_freed_memory()` as
  `paddle-qwen2 embed --engine inference` runs it) against sentence-transformers' `encode`. Target: >= 1.2x
  sentence-transformers' texts/s.

The checkpoint is a random-weight HF `Qwen2ForCausalLM` of configs/small.json saved by transformers, with the
bundled tokenizer (examples/model). The programs are exported at the start of each run (into `--workdir`, which
`PADDLE_QWEN2_CACHE` points at), so the current code is what is measured. Every implementation runs in a fresh
child process per repeat, the children alternating (A B C A B C ...) with the order rotated per repeat; inside a
child, one untimed warm-up, then `--runs` timed runs. Reported: medians, and the best run (the machine may be
shared); where a target is missed, where the engine's time goes (a decode step split into its parts, and Paddle
Inference's own operator profiles of the decode steps and of a 1x512 prefill).

    python benchmarks/bench_inference.py            # 3 repeats: ~4 min on 2 idle cores (12 min on a busy machine)
    python benchmarks/bench_inference.py --quick    # smoke run (1 repeat, 32 new tokens, 64 texts; ~1.5 min)
    python benchmarks/bench_inference.py --refresh-limit   # re-probe the read bandwidth only (~20 s); recompute
                                                           # the limit and fractions of the recorded results

The real-size section (a random Qwen2.5-0.5B at every weight precision of the engine against HF transformers and
llama.cpp's f32 / bf16 / Q8_0 / Q4_0) is benchmarks/bench_precision.py, run by `--real-size` (its options after
`--real-size`, e.g. `--real-size --llama-cpp-src SDIST`), results in benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from paddle_qwen2.runtime import configure_cpu_threads  # noqa: E402  (sets threads before paddle loads)

THREADS = int(configure_cpu_threads()["OMP_NUM_THREADS"])

import numpy as np  # noqa: E402
from bandwidth import ReadProbe, read_bandwidth  # noqa: E402
from bandwidth import summary as bandwidth_summary  # noqa: E402
from common import (  # noqa: E402
    machine_info,
    run_result_child,
    status_bytes,
    timed,
    write_hf_checkpoint,
    write_results,
)
from model_configs import load_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
PROMPT_TOKENS, NEW_TOKENS = 16, 128
PREFILL = {"prefill_1x512": (1, 512), "prefill_4x256": (4, 256)}
EMBED_BATCH = 32
PAD_ID = 4000  # the bundled tokenizer's <|endoftext|>
TARGETS = {
    "decode": 0.70,  # engine tokens/s as a fraction of the read-bandwidth limit, at least
    "prefill": 0.85,  # engine time / HF sdpa time, at most
    "embed": 1.2,  # engine texts/s / sentence-transformers texts/s, at least
}
DECODE_IMPLS = ["engine", "engine_serve", "engine_onednn", "dygraph", "hf", "paddlenlp"]
PREFILL_IMPLS = ["engine", "engine_serve", "engine_onednn", "causal_lm", "hf"]
EMBED_IMPLS = ["embed_engine", "embed_engine_cli", "embed_st"]
# one child process each per repeat; what it measures
CHILDREN = {
    "engine": ("decode", "prefill"),
    "engine_serve": ("decode", "prefill"),
    "engine_onednn": ("decode", "prefill"),
    "dygraph": ("decode",),
    "hf": ("decode", "prefill"),
    "paddlenlp": ("decode",),
    "causal_lm": ("prefill",),
    "embed_engine": ("embed",),
    "embed_engine_cli": ("embed",),
    "embed_st": ("embed",),
}
LABELS = {
    "engine": "engine (Paddle Inference)",
    "engine_serve": "no oneDNN, after `keep_freed_memory()`, KMP_BLOCKTIME=0 (`paddle-qwen2 serve`)",
    "engine_onednn": "engine, oneDNN",
    "dygraph": "dygraph engine",
    "hf": "HF transformers (sdpa)",
    "paddlenlp": "paddlenlp 3.0.0b2",
    "causal_lm": "`causal-lm` export (Paddle Inference)",
    "embed_engine": "`InferenceEmbeddingModel.encode`",
    "embed_engine_cli": "the same after `keep_freed_memory()` (`paddle-qwen2 embed --engine inference`)",
    "embed_st": "sentence-transformers 5.1.2",
}


# --------------------------------------------------------------------------------------------- weights read per token


def weight_bytes_per_token(config: dict, bytes_per_param: int = 4) -> int:
    """Bytes of weights one decode step reads: every parameter (the lm_head included, also when tied to the
    embeddings) except the embedding table, of which only the token's row is read."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv, d = config.get("num_key_value_heads") or heads, config.get("head_dim") or h // heads
    q, k_v, o = h * heads * d + heads * d, 2 * (h * kv * d + kv * d), heads * d * h  # q, k, v with their biases
    layer = q + k_v + o + 3 * h * i + 2 * h  # + gate, up, down and the two RMSNorms
    params = config["num_hidden_layers"] * layer + h + h * v + h  # + final norm, lm_head, one embedding row
    return params * bytes_per_param


def checkpoint_bytes_per_token(folder: Path) -> int:
    """The same from the checkpoint's safetensors header (a cross-check of `weight_bytes_per_token`)."""
    path = folder / "model.safetensors"
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total, hidden, tied = 0, None, "lm_head.weight" not in header
    for name, info in header.items():
        if name == "__metadata__":
            continue
        size = int(np.prod(info["shape"])) * 4
        if name.endswith("embed_tokens.weight"):
            hidden = info["shape"][1]
            total += (size if tied else 0) + hidden * 4
        else:
            total += size
    return total


# --------------------------------------------------------------------------------------------------------- folders


def small_config() -> dict:
    return {k: v for k, v in load_config("small").items() if k not in ("architectures", "torch_dtype", "dtype")}


def write_checkpoint(folder: Path) -> None:
    """A random-weight HF Qwen2ForCausalLM of configs/small.json with the bundled tokenizer (run in a child)."""
    config = dict(small_config(), architectures=["Qwen2ForCausalLM"])
    config.pop("transformers_version", None)
    write_hf_checkpoint(folder, config, tokenizer=True)


def prepare(workdir: Path, texts: int) -> dict:
    """The checkpoint, the sentence-transformers folder and the texts (kept in `workdir` across runs), and fresh
    exports of the `decode`, `causal-lm` and `embedding` programs (in a child; returns their seconds)."""
    from bench_embed import make_texts
    from bench_embed import write_folder as write_st_folder

    checkpoint, st_folder = workdir / "ckpt-small", workdir / "st-small"
    if not (checkpoint / "model.safetensors").is_file():
        print("writing the checkpoint (small config) ...", flush=True)
        write_checkpoint(checkpoint)
    if not (st_folder / "modules.json").is_file():
        print("writing the sentence-transformers folder (small config) ...", flush=True)
        write_st_folder(st_folder)
    (workdir / "texts.json").write_text(json.dumps(make_texts(texts), ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(workdir / "exports", ignore_errors=True)
    for name in EMBED_IMPLS:
        (workdir / f"{name}.npy").unlink(missing_ok=True)
    print("exporting the decode, causal-lm and embedding programs ...", flush=True)
    return run_child("export", workdir, {})


# ---------------------------------------------------------------------------------------------------- child side


def decode_seconds(generate, runs: int, new_tokens: int) -> dict:
    """Seconds per decode step: (generate(new_tokens + 1) - generate(1)) / new_tokens, median of `runs` pairs
    (in alternating order, after one warm-up); also the generated ids."""
    _, tokens = timed(generate, new_tokens + 1)
    samples = []
    for run in range(runs):
        pair = [1, new_tokens + 1] if run % 2 == 0 else [new_tokens + 1, 1]
        seconds = dict((n, timed(generate, n)[0]) for n in pair)
        samples.append((seconds[new_tokens + 1] - seconds[1]) / new_tokens)
    return {
        "seconds_per_token": statistics.median(samples),
        "runs": samples,
        "tokens": [int(t) for t in tokens],
    }


def prefill_seconds(fn, runs: int) -> dict:
    """Median seconds of `fn()` over `runs` runs after a warm-up, and the minor page faults of each run (memory
    the allocator got fresh from the kernel and touched first: a cost besides the arithmetic)."""
    fn()
    samples, faults = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        samples.append(timed(fn)[0])
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"seconds": statistics.median(samples), "runs": samples, "page_faults": faults}


def prompt_ids(config: dict) -> list[int]:
    return np.random.RandomState(0).randint(3, PAD_ID, size=PROMPT_TOKENS).tolist()


def prefill_ids(batch: int, seq: int) -> np.ndarray:
    return np.random.RandomState(1).randint(3, PAD_ID, size=(batch, seq)).astype(np.int64)


def engine_loop(llm, prompt: list[int], new_tokens: int, runs: int) -> dict:
    """The engine's bare loop: `llm.prefill`, then `llm.decode` + argmax per token; seconds per decode step."""

    def run():
        logits, batch = llm.prefill([prompt])
        token = int(logits[0].argmax())
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(llm.decode(batch, [token])[0].argmax())
        return (time.perf_counter() - start) / new_tokens

    run()
    samples = [run() for _ in range(runs)]
    return {"seconds_per_token": statistics.median(samples), "runs": samples}


def engine_step_parts(llm, prompt: list[int], new_tokens: int) -> dict:
    """One `llm.decode` step split into its parts (median ms over `new_tokens` steps): building the inputs
    (mask, `paddle.to_tensor`), the program run (Paddle Inference), `.numpy()` of the logits, the argmax."""
    import paddle

    logits, batch = llm.prefill([prompt])
    token = int(logits[0].argmax())
    parts = {"inputs": [], "program_run": [], "logits_numpy": [], "argmax": []}
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        batch.mask = np.concatenate([batch.mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        inputs = [paddle.to_tensor(np.asarray([[token]], dtype=np.int64)), paddle.to_tensor(batch.mask), *batch.cache]
        t1 = time.perf_counter()
        logits, batch.cache = llm.step(inputs, batch)  # the batch will hold the new cache (see engine._Lane)
        t2 = time.perf_counter()
        logits = logits.numpy()
        t3 = time.perf_counter()
        token = int(logits[0].argmax())
        t4 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(seconds)
    return {key: statistics.median(v) * 1000 for key, v in parts.items()}


def inference_profile(predictor, work) -> str:
    """Paddle Inference's own operator profile of `work(run)` (`run(inputs) -> outputs` on a copy of `predictor`,
    a `paddle_qwen2.inference.predictor.Predictor`, with `enable_profile()`; its report is printed when the copy
    is destroyed and is read back from fd 1)."""
    import gc

    from paddle import inference

    files = predictor.meta["files"]
    config = inference.Config(str(predictor.folder / files["program"]), str(predictor.folder / files["params"]))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(getattr(predictor, "threads", THREADS))
    config.enable_mkldnn() if predictor.onednn else config.disable_mkldnn()
    config.disable_glog_info()
    config.enable_profile()
    profiled = inference.create_predictor(config)
    sys.stdout.flush()
    saved, capture = os.dup(1), tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 1)
    try:
        work(profiled.run)
        del profiled
        gc.collect()
        sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    capture.seek(0)
    return capture.read().decode("utf-8", "replace")


def engine_profiles(llm, prompt: list[int], new_tokens: int) -> dict:
    """Paddle Inference's profiles of `new_tokens` decode steps and of three 1x512 prefills."""
    import paddle

    logits, batch = llm.prefill([prompt])  # before profiling starts: the profile is the whole process's

    def decode(run):
        token = int(logits[0].argmax())
        for _ in range(new_tokens):
            mask = np.concatenate([batch.mask, np.ones((1, 1), dtype=np.int64)], axis=1)
            ids = paddle.to_tensor(np.asarray([[token]], dtype=np.int64))
            outputs = run([ids, paddle.to_tensor(mask), *batch.cache])
            batch.cache, batch.mask = list(outputs[1:]), mask
            token = int(outputs[0].numpy()[0].argmax())

    def prefill(run):
        ids = prefill_ids(*PREFILL["prefill_1x512"])
        for _ in range(3):
            run([paddle.to_tensor(ids), paddle.to_tensor(np.ones_like(ids)), *llm.empty_cache(1)])[0].numpy()

    # the engine may run prefills and one-token steps on predictors of their own (`_PredictorStep`)
    step = getattr(llm.step, "step", None) or llm.step.predictor
    first = getattr(llm.step, "prefill", None) or llm.step.predictor
    return {"decode": inference_profile(step, decode), "prefill_1x512": inference_profile(first, prefill)}


def child_export(workdir: Path, settings: dict) -> dict:
    import warnings

    from paddle_qwen2.export import export_model
    from paddle_qwen2.inference.predictor import resolve_export

    warnings.filterwarnings("ignore")
    seconds = {}
    checkpoint = workdir / "ckpt-small"
    seconds["decode"], _ = timed(resolve_export, checkpoint, "decode")
    seconds["embedding"], _ = timed(resolve_export, workdir / "st-small", "embedding")
    seconds["causal-lm"], _ = timed(
        export_model, checkpoint, workdir / "exports" / "causal-lm", "causal-lm", force=True
    )
    return {"export_seconds": seconds}


def child_engine(name: str, workdir: Path, settings: dict) -> dict:
    from paddle_qwen2.inference import LLM, SamplingParams

    checkpoint, new_tokens, runs = workdir / "ckpt-small", settings["new_tokens"], settings["runs"]
    config = json.loads((checkpoint / "config.json").read_text())
    prompt = prompt_ids(config)
    if name == "engine_serve":
        from paddle_qwen2.runtime import keep_freed_memory

        keep_freed_memory()  # as `paddle-qwen2 serve` runs the engine (run_child sets its environment)
    if name == "dygraph":
        llm = LLM.from_pretrained(checkpoint, engine="dygraph")
    else:
        # `engine`: as `LLM.from_pretrained` chooses by default; `engine_onednn`: oneDNN for every run
        onednn = {"engine_onednn": True, "engine_serve": False}.get(name)  # `serve` runs prompts without oneDNN
        llm = LLM.from_pretrained(checkpoint, engine="inference", onednn=onednn)

    def generate(n):
        return llm.generate([prompt], SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True))[0].token_ids

    out = {"description": llm.describe(), "decode": decode_seconds(generate, runs, new_tokens)}
    if name == "dygraph":
        return out
    if name == "engine":
        out["decode_loop"] = engine_loop(llm, prompt, new_tokens, runs)
        out["step_parts_ms"] = engine_step_parts(llm, prompt, new_tokens)
        if settings.get("profile"):
            out["inference_profiles"] = engine_profiles(llm, prompt, new_tokens)
    out["prefill"] = {}
    for workload, (batch, seq) in PREFILL.items():
        prompts = prefill_ids(batch, seq).tolist()
        out["prefill"][workload] = prefill_seconds(lambda p=prompts: llm.prefill(p), runs)
    return out


def child_causal_lm(workdir: Path, settings: dict) -> dict:
    import paddle

    from paddle_qwen2.inference.predictor import Predictor

    predictor = Predictor(workdir / "exports" / "causal-lm")
    out = {"description": predictor.describe(), "prefill": {}}
    for workload, (batch, seq) in PREFILL.items():
        ids = prefill_ids(batch, seq)
        mask = np.ones_like(ids)
        run = lambda i=ids, m=mask: predictor.run([paddle.to_tensor(i), paddle.to_tensor(m)])  # noqa: E731
        out["prefill"][workload] = prefill_seconds(run, settings["runs"])
    return out


def child_hf(workdir: Path, settings: dict) -> dict:
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    checkpoint, new_tokens, runs = workdir / "ckpt-small", settings["new_tokens"], settings["runs"]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="sdpa", torch_dtype=torch.float32
    ).eval()
    config = json.loads((checkpoint / "config.json").read_text())
    ids = torch.tensor([prompt_ids(config)])
    mask = torch.ones_like(ids)

    def generate(n):
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=PAD_ID,
            )
        return out[0, ids.shape[1] :].tolist()

    out = {
        "description": f"transformers {transformers.__version__} sdpa",
        "decode": decode_seconds(generate, runs, new_tokens),
    }
    out["prefill"] = {}
    for workload, (batch, seq) in PREFILL.items():
        tensor = torch.tensor(prefill_ids(batch, seq))

        def forward(t=tensor):
            with torch.no_grad():
                return model(t, use_cache=True)

        out["prefill"][workload] = prefill_seconds(forward, runs)
    return out


def child_paddlenlp(workdir: Path, settings: dict) -> dict:
    """paddlenlp's Qwen2ForCausalLM (bench_model.py's `build`) with the checkpoint's weights, `generate` greedy."""
    import paddle
    from bench_model import build, config_dict
    from safetensors.numpy import load_file

    checkpoint, new_tokens, runs = workdir / "ckpt-small", settings["new_tokens"], settings["runs"]
    weights = {}
    for key, value in load_file(str(checkpoint / "model.safetensors")).items():
        name = "qwen2." + key[len("model.") :] if key.startswith("model.") else key
        is_linear = value.ndim == 2 and "embed_tokens" not in key
        weights[name] = np.ascontiguousarray(value.T) if is_linear else value
    model, _ = build("paddlenlp", config_dict("small"), weights, "float32", "cpu")
    config = json.loads((checkpoint / "config.json").read_text())
    ids = paddle.to_tensor([prompt_ids(config)], dtype="int64")

    def generate(n):
        with paddle.no_grad():
            out, _ = model.generate(
                input_ids=ids,
                max_new_tokens=n,
                min_new_tokens=n,
                decode_strategy="greedy_search",
                eos_token_id=PAD_ID,
                pad_token_id=PAD_ID,
                use_cache=True,
            )
        return out[0].numpy().tolist()

    import paddlenlp

    return {
        "description": f"paddlenlp {paddlenlp.__version__}",
        "decode": decode_seconds(generate, runs, new_tokens),
    }


def child_embed(name: str, workdir: Path, settings: dict) -> dict:
    texts = json.loads((workdir / "texts.json").read_text(encoding="utf-8"))
    folder = workdir / "st-small"
    if name == "embed_st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(THREADS)
        model = SentenceTransformer(str(folder), device="cpu")
    else:
        from paddle_qwen2.inference.embedding import InferenceEmbeddingModel
        from paddle_qwen2.runtime import keep_freed_memory

        if name == "embed_engine_cli":
            keep_freed_memory()
        model = InferenceEmbeddingModel.from_pretrained(folder)
    model.encode(texts[:EMBED_BATCH], batch_size=EMBED_BATCH)  # warm-up (untimed)
    seconds, embeddings = timed(lambda: model.encode(texts, batch_size=EMBED_BATCH))
    np.save(workdir / f"{name}.npy", np.asarray(embeddings, dtype=np.float32))
    return {"seconds": seconds, "texts_per_s": len(texts) / seconds, "peak_rss_mb": status_bytes("VmHWM") / 2**20}


def child(name: str, workdir: Path, settings: dict) -> None:
    if name == "export":
        result = child_export(workdir, settings)
    elif name in ("engine", "engine_serve", "engine_onednn", "dygraph"):
        result = child_engine(name, workdir, settings)
    elif name == "causal_lm":
        result = child_causal_lm(workdir, settings)
    elif name == "hf":
        result = child_hf(workdir, settings)
    elif name == "paddlenlp":
        result = child_paddlenlp(workdir, settings)
    else:
        result = child_embed(name, workdir, settings)
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------- parent side


def run_child(name: str, workdir: Path, settings: dict) -> dict:
    """Run child `name` in a fresh process; its result, or {"error": ...} when it failed."""
    cmd = [sys.executable, __file__, "--child", name, "--workdir", str(workdir), "--settings", json.dumps(settings)]
    env = dict(os.environ, PADDLE_QWEN2_CACHE=str(workdir / "exports"), OMP_NUM_THREADS=str(THREADS))
    if name == "engine_serve":  # the settings of `serve`'s engine process
        from paddle_qwen2.serving.engine_process import ENGINE_ENVIRONMENT

        env = {**ENGINE_ENVIRONMENT, **env}
    return run_result_child(cmd, env)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def agreement(tokens: list[int], reference: list[int]) -> dict:
    """How many generated ids equal the reference's, and the first position where they differ."""
    same = sum(a == b for a, b in zip(tokens, reference))
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    return {"same": same, "of": min(len(tokens), len(reference)), "first_difference": first}


def memory_bandwidth(probes: list[dict], nbytes: int, measured: str) -> dict:
    """The decode limit of a step reading `nbytes`, from `read_bandwidth` probes (benchmarks/bandwidth.py): the
    machine's read bandwidth is the best pass at either thread count; the one-thread figure besides."""
    one = [gb for probe in probes for gb in probe["one_thread"]["runs"]]
    many = [gb for probe in probes for gb in probe["all_threads"]["runs"]]
    read = max(one + many)
    kernels = probes[0]["kernels"]
    return {
        "weight_bytes_per_token": nbytes,
        "probe": f"benchmarks/bandwidth.py: {' and '.join(kernels)} reads of a {probes[0]['bytes'] / 2**30:g} GiB "
        "float32 array",
        "threads": probes[0]["threads"],
        "by_kernel": {
            k: {n: max(probe["by_kernel"][k][n] for probe in probes) for n in ("one_thread", "all_threads")}
            for k in kernels
        },
        "read_gb_per_s": read,
        "read_gb_per_s_one_thread": max(one),
        "one_thread": bandwidth_summary(one),
        "all_threads": bandwidth_summary(many),
        "limit_tokens_per_s": read * 1e9 / nbytes,
        "one_thread_limit_tokens_per_s": max(one) * 1e9 / nbytes,
        "measured": measured,
    }


def apply_limit(decode: dict, limit: float) -> None:
    """Set each decode row's fractions of the limit (`limit` tokens/s): its median, best and bare-loop tokens/s."""
    for row in decode.values():
        row["fraction_of_limit"] = row["tokens_per_s"] / limit
        row["best_fraction_of_limit"] = row["best_tokens_per_s"] / limit
        if "decode_loop_tokens_per_s" in row:
            row["decode_loop_fraction_of_limit"] = row["decode_loop_tokens_per_s"] / limit
        for stale in ("fraction_of_run_limit", "copy_seconds"):  # keys of results files of an older layout
            row.pop(stale, None)


def summarize(runs: dict, probes: list[dict], nbytes: int) -> dict:
    """The medians, ratios and target verdicts of the children's results; `probes`: the read-bandwidth probes
    run between the children."""
    ok = {name: [r for r in results if "error" not in r] for name, results in runs.items()}
    errors = {name: results[-1]["error"] for name, results in runs.items() if results and not ok[name]}
    bandwidth = memory_bandwidth(probes, nbytes, "probed between the children of this run")
    decode = {}
    for name in DECODE_IMPLS:
        if not ok.get(name):
            continue
        children = [r["decode"] for r in ok[name]]
        seconds = median_of([c["seconds_per_token"] for c in children])
        row = {
            "tokens_per_s": 1 / seconds,
            "best_tokens_per_s": 1 / min(min(c["runs"]) for c in children),
            "description": ok[name][0]["description"],
            "runs": [c["runs"] for c in children],
        }
        if ok.get("hf"):
            row["tokens_vs_hf"] = agreement(children[0]["tokens"], ok["hf"][0]["decode"]["tokens"])
        if "decode_loop" in ok[name][0]:
            row["decode_loop_tokens_per_s"] = 1 / median_of([r["decode_loop"]["seconds_per_token"] for r in ok[name]])
            parts = ok[name][0]["step_parts_ms"]
            row["step_parts_ms"] = {k: median_of([r["step_parts_ms"][k] for r in ok[name]]) for k in parts}
        decode[name] = row
    apply_limit(decode, bandwidth["limit_tokens_per_s"])
    prefill = {}
    for workload in PREFILL:
        row = {}
        for name in PREFILL_IMPLS:
            if ok.get(name):
                row[name] = {
                    "ms": median_of([r["prefill"][workload]["seconds"] for r in ok[name]]) * 1000,
                    "best_ms": min(min(r["prefill"][workload]["runs"]) for r in ok[name]) * 1000,
                    "runs_ms": [[s * 1000 for s in r["prefill"][workload]["runs"]] for r in ok[name]],
                    "page_faults": [r["prefill"][workload].get("page_faults") for r in ok[name]],
                }
        if "hf" in row:
            for name in row:
                row[name]["time_vs_hf_sdpa"] = row[name]["ms"] / row["hf"]["ms"]
                row[name]["best_time_vs_hf_sdpa"] = row[name]["best_ms"] / row["hf"]["best_ms"]
        prefill[workload] = row
    embed = {}
    for name in EMBED_IMPLS:
        if ok.get(name):
            embed[name] = {
                "texts_per_s": median_of([r["texts_per_s"] for r in ok[name]]),
                "best_texts_per_s": max(r["texts_per_s"] for r in ok[name]),
                "peak_rss_mb": median_of([r["peak_rss_mb"] for r in ok[name]]),
            }
    if "embed_st" in embed:
        for name in embed:
            embed[name]["speed_vs_sentence_transformers"] = (
                embed[name]["texts_per_s"] / embed["embed_st"]["texts_per_s"]
            )
    targets = verdicts(decode, prefill, embed)
    result = {
        "memory_bandwidth": bandwidth,
        "decode": decode,
        "prefill": prefill,
        "embed": embed,
        "targets": targets,
        "errors": errors,
        "children": {
            name: [{k: r.get(k) for k in ("process_seconds", "load_average_at_start")} for r in results]
            for name, results in ok.items()
        },
    }
    profiles = next((r["inference_profiles"] for r in ok.get("engine", []) if "inference_profiles" in r), None)
    if profiles:
        result["engine_inference_profiles"] = {k: profile_summary(v) for k, v in profiles.items()}
    return result


def verdicts(decode: dict, prefill: dict, embed: dict) -> list[dict]:
    """One entry per target: the measured value (median; and of the best runs), the target, met or missed and by
    how much."""
    out = []

    def add(what, row, key, best_key, target, at_least, unit, serve=None):
        value, best = row.get(key), row.get(best_key)
        if value is None:
            out.append(
                {"what": what, "value": None, "best": None, "target": target, "met": None, "note": "not measured"}
            )
            return
        met = value >= target if at_least else value <= target
        gap = (target - value) if at_least else (value - target)
        if met:
            note = "met"
        elif unit == "%":
            points = round(gap * 100)
            note = f"missed by {points} percentage point{'' if points == 1 else 's'}"
        else:
            note = f"missed: needs {target / value if at_least else value / target:.2f}x the speed"
        if not met and best is not None:
            best_met = best >= target if at_least else best <= target
            note += f" (best runs: {best * 100:.0f}%" if unit == "%" else f" (best runs: {best:.2f}x"
            note += ", met)" if best_met else ")"
        entry = {"what": what, "value": value, "best": best, "target": target, "met": met, "note": note}
        if serve is not None:  # the engine as `paddle-qwen2 serve` runs it (after keep_freed_memory)
            entry["serve"] = serve
            entry["serve_met"] = serve >= target if at_least else serve <= target
        out.append(entry)

    engine = decode.get("engine", {})
    add(
        "decode: engine % of the read-bandwidth limit",
        engine,
        "fraction_of_limit",
        "best_fraction_of_limit",
        TARGETS["decode"],
        True,
        "%",
        decode.get("engine_serve", {}).get("fraction_of_limit"),
    )
    for workload in PREFILL:
        row = prefill[workload].get("engine", {})
        serve = prefill[workload].get("engine_serve", {}).get("time_vs_hf_sdpa")
        add(
            f"{workload}: engine time / HF sdpa time",
            row,
            "time_vs_hf_sdpa",
            "best_time_vs_hf_sdpa",
            TARGETS["prefill"],
            False,
            "x",
            serve,
        )
    row = dict(embed.get("embed_engine", {}))
    if "embed_st" in embed and row:
        row["best"] = row["best_texts_per_s"] / embed["embed_st"]["best_texts_per_s"]
    add(
        "embeddings: engine texts/s / sentence-transformers'",
        row,
        "speed_vs_sentence_transformers",
        "best",
        TARGETS["embed"],
        True,
        "x",
    )
    return out


def profile_summary(report: str, top: int = 10) -> list[str]:
    """The header and the `top` first operator rows of the report Paddle Inference prints (sub-events left out)."""
    lines = [line.rstrip() for line in report.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "Event" in line and "Calls" in line), None)
    if start is None:
        return lines[:top]
    rows = [line for line in lines[start + 1 :] if not line.startswith(" ")]
    return [lines[start], *rows[:top]]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def table(result: dict) -> str:
    """The markdown tables of a result (benchmarks/results/inference.json)."""
    s, bw, machine = result["settings"], result["memory_bandwidth"], result["machine"]
    lines = [
        f"config `small`, fp32, CPU, {result['threads']} threads, {machine['cores']} cores ({machine['cpu']}); "
        f"load average {result['load_average']['before'][0]} before, {result['load_average']['after'][0]} after; "
        f"{s['repeats']} repeats.",
        "",
        f"Decode, one stream ({PROMPT_TOKENS}-token prompt, {s['new_tokens']} new tokens, greedy): a step reads "
        f"{bw['weight_bytes_per_token'] / 1e6:.1f} MB of weights; the machine reads {bw['read_gb_per_s']:.1f} GB/s "
        f"(best pass; {bw['threads']} threads {bw['all_threads']['best']:.1f}, one thread "
        f"{bw['read_gb_per_s_one_thread']:.1f}) -> limit **{bw['limit_tokens_per_s']:.0f} tokens/s** (of one "
        f"thread's reads: {bw['one_thread_limit_tokens_per_s']:.0f}). {limit_source(bw)}. tokens/s: medians; best: "
        "the fastest run.",
        "",
        "| | tokens/s | % of the limit | best (% of the limit) | vs dygraph | vs HF | bare `llm.decode` loop |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    decode = result["decode"]
    for name, row in decode.items():
        vs = [
            f"{row['tokens_per_s'] / decode[o]['tokens_per_s']:.2f}x" if o in decode else "-" for o in ("dygraph", "hf")
        ]
        loop = row.get("decode_loop_tokens_per_s")
        loop_cell = "-" if loop is None else f"{loop:.0f} tok/s ({pct(row['decode_loop_fraction_of_limit'])})"
        lines.append(
            f"| {LABELS[name]} | {row['tokens_per_s']:.1f} | **{pct(row['fraction_of_limit'])}** | "
            f"{row['best_tokens_per_s']:.1f} ({pct(row['best_fraction_of_limit'])}) | {vs[0]} | {vs[1]} | {loop_cell} |"
        )
    parts = decode.get("engine", {}).get("step_parts_ms")
    if parts:
        lines += [
            "",
            f"A decode step of the engine: {sum(parts.values()):.2f} ms (median; the program run "
            f"{parts['program_run']:.2f} ms) against the read-bandwidth limit's {1000 / bw['limit_tokens_per_s']:.2f} "
            f"ms (of one thread's reads: {1000 / bw['one_thread_limit_tokens_per_s']:.2f} ms).",
        ]
    names = [n for n in PREFILL_IMPLS if any(n in row for row in result["prefill"].values())]
    lines += ["", "Prefill (ms; in brackets: time / HF sdpa's time):", ""]
    lines += ["| | " + " | ".join(LABELS[n] for n in names) + " |", "|" + " --- |" * (len(names) + 1)]
    for workload, row in result["prefill"].items():
        cells = [
            f"{row[n]['ms']:.0f} ({row[n].get('time_vs_hf_sdpa', float('nan')):.2f}x)" if n in row else "-"
            for n in names
        ]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    embed = result["embed"]
    if embed:
        lines += [
            "",
            f"Embeddings ({s['texts']} texts of bench_embed.py's mix, batch {EMBED_BATCH}; max abs difference to "
            f"sentence-transformers {result.get('embed_max_abs_diff', float('nan')):.1e}):",
            "",
            "| | texts/s | vs sentence-transformers | peak RSS |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in embed.items():
            ratio = row.get("speed_vs_sentence_transformers")
            lines.append(
                f"| {LABELS[name]} | {row['texts_per_s']:.1f} | "
                f"**{'-' if ratio is None else f'{ratio:.2f}x'}** | {row['peak_rss_mb']:.0f} MB |"
            )
    lines += [
        "",
        "| | median | best runs | as `paddle-qwen2 serve` runs it | target | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in result["targets"]:
        percent = t["what"].startswith("decode")
        fmt = (lambda v: pct(v)) if percent else (lambda v: "-" if v is None else f"{v:.2f}x")
        sign = ">=" if percent or t["what"].startswith("embed") else "<="
        verdict = t["note"].split(" (best")[0]
        lines.append(
            f"| {t['what']} | {fmt(t['value'])} | {fmt(t.get('best'))} | {fmt(t.get('serve'))} | "
            f"{sign} {fmt(t['target'])} | {verdict} |"
        )
    return "\n".join(lines)


def limit_source(bw: dict) -> str:
    """How the read bandwidth was measured: the probe, its passes' spread, when."""
    many, one = bw["all_threads"], bw["one_thread"]
    return (
        f"Read bandwidth: {bw['probe']}, best of {len(many['runs'])} passes per thread count ({bw['threads']} threads: "
        f"{many['min']:.1f}-{many['best']:.1f} GB/s, median {many['median']:.1f}; one thread: "
        f"{one['min']:.1f}-{one['best']:.1f}, median {one['median']:.1f}), {bw['measured']}"
    )


def profile_text(result: dict, decode: bool = True, prefill: bool = True) -> list[str]:
    """Where the engine's time goes: a decode step split into its parts, and Paddle Inference's operator profiles
    of the decode steps and of the 1x512 prefill (printed, and kept in the results, when a target is missed)."""
    lines = []
    row = result["decode"].get("engine")
    profiles = result.get("engine_inference_profiles", {})
    if decode and row and "step_parts_ms" in row:
        parts = row["step_parts_ms"]
        limit_ms = 1000 / result["memory_bandwidth"]["limit_tokens_per_s"]
        lines.append(
            f"engine decode step (median ms; the read-bandwidth limit is {limit_ms:.2f} ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + f"; total {sum(parts.values()):.2f}"
        )
    if decode and profiles.get("decode"):
        lines += [f"Paddle Inference's profile of {result['settings']['new_tokens']} decode steps (ms):"]
        lines += profiles["decode"]
    for workload, row in result["prefill"].items() if prefill else ():
        engine = row.get("engine")
        if engine and engine.get("page_faults") and None not in engine["page_faults"]:
            runs = [ms for child in engine["runs_ms"] for ms in child]
            faults = [f for child in engine["page_faults"] for f in child]
            lines.append(
                f"engine {workload}: runs {', '.join(f'{ms:.0f}' for ms in runs)} ms; minor page faults per run "
                f"{', '.join(str(f) for f in faults)} (x 4 KB first touched)"
            )
    if prefill and profiles.get("prefill_1x512"):
        lines += ["Paddle Inference's profile of 3 prefills 1x512 through the decode program (ms):"]
        lines += profiles["prefill_1x512"]
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--real-size" in argv:  # the real-size section: bench_precision.py with the options that follow
        import bench_precision

        return bench_precision.main(argv[argv.index("--real-size") + 1 :])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="child processes per implementation (default 3)")
    p.add_argument("--runs", type=int, default=3, help="timed runs inside each child (default 3)")
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    p.add_argument("--texts", type=int, default=500, help="texts of the embedding workload (default 500)")
    p.add_argument("--only", nargs="*", choices=list(CHILDREN), help="run only these implementations")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 1 run, 32 new tokens, 64 texts")
    p.add_argument("--no-profile", action="store_true", help="skip Paddle Inference's profile of a decode step")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_inference"))
    p.add_argument("--out", help=f"results JSON (default {RESULTS.relative_to(ROOT)}; --quick: in the workdir)")
    p.add_argument(
        "--refresh-limit",
        action="store_true",
        help="only re-probe the read bandwidth and recompute the limit, fractions and verdicts of --out's results",
    )
    p.add_argument(
        "--real-size",
        action="store_true",
        help="run the real-size section instead (bench_precision.py; the options after it are bench_precision's)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        child(args.child, workdir, json.loads(args.settings))
        return 0
    if args.refresh_limit:
        result = refresh_limit(Path(args.out) if args.out else RESULTS, args.repeats)
        print(table(result))
        return 0
    if args.quick:
        args.repeats, args.runs, args.new_tokens, args.texts = 1, 1, 32, 64
    out_path = Path(args.out) if args.out else (workdir / "inference-quick.json" if args.quick else RESULTS)
    started, load_before = time.perf_counter(), load_average()
    workdir.mkdir(parents=True, exist_ok=True)
    exported = prepare(workdir, args.texts)
    if "error" in exported:
        raise SystemExit(f"export failed:\n{exported['error']}")
    nbytes = weight_bytes_per_token(small_config())
    assert nbytes == checkpoint_bytes_per_token(workdir / "ckpt-small"), "weight bytes differ from the checkpoint's"
    settings = {"new_tokens": args.new_tokens, "runs": args.runs, "profile": False}
    names = args.only or list(CHILDREN)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    probe, probes = ReadProbe(), []
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            probes.append(read_bandwidth(THREADS, repeats=2, probe=probe))
            # Paddle Inference's profile once, in the last repeat's engine child
            profile = name == "engine" and repeat == args.repeats - 1 and not args.no_profile
            result = run_child(name, workdir, dict(settings, profile=profile))
            runs[name].append(result)
            print(f"  repeat {repeat + 1}/{args.repeats} {name:<17} {brief(result)}", flush=True)
    probes.append(read_bandwidth(THREADS, repeats=2, probe=probe))
    del probe
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "config": "small",
        "dtype": "float32",
        "threads": THREADS,
        "settings": {
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "runs_per_child": args.runs,
            "texts": args.texts,
            "batch_size": EMBED_BATCH,
            "quick": args.quick,
        },
        "export_seconds": exported["export_seconds"],
        **summarize(runs, probes, nbytes),
    }
    embeddings = [workdir / f"{name}.npy" for name in ("embed_engine", "embed_engine_cli")]
    if (workdir / "embed_st.npy").is_file() and any(p.is_file() for p in embeddings):
        reference = np.load(workdir / "embed_st.npy")
        result["embed_max_abs_diff"] = max(
            float(np.abs(np.load(p) - reference).max()) for p in embeddings if p.is_file()
        )
    result["load_average"] = {"before": load_before, "after": load_average()}
    result["elapsed_seconds"] = time.perf_counter() - started
    note = set_profile_note(result, args.quick)
    write_results(out_path, result)
    print("\n" + table(result))
    if note:
        print("\n" + "\n".join(note))
    for name, error in result["errors"].items():
        print(f"\n{name} failed:\n{error}")
    print(f"\n{result['elapsed_seconds'] / 60:.1f} min; results written to {out_path}")
    return 0


def set_profile_note(result: dict, quick: bool = False) -> list[str]:
    """Put `profile_text` of the missed targets (all of it for a quick run) into `result["profile_note"]`."""
    missed = [t["met"] is False for t in result["targets"]]
    note = profile_text(result, decode=missed[0] or quick, prefill=any(missed[1:3]) or quick)
    result.pop("profile_note", None)
    if note:
        result["profile_note"] = note
    return note


def refresh_limit(path: Path, repeats: int) -> dict:
    """Re-probe the read bandwidth (`repeats` probes of 5 passes per kernel and thread count) and recompute the
    limit, the decode fractions, the verdicts and the profile note of the results in `path`, from its recorded
    tokens/s and weight bytes; the rest of the file (its date, machine, timings) is kept. Returns what was written."""
    result = json.loads(path.read_text())
    probe = ReadProbe()
    probes = [read_bandwidth(THREADS, probe=probe) for _ in range(repeats)]
    measured = (
        f"probed on {time.strftime('%Y-%m-%d %H:%M')} by `bench_inference.py --refresh-limit` (load average "
        f"{load_average()[0]}); the tokens/s are of the run of {result['date']}"
    )
    nbytes = result["memory_bandwidth"]["weight_bytes_per_token"]
    result["memory_bandwidth"] = memory_bandwidth(probes, nbytes, measured)
    apply_limit(result["decode"], result["memory_bandwidth"]["limit_tokens_per_s"])
    result["targets"] = verdicts(result["decode"], result["prefill"], result["embed"])
    set_profile_note(result, result["settings"].get("quick", False))
    return write_results(path, result)


def brief(result: dict) -> str:
    """A one-line progress note of a child's result."""
    if "error" in result:
        return "FAILED: " + result["error"].splitlines()[-1][:150]
    parts = []
    if "decode" in result:
        parts.append(f"decode {1 / result['decode']['seconds_per_token']:.1f} tok/s")
    if "decode_loop" in result:
        parts.append(f"loop {1 / result['decode_loop']['seconds_per_token']:.1f} tok/s")
    for workload, row in result.get("prefill", {}).items():
        parts.append(f"{workload} {row['seconds'] * 1000:.0f} ms")
    if "texts_per_s" in result:
        parts.append(f"{result['texts_per_s']:.1f} texts/s")
    return ", ".join(parts) + f" ({result['process_seconds']:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())
