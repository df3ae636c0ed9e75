"""Speed and memory of paddle_qwen2 against paddlenlp's Qwen2 and HF transformers, measured in one run.

Same weights, same inputs, same process; runs interleaved (A B C A B C ...), the median of >= 5 repeats after
warm-up; paddle and torch get the same thread count. Reported as ratios against the anchors:
  * paddlenlp 3.0.0b2 `Qwen2ForCausalLM` with identical weights,
  * HF transformers (torch eager and sdpa) when installed,
  * the machine's ceiling: the workload's matmuls timed as bare `paddle.matmul` calls of the same shapes.
Peak RSS of each (implementation, workload) is measured in a child process of its own.

`--config` is a config in configs/ by name (`small`, the default; `tiny` for a quick look) or a path to an HF
config.json.

    python benchmarks/bench_model.py                        # configs/small.json, CPU fp32
    python benchmarks/bench_model.py --config tiny --repeats 3
    python benchmarks/bench_model.py --device gpu --dtype bfloat16 --config configs/qwen2.5-0.5b.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from paddle_qwen2.runtime import configure_cpu_threads  # noqa: E402  (sets threads before paddle loads)

THREADS = int(configure_cpu_threads()["OMP_NUM_THREADS"])

import zlib  # noqa: E402,F401

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from common import status_bytes, write_results  # noqa: E402
from model_configs import load_config  # noqa: E402

WORKLOADS = ["prefill_1x512", "prefill_4x256", "decode_16+64", "train_4x256", "embed_32x64"]
UNITS_PER_RUN = {"embed_32x64": 32}  # the embedding workload reports sentences
IMPLS = ["ours", "paddlenlp", "hf_eager", "hf_sdpa"]


# ------------------------------------------------------------------------------------------------ models


def config_dict(name: str) -> dict:
    """The model fields of the HF config.json `name` (see `config_path`), as keyword arguments of a Qwen2Config."""
    raw = load_config(name)
    return {k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype", "dtype", "transformers_version")}


def reference_weights(cfg: dict, seed: int = 0) -> dict:
    """Paddle-layout weights (Linear `[in, out]`), names as paddle_qwen2 / paddlenlp use them."""
    from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM

    paddle.seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    return {k: v.numpy() for k, v in model.state_dict().items()}


def build(impl: str, cfg: dict, weights: dict, dtype: str, device: str):
    """(model, framework) with the reference weights loaded."""
    if impl in ("ours", "paddlenlp"):
        if impl == "ours":
            from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
        else:
            from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM
        config = Qwen2Config(**cfg, dtype=dtype)
        model = Qwen2ForCausalLM(config)
        model.set_state_dict({k: paddle.to_tensor(v).astype(dtype) for k, v in weights.items()})
        model.eval()
        return model, "paddle"
    import torch
    import transformers

    config = transformers.Qwen2Config(**cfg)
    model = transformers.Qwen2ForCausalLM._from_config(
        config, attn_implementation="eager" if impl == "hf_eager" else "sdpa", torch_dtype=getattr(torch, dtype)
    )
    state = {}
    for key, value in weights.items():
        name = "model." + key[len("qwen2.") :] if key.startswith("qwen2.") else key
        is_linear = value.ndim == 2 and "embed_tokens" not in key
        state[name] = torch.tensor(value.T.copy() if is_linear else value)
    model.load_state_dict(state, strict=True)
    model.to("cuda" if device == "gpu" else "cpu").eval()
    return model, "torch"


# ------------------------------------------------------------------------------------------------ workloads


def make_ids(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(3, vocab, size=(batch, seq)).astype("int64")


def workload_fn(name: str, impl: str, model, framework: str, cfg: dict, device: str):
    """A zero-argument callable running one repeat of the workload; returns the number of units it did."""
    vocab = cfg["vocab_size"]
    if framework == "torch":
        import torch

        dev = "cuda" if device == "gpu" else "cpu"
        T = lambda a: torch.tensor(a, device=dev)  # noqa: E731
    else:
        T = paddle.to_tensor  # noqa: E731

    if name.startswith("prefill"):
        batch, seq = (1, 512) if name == "prefill_1x512" else (4, 256)
        ids = T(make_ids(batch, seq, vocab))
        if framework == "torch":
            import torch

            def run():
                with torch.no_grad():
                    model(ids, use_cache=False)
                return 1
        else:

            def run():
                with paddle.no_grad():
                    model(ids, use_cache=False)
                return 1

        return run

    if name.startswith("decode"):
        prompt = make_ids(1, 16, vocab)
        return decode_loop(model, framework, T, prompt, new_tokens=64)

    if name.startswith("train"):
        return train_step(model, framework, T, make_ids(4, 256, vocab))

    if name.startswith("embed"):
        ids = make_ids(32, 64, vocab)
        mask = np.ones_like(ids)
        mask[::2, 48:] = 0  # half the rows padded: pooling must honour the mask
        return embed_loop(impl, model, framework, T, ids, mask)
    raise ValueError(name)


def decode_loop(model, framework, T, prompt, new_tokens):
    """Greedy decoding with the KV cache; the timed part excludes the prefill. Returns tokens/s units."""
    if framework == "torch":
        import torch

        def run():
            with torch.no_grad():
                out = model(T(prompt), use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                start = time.perf_counter()
                for _ in range(new_tokens):
                    out = model(token, past_key_values=past, use_cache=True)
                    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                return time.perf_counter() - start

        return run

    def run():
        with paddle.no_grad():
            ids = T(prompt)
            out = model(ids, use_cache=True, return_dict=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for step in range(new_tokens):
                position = paddle.full([1, 1], prompt.shape[1] + step, dtype="int64")
                out = model(token, position_ids=position, past_key_values=past, use_cache=True, return_dict=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - start

    return run


def train_step(model, framework, T, ids):
    if framework == "torch":
        import torch

        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        labels = T(ids)

        def run():
            loss = model(T(ids), labels=labels, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return 1

        return run

    model.train()
    opt = paddle.optimizer.AdamW(learning_rate=1e-5, parameters=model.parameters())
    paddlenlp_style = type(model).__module__.startswith("paddlenlp")
    # paddlenlp's criterion expects labels already shifted; ours shifts HF-style. Same token count either way.
    labels = T(np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), -100)], axis=1)) if paddlenlp_style else T(ids)

    def run():
        out = model(T(ids), labels=labels, use_cache=False, return_dict=True)
        out.loss.backward()
        opt.step()
        opt.clear_grad()
        return 1

    return run


def embed_loop(impl, model, framework, T, ids, mask):
    """Last-token sentence embeddings of 32 sentences; units are sentences."""
    if framework == "torch":
        import torch

        def run():
            with torch.no_grad():
                hidden = model.model(T(ids), attention_mask=T(mask)).last_hidden_state
                last = (torch.arange(ids.shape[1]) * T(mask)).argmax(-1)
                emb = torch.nn.functional.normalize(hidden[torch.arange(ids.shape[0]), last].float(), dim=-1)
                emb.sum().item()
            return ids.shape[0]

        return run
    if impl == "ours":
        from paddle_qwen2 import Qwen2SentenceEmbedding

        embedder = Qwen2SentenceEmbedding(model.config)
        embedder.qwen2 = model.qwen2
        embedder.eval()

        def run():
            with paddle.no_grad():
                embedder(T(ids), attention_mask=T(mask)).sum().item()
            return ids.shape[0]

        return run

    def run():
        with paddle.no_grad():
            hidden = model.qwen2(T(ids), attention_mask=T(mask), return_dict=True).last_hidden_state
            last = (paddle.arange(ids.shape[1]) * T(mask)).argmax(-1)
            emb = paddle.nn.functional.normalize(hidden[paddle.arange(ids.shape[0]), last].astype("float32"), axis=-1)
            emb.sum().item()
        return ids.shape[0]

    return run


# ------------------------------------------------------------------------------------------------ ceiling


def matmul_shapes(name: str, cfg: dict):
    """(batch, m, k, n, count) of the matmuls of one forward of the workload (prefill-style workloads):
    `count` calls of `[batch, m, k] @ [batch, k, n]` (batch 1 for the projections)."""
    batch, seq = {
        "prefill_1x512": (1, 512),
        "prefill_4x256": (4, 256),
        "train_4x256": (4, 256),
        "embed_32x64": (32, 64),
    }[name]
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // heads
    tokens, layers = batch * seq, cfg["num_hidden_layers"]
    shapes = [
        (1, tokens, h, heads * d, 2 * layers),  # q, o
        (1, tokens, h, kv * d, 2 * layers),  # k, v
        (1, tokens, h, i, 2 * layers),  # gate, up
        (1, tokens, i, h, layers),  # down
        (batch * heads, seq, d, seq, layers),  # scores
        (batch * heads, seq, seq, d, layers),  # weights @ values
    ]
    if name != "embed_32x64":
        shapes.append((1, tokens, h, v, 1))  # LM head
    return shapes


def ceiling_seconds(name: str, cfg: dict, dtype: str, repeats: int) -> float:
    """Seconds the workload's forward matmuls take as bare paddle.matmul calls (x3 for a training step)."""
    total = 0.0
    for batch, m, k, n, count in matmul_shapes(name, cfg):
        a, b = paddle.randn([batch, m, k]).astype(dtype), paddle.randn([batch, k, n]).astype(dtype)
        paddle.matmul(a, b).numpy()
        times = []
        for _ in range(max(3, repeats)):
            start = time.perf_counter()
            paddle.matmul(a, b).numpy()
            times.append(time.perf_counter() - start)
        total += statistics.median(times) * count
    return total * (3 if name.startswith("train") else 1)


