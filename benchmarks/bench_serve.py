"""Serving under load: `paddle-qwen2 serve` with 1, 4, 8 and 16 concurrent streaming clients.

The server runs in a child process on a random-weight HF `Qwen2ForCausalLM` of configs/small.json (written by
transformers, with the bundled tokenizer; the vocabulary is raised to the tokenizer's 4,096 ids where a config has
fewer), on 127.0.0.1 only, `--max-batch-size 16`. Each level starts N clients at once (asyncio + httpx in this
process); each sends `--requests` streamed `/v1/completions` one after the other: a prompt of 30 to 120 tokens cut
from the bundled corpus, `--max-tokens` new tokens (greedy, eos ignored, so every answer has the same length).
Reported per level: aggregate tokens/s (all tokens / the level's wall time), time to first token p50 / p95 (to the
first streamed piece: a random-weight model often emits byte tokens that are no whole character yet, which the
stream holds back, so this overstates the engine's first token), time per output token p50 / p95 (the gap between
stream chunks, per token), requests and errors. After an untimed warm-up (1 client, then the most clients) the
levels run `--repeats` times (5), the order rotated each pass (1 4 8 16, 4 8 16 1, ...); tokens/s is the median
of the passes, the latencies are pooled. The headline is the 8-client aggregate over the 1-client one (per pass,
median of the passes): continuous batching should give >= 4x on the same two cores. Other load on the machine
skews it; the script warns when the 1-client rate varies by more than 20% between passes.

`--soak-seconds S` then keeps 8 clients busy for S seconds (at most `--soak-requests` requests) and reports the
server's RSS after a warm-up (the first 10% of the time) and at the end: a leak shows as growth.

    python benchmarks/bench_serve.py                          # small config, levels 1 4 8 16 (~5 min on 2 cores)
    python benchmarks/bench_serve.py --soak-seconds 300       # plus a 5-minute soak
    python benchmarks/bench_serve.py --quick                  # smoke run: tiny config, levels 1 and 4 (~30 s)

`--workload prefix` measures automatic prefix caching instead (results in benchmarks/results/prefix.json): on a
random-weight checkpoint of configs/qwen2.5-0.5b.json (real size; served with the default prefix cache), each
repetition makes a new ~1,500-token system prompt from the bundled corpus and sends two requests with it and
different user questions, one after the other: the first (cold: nothing of it cached) and the second (warm: its
system prompt was seen). Each is a one-token completion, so its latency is its time to first token (prefill and
one sampled token, over HTTP). After an untimed warm-up pair, `--repeats` (3) repetitions; reported: the median
cold and warm times, their ratio (target <= 0.3x) and the server's prefix-cache metrics.

    python benchmarks/bench_serve.py --workload prefix              # qwen2.5-0.5b, 1,500-token prompts (~5 min)
    python benchmarks/bench_serve.py --workload prefix --quick      # tiny config, 300-token prompts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import corpus_spans, status_bytes, write_hf_checkpoint, write_results
from model_configs import load_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
PREFIX_RESULTS = ROOT / "benchmarks" / "results" / "prefix.json"
PREFIX_TARGET = 0.3  # warm time to first token over cold, at most
TOKENIZER_VOCAB = 4096  # the bundled tokenizer's ids (ChatML specials 4000-4002)
GENERATION_CONFIG = {"eos_token_id": [4000, 4002], "pad_token_id": 4000, "do_sample": False}
TARGET = 4.0  # 8 clients' aggregate tokens/s over 1 client's, at least
HOST = "127.0.0.1"  # loopback only
_LISTENING = re.compile(r"paddle-qwen2 serve: .* on (http://[\w.\[\]:]+:\d+)")


# ----------------------------------------------------------------------------------------------------- setup
def write_checkpoint(folder: Path, config_name: str) -> None:
    """A random-weight HF Qwen2ForCausalLM of `config_name` with the bundled tokenizer (in a child process)."""
    config = {k: v for k, v in load_config(config_name).items() if k not in ("torch_dtype", "transformers_version")}
    config["vocab_size"] = max(config["vocab_size"], TOKENIZER_VOCAB)
    config["architectures"] = ["Qwen2ForCausalLM"]
    write_hf_checkpoint(folder, config, tokenizer=True, generation_config=GENERATION_CONFIG)


def make_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` prompts of 120 to 480 characters (about 30 to 120 tokens) from the bundled corpus."""
    return corpus_spans(count, lambda rng: rng.randint(120, 480), seed, empty="Once upon a time")


