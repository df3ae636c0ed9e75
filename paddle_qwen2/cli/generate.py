"""`paddle-qwen2 generate`: stream a model's answer to one prompt on stdout.

    paddle-qwen2 generate --model DIR|EXP --prompt "What is the capital of France?" --chat --temperature 0

`--chat` wraps the prompt (and `--system`) in the tokenizer's chat template. Sampling defaults come from the
folder's `generation_config.json` (greedy when it does not say `do_sample`); the flags override them. Text is
printed as it is generated, whole characters at a time; a summary line goes to stderr unless `--quiet`.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "stream a model's answer to a prompt"
DESCRIPTION = (
    "Generate text for one prompt and stream it to stdout, with the exported decode program on Paddle Inference "
    "(--engine inference, default; a checkpoint is exported once into the export cache) or the dygraph model. "
    "--chat applies the tokenizer's chat template."
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
    p.add_argument("--engine", choices=("inference", "dygraph"), default="inference", help="default: inference")
    p.add_argument("--onednn", choices=("auto", "on", "off"), default="auto", help="oneDNN on CPU (default auto)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
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
    llm = LLM.from_pretrained(
        args.model, engine=args.engine, onednn={"auto": None, "on": True, "off": False}[args.onednn]
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
        )
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        ids = llm.tokenizer.encode_chat([*messages, {"role": "user", "content": args.prompt}])
    else:
        ids = llm.tokenizer.encode(args.prompt)
    start = time.perf_counter()
    [out] = llm.generate([ids], params, on_text=lambda row, delta: _write(delta))
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        rate = out.completion_tokens / max(seconds, 1e-9)
        print(
            f"[{llm.describe()}] {len(ids)} prompt tokens, {out.completion_tokens} generated in {seconds:.2f} s "
            f"({rate:.1f} tokens/s), finish_reason {out.finish_reason}",
            file=sys.stderr,
        )
    return 0


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
