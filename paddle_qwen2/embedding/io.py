"""Input and output files of `paddle-qwen2 embed`: texts in, one float32 embedding per text out.

Inputs (row order is input order):
    .txt      one text per line; every line is a text (empty lines too), only the `\\n` / `\\r\\n` terminator is
              removed, and the newline that ends the file does not start an extra text.
    .jsonl    one JSON object per line holding the text in `text_field` (default "text"), or a bare JSON string;
              blank lines are skipped.
    .parquet  a string column named `text_field`.

Outputs (`n` texts, embeddings of width `dim`):
    .npy      float32 `[n, dim]`.
    .jsonl    each input object with an added `"embedding"` list of floats (`{text_field: text, "embedding": [...]}`
              for .txt input and bare-string lines); the floats are the float32 values' exact `float(x)` reprs.
    .parquet  the input columns plus an `embedding` list<float32> column (a single `text_field` column for .txt);
              the embeddings are written without dictionary encoding or statistics (which random floats never use).
An `embedding` key / column already in the input is replaced.

Every output is written to a temp file beside it (`.{name}.tmp-XXXXXXXX`) and renamed into place when complete; a
failure (or Ctrl-C) leaves neither. Bad input raises `EmbedInputError` (a line that is not UTF-8 or not valid JSON:
`paddle_qwen2.jsonl.JSONLError`), whose message names the file (and line) and is ready to print after `error: `.
No paddle here: numpy, json and pyarrow only.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..jsonl import read_jsonl, read_lines, where
from .errors import EmbedInputError

__all__ = [
    "EMBEDDING_FIELD",
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "EmbedInputError",
    "Records",
    "atomic_output",
    "check_input_path",
    "check_output_path",
    "read_texts",
    "write_embeddings",
]

INPUT_FORMATS = (".txt", ".jsonl", ".parquet")
OUTPUT_FORMATS = (".npy", ".jsonl", ".parquet")
EMBEDDING_FIELD = "embedding"

PathLike = Union[str, "os.PathLike[str]"]

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


@dataclass
class Records:
    """What `read_texts` read, and what the writers need to echo the input back.

    texts: the `n` texts, in input order.
    rows:  for .jsonl input, the `n` input objects (a bare-string line becomes `{text_field: text}`); else None.
    table: for .parquet input, the input table (`n` rows, all columns); else None.
    """

    texts: list[str]
    rows: list[dict[str, Any]] | None = None
    table: pa.Table | None = None


# ---------------------------------------------------------------------------------------------------- paths


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _formats(formats: tuple[str, ...]) -> str:
    return ", ".join(formats[:-1]) + " or " + formats[-1]


def check_input_path(path: PathLike) -> Path:
    """`path` as a Path if it is an existing file of a readable format, else `EmbedInputError`."""
    path = Path(path)
    if _suffix(path) not in INPUT_FORMATS:
        raise EmbedInputError(f"{path}: unsupported input format {path.suffix!r} (expected {_formats(INPUT_FORMATS)})")
    if not path.exists():
        raise EmbedInputError(f"{path}: no such file")
    if not path.is_file():
        raise EmbedInputError(f"{path}: not a file")
    return path


def check_output_path(path: PathLike) -> Path:
    """`path` as a Path if it has a writable format, its directory exists and it is not a directory itself, else
    `EmbedInputError`. Call it before any work so a bad output path fails fast."""
    path = Path(path)
    if _suffix(path) not in OUTPUT_FORMATS:
        raise EmbedInputError(
            f"{path}: unsupported output format {path.suffix!r} (expected {_formats(OUTPUT_FORMATS)})"
        )
    parent = path.parent
    if not parent.is_dir():
        raise EmbedInputError(f"{path}: no such directory {str(parent)!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EmbedInputError(f"{path}: directory {str(parent)!r} is not writable")
    if path.is_dir():
        raise EmbedInputError(f"{path}: is a directory")
    return path


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temp path beside `path` (`.{name}.tmp-XXXXXXXX`, created empty); on success it is renamed to
    `path` (replacing it), on any exception, KeyboardInterrupt included, it is removed and `path` is left as it was."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EmbedInputError(f"{path}: no such directory {str(path.parent)!r}")
    tmp = _create_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> Path:
    """A new empty file `.{name}.tmp-XXXXXXXX` beside `path` (created with `x`, so with the usual umask mode)."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.open("xb").close()
            return tmp
        except FileExistsError:
            continue


# ---------------------------------------------------------------------------------------------------- reading


def read_texts(path: PathLike, text_field: str = "text") -> Records:
    """The texts of a .txt / .jsonl / .parquet file (see the module docstring), with what the writers need."""
    path = check_input_path(path)
    suffix = _suffix(path)
    if suffix == ".txt":
        return Records(texts=[line for _, line in read_lines(path)])
    if suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    return _read_parquet(path, text_field)


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _read_jsonl(path: Path, text_field: str) -> Records:
    texts, rows = [], []
    for lineno, value in read_jsonl(path):
        row = _jsonl_row(value, text_field, where(path, lineno))
        texts.append(row[text_field])
        rows.append(row)
    return Records(texts=texts, rows=rows)


def _jsonl_row(value: Any, text_field: str, where: str) -> dict[str, Any]:
    """One parsed JSONL line -> its object (a bare string becomes `{text_field: value}`); `where` prefixes errors."""
    if isinstance(value, str):
        return {text_field: value}
    if not isinstance(value, dict):
        raise EmbedInputError(f"{where}: expected a JSON object or string, got {_json_type(value)}")
    if text_field not in value:
        keys = ", ".join(value) or "none"
        raise EmbedInputError(f'{where}: no "{text_field}" field (keys: {keys})')
    if not isinstance(value[text_field], str):
        raise EmbedInputError(f'{where}: "{text_field}" is not a string (got {_json_type(value[text_field])})')
    return value


