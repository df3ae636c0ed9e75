"""`paddle-qwen2 embed`: every input and output format against sentence-transformers, and every bad input."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import EMBED_TEXTS
from paddle_qwen2.cli import main

st = pytest.importorskip("sentence_transformers")
TEXTS = [t for t in EMBED_TEXTS if "\n" not in t]  # one text per line in .txt


def write_input(path, texts=TEXTS):
    if path.suffix == ".txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif path.suffix == ".jsonl":
        rows = [{"id": i, "text": t} if i % 2 else json.dumps(t) for i, t in enumerate(texts)]
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    else:
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return path


def read_output(path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["text"] for r in rows] == TEXTS
        return np.array([r["embedding"] for r in rows], dtype=np.float32)
    table = pq.read_table(path)
    assert table.column("text").to_pylist() == TEXTS
    return np.array(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(st_folder):
    model = st.SentenceTransformer(str(st_folder("last")), device="cpu")
    return model.encode(TEXTS, prompt_name="query", show_progress_bar=False)


@pytest.mark.parametrize("source", [".txt", ".jsonl", ".parquet"])
@pytest.mark.parametrize("target", [".npy", ".jsonl", ".parquet"])
def test_embed_every_format(st_folder, reference, tmp_path, capsys, source, target):
    src = write_input(tmp_path / f"in{source}")
    out = tmp_path / f"out{target}"
    argv = ["embed", "--model", str(st_folder("last")), "--input", str(src), "--output", str(out)]
    assert main([*argv, "--prompt-name", "query", "--batch-size", "3"]) == 0
    assert f"embedded {len(TEXTS)} texts, dim 64" in capsys.readouterr().out
    actual = read_output(out)
    assert actual.shape == reference.shape and actual.dtype == np.float32
    assert np.abs(actual - reference).max() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])


def test_embed_options(st_folder, tmp_path):
    """--prompt, --truncate-dim, --no-normalize, --text-field and --max-length reach encode."""
    folder = st_folder("mean_dense")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS))
    out = tmp_path / "out.npy"
    argv = ["embed", "--model", str(folder), "--input", str(src), "--output", str(out), "--text-field", "body"]
    assert main([*argv, "--prompt", "Represent: ", "--truncate-dim", "8", "--max-length", "6", "--quiet"]) == 0
    model = st.SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = 6
    full = model.encode(TEXTS, prompt="Represent: ", show_progress_bar=False)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert np.abs(np.load(out) - expected).max() <= 1e-5
    assert main([*argv, "--no-normalize", "--quiet"]) == 0
    assert not np.allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-3)
    from paddle_qwen2 import runtime

    assert runtime._kept_freed_memory is False, "a call from Python changed the process's malloc settings"


def _bad_jsonl(path):
    path.write_text('{"text": "fine"}\n{"text": "broken"\n')


def _no_field(path):
    path.write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')


def _csv(path):
    path.with_name("in.csv").write_text("text\nnot a format embed reads\n")


BAD_INPUTS = [
    # (what, input writer, extra args / replacements, expected stderr regex)
    ("malformed JSONL", _bad_jsonl, {}, r"error: \S+in\.jsonl:2: not valid JSON"),
    ("missing text field", _no_field, {}, r'error: \S+in\.jsonl:3: no "text" field \(keys: body\)'),
    ("missing input", None, {}, r"error: \S+in\.jsonl: no such file"),
    ("missing model folder", write_input, {"--model": "no-such-model"}, r"error: no-such-model: no such model folder"),
    ("unknown prompt name", write_input, {"--prompt-name": "passage"},
     r"error: unknown prompt name 'passage'; \S+ has prompts: 'query', 'document'"),
    ("output extension", write_input, {"--output": "out.csv"},
     r"error: \S*out\.csv: unsupported output format '\.csv'"),
    ("input extension", _csv, {"--input": "in.csv"},
     r"error: \S*in\.csv: unsupported input format \(expected \.txt, \.jsonl, \.jsonl\.gz or \.parquet\)"),
    ("no input at all", None, {"--input": "*.jsonl"}, r"error: \S*\*\.jsonl: no input shard matches this pattern"),
]  # fmt: skip


@pytest.mark.parametrize("what, writer, changes, message", BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_bad_input(st_folder, tmp_path, capsys, what, writer, changes, message):
    import re

    src = tmp_path / "in.jsonl"
    if writer:
        writer(src)
    args = {"--model": str(st_folder("last")), "--input": str(src), "--output": str(tmp_path / "out.npy")}
    for key, value in changes.items():
        args[key] = value if key == "--model" or key == "--prompt-name" else str(tmp_path / value)
    assert main(["embed", *[x for kv in args.items() for x in kv]]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not [p for p in tmp_path.iterdir() if p.name not in ("in.jsonl", "in.csv")], "output or temp file written"


@pytest.mark.slow
def test_embed_command_line(st_folder, tmp_path):
    """The installed entry point: a progress bar in texts/s, the summary line, exit codes 0 and 1."""
    src = write_input(tmp_path / "in.txt")
    out = tmp_path / "out.npy"
    cmd = [sys.executable, "-m", "paddle_qwen2", "embed", "--model", str(st_folder("last")), "--input", str(src)]
    done = subprocess.run([*cmd, "--output", str(out), "--batch-size", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "text/s" in done.stderr and "embedded 8 texts, dim 64" in done.stdout
    assert np.load(out).shape == (len(TEXTS), 64)
    bad = subprocess.run([*cmd, "--output", str(tmp_path / "x.npy"), "--prompt-name", "nope"], capture_output=True)
    assert bad.returncode == 1 and not (tmp_path / "x.npy").exists()
