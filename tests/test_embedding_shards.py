"""paddle_qwen2.embedding.shards: find_shards turns files / folders / globs into named shards (and refuses what it
cannot use, naming it); read_chunks gives, from any start and for any chunk size, exactly the texts (and rows /
table) io.read_texts reads from the whole file, reading parquet row group by row group; every bad input raises
EmbedInputError naming the shard and its line / row when reached. No paddle needed."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paddle_qwen2.embedding import shards as shards_module
from paddle_qwen2.embedding.io import EmbedInputError, read_texts
from paddle_qwen2.embedding.shards import SHARD_SUFFIXES, Chunk, Shard, count_texts, find_shards, read_chunks

TEXTS = ["first", "", "zweite Zeile ü", " 第三行 ", "tab\there", 'quote " \\', "x", "  ", "last one", "10"]


def write_shard(path: Path, texts: list[str] = TEXTS, row_group_size: int = 3) -> Path:
    """`texts` as a shard of `path`'s format: .txt lines after a byte-order mark; .jsonl objects (some bare strings,
    blank lines, CRLF endings); parquet with extra columns in row groups of `row_group_size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".txt"):
        path.write_bytes((b"\xef\xbb\xbf" if texts else b"") + "".join(t + "\n" for t in texts).encode())
    elif name.endswith((".jsonl", ".jsonl.gz")):
        lines = ["", " \t"]
        for i, text in enumerate(texts):
            lines.append(json.dumps(text) if i % 3 == 1 else json.dumps({"id": i, "text": text, "m": {"k": [i]}}))
            if i % 4 == 0:
                lines.append("\u3000")  # only (unicode) whitespace: blank
        data = ("\r\n".join(lines) + "\r\n").encode()
        path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    else:
        table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
        pq.write_table(table.append_column("score", pa.array([i / 2 for i in range(len(texts))])), path, row_group_size)
    return path


def shard_of(path: Path) -> Shard:
    (shard,) = find_shards([path])
    return shard


# ---------------------------------------------------------------------------------------------------- find_shards


def test_find_shards_file_folder_glob_and_duplicates(tmp_path):
    data = tmp_path / "data"
    for rel in ["b.jsonl", "a.txt", "2024/part-7.parquet", "2024/deep/z.jsonl.gz", "Up.JSONL"]:
        write_shard(data / rel)
    (data / "notes.md").write_text("not a shard")
    (data / ".hidden.jsonl").write_text('"x"\n')
    write_shard(data / ".cache" / "c.txt")
    other = write_shard(tmp_path / "other" / "single.txt")

    shards = find_shards([data, other, data / "b.jsonl", str(tmp_path / "other" / "*.txt")])
    assert [(s.name, s.suffix) for s in shards] == [
        ("2024/deep/z", ".jsonl.gz"),
        ("2024/part-7", ".parquet"),
        ("Up", ".jsonl"),
        ("a", ".txt"),
        ("b", ".jsonl"),
        ("single", ".txt"),
    ]
    assert shards[1].path == data / "2024" / "part-7.parquet"
    assert all(s.size == s.path.stat().st_size > 0 for s in shards)

    by_glob = find_shards([f"{tmp_path}/data/**/*.*"])
    assert [s.name for s in by_glob] == ["2024/deep/z", "2024/part-7", "Up", "a", "b"]  # .md and hidden skipped
    assert [s.name for s in find_shards([f"{data}/2024/*/*.gz"])] == ["deep/z"]  # relative to data/2024
    assert [s.name for s in find_shards([data / "2024" / "part-7.parquet"])] == ["part-7"]


def test_find_shards_relative_glob(tmp_path, monkeypatch):
    write_shard(tmp_path / "p-1.txt")
    write_shard(tmp_path / "p-2.txt")
    monkeypatch.chdir(tmp_path)
    shards = find_shards(["p-*.txt", "p-1.txt", "./p-2.txt"])
    assert [(s.name, s.path) for s in shards] == [("p-1", Path("p-1.txt")), ("p-2", Path("p-2.txt"))]


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: d / "missing.jsonl", r"missing\.jsonl: no such file or folder$"),
        (lambda d: d / "missing" / "*.jsonl", r"missing/\*\.jsonl: no input shard matches this pattern \(expected"),
        (lambda d: write_shard(d / "in.csv", []) and d / "in.csv", r"in\.csv: unsupported input format \(expected"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"empty: no input shard in this folder \(expected"),
        (lambda d: str(d / "*.csv"), r"\*\.csv: no input shard matches"),
        (
            lambda d: write_shard(d / "f" / "x.jsonl") and write_shard(d / "f" / "x.txt") and d / "f",
            r"f/x\.jsonl and .*f/x\.txt both give the output name 'x'",
        ),
    ],
)
def test_find_shards_errors(tmp_path, make, pattern):
    source = make(tmp_path)
    with pytest.raises(EmbedInputError, match=pattern):
        find_shards([source])


def test_expected_formats_are_named(tmp_path):
    (tmp_path / "in.csv").write_text("x")
    with pytest.raises(EmbedInputError) as e:
        find_shards([tmp_path / "in.csv"])
    assert str(e.value).endswith("(expected .txt, .jsonl, .jsonl.gz or .parquet)")


def test_same_name_from_two_inputs(tmp_path):
    write_shard(tmp_path / "a" / "x.txt")
    write_shard(tmp_path / "b" / "x.jsonl")
    with pytest.raises(EmbedInputError, match="both give the output name 'x'"):
        find_shards([tmp_path / "a", tmp_path / "b"])


# ---------------------------------------------------------------------------------------------------- read_chunks


def whole(path: Path):
    """What io.read_texts reads from the whole shard (.jsonl.gz through a plain copy)."""
    if path.name.endswith(".gz"):
        plain = path.with_name(path.name[: -len(".gz")] + ".plain.jsonl")
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return read_texts(plain)
    return read_texts(path)


@pytest.mark.parametrize("suffix", SHARD_SUFFIXES)
def test_chunks_equal_the_whole_file_from_any_start(tmp_path, suffix):
    path = write_shard(tmp_path / f"s{suffix}")
    shard = shard_of(path)
    expected = whole(path)
    assert expected.texts == TEXTS
    assert count_texts(shard) == len(TEXTS)
    for chunk_size in (1, 2, 3, 4, 10, 11):
        for start in (0, 1, 3, 5, 9, 10):
            chunks = list(read_chunks(shard, "text", chunk_size, start))
            assert all(isinstance(c, Chunk) for c in chunks)
            assert [c.start for c in chunks] == list(range(start, len(TEXTS), chunk_size))
            assert [len(c.records.texts) for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
            assert [t for c in chunks for t in c.records.texts] == TEXTS[start:]
            if expected.rows is not None:
                assert [r for c in chunks for r in c.records.rows] == expected.rows[start:]
            else:
                assert all(c.records.rows is None for c in chunks)
            if expected.table is not None and chunks:
                assert pa.concat_tables(c.records.table for c in chunks).equals(expected.table.slice(start))
            elif expected.table is None:
                assert all(c.records.table is None for c in chunks)


@pytest.mark.parametrize("suffix", SHARD_SUFFIXES)
def test_empty_shard(tmp_path, suffix):
    shard = shard_of(write_shard(tmp_path / f"e{suffix}", []))
    assert count_texts(shard) == 0
    assert list(read_chunks(shard, "text", 4)) == []


def test_parquet_reads_only_the_row_groups_from_start(tmp_path, monkeypatch):
    texts = [f"t{i}" for i in range(50)]
    shard = shard_of(write_shard(tmp_path / "big.parquet", texts, row_group_size=7))
    assert pq.ParquetFile(shard.path).metadata.num_row_groups == 8
    seen = []
    original = pq.ParquetFile.iter_batches

    def iter_batches(self, *args, **kwargs):
        seen.append((kwargs["row_groups"], kwargs["batch_size"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    chunks = list(read_chunks(shard, "text", 4, start=30))
    assert seen == [([4, 5, 6, 7], 4)]  # rows 28.. : row groups 0-3 (rows 0-27) are not read
    assert [c.start for c in chunks] == [30, 34, 38, 42, 46]
    assert [t for c in chunks for t in c.records.texts] == texts[30:]
    assert [i for c in chunks for i in c.records.table.column("id").to_pylist()] == list(range(30, 50))


def test_parquet_string_types_and_columns_pass_through(tmp_path):
    table = pa.table(
        {
            "body": pa.array(["a", "b", "c"]).dictionary_encode(),
            "big": pa.array(["x", "y", "z"], pa.large_string()),
            "tags": pa.array([["u"], [], None], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    shard = shard_of(tmp_path / "t.parquet")
    for field, texts in [("body", ["a", "b", "c"]), ("big", ["x", "y", "z"])]:
        chunks = list(read_chunks(shard, field, 2, 1))
        assert [t for c in chunks for t in c.records.texts] == texts[1:]
        assert pa.concat_tables(c.records.table for c in chunks).equals(pq.read_table(shard.path).slice(1))


def test_text_field_of_jsonl(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"body": "one", "text": 1}\n"bare"\n{"body": "three"}\n')
    chunks = list(read_chunks(shard_of(path), "body", 2))
    assert [c.records.texts for c in chunks] == [["one", "bare"], ["three"]]
    assert chunks[0].records.rows == [{"body": "one", "text": 1}, {"body": "bare"}]


def test_skipped_lines_are_not_parsed(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    parsed = []
    original = shards_module.parse_line
    monkeypatch.setattr(shards_module, "parse_line", lambda *a: parsed.append(a[1]) or original(*a))
    assert [c.records.texts for c in read_chunks(shard_of(path), "text", 5, start=2)] == [["c"]]
    assert parsed == [3]
    parsed.clear()
    assert count_texts(shard_of(path)) == 3 and parsed == []


def test_bad_arguments(tmp_path):
    shard = shard_of(write_shard(tmp_path / "s.txt"))
    with pytest.raises(ValueError, match="chunk_size"):
        list(read_chunks(shard, "text", 0))
    with pytest.raises(ValueError, match="start"):
        list(read_chunks(shard, "text", 2, -1))


# ---------------------------------------------------------------------------------------------------- bad input


def parquet_bytes(table: pa.Table, row_group_size: int = 2) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


GOOD_PARQUET = parquet_bytes(pa.table({"text": ["a", "b", "c", "d", "e"]}))


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("s.txt", b"ok\nok\n\xff bad\n", r"s\.txt:3: not valid UTF-8"),
        ("s.jsonl", b'"a"\n\n{"text": "b"\n', r"s\.jsonl:3: not valid JSON"),
        ("s.jsonl", b'"a"\n\n\n{"id": 1}\n', r's\.jsonl:4: no "text" field \(keys: id\)'),
        ("s.jsonl", b'"a"\n{"text": 5}\n', r's\.jsonl:2: "text" is not a string \(got number\)'),
        ("s.jsonl", b'"a"\n{"text": null}\n', r's\.jsonl:2: "text" is not a string \(got null\)'),
        ("s.jsonl", b'"a"\n[1]\n', r"s\.jsonl:2: expected a JSON object or string, got array"),
        ("s.jsonl", b'"a"\n"\xc3"\n', r"s\.jsonl:2: not valid UTF-8"),
        ("s.jsonl.gz", gzip.compress(b'"a"\n' * 2000, mtime=0)[:-30], r"s\.jsonl\.gz:\d+: not a readable gzip file"),
        ("s.jsonl.gz", b"this is not gzip\n", r"s\.jsonl\.gz:1: not a readable gzip file"),
        ("s.jsonl.gz", gzip.compress(b'"a"\n{"t": 1}\n', mtime=0), r's\.jsonl\.gz:2: no "text" field'),
        ("s.parquet", b"PAR1 not parquet", r"s\.parquet: not a readable parquet file"),
        ("s.parquet", GOOD_PARQUET[: len(GOOD_PARQUET) // 2], r"s\.parquet: not a readable parquet file"),
        ("s.parquet", parquet_bytes(pa.table({"body": ["a"]})), r's\.parquet: no "text" column \(columns: body\)'),
        ("s.parquet", parquet_bytes(pa.table({"text": [1]})), r's\.parquet: column "text" has type int64, expected'),
        ("s.parquet", parquet_bytes(pa.table({"text": ["a", "b", "c", None]})), r's\.parquet: "text" is null in row 3'),
    ],
)
def test_bad_input_names_shard_and_line(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EmbedInputError, match=pattern) as e:
        list(read_chunks(shard_of(path), "text", 2))
    assert str(e.value).startswith(str(path))


def test_bad_rows_after_start_are_reached_and_before_start_skipped(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"x": 1}\n{"text": "c"}\n{"text": "d"}\n')
    shard = shard_of(path)
    chunks = read_chunks(shard, "text", 1, start=0)
    assert next(chunks).records.texts == ["a"]  # the error is raised when line 2 is reached
    with pytest.raises(EmbedInputError, match=r"s\.jsonl:2: "):
        next(chunks)
    assert [c.records.texts for c in read_chunks(shard, "text", 1, start=2)] == [["c"], ["d"]]


def test_parquet_column_is_checked_before_the_first_chunk(tmp_path):
    path = tmp_path / "s.parquet"
    path.write_bytes(parquet_bytes(pa.table({"body": ["a"]})))
    with pytest.raises(EmbedInputError, match='no "text" column'):
        read_chunks(shard_of(path), "text", 2)  # not iterated


def test_corrupt_row_group_names_the_file(tmp_path):
    data = bytearray(parquet_bytes(pa.table({"text": [f"text number {i}" * 20 for i in range(6)]}), 2))
    page = data.index(b"text number 4")  # inside the last row group's data
    data[page - 40 : page + 40] = os.urandom(80)
    path = tmp_path / "s.parquet"
    path.write_bytes(bytes(data))
    chunks = read_chunks(shard_of(path), "text", 2)
    with pytest.raises(EmbedInputError, match=re.escape(f"{path}: not a readable parquet file")):
        list(chunks)


def test_upper_case_suffix_is_read_through_gzip(tmp_path):
    shard = shard_of(write_shard(tmp_path / "x.jsonl.gz", ["a", "b"]).rename(tmp_path / "UP.JSONL.GZ"))
    assert (shard.name, shard.suffix) == ("UP", ".jsonl.gz")
    assert [c.records.texts for c in read_chunks(shard, "text", 5)] == [["a", "b"]]
