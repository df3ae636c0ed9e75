"""paddle_qwen2.embedding.io: every input format x output format round-trips the texts' order, the input columns and
the exact float32 values; bad inputs / outputs raise `EmbedInputError` naming the file (and line) and leave neither
an output nor a temp file. No paddle needed."""

from __future__ import annotations

import datetime
import decimal
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paddle_qwen2.embedding import io as embed_io
from paddle_qwen2.embedding.io import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    EmbedInputError,
    Records,
    atomic_output,
    check_input_path,
    check_output_path,
    read_texts,
    write_embeddings,
)
from paddle_qwen2.jsonl import JSONLError

DIM = 7
TEXTS = ["first", "", "zweite Zeile ü", "第三行 with  spaces ", "tab\there", 'quote " and \\ backslash', "cr\rinside"]


def embeddings_for(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """`[n, dim]` float32, with values whose shortest decimal is long, a denormal, the float32 max and -0.0."""
    emb = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32) / np.float32(3)
    special = np.array([0.1, 1e-45, 3.4028235e38, -0.0, 1 / 3], dtype=np.float32)
    if n:
        emb[0, : len(special)] = special[:dim]
    return emb


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


def no_output(dst: Path) -> bool:
    """Neither DST nor a leftover temp file beside it."""
    return not dst.exists() and not list(dst.parent.glob(f".{dst.name}.*"))


def embed(src: Path, dst: Path, text_field: str = "text") -> Records:
    """What `paddle-qwen2 embed` does around the model: check both paths, read, 'embed', write."""
    check_input_path(src)
    check_output_path(dst)
    records = read_texts(src, text_field)
    write_embeddings(dst, records, embeddings_for(len(records.texts)), text_field)
    return records


# ---------------------------------------------------------------------------------------------------- inputs


