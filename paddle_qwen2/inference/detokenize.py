"""Streaming text for the inference engine: incremental detokenization and stop-string matching (no paddle).

`IncrementalDetokenizer` turns generated ids into text deltas that are always whole UTF-8 text. Byte-level BPE
(Qwen2) tokens can end in the middle of a multi-byte character, and decoding such a tail gives U+FFFD; the delta is
held back until the character is complete. As in vLLM / TGI, only a short window of recent ids is decoded per token
(`prefix_offset` .. end, compared with the text of `prefix_offset` .. `read_offset`), so the cost per token does not
grow with the sequence. The concatenated deltas plus `flush()` equal `tokenizer.decode(all_ids)`.

`StopMatcher` cuts a stream of text deltas at the first stop string (the stop string itself is not emitted, as in
the OpenAI API) and holds back a tail that could still become the start of one.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

__all__ = ["IncrementalDetokenizer", "StopMatcher", "REPLACEMENT_CHAR"]

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Decodes one sequence's generated ids token by token into whole-character text deltas."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._chunks: list[str] = []
        # ids[prefix_offset:read_offset] decode to `_prefix_text`, already emitted; ids[read_offset:] are pending.
        # Both offsets sit on character boundaries of the full decode (where a window decode ended cleanly).
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""

    @property
    def token_ids(self) -> list[int]:
        """All ids pushed so far."""
        return self._ids

    @property
    def text(self) -> str:
        """All text emitted so far (by `push` and `flush`)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text ("" while a multi-byte character is still incomplete)."""
        self._ids.append(int(token_id))
        window = self._decode(self._ids[self._prefix_offset :])
        if window.endswith(REPLACEMENT_CHAR):
            return ""
        return self._emit(window)

    def flush(self) -> str:
        """Emit whatever is held back, including a genuine trailing U+FFFD. Call once, when generation ends."""
        if self._read_offset == len(self._ids):
            return ""
        window = self._decode(self._ids[self._prefix_offset :])
        return self._emit(window)

    def _emit(self, window: str) -> str:
        """Emit the part of `window` after the prefix text and slide the window forward."""
        delta = window[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        if delta:
            self._chunks.append(delta)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


class StopMatcher:
    """Finds stop strings in a stream of text deltas and returns the text that is safe to emit."""

    def __init__(self, stop: Sequence[str]) -> None:
        if isinstance(stop, str):
            stop = [stop]
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self._max_hold = max((len(s) for s in self.stop), default=1) - 1
        self._held = ""
        self.done = False  # a stop string was found
        self.matched: str | None = None  # the stop string that was found

    def push(self, delta: str) -> tuple[str, bool]:
        """Add a text delta; return (text to emit now, whether a stop string was found).

        Once a stop string is found the returned text ends right before it and later pushes return ("", True).
        """
        if self.done:
            return "", True
        text = self._held + delta
        cut, matched = self._earliest_stop(text)
        if matched is not None:
            self.done, self.matched, self._held = True, matched, ""
            return text[:cut], True
        hold = self._partial_stop_suffix(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """The held-back text, when generation ends without a stop string ("" after a stop)."""
        held, self._held = self._held, ""
        return held

    def _earliest_stop(self, text: str) -> tuple[int, str | None]:
        """(start, stop string) of the earliest stop occurrence in `text` (longest on a tie), or (-1, None)."""
        best, matched = -1, None
        for s in self.stop:
            at = text.find(s)
            if at >= 0 and (matched is None or at < best or (at == best and len(s) > len(matched))):
                best, matched = at, s
        return best, matched

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for n in range(min(self._max_hold, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
