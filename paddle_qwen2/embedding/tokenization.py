"""Tokenization for sentence embeddings, exactly as sentence-transformers does it with an HF fast tokenizer.

Each text is stripped (and lower-cased when the folder says `do_lower_case`), encoded by the `tokenizers` backend
with the tokenizer's own post-processor (an EOS it appends is counted by truncation and stays after it), truncated
to the max length on the tokenizer's `truncation_side`, and padded with the pad token on its `padding_side`
(`tokenizer_config.json`; HF's default is "right"). Token ids given by a client (`truncate_ids`) are truncated the
same way: the special tokens the post-processor puts around a text stay, the text's tokens are cut. No paddle
import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingTokenizer"]

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _content(token) -> str | None:
    """A token in tokenizer_config.json: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _backend(folder: Path):
    """The `tokenizers.Tokenizer` of a Qwen2 folder: tokenizer.json, else built from vocab.json + merges.txt."""
    from tokenizers import Tokenizer

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    from ..tokenizer import load_tokenizer  # builds the byte-level BPE from vocab.json + merges.txt

    return load_tokenizer(str(folder))._tokenizer


class EmbeddingTokenizer:
    """`tokenize(texts)` -> `(input_ids, attention_mask)` int64 `[batch, seq]`, padded to the longest text."""

    def __init__(self, folder: str | Path, max_length: int | None = None, do_lower_case: bool = False):
        folder = Path(folder)
        self.backend = _backend(folder)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self.padding_side = config.get("padding_side", "right")
        self.truncation_side = config.get("truncation_side", "right")
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self.pad_token_id = self._pad_id(config)
        special = [_content(config.get(key)) for key in _SPECIAL_KEYS]
        special += [_content(t) for t in config.get("additional_special_tokens") or []]
        ids = {self.backend.token_to_id(t) for t in special if t}
        self.special_ids = {i for i in ids if i is not None}
        self.backend.no_padding()
        if max_length is not None:
            self.backend.enable_truncation(max_length, strategy="longest_first", direction=self.truncation_side)
        else:
            self.backend.no_truncation()

    def _pad_id(self, config: dict) -> int:
        for token in (_content(config.get("pad_token")), _content(config.get("eos_token")), "<|endoftext|>"):
            if token and self.backend.token_to_id(token) is not None:
                return self.backend.token_to_id(token)
        return 0

    def prepare(self, text: str) -> str:
        text = str(text).strip()
        return text.lower() if self.do_lower_case else text

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated), unpadded."""
        return [e.ids for e in self.backend.encode_batch([self.prepare(t) for t in texts])]

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pad token id lists to `[batch, longest]` on the padding side; returns `(input_ids, attention_mask)`."""
        width = max((len(row) for row in ids), default=0)
        input_ids = np.full((len(ids), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            if not row:
                continue
            span = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            input_ids[i, span], mask[i, span] = row, 1
        return input_ids, mask

    def special_affixes(self) -> tuple[list[int], list[int]]:
        """(prefix, suffix): the token ids the post-processor puts before and after a text's tokens (gte-Qwen2's
        appends `<|endoftext|>`: `([], [eos_id])`)."""
        if not hasattr(self, "_affixes"):
            probe = "a"
            core = self.backend.encode(probe, add_special_tokens=False).ids
            full = self.backend.encode(probe).ids
            start = next((i for i in range(len(full) - len(core) + 1) if full[i : i + len(core)] == core), 0)
            self._affixes = (full[:start], full[start + len(core) :])
        return self._affixes

    def truncate_ids(self, ids: Sequence[int]) -> list[int]:
        """Pre-tokenized `ids` cut to `max_length` as a text's tokens are: when they start and end with the
        post-processor's special tokens (`special_affixes`), those stay and the tokens between them are cut on the
        `truncation_side`; otherwise the ids themselves are cut there."""
        ids = list(ids)
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        prefix, suffix = self.special_affixes()
        head, tail = len(prefix), len(suffix)
        if not (ids[:head] == prefix and (tail == 0 or ids[-tail:] == suffix) and head + tail < self.max_length):
            head = tail = 0
        body = ids[head : len(ids) - tail]
        keep = self.max_length - head - tail
        body = body[len(body) - keep :] if self.truncation_side == "left" else body[:keep]
        return ids[:head] + body + ids[len(ids) - tail :]

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the (stripped) prompt, not counting a special token the post-processor appends (as
        sentence-transformers counts it for `include_prompt=False` pooling)."""
        ids = self.encode_ids([prompt])[0]
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)