def write_input(folder: Path, fmt: str, text_field: str) -> tuple[Path, list[dict]]:
    """An input file of format `fmt` holding TEXTS, and the rows the outputs should echo (without `embedding`)."""
    path = folder / f"in{fmt}"
    if fmt == ".txt":
        path.write_bytes("".join(t + "\n" for t in TEXTS).encode())
        return path, [{text_field: t} for t in TEXTS]
    if fmt == ".jsonl":
        rows = [{"id": i, text_field: t, "meta": {"k": [i, 0.5]}} for i, t in enumerate(TEXTS)]
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        lines[3] = json.dumps(TEXTS[3])  # a bare string
        rows[3] = {text_field: TEXTS[3]}
        lines.insert(2, "   ")  # blank lines are skipped
        path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
        return path, rows
    table = pa.table(
        {
            "id": pa.array(range(len(TEXTS)), pa.int64()),
            text_field: pa.array(TEXTS, pa.string()),
            "score": pa.array([i / 4 for i in range(len(TEXTS))], pa.float64()),
            "tags": pa.array([["a"] * i for i in range(len(TEXTS))], pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    return path, table.to_pylist()


def as_matrix(lists: list[list[float]]) -> np.ndarray:
    """Lists of floats -> float32 `[n, dim]` (`[0, 0]` for none)."""
    return np.array(lists, dtype=np.float32).reshape(len(lists), -1) if lists else np.zeros((0, 0), np.float32)


def read_output(path: Path) -> tuple[np.ndarray, list[dict] | None, list[str] | None]:
    """(embeddings, rows without `embedding`, column names) of an output file (rows / columns None for .npy)."""
    if path.suffix == ".npy":
        return np.load(path), None, None
    if path.suffix == ".jsonl":
        objs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert all(list(obj)[-1] == "embedding" for obj in objs)
        return as_matrix([obj.pop("embedding") for obj in objs]), objs, None
    table = pq.read_table(path)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    embeddings = as_matrix(table.column("embedding").to_pylist())
    return embeddings, table.drop_columns(["embedding"]).to_pylist(), table.column_names


@pytest.mark.parametrize("text_field", ["text", "body"])
@pytest.mark.parametrize("out_fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("in_fmt", INPUT_FORMATS)
def test_round_trip(tmp_path, in_fmt, out_fmt, text_field):
    src, rows = write_input(tmp_path, in_fmt, text_field)
    dst = tmp_path / f"out{out_fmt}"
    records = embed(src, dst, text_field)
    assert records.texts == TEXTS
    embeddings, out_rows, columns = read_output(dst)
    assert_bits_equal(embeddings, embeddings_for(len(TEXTS)))
    if out_fmt == ".jsonl":
        assert out_rows == rows
    if out_fmt == ".parquet":
        keys = list(dict.fromkeys(k for row in rows for k in row))
        assert columns == [*keys, "embedding"]
        assert out_rows == [{k: row.get(k) for k in keys} for row in rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])


def test_parquet_output_encodings(tmp_path):
    """Dictionary encoding and statistics for the input columns (nested ones too), neither for the embeddings."""
    src, _ = write_input(tmp_path, ".parquet", "text")
    embed(src, tmp_path / "out.parquet")
    group = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert list(columns) == ["id", "text", "score", "tags.list.element", "embedding.list.element"]
    for path, column in columns.items():
        embedding = path.startswith("embedding")
        assert ("RLE_DICTIONARY" in column.encodings) != embedding, path
        assert column.is_stats_set != embedding, path


def test_parquet_to_parquet_keeps_the_input_schema(tmp_path):
    src, _ = write_input(tmp_path, ".parquet", "text")
    embed(src, tmp_path / "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.drop_columns(["embedding"]).schema.equals(pq.read_table(src).schema)


@pytest.mark.parametrize("out_fmt", OUTPUT_FORMATS)
def test_empty_input_gives_an_empty_output(tmp_path, out_fmt):
    src = tmp_path / "in.txt"
    src.write_text("")
    dst = tmp_path / f"out{out_fmt}"
    assert embed(src, dst).texts == []
    embeddings, rows, _ = read_output(dst)
    assert embeddings.shape[0] == 0 and (rows is None or rows == [])


@pytest.mark.parametrize(
    "data, texts",
    [
        (b"a\nb\n", ["a", "b"]),
        (b"a\nb", ["a", "b"]),
        (b"a\r\n\r\nb\r\n", ["a", "", "b"]),
        (b"\n", [""]),
        (b"\n\n", ["", ""]),
        (b"", []),
        (b"a\rb\r\r\n c \n", ["a\rb\r", " c "]),
        ("\ufeffbom\n".encode(), ["bom"]),
        ("x\u2028y\x0cz\n".encode(), ["x\u2028y\x0cz"]),  # only \n splits lines
    ],
)
def test_txt_lines(tmp_path, data, texts):
    src = tmp_path / "in.TXT"
    src.write_bytes(data)
    records = read_texts(src)
    assert records.texts == texts and records.rows is None and records.table is None


def test_jsonl_bare_strings_blank_lines_and_crlf(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'"a"\r\n\r\n  \n{"t": "b", "n": 1}\r\n"c"')
    records = read_texts(src, text_field="t")
    assert records.texts == ["a", "b", "c"]
    assert records.rows == [{"t": "a"}, {"t": "b", "n": 1}, {"t": "c"}]


@pytest.mark.parametrize("dtype", [pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_parquet_string_types(tmp_path, dtype):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": pa.array(["x", "y", "x"]).cast(dtype)}), src)
    assert read_texts(src).texts == ["x", "y", "x"]


@pytest.mark.parametrize("in_fmt", [".jsonl", ".parquet"])
@pytest.mark.parametrize("out_fmt", [".jsonl", ".parquet"])
def test_an_input_embedding_is_replaced(tmp_path, in_fmt, out_fmt):
    src = tmp_path / f"in{in_fmt}"
    if in_fmt == ".jsonl":
        src.write_text('{"text": "a", "embedding": [9, 9], "id": 1}\n{"text": "b", "embedding": "old", "id": 2}\n')
    else:
        pq.write_table(pa.table({"text": ["a", "b"], "embedding": [[9.0], [8.0]], "id": [1, 2]}), src)
    dst = tmp_path / f"out{out_fmt}"
    embed(src, dst)
    embeddings, rows, _ = read_output(dst)
    assert_bits_equal(embeddings, embeddings_for(2))
    assert rows == [{"text": "a", "id": 1}, {"text": "b", "id": 2}]


# ---------------------------------------------------------------------------------------------------- bad inputs

BAD_PARQUET_NO_COLUMN = pa.table({"body": ["a"], "id": [1]})
BAD_PARQUET_INT_COLUMN = pa.table({"text": [1, 2]})
BAD_PARQUET_NULL = pa.table({"text": ["a", None, "c"]})
MISSING, DIRECTORY = object(), object()


@pytest.mark.parametrize(
    "content, ext, pattern",
    [
        ('{"text": "a"}\n{"text": \n', ".jsonl", r"FILE:2: not valid JSON \(Expecting value at column 10\)"),
        ('{"text": "a"}\n\n{"text": "b"} x\n', ".jsonl", r"FILE:3: not valid JSON \(Extra data at column 15\)"),
        ('{"text": "a"}\n\n{"body": "b", "id": 1}\n', ".jsonl", r'FILE:3: no "text" field \(keys: body, id\)'),
        ("{}\n", ".jsonl", r'FILE:1: no "text" field \(keys: none\)'),
        ('{"text": 5}\n', ".jsonl", r'FILE:1: "text" is not a string \(got number\)'),
        ('"a"\n{"text": null}\n', ".jsonl", r'FILE:2: "text" is not a string \(got null\)'),
        ('{"text": ["a"]}\n', ".jsonl", r'FILE:1: "text" is not a string \(got array\)'),
        ("[1, 2]\n", ".jsonl", r"FILE:1: expected a JSON object or string, got array"),
        ("3\n", ".jsonl", r"FILE:1: expected a JSON object or string, got number"),
        (b'"a"\n{"text": "\xff"}\n', ".jsonl", r"FILE:2: not valid UTF-8 \(invalid start byte at byte 11\)"),
        (b"ok\nok\n\xc3(\n", ".txt", r"FILE:3: not valid UTF-8 \(invalid continuation byte at byte 1\)"),
        (BAD_PARQUET_NO_COLUMN, ".parquet", r'FILE: no "text" column \(columns: body, id\)'),
        (BAD_PARQUET_INT_COLUMN, ".parquet", r'FILE: column "text" has type int64, expected strings'),
        (BAD_PARQUET_NULL, ".parquet", r'FILE: "text" is null in row 1 \(0-based\)'),
        ("not parquet", ".parquet", r"FILE: not a readable parquet file \(.+\)"),
        (MISSING, ".txt", r"FILE: no such file"),
        (DIRECTORY, ".jsonl", r"FILE: not a file"),
        ("a,b\n", ".csv", r"FILE: unsupported input format '\.csv' \(expected \.txt, \.jsonl or \.parquet\)"),
        ("a\n", "", r"FILE: unsupported input format '' \(expected \.txt, \.jsonl or \.parquet\)"),
    ],
)
def test_bad_input(tmp_path, content, ext, pattern):
    src = tmp_path / f"in{ext}"
    if isinstance(content, pa.Table):
        pq.write_table(content, src)
    elif content is DIRECTORY:
        src.mkdir()
    elif content is not MISSING:
        src.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "out").mkdir()
    dst = tmp_path / "out" / "out.jsonl"
    with pytest.raises((EmbedInputError, JSONLError)) as info:
        embed(src, dst)
    assert re.fullmatch(pattern.replace("FILE", re.escape(str(src))), str(info.value)), str(info.value)
    assert no_output(dst) and not list(dst.parent.iterdir())


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("out.csv", r"FILE: unsupported output format '\.csv' \(expected \.npy, \.jsonl or \.parquet\)"),
        ("out.txt", r"FILE: unsupported output format '\.txt' \(expected \.npy, \.jsonl or \.parquet\)"),
        ("out", r"FILE: unsupported output format '' \(expected \.npy, \.jsonl or \.parquet\)"),
        ("missing/out.npy", r"FILE: no such directory '.*missing'"),
        ("a_dir.npy", r"FILE: is a directory"),
    ],
)
def test_bad_output_path_fails_before_any_work(tmp_path, name, pattern):
    (tmp_path / "a_dir.npy").mkdir()
    before = sorted(tmp_path.iterdir())
    dst = tmp_path / name
    full = pattern.replace("FILE", re.escape(str(dst)))
    with pytest.raises(EmbedInputError, match=f"^{full}$"):
        check_output_path(dst)
    with pytest.raises(EmbedInputError, match=f"^{full}$"):
        write_embeddings(dst, Records(texts=["a"]), embeddings_for(1))
    assert sorted(tmp_path.iterdir()) == before


def test_jsonl_objects_that_do_not_fit_parquet_columns(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": "two"}\n')
    dst = tmp_path / "out.parquet"
    with pytest.raises(EmbedInputError, match=rf'^{re.escape(str(dst))}: the JSONL "id" values do not fit one parquet'):
        embed(src, dst)
    assert no_output(dst)
    embed(src, tmp_path / "out.jsonl")  # the same input is fine as JSONL


# ---------------------------------------------------------------------------------------------------- atomic writes


def test_wrong_number_of_embeddings(tmp_path):
    dst = tmp_path / "out.npy"
    for bad in (embeddings_for(3), embeddings_for(2)[0]):
        with pytest.raises(ValueError, match=r"embeddings of shape .* for 2 texts"):
            write_embeddings(dst, Records(texts=["a", "b"]), bad)
    assert no_output(dst)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [False, True])
def test_atomic_output_failure_leaves_nothing(tmp_path, error, existing):
    dst = tmp_path / "out.npy"
    if existing:
        dst.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_output(dst) as tmp:
            assert tmp.parent == tmp_path and re.fullmatch(r"\.out\.npy\.tmp-[0-9a-f]{8}", tmp.name)
            assert tmp.is_file()
            tmp.write_bytes(b"partial")
            raise error()
    assert not list(tmp_path.glob(".out.npy.*"))
    assert dst.read_bytes() == b"old" if existing else not dst.exists()


def test_atomic_output_replaces(tmp_path):
    dst = tmp_path / "out.jsonl"
    dst.write_text("old\n")
    with atomic_output(dst) as tmp:
        tmp.write_text("new\n")
        assert dst.read_text() == "old\n"
    assert dst.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _fail_npy(f, array):
    f.write(b"\x93NUMPY partial")
    raise OSError("No space left on device")


def _fail_parquet(table, where, **options):
    Path(where).write_bytes(b"PAR1 partial")
    raise OSError("No space left on device")


def _fail_json():
    """A json.dumps that is interrupted on its third call."""
    calls = []

    def dumps(obj, **kwargs):
        calls.append(obj)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return json.JSONEncoder(**kwargs).encode(obj)

    return dumps


@pytest.mark.parametrize(
    "out_fmt, target, name, make_failure, error",
    [
        (".npy", embed_io.np, "save", lambda: _fail_npy, OSError),
        (".parquet", embed_io.pq, "write_table", lambda: _fail_parquet, OSError),
        (".jsonl", embed_io.json, "dumps", _fail_json, KeyboardInterrupt),
    ],
)
def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, out_fmt, target, name, make_failure, error):
    src, _ = write_input(tmp_path, ".txt", "text")
    dst = tmp_path / f"out{out_fmt}"
    records = read_texts(src)
    monkeypatch.setattr(target, name, make_failure())
    with pytest.raises(error):
        write_embeddings(dst, records, embeddings_for(len(records.texts)))
    assert no_output(dst) and [p.name for p in tmp_path.iterdir()] == [src.name]


def test_parquet_values_json_cannot_write(tmp_path):
    src = tmp_path / "in.parquet"
    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    table = pa.table(
        {
            "text": ["a"],
            "when": pa.array([when], pa.timestamp("s")),
            "day": pa.array([when.date()], pa.date32()),
            "price": pa.array([decimal.Decimal("1.25")], pa.decimal128(5, 2)),
        }
    )
    pq.write_table(table, src)
    embed(src, tmp_path / "out.jsonl")
    _, rows, _ = read_output(tmp_path / "out.jsonl")
    assert rows == [{"text": "a", "when": "2024-05-06T07:08:09", "day": "2024-05-06", "price": "1.25"}]