def _is_string_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return _is_string_type(dtype.value_type)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _read_parquet(path: Path, text_field: str) -> Records:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise EmbedInputError(f"{path}: not a readable parquet file ({e})") from None
    _check_text_column(path, table.schema, text_field)
    return Records(texts=_column_texts(path, table, text_field), table=table)


def _check_text_column(path: Path, schema: pa.Schema, text_field: str) -> None:
    """`EmbedInputError` naming `path` unless `schema` has a string column `text_field`."""
    if text_field not in schema.names:
        columns = ", ".join(schema.names) or "none"
        raise EmbedInputError(f'{path}: no "{text_field}" column (columns: {columns})')
    dtype = schema.field(text_field).type
    if not _is_string_type(dtype):
        raise EmbedInputError(f'{path}: column "{text_field}" has type {dtype}, expected strings')


def _column_texts(path: Path, table: pa.Table, text_field: str, first_row: int = 0) -> list[str]:
    """The `text_field` strings of `table` (rows `first_row`... of `path`); `EmbedInputError` naming the first null."""
    column = table.column(text_field)
    texts = column.to_pylist()
    if column.null_count:
        row = first_row + texts.index(None)
        raise EmbedInputError(f'{path}: "{text_field}" is null in row {row} (0-based)')
    return texts


# ---------------------------------------------------------------------------------------------------- writing


def write_embeddings(path: PathLike, records: Records, embeddings: np.ndarray, text_field: str = "text") -> None:
    """Write `embeddings` (`[n, dim]`, row i = `records.texts[i]`) to `path` as float32 in its format (see the
    module docstring), atomically. `text_field` names the text key / column for .txt input."""
    path = check_output_path(path)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(records.texts):
        raise ValueError(f"embeddings of shape {embeddings.shape} for {len(records.texts)} texts, expected [n, dim]")
    suffix = _suffix(path)
    table = _parquet_table(path, records, embeddings, text_field) if suffix == ".parquet" else None
    with atomic_output(path) as tmp:
        if suffix == ".npy":
            with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to the temp name
                np.save(f, embeddings)
        elif suffix == ".jsonl":
            _write_jsonl(tmp, _input_rows(records, text_field), embeddings)
        else:
            pq.write_table(table, tmp, **parquet_write_options(table.schema))


def _input_rows(records: Records, text_field: str) -> list[dict[str, Any]]:
    """The `n` input objects / table rows of `records` (`{text_field: text}` for .txt input)."""
    if records.rows is not None:
        return records.rows
    if records.table is not None:
        return records.table.to_pylist()
    return [{text_field: text} for text in records.texts]


def _json_default(value: Any) -> Any:
    """JSON for the parquet values json cannot write itself (dates and times, decimals, bytes...)."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _write_jsonl(tmp: Path, rows: list[dict[str, Any]], embeddings: np.ndarray) -> None:
    """One line per row: the row with `"embedding"` set to its `[dim]` row of `embeddings`."""
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row, embedding in zip(rows, embeddings):
            obj = {key: value for key, value in row.items() if key != EMBEDDING_FIELD}  # the embedding goes last
            # tolist() gives float(x) of each float32, whose repr json writes: read back as float32 it is exact
            obj[EMBEDDING_FIELD] = embedding.tolist()
            f.write(json.dumps(obj, ensure_ascii=False, default=_json_default) + "\n")


def _input_table(path: Path, records: Records, text_field: str) -> pa.Table:
    """The input columns of `records` as an `n`-row table: the parquet input's, one per JSONL key (in order of first
    appearance, null where a row lacks it) or one `text_field` column for .txt. `path` (the output) prefixes the
    error raised when a JSONL key's values do not fit one column."""
    if records.table is not None:
        return records.table
    if not records.rows:
        return pa.table({text_field: pa.array(records.texts, type=pa.string())})
    columns = {}
    for key in dict.fromkeys(key for row in records.rows for key in row if key != EMBEDDING_FIELD):
        try:
            columns[key] = pa.array([row.get(key) for row in records.rows])
        except (pa.ArrowException, TypeError) as e:
            raise EmbedInputError(f'{path}: the JSONL "{key}" values do not fit one parquet column ({e})') from None
    return pa.table(columns)


def _parquet_table(path: Path, records: Records, embeddings: np.ndarray, text_field: str) -> pa.Table:
    """The input columns plus `embedding`: list<float32>, one `[dim]` list per row of the `[n, dim]` embeddings."""
    n, dim = embeddings.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * dim, type=pa.int32())
    column = pa.ListArray.from_arrays(offsets, pa.array(embeddings.reshape(-1), type=pa.float32()))
    table = _input_table(path, records, text_field)
    if EMBEDDING_FIELD in table.column_names:
        table = table.drop_columns([EMBEDDING_FIELD])
    return table.append_column(EMBEDDING_FIELD, column)


def parquet_write_options(schema: pa.Schema) -> dict[str, Any]:
    """`pq.write_table` / `pq.ParquetWriter` options for an output of `schema` (input columns, then `embedding`):
    dictionary encoding and statistics for the input columns' leaves, neither for the embedding floats. A
    dictionary of float32 embeddings overflows and falls back to plain pages, so building it only costs: most of
    the write time and a larger file."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema):  # an empty file: the parquet leaf paths of `schema` (`tags.list.element`)
        pass
    leaves = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    inputs = [leaves.column(i).path for i in range(len(leaves) - 1)]  # `embedding` is the last column, one leaf
    return {"use_dictionary": inputs, "write_statistics": inputs}
