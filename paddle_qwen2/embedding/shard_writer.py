"""The resumable output of one shard of a corpus-scale `paddle-qwen2 embed`.

A `ShardWriter` commits the embeddings of a shard chunk by chunk, each chunk as one part file in a hidden folder
beside the output (`.{output name}.parts/`), written durably (temp file, fsync, rename, fsync of the folder): a
crash, SIGKILL or preemption loses at most the chunk being written, and `committed()` says where to resume.
`finish()` joins the parts into the output, streaming one part at a time, and removes the parts.

The output is exactly `io.write_embeddings`' for the shard's texts (see io.py): `npy` float32 `[n, dim]` (the
header written for the final shape, then the parts' rows); `jsonl` the input objects plus `"embedding"` last;
`parquet` the input columns plus `embedding` list<float32>, one row group per part. JSONL keys that first appear
in a later chunk are columns in order of first appearance, null before; values that do not fit one column are an
`EmbedInputError` naming the key and the output. The join only depends on the parts, so a run resumed from its
parts writes the same bytes as an uninterrupted run with the same chunk size. An empty shard gives an empty
output (npy `(0, 0)`; parquet a `text_field` and an `embedding` column). No paddle here.

Part files are `{start:012d}-{count}x{dim}.{format}`: the texts `start .. start + count - 1`, embeddings of width
`dim`, in the output format (the npy / jsonl / parquet of just those rows).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import EmbedInputError
from .io import (
    EMBEDDING_FIELD,
    Records,
    _input_rows,
    _parquet_table,
    _write_jsonl,
    atomic_output,
    parquet_write_options,
)
from .shards import Chunk

__all__ = ["OUTPUT_FORMATS", "ShardResult", "ShardWriter"]

OUTPUT_FORMATS = ("npy", "jsonl", "parquet")

_PART_NAME = re.compile(r"(\d{12})-(\d+)x(\d+)\.(npy|jsonl|parquet)")
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class ShardResult:
    """The final output file: its rows (texts), embedding width (0 for an empty npy output), size in bytes and the
    sha256 hex digest of its bytes."""

    rows: int
    dim: int
    bytes: int
    sha256: str


class _Part(NamedTuple):
    start: int
    count: int
    dim: int
    path: Path


class _HashingWriter:
    """A binary file's `write`, counting and hashing the bytes on their way."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._sha256 = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self._sha256.update(data)
        self.bytes += len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:  # pyarrow closes its sink; the file stays open for the fsync
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or folder's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardWriter:
    """The output `output` of one shard, in format `fmt` (one of OUTPUT_FORMATS), written chunk by chunk and
    resumable (see the module docstring). `text_field` names the text key / column for .txt input."""

    def __init__(self, output: Path, fmt: str, text_field: str = "text") -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format {fmt!r}, expected one of {', '.join(OUTPUT_FORMATS)}")
        self.output = Path(output)
        self.fmt = fmt
        self.text_field = text_field
        self._committed: int | None = None  # known after committed() / commit()
        self._dim: int | None = None
        self._columns: dict[str, pa.Field] | None = None  # parquet: the committed parts' input columns

    @property
    def parts_dir(self) -> Path:
        """The folder of the committed parts, `.{output name}.parts` beside the output."""
        return self.output.with_name(f".{self.output.name}.parts")

    # ------------------------------------------------------------------------------------------------ parts

    def _parts(self) -> list[_Part]:
        """The committed parts in order; removes the temp files of an interrupted commit; `EmbedInputError` naming
        the folder for a file that is not a part of this format, or parts that are not a consecutive run from 0."""
        if not self.parts_dir.is_dir():
            return []
        parts = []
        for path in self.parts_dir.iterdir():
            match = _PART_NAME.fullmatch(path.name)
            if path.name.startswith(".") and path.is_file():
                path.unlink()  # `.{part}.tmp-XXXXXXXX` of a commit that did not finish
            elif match is None or match[4] != self.fmt:
                raise EmbedInputError(
                    f"{self.parts_dir}: {path.name!r} is not a part of this {self.fmt} output "
                    f"(expected START-COUNTxDIM.{self.fmt} files)"
                )
            else:
                parts.append(_Part(int(match[1]), int(match[2]), int(match[3]), path))
        parts.sort()
        expected = 0
        for part in parts:
            if part.start != expected or part.count < 1 or part.dim != parts[0].dim:
                raise EmbedInputError(
                    f"{self.parts_dir}: the parts are not a consecutive run from text 0 with one embedding width "
                    f"({part.path.name} after {expected} texts of width {parts[0].dim})"
                )
            expected += part.count
        return parts

    def committed(self) -> int:
        """The number of texts committed so far (0 without parts); removes the temp files of an interrupted commit.
        `EmbedInputError` naming the parts folder if its files are not a consecutive run of parts from text 0."""
        parts = self._parts()
        self._committed = parts[-1].start + parts[-1].count if parts else 0
        self._dim = parts[0].dim if parts else None
        self._columns = None
        return self._committed

    def commit(self, chunk: Chunk, embeddings: np.ndarray) -> None:
        """Commit the `[len(chunk.records.texts), dim]` embeddings of `chunk` as one part file, durably.
        `chunk.start` must be `committed()` and `dim` that of the earlier parts (`ValueError` else). Parquet: JSONL
        values that do not fit the columns of the earlier parts are an `EmbedInputError` now, not at `finish()`."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        count = len(chunk.records.texts)
        if count == 0 or embeddings.ndim != 2 or embeddings.shape[0] != count:
            raise ValueError(f"embeddings of shape {embeddings.shape} for {count} texts, expected [n >= 1, dim]")
        committed = self.committed() if self._committed is None else self._committed
        if chunk.start != committed:
            raise ValueError(f"{self.output}: a chunk starting at text {chunk.start}, but {committed} are committed")
        dim = embeddings.shape[1]
        if self._dim is not None and dim != self._dim:
            raise ValueError(f"{self.output}: embeddings of width {dim}, the committed ones have {self._dim}")
        table, columns = None, None
        if self.fmt == "parquet":
            table = _parquet_table(self.output, chunk.records, embeddings, self.text_field)
            columns = self._parquet_columns() if self._columns is None else dict(self._columns)
            _merge_columns(columns, table.schema, chunk.start, count, self.output)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.parts_dir / f"{chunk.start:012d}-{count}x{dim}.{self.fmt}") as tmp:
            if self.fmt == "npy":
                with tmp.open("wb") as f:
                    np.save(f, embeddings)
            elif self.fmt == "jsonl":
                _write_jsonl(tmp, _input_rows(chunk.records, self.text_field), embeddings)
            else:
                pq.write_table(table, tmp, **parquet_write_options(table.schema))
            _fsync(tmp)
        _fsync(self.parts_dir)
        self._committed, self._dim, self._columns = committed + count, dim, columns

    def _parquet_columns(self) -> dict[str, pa.Field]:
        """The input columns of the committed parquet parts (`_merge_columns` of their schemas)."""
        columns: dict[str, pa.Field] = {}
        for part in self._parts():
            _merge_columns(columns, pq.read_schema(part.path), part.start, part.count, self.output)
        return columns

    # ------------------------------------------------------------------------------------------------ output

    def finish(self) -> ShardResult:
        """Join the parts into the output (a temp file beside it, renamed when complete), one part in memory at a
        time, and remove the parts folder; return what was written."""
        parts = self._parts()
        rows = sum(part.count for part in parts)
        dim = parts[0].dim if parts else 0
        self._remove_output_temps()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.output) as tmp:
            with tmp.open("wb") as f:
                out = _HashingWriter(f)
                if self.fmt == "npy":
                    _join_npy(out, parts, rows, dim)
                elif self.fmt == "jsonl":
                    _join_jsonl(out, parts)
                else:
                    _join_parquet(out, parts, self.output, self.text_field)
                f.flush()
                os.fsync(f.fileno())
        _fsync(self.output.parent)
        if self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)
        self._committed, self._dim, self._columns = None, None, None
        return ShardResult(rows=rows, dim=dim, bytes=out.bytes, sha256=out.hexdigest())

    def discard(self) -> None:
        """Remove the parts folder and the output (and temp files of an interrupted `finish`)."""
        if self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)
        self.output.unlink(missing_ok=True)
        self._remove_output_temps()
        self._committed, self._dim, self._columns = None, None, None

    def _remove_output_temps(self) -> None:
        for tmp in self.output.parent.glob(f".{glob.escape(self.output.name)}.tmp-*"):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- joining


def _join_npy(out: _HashingWriter, parts: Sequence[_Part], rows: int, dim: int) -> None:
    """np.save's bytes of the `[rows, dim]` float32 array the parts hold: the header, then each part's rows."""
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, dim), dtype=np.float32))
    header["shape"] = (rows, dim)
    np.lib.format.write_array_header_1_0(out, header)
    for part in parts:
        embeddings = np.load(part.path)
        if embeddings.dtype != np.float32 or embeddings.shape != (part.count, part.dim):
            raise EmbedInputError(f"{part.path}: {embeddings.dtype} {embeddings.shape}, expected float32 [count, dim]")
        out.write(np.ascontiguousarray(embeddings).reshape(-1).view(np.uint8))


def _join_jsonl(out: _HashingWriter, parts: Sequence[_Part]) -> None:
    for part in parts:
        with part.path.open("rb") as f:
            shutil.copyfileobj(f, out, _COPY_BLOCK)


def _join_parquet(out: _HashingWriter, parts: Sequence[_Part], output: Path, text_field: str) -> None:
    """The parts' tables as one row group each, in one schema (see `_unified_schema`)."""
    if not parts:
        empty = Records(texts=[])
        table = _parquet_table(output, empty, np.zeros((0, 0), np.float32), text_field)
        pq.write_table(table, out, **parquet_write_options(table.schema))
        return
    schema = _unified_schema(parts, output)
    with pq.ParquetWriter(out, schema, **parquet_write_options(schema)) as writer:
        for part in parts:
            table = pq.read_table(part.path)
            writer.write_table(_conform(table, schema, part, output), row_group_size=table.num_rows)