class Server:
    """`python -m paddle_qwen2 serve` in a child process on a free loopback port."""

    def __init__(self, folder: Path, workdir: Path, engine: str, max_batch_size: int) -> None:
        self.log_path = workdir / "server.log"
        env = {**os.environ, "PADDLE_QWEN2_CACHE": str(workdir / "export-cache")}
        args = [
            "--model",
            str(folder),
            "--served-model-name",
            "bench",
            "--host",
            HOST,
            "--port",
            "0",
            "--engine",
            engine,
            "--max-batch-size",
            str(max_batch_size),
            "--max-queue-size",
            "256",
            "--log-level",
            "warning",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "paddle_qwen2", "serve", *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.url = self._wait(300)

    def _wait(self, timeout: float) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        url = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            found = url or (_LISTENING.search(self.log()) or [None, ""])[1]
            url = found or ""
            try:
                if url and httpx.get(url + "/health", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise SystemExit(f"the server did not start within {timeout:.0f}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rss_mb(self) -> float:
        """The resident memory of the server and its child processes (the engine process holds the models)."""
        total, pids = 0, [self.proc.pid]
        while pids:
            pid = pids.pop()
            try:
                rss = status_bytes("VmRSS", pid)
                children = [Path(t, "children").read_text().split() for t in Path(f"/proc/{pid}/task").iterdir()]
            except OSError:  # it has just exited
                continue
            total += rss
            pids += [int(c) for tid in children for c in tid]
        return total / 2**20

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# ---------------------------------------------------------------------------------------------------- clients
async def stream_one(client, url: str, prompt: str, max_tokens: int) -> dict:
    """One streamed completion: its token count, time to first token, and the per-token gaps."""
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    start = time.perf_counter()
    last, ttft, tokens, gaps = start, None, 0, []
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                ids = json.loads(line[6:])["choices"][0].get("token_ids") or []
                if not ids:
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - start
                else:
                    gaps += [(now - last) / len(ids)] * len(ids)
                last, tokens = now, tokens + len(ids)
    except Exception as exc:  # counted, not fatal: the benchmark reports errors
        return {"error": f"{type(exc).__name__}: {exc}"}
    if tokens != max_tokens:
        return {"error": f"{tokens} tokens instead of {max_tokens}"}
    return {"tokens": tokens, "ttft": ttft, "gaps": gaps}


async def run_clients(
    url: str,
    clients: int,
    prompts: list[str],
    max_tokens: int,
    requests: int | None = None,
    seconds: float | None = None,
    on_request=None,
) -> tuple[list[dict], float]:
    """`clients` concurrent clients, each sending requests one after another until `requests` each (or, with
    `seconds`, until that much time has passed); returns every request's result and the wall time."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    results: list[dict] = []
    start = time.perf_counter()

    async def client_loop(index: int, client) -> None:
        n = 0
        while (requests is None or n < requests) and (seconds is None or time.perf_counter() - start < seconds):
            prompt = prompts[(index * 7919 + n) % len(prompts)]
            results.append(await stream_one(client, url, prompt, max_tokens))
            n += 1
            if on_request is not None:
                on_request(len(results))

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": [r["error"] for r in results if "error" in r][:3],
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p95_ms": _ms(percentile(ttfts, 95)),
        "tpot_p50_ms": _ms(percentile(gaps, 50)),
        "tpot_p95_ms": _ms(percentile(gaps, 95)),
    }


def summarize_repeats(runs: list[tuple[list[dict], float]]) -> dict:
    """One level over its repeats: the median tokens/s, latency percentiles of all requests pooled."""
    pooled = summarize([r for raw, _ in runs for r in raw], sum(wall for _, wall in runs))
    rates = [summarize(raw, wall)["tokens_per_s"] for raw, wall in runs]
    return {**pooled, "tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates}


def _spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values) if values and statistics.median(values) else 0.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# ------------------------------------------------------------------------------------------------------ soak
def soak(server: Server, prompts: list[str], max_tokens: int, seconds: float, max_requests: int) -> dict:
    """8 clients for `seconds` (at most about `max_requests` requests): RSS after the warm-up and at the end."""
    marks: dict[str, float] = {}
    start = time.perf_counter()

    def on_request(done: int) -> None:
        if "warm" not in marks and time.perf_counter() - start >= 0.1 * seconds:
            marks["warm"] = server.rss_mb()

    per_client = max(1, max_requests // 8)
    results, wall = asyncio.run(
        run_clients(server.url, 8, prompts, max_tokens, requests=per_client, seconds=seconds, on_request=on_request)
    )
    end = server.rss_mb()
    warm = marks.get("warm", end)
    return {**summarize(results, wall), "rss_after_warmup_mb": warm, "rss_end_mb": end, "rss_growth_mb": end - warm}


# ------------------------------------------------------------------------------------------------------ report
def table(result: dict) -> str:
    """The docs table of a result (benchmarks/results/serve.json or prefix.json)."""
    if result.get("workload") == "prefix":
        return prefix_table(result)
    rows = [
        f"`paddle-qwen2 serve`, config `{result['config']}`, engine {result['engine']}, {result['max_tokens']} new "
        f"tokens per request, {result['machine']['cores']} cores, {result['date']}",
        "",
        "| clients | tokens/s | TTFT p50 / p95 | per-token p50 / p95 | requests | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for clients, r in result["levels"].items():
        ttft = f"{_fmt(r['ttft_p50_ms'])} / {_fmt(r['ttft_p95_ms'])} ms"
        tpot = f"{_fmt(r['tpot_p50_ms'])} / {_fmt(r['tpot_p95_ms'])} ms"
        rows.append(f"| {clients} | {r['tokens_per_s']:.1f} | {ttft} | {tpot} | {r['requests']} | {r['errors']} |")
    if result.get("ratio_8_vs_1") is not None:
        runs = ", ".join(f"{r:.2f}" for r in result.get("ratio_8_vs_1_runs", []))
        rows.append(
            f"\n8 clients vs 1: **{result['ratio_8_vs_1']:.2f}x** aggregate tokens/s, median of the passes "
            f"({runs}; target >= {TARGET:.0f}x)"
        )
    if result.get("soak"):
        s = result["soak"]
        rows.append(
            f"\nsoak: {s['seconds']:.0f} s, {s['requests']} requests, {s['errors']} errors, "
            f"{s['tokens_per_s']:.1f} tokens/s; server RSS {s['rss_after_warmup_mb']:.0f} MB after warm-up, "
            f"{s['rss_end_mb']:.0f} MB at the end ({s['rss_growth_mb']:+.1f} MB)"
        )
    return "\n".join(rows)


def prefix_table(result: dict) -> str:
    """The table of a `--workload prefix` result."""
    rows = [
        f"`paddle-qwen2 serve` with the prefix cache, config `{result['config']}`, engine {result['engine']}, "
        f"system prompt of ~{result['system_tokens']} tokens, {result['repeats']} repetitions, "
        f"{result['machine']['cores']} cores, {result['date']}",
        "",
        "| request | time to first token, median | runs | prompt tokens | tokens from the cache, median |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, what in (("cold", "cold (new system prompt)"), ("warm", "warm (system prompt seen)")):
        times = result[f"{kind}_seconds"]
        rows.append(
            f"| {what} | {statistics.median(times) * 1000:.0f} ms | {', '.join(f'{t * 1000:.0f}' for t in times)} "
            f"ms | {result['prompt_tokens'][kind]} | {statistics.median(result['hit_tokens'][kind]):.0f} |"
        )
    rows.append(f"\nwarm vs cold: **{result['ratio']:.3f}x** time to first token (target <= {result['target']}x)")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--workload",
        choices=("levels", "prefix"),
        default="levels",
        help="levels: 1-16 streaming clients; prefix: a repeated system prompt, cold vs warm (default levels)",
    )
    p.add_argument("--config", help="a config in configs/ (default small; qwen2.5-0.5b for --workload prefix)")
    p.add_argument(
        "--system-tokens", type=int, default=1500, help="--workload prefix: system prompt tokens (default 1500)"
    )
    p.add_argument("--engine", default="inference", choices=("inference", "dygraph"))
    p.add_argument("--clients", default="1,4,8,16", help="concurrency levels (default 1,4,8,16)")
    p.add_argument("--requests", type=int, default=4, help="requests per client per level (default 4)")
    p.add_argument(
        "--repeats", type=int, help="passes over the levels, order rotated (default 5); prefix repetitions (3)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per request (default 128)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--soak-seconds", type=float, default=0.0, help="then a soak of this many seconds (default none)")
    p.add_argument("--soak-requests", type=int, default=5000, help="at most this many soak requests (default 5000)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny config, levels 1 and 4, 2 requests of 16 "
        "tokens; results go to --workdir unless --out is given",
    )
    p.add_argument("--out", help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_serve"))
    args = p.parse_args(argv)
    prefix = args.workload == "prefix"
    args.config = args.config or ("qwen2.5-0.5b" if prefix else "small")
    args.repeats = args.repeats or (3 if prefix else 5)
    if args.quick and prefix:
        args.config, args.system_tokens, args.repeats = "tiny", 300, 2
    elif args.quick:
        args.config, args.clients, args.requests, args.max_tokens, args.repeats = "tiny", "1,4", 2, 16, 1
    return args


def checkpoint_folder(args: argparse.Namespace) -> Path:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / f"ckpt-{args.config}"
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        print(f"writing the {args.config} checkpoint ...", flush=True)
        write_checkpoint(folder, args.config)
    return folder


# ------------------------------------------------------------------------------------------- prefix workload
def system_prompts(folder: Path, count: int, tokens: int) -> list[str]:
    """`count` system prompts of the bundled corpus, each cut to `tokens` tokens of the checkpoint's tokenizer
    (different starts, so no two share a first block)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompts = []
    for text in corpus_spans(count, lambda rng: tokens * 8, seed=1):
        encoding = tokenizer.encode(text, add_special_tokens=False)
        end = encoding.offsets[min(tokens, len(encoding.ids)) - 1][1]
        prompts.append(f"{text[:end]}\n\n")
    return prompts


def one_token(url: str, prompt: str) -> tuple[float, int]:
    """A one-token completion of `prompt`: its latency (seconds) and prompt token count."""
    import httpx

    body = {"model": "bench", "prompt": prompt, "max_tokens": 1, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    response = httpx.post(url + "/v1/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.text[:500]}")
    return elapsed, response.json()["usage"]["prompt_tokens"]


def prefix_metrics(url: str) -> dict[str, float]:
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("paddle_qwen2_prefix_cache_"):
            name, value = line.rsplit(" ", 1)
            values[name.removeprefix("paddle_qwen2_prefix_cache_")] = float(value)
    return values


def run_prefix(args: argparse.Namespace) -> dict:
    """Cold and warm time to first token of requests sharing a system prompt (see the module docstring)."""
    folder = checkpoint_folder(args)
    systems = system_prompts(folder, args.repeats + 1, args.system_tokens)
    questions = ["Question: what is this text about?\nAnswer:", "Question: who wrote it, and when?\nAnswer:"]
    server = Server(folder, Path(args.workdir), args.engine, args.max_batch_size)
    print(f"server up at {server.url} (RSS {server.rss_mb():.0f} MB)", flush=True)
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    hits: dict[str, list[float]] = {"cold": [], "warm": []}
    tokens = {}
    try:
        for i, system in enumerate(systems):  # the first pair is the untimed warm-up
            line = []
            for kind, question in zip(("cold", "warm"), questions):
                before = prefix_metrics(server.url).get("hit_tokens_total", 0)
                seconds, tokens[kind] = one_token(server.url, system + question)
                hit = prefix_metrics(server.url).get("hit_tokens_total", 0) - before
                line.append(f"{kind} {seconds * 1000:.0f} ms ({hit:.0f} tokens from the cache)")
                if i:
                    times[kind].append(seconds)
                    hits[kind].append(hit)
            print(f"  {'warm-up' if i == 0 else f'run {i}'}: {', '.join(line)}", flush=True)
        metrics = prefix_metrics(server.url)
    finally:
        exit_code = server.stop()
    ratio = statistics.median(times["warm"]) / statistics.median(times["cold"])
    result = {
        "workload": "prefix",
        "config": args.config,
        "engine": args.engine,
        "system_tokens": args.system_tokens,
        "repeats": args.repeats,
        "prompt_tokens": tokens,
        "cold_seconds": times["cold"],
        "warm_seconds": times["warm"],
        "hit_tokens": hits,
        "ratio": ratio,
        "target": PREFIX_TARGET,
        "prefix_cache_metrics": metrics,
        "server_exit_code": exit_code,
    }
    out = Path(args.out) if args.out else (Path(args.workdir) / "prefix_quick.json" if args.quick else PREFIX_RESULTS)
    result = write_results(out, result)
    print("\n" + table(result) + f"\n\nserver exit code {exit_code}; results: {out}")
    return result


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.workload == "prefix":
        return run_prefix(args)
    levels = [int(c) for c in args.clients.split(",")]
    workdir = Path(args.workdir)
    folder = checkpoint_folder(args)
    prompts = make_prompts(64)
    server = Server(folder, workdir, args.engine, args.max_batch_size)
    print(f"server up at {server.url} (RSS {server.rss_mb():.0f} MB)", flush=True)
    try:
        # warm-up, untimed: the first runs of a predictor on new shapes (prompt lengths, batch sizes) are slow
        asyncio.run(run_clients(server.url, 1, prompts, args.max_tokens, requests=2))
        asyncio.run(run_clients(server.url, max(levels), prompts, args.max_tokens, requests=1))
        runs: dict[int, list[tuple[list[dict], float]]] = {c: [] for c in levels}
        for repeat in range(args.repeats):
            for clients in levels[repeat % len(levels) :] + levels[: repeat % len(levels)]:
                raw, wall = asyncio.run(run_clients(server.url, clients, prompts, args.max_tokens, args.requests))
                runs[clients].append((raw, wall))
                r = summarize(raw, wall)
                print(
                    f"  {clients:>2} clients: {r['tokens_per_s']:7.1f} tokens/s, TTFT p50 {_fmt(r['ttft_p50_ms'])} "
                    f"ms, per-token p50 {_fmt(r['tpot_p50_ms'])} ms, errors {r['errors']}",
                    flush=True,
                )
        results = {str(c): summarize_repeats(runs[c]) for c in levels}
        soaked = None
        if args.soak_seconds > 0:
            print(f"soak: {args.soak_seconds:.0f} s ...", flush=True)
            soaked = soak(server, prompts, args.max_tokens, args.soak_seconds, args.soak_requests)
    finally:
        exit_code = server.stop()
    ratios = (
        [e / o for o, e in zip(results["1"]["tokens_per_s_runs"], results["8"]["tokens_per_s_runs"]) if o > 0]
        if "1" in results and "8" in results
        else []
    )
    spread = _spread(results["1"]["tokens_per_s_runs"]) if "1" in results else 0.0
    result = {
        "config": args.config,
        "engine": args.engine,
        "max_batch_size": args.max_batch_size,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests,
        "repeats": args.repeats,
        "levels": results,
        "ratio_8_vs_1": statistics.median(ratios) if ratios else None,
        "ratio_8_vs_1_runs": ratios,
        "anchor_spread": spread,
        "target": TARGET,
        "soak": soaked,
        "server_exit_code": exit_code,
    }
    out = Path(args.out) if args.out else (workdir / "serve_quick.json" if args.quick else RESULTS)
    result = write_results(out, result)
    print("\n" + table(result) + f"\n\nserver exit code {exit_code}; results: {out}")
    if spread > 0.2:
        print(f"warning: 1-client tokens/s varied by {spread:.0%} between passes: the machine was busy, rerun")
    return result


if __name__ == "__main__":
    main()
