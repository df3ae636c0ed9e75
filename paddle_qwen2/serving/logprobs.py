"""Token log-probabilities in OpenAI's two response shapes.

    tokens = TokenStrings(llm.tokenizer)
    tokens.chat(logprobs)                   # {"content": [{token, logprob, bytes, top_logprobs: [...]}]}
    offsets = tokens.completion(logprobs, start=0)   # {tokens, token_logprobs, top_logprobs, text_offset}
    echoed = tokens.prompt(prompt_ids, prompt_logprobs)   # the same of an echoed prompt (first entry null)

`logprobs` is a list of `inference.TokenLogprob`. A token's string is its text decoded alone (special tokens
shown); a byte-level BPE piece that is not valid UTF-8 alone decodes with U+FFFD, and its `bytes` are still the
piece's raw bytes (read back through the byte-level alphabet), as vLLM reports them. `text_offset` counts the
characters of the token strings before each token, from `start`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

__all__ = ["TokenStrings"]


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet read backwards: the printable character standing for each byte -> the byte.
    Printable Latin-1 bytes stand for themselves; the others take the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class TokenStrings:
    """Token ids -> (text, bytes), cached, for one tokenizer (`inference.ChatTokenizer`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token: int) -> tuple[str, list[int]]:
        """The token's text decoded alone and its raw bytes (a list of ints, as OpenAI's `bytes`)."""
        if token not in self._cache:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            self._cache[token] = (text, list(self._raw_bytes(token, text)))
        return self._cache[token]

    def _raw_bytes(self, token: int, text: str) -> bytes:
        piece = getattr(self.tokenizer, "backend", None)
        piece = piece.id_to_token(token) if piece is not None else None
        alphabet = _byte_alphabet()
        if "\ufffd" in text and piece and all(c in alphabet for c in piece):
            return bytes(alphabet[c] for c in piece)
        return text.encode("utf-8")

    def _entry(self, token: int, logprob: float) -> dict:
        text, raw = self.get(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    def chat(self, logprobs: Sequence) -> dict:
        """A chat choice's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
        content = [
            {**self._entry(lp.token, lp.logprob), "top_logprobs": [self._entry(t, v) for t, v in lp.top]}
            for lp in logprobs
        ]
        return {"content": content}

    def prompt(self, prompt_ids: Sequence[int], logprobs: Sequence) -> dict:
        """The echoed prompt's part of a completion's `logprobs` (`text_offset` from 0): `logprobs` has one entry per
        prompt token, None for the first (its `token_logprobs` and `top_logprobs` entries are null, as OpenAI's)."""
        first = self.get(int(prompt_ids[0]))[0]
        head = {"tokens": [first], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}
        return self.completion(logprobs[1:], len(first), head)

    def completion(self, logprobs: Sequence, start: int = 0, before: dict | None = None) -> dict:
        """A completion choice's `logprobs`; `text_offset` from `start` (the characters already sent)."""
        tokens, offsets = [], []
        for lp in logprobs:
            offsets.append(start)
            tokens.append(self.get(lp.token)[0])
            start += len(tokens[-1])
        out = {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{self.get(t)[0]: v for t, v in lp.top} for lp in logprobs],
            "text_offset": offsets,
        }
        return out if before is None else {key: before[key] + out[key] for key in out}
