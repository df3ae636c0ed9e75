"""llama.cpp as a peer of bench_precision.py: GGUF files of an HF checkpoint, and a runner of them.

llama.cpp is reached through llama-cpp-python (`import llama_cpp`, a benchmark peer that is not a project
dependency). The GGUF files are written by llama.cpp's own converter, `vendor/llama.cpp/convert_hf_to_gguf.py` of
the llama-cpp-python sdist, with its `gguf-py` on the path: f32, bf16 and q8_0 by the converter, Q4_0 by
llama.cpp's quantizer (`llama_model_quantize`) from the f32 file (as `llama-quantize` does: the tied output /
token-embedding matrix then gets llama.cpp's own choice of type for Q4_0). The converter names a checkpoint's
pre-tokenizer by a hash of its tokenizer's output, which it does not know for a tokenizer written by a test; the
`convert` command here runs the converter with that lookup answering "qwen2".

`LlamaRunner` drives a GGUF model through llama.cpp's C API (one context holding up to `rows` sequences in a
unified KV cache): greedy generation of several rows decoded together (one `llama_decode` per step for all rows),
a prefill, and the last-token logits of prompts.

    python benchmarks/llama_cpp_peer.py convert SRC CHECKPOINT OUT.gguf f32|bf16|q8_0   # the converter, "qwen2"
    python benchmarks/llama_cpp_peer.py quantize IN.gguf OUT.gguf q4_0 [--threads N]     # llama.cpp's quantizer

SRC is the llama-cpp-python sdist (`.tar.gz`) or a folder holding `convert_hf_to_gguf.py` (its `vendor/llama.cpp`,
or the unpacked sdist's root).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CONVERTER = "convert_hf_to_gguf.py"
VENDOR = Path("vendor") / "llama.cpp"
# what the converter needs besides itself: its model classes and the gguf package
CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py")
CONVERTER_TYPES = ("f32", "bf16", "q8_0")
QUANTIZER_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
GGUF_TYPES = ("f32", "bf16", "q8_0", "q4_0")


class PeerError(RuntimeError):
    """llama.cpp cannot be run or its files cannot be written (the message names what is missing)."""


def available() -> str | None:
    """None when `llama_cpp` is importable, else why the llama.cpp rows are skipped."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not importable (pip install llama-cpp-python; a benchmark peer, not a dependency)"
    return None


def llama_cpp_version() -> str | None:
    try:
        from importlib import metadata

        return metadata.version("llama_cpp_python")
    except Exception:  # noqa: BLE001  (not installed: no version to report)
        return None


# ----------------------------------------------------------------------------------------------- the converter


def converter_folder(source: str | os.PathLike, unpack_to: Path) -> Path:
    """The folder holding llama.cpp's `convert_hf_to_gguf.py`, `conversion/` and `gguf-py/`: `source` itself, its
    `vendor/llama.cpp`, or, for the sdist `.tar.gz`, those parts unpacked into `unpack_to` (once)."""
    source = Path(source)
    for folder in (source, source / VENDOR):
        if (folder / CONVERTER).is_file():
            return folder
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        done = unpack_to / CONVERTER
        if not done.is_file():
            _unpack_converter(source, unpack_to)
        return unpack_to
    raise PeerError(
        f"--llama-cpp-src {source}: neither the llama-cpp-python sdist (.tar.gz) nor a folder holding {CONVERTER} "
        f"(or {VENDOR / CONVERTER})"
    )


def _unpack_converter(sdist: Path, out: Path) -> None:
    """Extract the converter's parts of `sdist` into `out` (a temporary folder renamed into place)."""
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            inside = parts[1:3] == VENDOR.parts and len(parts) > 3 and parts[3] in CONVERTER_PARTS
            if inside and (member.isfile() or member.isdir()):
                member.name = str(Path(*parts[3:]))
                members.append(member)
        if not any(m.name == CONVERTER for m in members):
            raise PeerError(f"{sdist}: no {VENDOR / CONVERTER} in this sdist")
        tar.extractall(tmp, members=members, filter="data")
    if out.exists():
        raise PeerError(f"{out} exists without {CONVERTER}: remove it")
    tmp.rename(out)


def run_converter(folder: Path, checkpoint: Path, out: Path, outtype: str) -> None:
    """llama.cpp's converter on `checkpoint` (an HF folder) into `out` (`outtype` f32 / bf16 / q8_0), run in this
    process with the pre-tokenizer lookup answering "qwen2"; written to a temporary name, then renamed."""
    if outtype not in CONVERTER_TYPES:
        raise PeerError(f"convert: outtype {outtype!r}; expected one of {', '.join(CONVERTER_TYPES)}")
    sys.path[:0] = [str(folder), str(folder / "gguf-py")]
    import conversion

    base = next(c for c in (getattr(conversion, "TextModel", None), conversion.ModelBase) if c is not None)
    if not hasattr(base, "get_vocab_base_pre"):
        raise PeerError(f"{folder}: the converter has no get_vocab_base_pre to answer 'qwen2' with")
    base.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", folder / CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tmp = out.with_name(out.name + ".partial")
    sys.argv = [CONVERTER, str(checkpoint), "--outfile", str(tmp), "--outtype", outtype]
    module.main()
    tmp.rename(out)


