"""paddle_qwen2.embedding.shard_writer: a shard committed chunk by chunk and finished gives io.write_embeddings'
output for the whole shard (byte-identical for npy / jsonl, an equal table for parquet); a run interrupted after
some commits (a new ShardWriter, a leftover temp file) and resumed gives the same bytes as an uninterrupted one;
JSONL keys appearing late become null-filled parquet columns; bad parts and type conflicts raise EmbedInputError
naming the folder / key and output. No paddle needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paddle_qwen2.embedding.io import EmbedInputError, Records, read_texts, write_embeddings
from paddle_qwen2.embedding.shard_writer import OUTPUT_FORMATS, ShardResult, ShardWriter
from paddle_qwen2.embedding.shards import Chunk, find_shards, read_chunks

DIM = 5
TEXTS = [f"text {i} " + "ü" * (i % 3) for i in range(11)]


def embeddings_for(n: int, dim: int = DIM) -> np.ndarray:
    emb = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32) / np.float32(3)
    if n:
        emb[0, :3] = np.array([0.1, 1e-45, -0.0], np.float32)
    return emb


def write_input(folder: Path, suffix: str, texts: list[str] = TEXTS) -> Path:
    path = folder / f"in{suffix}"
    if suffix == ".txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif suffix == ".jsonl":
        rows = [{"id": i, "text": t, "meta": {"k": [i]}} if i % 2 else json.dumps(t) for i, t in enumerate(texts)]
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    else:
        table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
        pq.write_table(table, path, row_group_size=4)
    return path


def run(src: Path, out: Path, fmt: str, chunk_size: int, stop_after: int | None = None) -> ShardResult | None:
    """Embed shard `src` into `out` chunk by chunk; with `stop_after`, stop ("crash") after that many commits."""
    (shard,) = find_shards([src])
    writer = ShardWriter(out, fmt)
    start = writer.committed()
    embeddings = embeddings_for(len(read_texts(src).texts))
    for i, chunk in enumerate(read_chunks(shard, "text", chunk_size, start)):
        if stop_after is not None and i == stop_after:
            return None
        writer.commit(chunk, embeddings[chunk.start : chunk.start + len(chunk.records.texts)])
    return writer.finish()


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_chunks_give_write_embeddings_output_and_resume_byte_identical(tmp_path, suffix, fmt):
    src = write_input(tmp_path, suffix)
    expected = tmp_path / f"whole.{fmt}"
    write_embeddings(expected, read_texts(src), embeddings_for(len(TEXTS)))

    out = tmp_path / "out" / f"chunked.{fmt}"
    result = run(src, out, fmt, chunk_size=3)
    data = out.read_bytes()
    assert result == ShardResult(len(TEXTS), DIM, len(data), hashlib.sha256(data).hexdigest())
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(expected))
        assert pq.ParquetFile(out).metadata.num_row_groups == 4  # one per part
    else:
        assert data == expected.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # parts removed

    resumed = tmp_path / "out" / f"resumed.{fmt}"
    assert run(src, resumed, fmt, chunk_size=3, stop_after=2) is None
    writer = ShardWriter(resumed, fmt)
    assert writer.committed() == 6
    leftover = writer.parts_dir / f".000000000006-3x5.{fmt}.tmp-0badf00d"  # a commit killed half-way
    leftover.write_bytes(b"half")
    killed_finish = resumed.with_name(f".{resumed.name}.tmp-12345678")
    killed_finish.write_bytes(b"half an output")
    assert run(src, resumed, fmt, chunk_size=3) == result
    assert resumed.read_bytes() == data
    assert not writer.parts_dir.exists() and not killed_finish.exists()


def test_committed_after_partial_work_and_discard(tmp_path):
    src = write_input(tmp_path, ".jsonl")
    out = tmp_path / "o.jsonl"
    writer = ShardWriter(out, "jsonl")
    assert writer.parts_dir == tmp_path / ".o.jsonl.parts"
    assert writer.committed() == 0
    chunks = read_chunks(find_shards([src])[0], "text", 4)
    first = next(chunks)
    writer.commit(first, embeddings_for(4))
    assert writer.committed() == 4 == ShardWriter(out, "jsonl").committed()
    with pytest.raises(ValueError, match="a chunk starting at text 0, but 4 are committed"):
        writer.commit(first, embeddings_for(4))
    second = next(chunks)
    with pytest.raises(ValueError, match="width 3, the committed ones have 5"):
        writer.commit(second, embeddings_for(4, 3))
    with pytest.raises(ValueError, match=r"shape \(3, 5\) for 4 texts"):
        writer.commit(second, embeddings_for(3))
    writer.commit(second, embeddings_for(4))
    assert [p.name for p in sorted(writer.parts_dir.iterdir())] == ["000000000000-4x5.jsonl", "000000000004-4x5.jsonl"]
    out.write_text("an older output\n")
    (tmp_path / ".o.jsonl.tmp-12345678").write_text("a finish that was killed")
    writer.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    assert ShardWriter(out, "jsonl").committed() == 0


@pytest.mark.parametrize(
    "names, pattern",
    [
        (["000000000000-2x5.npy", "000000000003-2x5.npy"], r"not a consecutive run .*000000000003-2x5\.npy after 2"),
        (["000000000001-2x5.npy"], r"not a consecutive run"),
        (["000000000000-2x5.npy", "000000000002-2x4.npy"], r"with one embedding width"),
        (["000000000000-2x5.jsonl"], r"'000000000000-2x5\.jsonl' is not a part of this npy output"),
        (["notes.txt"], r"'notes\.txt' is not a part"),
    ],
)
def test_bad_parts_folder_is_named(tmp_path, names, pattern):
    writer = ShardWriter(tmp_path / "o.npy", "npy")
    writer.parts_dir.mkdir()
    for name in names:
        (writer.parts_dir / name).write_bytes(b"")
    with pytest.raises(EmbedInputError, match=pattern) as e:
        writer.committed()
    assert str(e.value).startswith(str(writer.parts_dir))


def jsonl_chunks(lines: list[dict], chunk_size: int, folder: Path) -> list[Chunk]:
    path = folder / "late.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return list(read_chunks(find_shards([path])[0], "text", chunk_size))


def test_jsonl_keys_appearing_late_are_null_before(tmp_path):
    rows = [
        {"text": "a", "n": None},
        {"text": "b", "n": 1},
        {"text": "c", "s": {"x": 1}},
        {"text": "d", "late": "l", "n": 2.5, "s": {"y": "z"}},
        {"text": "e"},
    ]
    out = tmp_path / "late.parquet"
    writer = ShardWriter(out, "parquet")
    embeddings = embeddings_for(len(rows))
    for chunk in jsonl_chunks(rows, 2, tmp_path):
        writer.commit(chunk, embeddings[chunk.start : chunk.start + len(chunk.records.texts)])
    writer.finish()
    expected = tmp_path / "whole.parquet"
    write_embeddings(expected, Records(texts=[r["text"] for r in rows], rows=rows), embeddings)
    table = pq.read_table(out)
    assert table.column_names == ["text", "n", "s", "late", "embedding"]
    assert table.equals(pq.read_table(expected))
    assert table.column("late").to_pylist() == [None, None, None, "l", None]
    assert table.column("n").type == pa.float64()


@pytest.mark.parametrize("resumed", [False, True])
def test_jsonl_type_conflict_names_key_and_output_at_commit(tmp_path, resumed):
    rows = [{"text": "a", "k": 1}, {"text": "b", "k": 2}, {"text": "c", "k": "three"}]
    out = tmp_path / "c.parquet"
    writer = ShardWriter(out, "parquet")
    first, second = jsonl_chunks(rows, 2, tmp_path)
    writer.commit(first, embeddings_for(2))
    writer = ShardWriter(out, "parquet") if resumed else writer  # the columns of the committed parts are read back
    with pytest.raises(EmbedInputError, match=r'c\.parquet: the JSONL "k" values do not fit one parquet column') as e:
        writer.commit(second, embeddings_for(1))
    assert "int64 before text 2, string in texts 2..2" in str(e.value)
    assert writer.committed() == 2 and len(list(writer.parts_dir.iterdir())) == 1


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_empty_shard(tmp_path, fmt):
    src = write_input(tmp_path, ".txt", [])
    out = tmp_path / f"e.{fmt}"
    result = run(src, out, fmt, chunk_size=4)
    data = out.read_bytes()
    assert result == ShardResult(0, 0, len(data), hashlib.sha256(data).hexdigest())
    expected = tmp_path / f"whole.{fmt}"
    write_embeddings(expected, Records(texts=[]), np.zeros((0, 0), np.float32))
    assert data == expected.read_bytes() if fmt != "parquet" else pq.read_table(out).equals(pq.read_table(expected))
    if fmt == "npy":
        assert np.load(out).shape == (0, 0)


def test_unknown_format():
    with pytest.raises(ValueError, match="output format 'csv', expected one of npy, jsonl, parquet"):
        ShardWriter(Path("x.csv"), "csv")