def model_flops(name: str, cfg: dict) -> float:
    flops = sum(2 * batch * m * k * n * count for batch, m, k, n, count in matmul_shapes(name, cfg))
    return flops * (3 if name.startswith("train") else 1)


# ------------------------------------------------------------------------------------------------ runner


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per unit for each callable, run A B C A B C ..."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            if isinstance(result, float):  # decode loops time themselves (prefill excluded)
                samples[key].append(result / 64)
            else:
                samples[key].append(elapsed / result)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_rss_child(impl: str, workload: str, args) -> float:
    """Peak RSS (MB) of a child process that builds `impl` and runs `workload` twice."""
    cmd = [
        sys.executable,
        __file__,
        "--config",
        args.config,
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--child",
        impl,
        workload,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def child(impl: str, workload: str, args) -> None:
    cfg = config_dict(args.config)
    model, framework = build(impl, cfg, reference_weights(cfg), args.dtype, args.device)
    fn = workload_fn(workload, impl, model, framework, cfg, args.device)
    fn()
    fn()
    print(status_bytes("VmHWM") / 2**20)  # this process's peak RSS in MB


def available_impls() -> list:
    impls = ["ours", "paddlenlp"]
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        impls += ["hf_eager", "hf_sdpa"]
    except ImportError:
        pass
    return impls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default="small",
        help="a config in configs/ by name (small, tiny, ...) or a path to an HF config.json",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="*", default=WORKLOADS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-workload peak RSS children")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    if args.child:
        child(*args.child, args)
        return 0
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass

    cfg = config_dict(args.config)
    weights = reference_weights(cfg)
    impls = available_impls()
    models = {impl: build(impl, cfg, weights, args.dtype, args.device) for impl in impls}
    results = {
        "config": args.config,
        "dtype": args.dtype,
        "device": args.device,
        "threads": THREADS,
        "workloads": {},
    }
    for workload in args.workloads:
        fns = {impl: workload_fn(workload, impl, m, fw, cfg, args.device) for impl, (m, fw) in models.items()}
        per_unit = time_interleaved(fns, args.repeats)
        row = {"seconds_per_unit": per_unit}
        if not workload.startswith("decode"):
            ceiling = ceiling_seconds(workload, cfg, args.dtype, args.repeats)
            seconds_per_run = per_unit["ours"] * UNITS_PER_RUN.get(workload, 1)
            row["matmul_ceiling_s"] = ceiling
            row["gflops_ours"] = model_flops(workload, cfg) / seconds_per_run / 1e9
            row["fraction_of_ceiling_ours"] = ceiling / seconds_per_run
        if not args.no_memory:
            row["peak_rss_mb"] = {impl: peak_rss_child(impl, workload, args) for impl in impls}
        row["ratio_ours_vs"] = {impl: per_unit["ours"] / per_unit[impl] for impl in impls if impl != "ours"}
        results["workloads"][workload] = row
        print_row(workload, row)
    out = Path(args.out) / f"model_{Path(args.config).stem}_{args.device}_{args.dtype}.json"
    write_results(out, results)
    print(f"\nresults written to {out}")
    return 0


def print_row(workload: str, row: dict) -> None:
    unit = "tok" if workload.startswith("decode") else ("sent" if workload.startswith("embed") else "run")
    parts = []
    for impl, seconds in row["seconds_per_unit"].items():
        rate = f"{1 / seconds:8.1f} {unit}/s" if unit != "run" else f"{seconds * 1000:8.1f} ms"
        parts.append(f"{impl}={rate.strip()}")
    print(f"{workload:15s} " + "  ".join(parts))
    ratios = "  ".join(f"ours/{k}={v:.2f}x time" for k, v in row["ratio_ours_vs"].items())
    print(f"{'':15s} {ratios}")
    if "fraction_of_ceiling_ours" in row:
        print(
            f"{'':15s} ours at {row['fraction_of_ceiling_ours'] * 100:.0f}% of the bare-matmul ceiling "
            f"({row['gflops_ours']:.1f} GFLOP/s)"
        )
    if "peak_rss_mb" in row:
        print(f"{'':15s} peak RSS MB: " + "  ".join(f"{k}={v:.0f}" for k, v in row["peak_rss_mb"].items()))


if __name__ == "__main__":
    sys.exit(main())