def quantize(source: Path, out: Path, gguf_type: str, threads: int) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`, its default parameters) from `source` into `out`."""
    import llama_cpp

    if gguf_type not in QUANTIZER_TYPES:
        raise PeerError(f"quantize: type {gguf_type!r}; expected one of {', '.join(QUANTIZER_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_TYPES[gguf_type])
    params.nthread = threads
    tmp = out.with_name(out.name + ".partial")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if code != 0:
        tmp.unlink(missing_ok=True)
        raise PeerError(f"llama_model_quantize {source} -> {gguf_type} returned {code}")
    tmp.rename(out)


def write_gguf(source: Path, checkpoint: Path, out_dir: Path, gguf_type: str, threads: int) -> Path:
    """`out_dir/model-<gguf_type>.gguf` of `checkpoint` (kept when it exists), written by a child process: the
    converter for f32 / bf16 / q8_0, the quantizer from the f32 file for q4_0. `source`: `converter_folder`'s."""
    out = out_dir / f"model-{gguf_type}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    if gguf_type in CONVERTER_TYPES:
        cmd = [sys.executable, __file__, "convert", str(source), str(checkpoint), str(out), gguf_type]
    elif gguf_type in QUANTIZER_TYPES:
        f32 = write_gguf(source, checkpoint, out_dir, "f32", threads)
        cmd = [sys.executable, __file__, "quantize", str(f32), str(out), gguf_type, "--threads", str(threads)]
    else:
        raise PeerError(f"GGUF type {gguf_type!r}; expected one of {', '.join(GGUF_TYPES)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise PeerError(f"writing {out.name} failed:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return out


def tensor_types(path: Path, gguf_py: Path) -> dict[str, int]:
    """How many tensors of each ggml type `path` holds, and the bytes of all tensor data (`"bytes"`)."""
    sys.path.insert(0, str(gguf_py))
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    total = 0
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        total += int(tensor.n_bytes)
    return {**counts, "bytes": total}


# ------------------------------------------------------------------------------------------------------- runner


class LlamaRunner:
    """A GGUF model in a llama.cpp context of `n_ctx` cells shared by up to `rows` sequences, on `threads` threads
    (`n_threads` and `n_threads_batch`); batches of up to `n_batch` tokens."""

    def __init__(self, path: Path, threads: int, rows: int, n_ctx: int, n_batch: int = 512) -> None:
        import llama_cpp

        self.lib = lib = llama_cpp
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self.model:
            raise PeerError(f"{path}: llama.cpp could not load this GGUF file")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, rows
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise PeerError(f"{path}: llama.cpp could not create a context (n_ctx {n_ctx}, {rows} sequences)")
        self.vocab_size = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.n_batch, self.rows = n_batch, rows
        self.batch = lib.llama_batch_init(n_batch, 0, rows)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def clear(self) -> None:
        """Forget every sequence's cache."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One `llama_decode` of `(token, position, sequence, logits wanted)` entries."""
        if len(entries) > self.n_batch:
            raise PeerError(f"a batch of {len(entries)} tokens; this runner takes at most {self.n_batch}")
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        code = self.lib.llama_decode(self.ctx, b)
        if code != 0:
            raise PeerError(f"llama_decode of {len(entries)} tokens returned {code}")

    def _logits(self, index: int) -> np.ndarray:
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,))

    def generate(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        """Greedy: the prompts' prefills in one batch, then one batch of a token per row per step, `new_tokens`
        tokens per row (no stop token)."""
        if len(prompts) > self.rows:
            raise PeerError(f"{len(prompts)} rows; this runner's context holds {self.rows}")
        self.clear()
        entries, last = [], []
        for seq, prompt in enumerate(prompts):
            entries += [(int(t), pos, seq, pos == len(prompt) - 1) for pos, t in enumerate(prompt)]
            last.append(len(entries) - 1)
        self._decode(entries)
        out = [[int(self._logits(i).argmax())] for i in last]
        for step in range(1, new_tokens):
            self._decode([(row[-1], len(p) + step - 1, seq, True) for seq, (p, row) in enumerate(zip(prompts, out))])
            for i, row in enumerate(out):
                row.append(int(self._logits(i).argmax()))
        return out

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """One prompt's prefill (in batches of `n_batch`); the last token's logits (a copy)."""
        self.clear()
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            self._decode([(int(t), start + i, 0, start + i == len(prompt) - 1) for i, t in enumerate(chunk)])
        return self._logits((len(prompt) - 1) % self.n_batch).copy()


# ------------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="llama.cpp's converter, the pre-tokenizer named 'qwen2'")
    convert.add_argument("source", help="the llama-cpp-python sdist (.tar.gz) or a folder holding the converter")
    convert.add_argument("checkpoint")
    convert.add_argument("out")
    convert.add_argument("outtype", choices=CONVERTER_TYPES)
    quant = commands.add_parser("quantize", help="llama.cpp's quantizer")
    quant.add_argument("source")
    quant.add_argument("out")
    quant.add_argument("type", choices=list(QUANTIZER_TYPES))
    quant.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            folder = converter_folder(args.source, Path(args.out).parent / "llama-cpp-src")
            run_converter(folder, Path(args.checkpoint), Path(args.out), args.outtype)
        else:
            quantize(Path(args.source), Path(args.out), args.type, args.threads)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
