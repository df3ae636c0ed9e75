"""The input shards of a corpus-scale `paddle-qwen2 embed`, found and read in bounded memory.

`find_shards(inputs)` turns files, folders and glob patterns into the list of `Shard`s to embed, each with the
output name its results get. `read_chunks(shard, ...)` yields a shard's texts from any index on, `chunk_size` at a
time, without reading the whole file: .txt / .jsonl lines are streamed (.jsonl.gz through gzip) and the texts
before the start are skipped without being decoded or parsed; parquet is read row group by row group, and the row
groups before the start are skipped using the file's metadata. `count_texts(shard)` counts a shard's texts the
same cheap way.

A shard's texts are exactly what `io.read_texts` reads from the whole file (see io.py; .jsonl.gz as .jsonl).
Bad input raises `EmbedInputError` when it is reached, naming the shard file and the 1-based line (.txt, .jsonl)
or 0-based row (parquet); a parquet file that cannot be opened or lacks the text column fails before the first
chunk. No paddle here.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..jsonl import JSONLError, decode_line, parse_line, read_raw_lines, where
from .errors import EmbedInputError
from .io import Records, _check_text_column, _column_texts, _jsonl_row

__all__ = ["SHARD_SUFFIXES", "Chunk", "Shard", "count_texts", "find_shards", "read_chunks"]

SHARD_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")

# the first byte of every JSON value Python's json reads (NaN and Infinity too): a line starting with one is not blank
_JSON_STARTS = frozenset(b'{["-0123456789tfnNI')
# parquet batches are at most this many rows, whatever the chunk size (memory: one chunk plus one batch)
_MAX_BATCH_ROWS = 65536


@dataclass(frozen=True)
class Shard:
    """One input file of the corpus.

    path:   the file.
    name:   its output name without suffix, '/'-separated: the path relative to the folder (folder input) or to
            the glob's leading directory without wildcards (glob input), or the file's own name (file input),
            without the shard suffix; e.g. "part-0001", "2024/part-7".
    suffix: one of SHARD_SUFFIXES.
    size:   bytes on disk.
    """

    path: Path
    name: str
    suffix: str
    size: int


@dataclass
class Chunk:
    """Consecutive texts of a shard: `start` is the shard index (0-based) of the first; `records` holds just these
    texts, with their JSONL objects (`rows`) or parquet rows (`table`) as `io.read_texts` gives them."""

    start: int
    records: Records


# ---------------------------------------------------------------------------------------------------- finding


def shard_suffix(name: str) -> str | None:
    """The SHARD_SUFFIXES entry `name` ends with (case-insensitive), or None."""
    lower = name.lower()
    return next((suffix for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True) if lower.endswith(suffix)), None)


def _shard(path: Path, relative: str) -> Shard:
    suffix = shard_suffix(path.name)
    assert suffix is not None
    return Shard(path=path, name=relative[: -len(suffix)], suffix=suffix, size=path.stat().st_size)


def _expected() -> str:
    return ", ".join(SHARD_SUFFIXES[:-1]) + " or " + SHARD_SUFFIXES[-1]


def _folder_shards(folder: Path) -> list[Shard]:
    """Every shard file below `folder` (recursively), hidden files and folders skipped."""
    shards = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            path = Path(root, file)
            if not file.startswith(".") and shard_suffix(file) and path.is_file():
                shards.append(_shard(path, path.relative_to(folder).as_posix()))
    if not shards:
        raise EmbedInputError(f"{folder}: no input shard in this folder (expected files ending in {_expected()})")
    return shards


def _glob_base(pattern: str) -> Path:
    """The leading directory of `pattern` without wildcards (`data/2024` for `data/2024/*/part-*.jsonl`)."""
    parts = Path(pattern).parts
    lead = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        lead.append(part)
    return Path(*lead) if lead else Path(".")


def _glob_shards(pattern: str) -> list[Shard]:
    base = _glob_base(pattern)
    shards = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if shard_suffix(path.name) and path.is_file():
            shards.append(_shard(path, Path(os.path.relpath(path, base)).as_posix()))
    if not shards:
        raise EmbedInputError(
            f"{pattern}: no input shard matches this pattern (expected files ending in {_expected()})"
        )
    return shards


def _input_shards(source: str | os.PathLike) -> list[Shard]:
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return _folder_shards(path)
    if path.is_file():
        if shard_suffix(path.name) is None:
            raise EmbedInputError(f"{path}: unsupported input format (expected {_expected()})")
        return [_shard(path, path.name)]
    if path.exists():
        raise EmbedInputError(f"{path}: not a file or folder")
    if glob.has_magic(text):
        return _glob_shards(text)
    raise EmbedInputError(f"{path}: no such file or folder")


def find_shards(inputs: Sequence[str | os.PathLike]) -> list[Shard]:
    """The shards of `inputs` (files, folders searched recursively, glob patterns with `**`), sorted by name, then
    path; a file reached twice counts once. `EmbedInputError` for a missing path, a file of another format, a folder
    or pattern without a shard, and two shards with the same output name."""
    shards: dict[str, Shard] = {}
    for source in inputs:
        for shard in _input_shards(source):
            shards.setdefault(os.path.realpath(shard.path), shard)
    by_name: dict[str, Shard] = {}
    for shard in sorted(shards.values(), key=lambda s: (s.name, str(s.path))):
        other = by_name.setdefault(shard.name, shard)
        if other is not shard:
            raise EmbedInputError(f"{other.path} and {shard.path} both give the output name {shard.name!r}")
    return list(by_name.values())


# ---------------------------------------------------------------------------------------------------- reading


def read_chunks(shard: Shard, text_field: str, chunk_size: int, start: int = 0) -> Iterator[Chunk]:
    """The texts of `shard` from index `start` on, in chunks of `chunk_size` texts (the last may be shorter; none
    when `start` is the shard's text count). Memory: one chunk (plus one parquet batch)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if shard.suffix == ".parquet":
        return _parquet_chunks(shard.path, text_field, chunk_size, start)
    return _line_chunks(shard, text_field, chunk_size, start)


def count_texts(shard: Shard) -> int:
    """The number of texts in `shard`: parquet from its metadata, .txt lines, .jsonl non-blank lines (unparsed)."""
    if shard.suffix == ".parquet":
        return _parquet_file(shard.path).metadata.num_rows
    if shard.suffix == ".txt":
        return sum(1 for _ in _raw_lines(shard.path))
    return sum(1 for _, raw in _raw_lines(shard.path) if not _blank(raw))


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """`jsonl.read_raw_lines`, its errors as `EmbedInputError`."""
    try:
        yield from read_raw_lines(path)
    except JSONLError as e:
        raise EmbedInputError(str(e)) from None


def _blank(raw: bytes) -> bool:
    """Whether a raw JSONL line is blank as `jsonl.read_jsonl` sees it (only whitespace), decoding only lines that
    do not start like a JSON value."""
    stripped = raw.strip()
    if not stripped or stripped[0] in _JSON_STARTS:
        return not stripped
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False  # an error when read


def _line_chunks(shard: Shard, text_field: str, chunk_size: int, start: int) -> Iterator[Chunk]:
    """Chunks of a .txt / .jsonl / .jsonl.gz shard: texts before `start` are counted, neither decoded nor parsed."""
    jsonl = shard.suffix != ".txt"
    index = 0
    texts: list[str] = []
    rows: list[dict] | None = [] if jsonl else None
    for lineno, raw in _raw_lines(shard.path):
        if jsonl and _blank(raw):
            continue
        index += 1
        if index <= start:
            continue
        try:
            line = decode_line(shard.path, lineno, raw)
            if rows is None:
                texts.append(line)
            else:
                row = _jsonl_row(parse_line(shard.path, lineno, line), text_field, where(shard.path, lineno))
                texts.append(row[text_field])
                rows.append(row)
        except JSONLError as e:
            raise EmbedInputError(str(e)) from None
        if len(texts) == chunk_size:
            yield Chunk(start=index - chunk_size, records=Records(texts=texts, rows=rows))
            texts, rows = [], ([] if jsonl else None)
    if texts:
        yield Chunk(start=index - len(texts), records=Records(texts=texts, rows=rows))


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise EmbedInputError(f"{path}: not a readable parquet file ({e})") from None


def _parquet_chunks(path: Path, text_field: str, chunk_size: int, start: int) -> Iterator[Chunk]:
    """Checks the file and its text column now (not at the first `next`), then yields the chunks."""
    file = _parquet_file(path)
    _check_text_column(path, file.schema_arrow, text_field)
    return _parquet_chunk_iter(path, file, text_field, chunk_size, start)


def _parquet_chunk_iter(
    path: Path, file: pq.ParquetFile, text_field: str, chunk_size: int, start: int
) -> Iterator[Chunk]:
    metadata = file.metadata
    first_group, skip = 0, start  # row groups wholly before `start` are not read
    while first_group < metadata.num_row_groups and skip >= metadata.row_group(first_group).num_rows:
        skip -= metadata.row_group(first_group).num_rows
        first_group += 1
    row_groups = list(range(first_group, metadata.num_row_groups))
    batches = (
        file.iter_batches(batch_size=min(chunk_size, _MAX_BATCH_ROWS), row_groups=row_groups) if row_groups else ()
    )
    pending: list[pa.RecordBatch] = []
    pending_rows, index = 0, start
    try:
        for batch in batches:
            if skip:
                cut = min(skip, batch.num_rows)
                batch, skip = batch.slice(cut), skip - cut
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= chunk_size:
                table = pa.Table.from_batches(pending, schema=file.schema_arrow)
                yield _parquet_chunk(path, table.slice(0, chunk_size), text_field, index)
                index += chunk_size
                rest = table.slice(chunk_size)
                pending, pending_rows = rest.to_batches(), rest.num_rows
    except (pa.ArrowException, OSError) as e:
        raise EmbedInputError(f"{path}: not a readable parquet file ({e})") from None
    if pending_rows:
        yield _parquet_chunk(path, pa.Table.from_batches(pending, schema=file.schema_arrow), text_field, index)


def _parquet_chunk(path: Path, table: pa.Table, text_field: str, start: int) -> Chunk:
    table = table.combine_chunks()
    return Chunk(start=start, records=Records(texts=_column_texts(path, table, text_field, start), table=table))
