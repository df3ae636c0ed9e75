"""Fine-tuning data: JSON-lines chats / prompt-response pairs for causal-LM SFT, text-label files for
sequence classification, and the collators that batch them for paddlenlp's `Trainer`.

SFT examples are rendered with the tokenizer's chat template (ChatML). Every assistant answer (its content and
the `<|im_end|>` that closes it) is a label; everything else (system and user turns, the `<|im_start|>assistant\\n`
headers, the newline after `<|im_end|>`) and all padding get label -100. The prompt and answer pieces are tokenized
separately, so the prompt tokens are exactly those `apply_chat_template(..., add_generation_prompt=True)` gives at
generation time.

Accepted SFT lines (one JSON object per line, blank lines ignored):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"prompt": "...", "response": "...", "system": "..." (optional)}
A chat without an assistant turn is skipped with a warning and counted in `DataStats.skipped_no_assistant`.

Classification files: `.csv` with a header (columns `text`, `label`) or `.jsonl` with those keys; labels are
integers in `[0, num_labels)`.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from ..errors import PaddleQwen2Error
from ..jsonl import read_jsonl
from ..tokenizer import IM_END, render_chat

__all__ = [
    "IGNORE_INDEX",
    "DataCollatorForClassification",
    "DataCollatorForSFT",
    "DataError",
    "DataStats",
    "ListDataset",
    "build_classification_dataset",
    "build_sft_dataset",
    "load_chats",
    "load_classification",
    "load_texts",
    "pack_examples",
    "read_jsonl",
    "record_to_messages",
    "tokenize_chat",
]

IGNORE_INDEX = -100


class DataError(PaddleQwen2Error):
    """Bad input data; the message names the file and line."""


@dataclass
class DataStats:
    """What loading a file did: lines read, examples kept, and why others were dropped."""

    lines: int = 0
    examples: int = 0
    skipped_no_assistant: int = 0
    skipped_truncated: int = 0
    truncated: int = 0
    packed_rows: int = 0
    skipped_lines: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------


def record_to_messages(record: Any, where: str) -> list[dict[str, str]]:
    """One JSONL record -> a list of {'role', 'content'} messages. `where` ("file:line") prefixes errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] must be an object with string 'role' and 'content', got {m!r}")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "prompt" in record and "response" in record:
        for key in ("prompt", "response", "system"):
            if key in record and not isinstance(record[key], str):
                raise DataError(f"{where}: '{key}' must be a string")
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        turns = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        return messages + turns
    raise DataError(f"{where}: expected a 'messages' list or 'prompt' and 'response' keys, got keys {sorted(record)}")


def load_chats(path, stats: DataStats | None = None) -> list[list[dict[str, str]]]:
    """All conversations of a JSONL file. Chats with no assistant turn are skipped with a warning and counted."""
    stats = stats if stats is not None else DataStats()
    chats = []
    for lineno, record in read_jsonl(path):
        stats.lines += 1
        messages = record_to_messages(record, f"{path}:{lineno}")
        if not any(m["role"] == "assistant" for m in messages):
            stats.skipped_no_assistant += 1
            stats.skipped_lines.append(lineno)
            warnings.warn(f"{path}:{lineno}: chat has no assistant turn, skipped", stacklevel=2)
            continue
        chats.append(messages)
    return chats


