"""Planning a conversion: map every source tensor to its output name, dtype and shape, and check every name and
shape against the config before anything is written."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checkpoint import Checkpoint
from .dtypes import FLOAT_CODES, _itemsize
from .errors import ConversionError
from .names import CONFIG_NAME, TRANSPOSE, ModelDims, conversion_rows, expected_hf_shape
from .tensors import TensorEntry


@dataclass
class _Item:
    """One output tensor: where it comes from and how it is transformed."""

    entry: TensorEntry
    name: str
    dtype: str
    shape: tuple[int, ...]
    transpose: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def unchanged(self) -> bool:
        """The output bytes are the file's bytes (copied file to file, never read into memory)."""
        return self.entry.is_plain and not self.transpose and self.dtype == self.entry.dtype


def _plan(
    checkpoint: Checkpoint,
    architecture: str,
    dims: ModelDims,
    to_paddle: bool,
    dtype: str | None,
    strict: bool = True,
    notes: list[str] | None = None,
) -> list[_Item]:
    """Output items in source file order. `strict`: a missing or unexpected tensor is an error (the CLI);
    otherwise unmapped tensors are skipped and missing ones left to the loader (from_pretrained)."""
    rows = conversion_rows(architecture, dims)
    src_index = 0 if to_paddle else 1
    by_source = {row[src_index]: row for row in rows}
    entries = checkpoint.entries
    where = checkpoint.folder
    ignored = [n for n in entries if n.endswith("rotary_emb.inv_freq")]
    if dims.tie_word_embeddings and "lm_head.weight" in entries and "lm_head.weight" not in by_source:
        ignored.append("lm_head.weight")  # some tied checkpoints keep a copy; both sides read the embedding
    if notes is not None and ignored:
        notes.append(f"skipped {len(ignored)} tensor(s) not stored on the other side: {', '.join(ignored[:3])}")
    missing = [name for name in by_source if name not in entries]
    unexpected = [name for name in entries if name not in by_source and name not in ignored]
    if strict and missing:
        raise ConversionError(
            f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing in all) for {architecture} with "
            f"{dims.num_hidden_layers} layers"
        )
    if not strict and unexpected and notes is not None:
        notes.append(f"{len(unexpected)} tensor(s) not used by {architecture}: {', '.join(unexpected[:3])}")
    if strict and unexpected:
        raise ConversionError(
            f"{where}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all) for {architecture} "
            f"with {dims.num_hidden_layers} layers (tie_word_embeddings={dims.tie_word_embeddings})"
        )
    items = []
    for name, entry in entries.items():
        row = by_source.get(name)
        if row is None:
            continue
        hf_name, pd_name, action = row
        transpose = action == TRANSPOSE
        hf_shape = expected_hf_shape(hf_name, dims)
        expected = hf_shape if to_paddle else (hf_shape[::-1] if transpose else hf_shape)
        if tuple(entry.shape) != tuple(expected):
            raise ConversionError(
                f"{entry.file}: tensor {name!r} has shape {list(entry.shape)}, expected {list(expected)} from "
                f"{CONFIG_NAME} ({checkpoint.layout} layout)"
            )
        if entry.dtype not in FLOAT_CODES:
            raise ConversionError(
                f"{entry.file}: tensor {name!r} has dtype {entry.dtype}, expected a floating-point dtype"
            )
        out_shape = (hf_shape[::-1] if transpose else hf_shape) if to_paddle else hf_shape
        items.append(_Item(entry, pd_name if to_paddle else hf_name, dtype or entry.dtype, tuple(out_shape), transpose))
    return items
