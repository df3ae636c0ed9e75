"""Sentence-embedding throughput: paddle_qwen2's `EmbeddingModel.encode` against sentence-transformers 5.1.2.

One sentence-transformers folder (the `small` config, 31M parameters, random weights drawn by transformers; the
bundled tokenizer; last-token pooling + Normalize; max length 512), written once by sentence-transformers itself.
2,000 texts of mixed length (a few words to a few hundred tokens) cut from the bundled corpus, batch 32. Each
implementation runs in a fresh child process with the same thread count: load, one untimed warm-up batch, then
`encode` of all texts timed; reported are texts/s and the peak RSS of the process (VmHWM). paddle_qwen2 runs
twice: as a library user gets it, and after `runtime.keep_freed_memory()`, as `paddle-qwen2 embed` runs it. Runs
alternate (A B C A B C ...), the order rotated per repeat; medians of `--repeats`. The embeddings are compared
with sentence-transformers' too. Target: paddle_qwen2 >= 1.0x sentence-transformers' texts/s.

    python benchmarks/bench_embed.py                 # 3 repeats (~8 min)
    python benchmarks/bench_embed.py --texts 500 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import EXAMPLES, TOKENIZER_FILES, corpus_spans, run_json_child, write_results
from model_configs import load_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "embed.json"
TARGET = 1.0
LABELS = {
    "sentence_transformers": "sentence-transformers 5.1.2",
    "paddle_qwen2": "paddle_qwen2 `EmbeddingModel.encode`",
    "paddle_qwen2_embed_cli": "the same after `keep_freed_memory()` (`paddle-qwen2 embed`)",
}
BATCH = 32

# Child programs: read texts.json, encode, save the embeddings, print one JSON line.
_MEASURE = r"""
import json, os, sys, time
import numpy as np
from common import status_bytes
{imports}
folder, texts_path, out_path = sys.argv[1:4]
texts = json.load(open(texts_path, encoding="utf-8"))
model = {load}
model.encode(texts[:{batch}], batch_size={batch})  # warm-up (untimed)
start = time.perf_counter()
embeddings = model.encode(texts, batch_size={batch})
seconds = time.perf_counter() - start
np.save(out_path, np.asarray(embeddings, dtype=np.float32))
peak = status_bytes("VmHWM")
print(json.dumps({{"seconds": seconds, "texts_per_s": len(texts) / seconds, "peak_rss": peak}}))
"""
IMPLS = {
    "sentence_transformers": (
        "import torch; torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))\n"
        "from sentence_transformers import SentenceTransformer",
        "SentenceTransformer(folder, device='cpu')",
    ),
    "paddle_qwen2": (
        "from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()\n"
        "from paddle_qwen2.embedding.model import EmbeddingModel",
        "EmbeddingModel.from_pretrained(folder)",
    ),
    "paddle_qwen2_embed_cli": (
        "from paddle_qwen2.runtime import configure_cpu_threads, keep_freed_memory\n"
        "configure_cpu_threads(); keep_freed_memory()\n"
        "from paddle_qwen2.embedding.model import EmbeddingModel",
        "EmbeddingModel.from_pretrained(folder)",
    ),
}


def write_folder(folder: Path) -> None:
    """The `small` Qwen2Model with the bundled tokenizer, saved by sentence-transformers (run in a child)."""
    code = (
        "import json, shutil, sys, torch, transformers\n"
        "from sentence_transformers import SentenceTransformer, models\n"
        "config, hf, out, tok = sys.argv[1:5]\n"
        "torch.manual_seed(0)\n"
        "model = transformers.Qwen2Model(transformers.Qwen2Config(**json.loads(config)))\n"
        "model.save_pretrained(hf)\n"
        "for name in json.loads(sys.argv[5]):\n"
        "    shutil.copy(f'{tok}/{name}', f'{hf}/{name}')\n"
        "word = models.Transformer(hf, max_seq_length=512)\n"
        "pool = models.Pooling(word.get_word_embedding_dimension(), 'lasttoken')\n"
        "SentenceTransformer(modules=[word, pool, models.Normalize()], device='cpu').save(out)\n"
    )
    config = {k: v for k, v in load_config("small").items() if k not in ("architectures", "torch_dtype")}
    config["architectures"] = ["Qwen2Model"]
    hf = folder.with_name(folder.name + "-hf")
    args = [json.dumps(config), str(hf), str(folder), str(EXAMPLES / "model"), json.dumps(TOKENIZER_FILES)]
    subprocess.run([sys.executable, "-c", code, *args], check=True)


def make_texts(count: int, seed: int = 0) -> list[str]:
    """`count` texts of mixed length: spans of 2 to 1,200 characters (log-uniform) of the bundled corpus."""
    return corpus_spans(count, lambda rng: int(2 * 600 ** rng.random()), seed, empty="empty")


def measure(impl: str, folder: Path, texts_path: Path, out: Path) -> dict:
    imports, load = IMPLS[impl]
    program = _MEASURE.format(imports=imports, load=load, batch=BATCH)
    return run_json_child(program, [str(folder), str(texts_path), str(out)], impl)


def table(result: dict) -> str:
    """The README table of a result (benchmarks/results/embed.json)."""
    results, anchor = result["results"], result["results"]["sentence_transformers"]
    rows = [
        f"{result['texts']} texts, batch {result['batch_size']}, {result['machine']['cores']} cores; max abs "
        f"difference of the embeddings {result['max_abs_diff']:.1e}",
        "",
        "| | texts/s | vs sentence-transformers | peak RSS |",
        "| --- | --- | --- | --- |",
    ]
    for impl, r in results.items():
        ratio = r["texts_per_s"] / anchor["texts_per_s"]
        rows.append(f"| {LABELS[impl]} | {r['texts_per_s']:.1f} | **{ratio:.2f}x** | {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "paddle_qwen2_bench_embed"))
    args = p.parse_args()
    import numpy as np

    workdir = Path(args.workdir)
    folder = workdir / "st-small"
    if not (folder / "modules.json").is_file():
        print("writing the sentence-transformers folder (small config) ...", flush=True)
        write_folder(folder)
    texts_path = workdir / "texts.json"
    texts_path.write_text(json.dumps(make_texts(args.texts), ensure_ascii=False), encoding="utf-8")
    impls = list(IMPLS)
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for repeat in range(args.repeats):
        for impl in impls[repeat % len(impls) :] + impls[: repeat % len(impls)]:
            runs[impl].append(measure(impl, folder, texts_path, workdir / f"{impl}.npy"))
            print(f"  {impl:<22} {runs[impl][-1]['texts_per_s']:7.1f} texts/s", flush=True)
    reference = np.load(workdir / "sentence_transformers.npy")
    diff = max(float(np.abs(np.load(workdir / f"{impl}.npy") - reference).max()) for impl in impls[1:])
    summary = {
        impl: {
            "texts_per_s": statistics.median(r["texts_per_s"] for r in results),
            "peak_rss_mb": statistics.median(r["peak_rss"] for r in results) / 2**20,
            "runs": results,
        }
        for impl, results in runs.items()
    }
    anchor = summary["sentence_transformers"]["texts_per_s"]
    ratios = {impl: summary[impl]["texts_per_s"] / anchor for impl in impls[1:]}
    result = {
        "texts": args.texts,
        "batch_size": BATCH,
        "max_abs_diff": diff,
        "speed_ratios": ratios,
        "target": TARGET,
        "results": summary,
    }
    result = write_results(RESULTS, result)
    print("\n" + table(result) + f"\n\ntarget: >= {TARGET:.1f}x sentence-transformers' texts/s")


if __name__ == "__main__":
    main()
