"""`paddle-qwen2 generate`: stream a model's answer to one prompt on stdout.

    paddle-qwen2 generate --model DIR|EXP --prompt "What is the capital of France?" --chat --temperature 0

`--chat` wraps the prompt (and `--system`) in the tokenizer's chat template. Sampling defaults come from the
folder's `generation_config.json` (greedy when it does not say `do_sample`); the flags override them. Text is
printed as it is generated, whole characters at a time; a summary line goes to stderr unless `--quiet`.

`--stats` replaces the summary line with one JSON line on stderr after the text (printed with `--quiet` too):

    {"prompt_tokens": 7, "completion_tokens": 22, "ttft_s": 0.0123, "decode_tokens_per_s": 180.5,
     "engine": "inference", "weights": "float32"}

`completion_tokens` counts a stop token too (as vLLM and the OpenAI usage count it); `ttft_s` is the time from the
start of generation (after loading: tokenizing the prompt, the prefill, the first sampling) to the first token;
`decode_tokens_per_s` is `(completion_tokens - 1) / (time of the last token - time of the first token)`, null with
fewer than 2 tokens; `engine` is the engine that ran (`--engine`, or the one `--weights` chose) and `weights` the
precision of the weights it read.

`--weights float32|bfloat16|int8|int4` is the precision of the weights the engine reads (default: the export
folder's own, float32 for a checkpoint; a checkpoint is exported once per precision into the export cache). Without
`--engine`, int8 / int4 weights and ONNX export folders run on onnxruntime, the rest on Paddle Inference; an engine
that cannot run the weights is an error naming both.

`--ignore-eos` (vLLM's `ignore_eos`, needs `--max-new-tokens N`) does not stop at the model's eos tokens: an eos
token is generated like any other and the generation goes on, so exactly N tokens come out unless a `--stop`
string matches or the context fills first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..export import WEIGHTS

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

ENGINES = ("inference", "onnxruntime", "dygraph")  # inference.engine.ENGINES (not imported: it loads numpy)

HELP = "stream a model's answer to a prompt"
DESCRIPTION = (
    "Generate text for one prompt and stream it to stdout, with the exported decode program on Paddle Inference "
    "(--engine inference; a checkpoint is exported once into the export cache), on onnxruntime (--engine "
    "onnxruntime: float32, int8 or int4 weights) or the dygraph model. --weights picks the weights' precision and, "
    "without --engine, the engine. --chat applies the tokenizer's chat template."
)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `generate` options on `p`; returns `p`."""
    p.add_argument("--model", metavar="DIR", required=True, help="Qwen2 checkpoint or decode export folder")
    p.add_argument("--prompt", metavar="TEXT", required=True, help="the prompt (or the user message with --chat)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--system", metavar="TEXT", help="a system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to generate at most (default: context)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default: generation_config.json)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--repetition-penalty", type=float, metavar="R", help="HF-style repetition penalty")
    p.add_argument("--seed", type=int, metavar="S", help="random seed for sampling")
    p.add_argument("--stop", action="append", metavar="TEXT", help="a stop string (repeatable)")
    p.add_argument(
        "--ignore-eos", action="store_true", help="go on past eos tokens: exactly --max-new-tokens tokens (needs it)"
    )
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="precision of the weights the engine reads (default: an export folder's own, else float32); int8 / "
        "int4 run on onnxruntime, bfloat16 on Paddle Inference's oneDNN bf16 passes",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="inference (Paddle Inference), onnxruntime or dygraph (default: chosen by --weights: onnxruntime for "
        "int8 / int4 weights or an ONNX export, else inference)",
    )
    p.add_argument("--onednn", choices=("auto", "on", "off"), default="auto", help="oneDNN on CPU (default auto)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    p.add_argument("--stats", action="store_true", help="one JSON line of token counts and timings on stderr instead")
    return p


def run(args: argparse.Namespace, own_process: bool = False) -> int:
    """Generate and stream; raises `EngineError` on bad input (the CLI prints `error: ...`, exit 1).
    `own_process`: the command owns the process, so it may keep freed memory mapped (`runtime.keep_freed_memory`:
    prompts then run without page faults)."""
    from ..inference.engine import LLM, EngineError
    from ..runtime import configure_cpu_threads, keep_freed_memory

    configure_cpu_threads()
    if own_process:
        keep_freed_memory()

    if args.system is not None and not args.chat:
        raise EngineError("--system needs --chat")
    if args.ignore_eos and args.max_new_tokens is None:
        raise EngineError("--ignore-eos needs --max-new-tokens (it would generate until the context is full)")
    llm = LLM.from_pretrained(
        args.model,
        engine=args.engine,
        weights=args.weights,
        onednn={"auto": None, "on": True, "off": False}[args.onednn],
    )
    try:
        params = llm.sampling_params(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
        )
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    start = time.perf_counter()
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        ids = llm.tokenizer.encode_chat([*messages, {"role": "user", "content": args.prompt}])
    else:
        ids = llm.tokenizer.encode(args.prompt)
    times: list[float] = []
    [out] = llm.generate(
        [ids],
        params,
        on_text=lambda row, delta: _write(delta),
        on_token=lambda row, token: times.append(time.perf_counter()),
    )
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.stats:
        print(
            json.dumps(_stats(len(ids), out.completion_tokens, start, times, llm.engine, llm.weights)), file=sys.stderr
        )
    elif not args.quiet:
        rate = out.completion_tokens / max(seconds, 1e-9)
        print(
            f"[{llm.describe()}] {len(ids)} prompt tokens, {out.completion_tokens} generated in {seconds:.2f} s "
            f"({rate:.1f} tokens/s), finish_reason {out.finish_reason}",
            file=sys.stderr,
        )
    return 0


def _stats(
    prompt_tokens: int, completion_tokens: int, start: float, times: list[float], engine: str, weights: str
) -> dict:
    """The `--stats` record: `times` are the `time.perf_counter()` values at which the tokens were chosen, `start`
    the one at which generation began."""
    decode = None
    if len(times) >= 2 and times[-1] > times[0]:
        decode = round((len(times) - 1) / (times[-1] - times[0]), 3)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_s": round(times[0] - start, 6) if times else None,
        "decode_tokens_per_s": decode,
        "engine": engine,
        "weights": weights,
    }


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