def load_texts(path) -> list[str]:
    """Plain-text documents for pretraining: a `.jsonl` of {"text": ...} lines, or a text file whose documents
    are separated by blank lines."""
    path = Path(path)
    if path.suffix == ".jsonl":
        texts = []
        for lineno, record in read_jsonl(path):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{path}:{lineno}: expected an object with a string 'text'")
            texts.append(record["text"])
        return texts
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return [doc.strip() for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


# ------------------------------------------------------------------------------------------------------------------
# SFT tokenization
# ------------------------------------------------------------------------------------------------------------------


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return render_chat(
        messages,
        template=getattr(tokenizer, "chat_template_str", None),
        add_generation_prompt=add_generation_prompt,
        special_tokens=tokenizer.special_tokens_map,
    )


def _chat_segments(tokenizer, messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered chat into `(text, is_label)` pieces: each assistant answer up to and including its
    `<|im_end|>` is a label piece; the rest is prompt."""
    full = _render(tokenizer, messages, False)
    pieces, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not (through.startswith(prompt) and full.startswith(through) and len(prompt) >= cursor):
            raise ValueError(
                "the chat template does not render conversations as prefixes of each other; cannot mask labels"
            )
        answer = through[len(prompt) :]
        end = answer.rfind(IM_END)
        answer = answer[: end + len(IM_END)] if end >= 0 else answer
        pieces.append((full[cursor : len(prompt)], False))
        pieces.append((answer, True))
        cursor = len(prompt) + len(answer)
    pieces.append((full[cursor:], False))
    return [(text, is_label) for text, is_label in pieces if text]


def tokenize_chat(tokenizer, messages: Sequence[dict[str, str]]) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` for one conversation (no truncation); labels are -100 outside answers."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, is_label in _chat_segments(tokenizer, messages):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if is_label else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels}


def pack_examples(examples: Sequence[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedily concatenate consecutive examples into rows of at most `max_length` tokens.

    Each row gets `position_ids` restarting at 0 for every example and `segment_ids` (1, 2, ... per example) from
    which the collator builds a block-diagonal causal mask, so packed examples never attend to each other."""
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
    for example in examples:
        n = len(example["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
        segment = (current["segment_ids"][-1] + 1) if current["segment_ids"] else 1
        current["input_ids"] += example["input_ids"]
        current["labels"] += example["labels"]
        current["position_ids"] += list(range(n))
        current["segment_ids"] += [segment] * n
    if current["input_ids"]:
        rows.append(current)
    return rows


class ListDataset(paddle.io.Dataset):
    """A list of example dicts as a map-style dataset (what paddlenlp's `Trainer` iterates)."""

    def __init__(self, examples: list[dict[str, Any]]):
        super().__init__()
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def build_sft_dataset(
    tokenizer, path, max_length: int, packing: bool = False, stats: DataStats | None = None
) -> tuple[ListDataset, DataStats]:
    """Tokenize every chat of a JSONL file. Longer chats are cut to `max_length` tokens (counted in
    `stats.truncated`); one left with no label token is dropped (`stats.skipped_truncated`)."""
    stats = stats if stats is not None else DataStats()
    examples = []
    for messages in load_chats(path, stats):
        example = tokenize_chat(tokenizer, messages)
        if len(example["input_ids"]) > max_length:
            stats.truncated += 1
            example = {k: v[:max_length] for k, v in example.items()}
            if all(label == IGNORE_INDEX for label in example["labels"][1:]):
                stats.skipped_truncated += 1
                continue
        examples.append(example)
    stats.examples = len(examples)
    if not examples:
        raise DataError(
            f"{path}: no usable examples ({stats.lines} lines, {stats.skipped_no_assistant} without an assistant turn)"
        )
    if packing:
        examples = pack_examples(examples, max_length)
        stats.packed_rows = len(examples)
    return ListDataset(examples), stats


def _pad(rows: Sequence[Sequence[int]], value: int, length: int) -> np.ndarray:
    out = np.full([len(rows), length], value, dtype="int64")
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass
class DataCollatorForSFT:
    """Right-pads `input_ids` with `pad_token_id` and `labels` with -100.

    Plain rows give `attention_mask` `[batch, seq]` (1 = token). Packed rows (with `segment_ids`) give a boolean
    `attention_mask` `[batch, 1, seq, seq]` (causal within each example, True = attend) and `position_ids`
    `[batch, seq]`. `pad_to_multiple_of` rounds the padded length up."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, paddle.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": paddle.to_tensor(_pad([f["input_ids"] for f in features], self.pad_token_id, length)),
            "labels": paddle.to_tensor(_pad([f["labels"] for f in features], IGNORE_INDEX, length)),
        }
        if "segment_ids" in features[0]:
            segments = _pad([f["segment_ids"] for f in features], 0, length)
            same = segments[:, :, None] == segments[:, None, :]
            causal = np.tril(np.ones([length, length], dtype=bool))
            allowed = same & causal[None] & (segments[:, None, :] > 0)
            batch["attention_mask"] = paddle.to_tensor(allowed[:, None])
            batch["position_ids"] = paddle.to_tensor(_pad([f["position_ids"] for f in features], 0, length))
        else:
            batch["attention_mask"] = paddle.to_tensor(_pad([[1] * len(f["input_ids"]) for f in features], 0, length))
        return batch


# ------------------------------------------------------------------------------------------------------------------
# Sequence classification
# ------------------------------------------------------------------------------------------------------------------


def _parse_label(value: Any, num_labels: int, where: str) -> int:
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: label {value!r} is not an integer")
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise DataError(f"{where}: label {value!r} is not an integer")
        value = int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(f"{where}: label {value!r} is not an integer")
        value = int(value)
    if not isinstance(value, int):
        raise DataError(f"{where}: label {value!r} is not an integer")
    if not 0 <= value < num_labels:
        raise DataError(f"{where}: label {value} is outside [0, num_labels={num_labels})")
    return value


def load_classification(
    path, num_labels: int, text_key: str = "text", label_key: str = "label"
) -> list[tuple[str, int]]:
    """`(text, label)` pairs from a `.csv` (header row with `text_key`, `label_key`) or `.jsonl` file; every label
    must be an integer in `[0, num_labels)` (else `DataError` naming the line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    pairs = []
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {text_key, label_key} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {sorted(missing)} (has {reader.fieldnames})")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if row.get(text_key) is None or row.get(label_key) is None:
                    raise DataError(f"{where}: row has fewer columns than the header")
                pairs.append((row[text_key], _parse_label(row[label_key], num_labels, where)))
    else:
        for lineno, record in read_jsonl(path):
            where = f"{path}:{lineno}"
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str) or label_key not in record:
                raise DataError(f"{where}: expected an object with a string '{text_key}' and a '{label_key}'")
            pairs.append((record[text_key], _parse_label(record[label_key], num_labels, where)))
    if not pairs:
        raise DataError(f"{path}: no examples")
    return pairs


def build_classification_dataset(tokenizer, path, num_labels: int, max_length: int, **keys) -> ListDataset:
    """Tokenized `(text, label)` examples, each cut to `max_length` tokens."""
    examples = []
    for text, label in load_classification(path, num_labels, **keys):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        if not ids:
            ids = [tokenizer.pad_token_id]
        examples.append({"input_ids": ids, "labels": label})
    return ListDataset(examples)


@dataclass
class DataCollatorForClassification:
    """Right-pads `input_ids` (the model pools the last non-pad token); `labels` `[batch]` int64."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, paddle.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": paddle.to_tensor(_pad([f["input_ids"] for f in features], self.pad_token_id, length)),
            "attention_mask": paddle.to_tensor(_pad([[1] * len(f["input_ids"]) for f in features], 0, length)),
            "labels": paddle.to_tensor(np.array([f["labels"] for f in features], dtype="int64")),
        }