def _merge_columns(columns: dict[str, pa.Field], schema: pa.Schema, start: int, count: int, output: Path) -> None:
    """Add the input columns of `schema` (a part of texts `start..start + count - 1`) to `columns`: new ones last, a
    known one typed to hold both parts' values (pyarrow's permissive promotion: null -> any type, int -> float,
    structs merged); `EmbedInputError` naming the key and `output` when no type holds both."""
    for field in schema:
        known = columns.setdefault(field.name, field)
        if field.name == EMBEDDING_FIELD or known.type == field.type:
            continue
        try:
            pair = [pa.schema([known]), pa.schema([field])]
            columns[field.name] = pa.unify_schemas(pair, promote_options="permissive").field(0)
        except (pa.ArrowException, TypeError):
            raise EmbedInputError(
                f'{output}: the JSONL "{field.name}" values do not fit one parquet column ({known.type} before '
                f"text {start}, {field.type} in texts {start}..{start + count - 1})"
            ) from None


def _unified_schema(parts: Sequence[_Part], output: Path) -> pa.Schema:
    """The input columns of all parts in order of first appearance (`_merge_columns`), then `embedding`."""
    columns: dict[str, pa.Field] = {}
    schemas = [pq.read_schema(part.path) for part in parts]
    for part, schema in zip(parts, schemas):
        _merge_columns(columns, schema, part.start, part.count, output)
    embedding = columns.pop(EMBEDDING_FIELD)
    return pa.schema([*columns.values(), embedding], metadata=schemas[0].metadata)


def _conform(table: pa.Table, schema: pa.Schema, part: _Part, output: Path) -> pa.Table:
    """`table` with `schema`'s columns (null where the part lacks one) and types."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        try:
            columns.append(column if column.type == field.type else column.cast(field.type))
        except (pa.ArrowException, TypeError) as e:
            raise EmbedInputError(
                f'{output}: the JSONL "{field.name}" values of texts {part.start}..{part.start + part.count - 1} '
                f"do not fit the column's type {field.type} ({e})"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)
