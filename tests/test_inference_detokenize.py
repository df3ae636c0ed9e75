"""paddle_qwen2.inference.detokenize: incremental detokenization (against `Tokenizer.decode`) and stop strings."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from paddle_qwen2.inference.detokenize import IncrementalDetokenizer, StopMatcher

TOKENIZER_FILE = Path(__file__).parents[1] / "examples" / "model" / "tokenizer.json"
SPECIAL_IDS = (4000, 4001, 4002)  # <|endoftext|>, <|im_start|>, <|im_end|>

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line one\nline two\n\n\ttabbed\r\nwindows line\n",
    "中文测试：你好，世界。这是一个句子。",
    "emoji 😀👍🏽 family 👩\u200d👩\u200d👧 flag 🇫🇷 done",
    "naïve café, São Paulo, Ελληνικά, Привет, e\u0301 decomposed",
    "mixed 中英 text with 数字 123 and 😀 at the end 😀",
    "<|im_start|>user\n你好 😀<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|><|endoftext|>",
    "a real replacement char \ufffd in the middle",
    "ends with a real replacement char \ufffd",
    "🙂",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(TOKENIZER_FILE))
    assert [tok.id_to_token(i) for i in SPECIAL_IDS] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return tok


class CountingTokenizer:
    """Wraps a Tokenizer and records the length of every id window decoded."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.windows: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.windows.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _stream(tokenizer, ids: list[int], skip: bool) -> tuple[list[str], str]:
    """Push `ids` one by one, checking the invariants after each step; return (deltas, final flush)."""
    full = tokenizer.decode(ids, skip_special_tokens=skip)
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    deltas = []
    for i, token_id in enumerate(ids):
        deltas.append(detok.push(token_id))
        so_far = "".join(deltas)
        # never text that the full decode does not have at that point (in particular no premature U+FFFD) ...
        assert full.startswith(so_far), (ids[: i + 1], so_far, full)
        # ... and never ahead of what the ids so far decode to
        assert tokenizer.decode(ids[: i + 1], skip_special_tokens=skip).startswith(so_far)
        assert detok.text == so_far and detok.token_ids == ids[: i + 1]
    tail = detok.flush()
    assert "".join(deltas) + tail == full == detok.text
    assert detok.flush() == ""
    return deltas, tail


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_texts_stream_to_full_decode(tokenizer, text, skip):
    ids = tokenizer.encode(text).ids
    deltas, tail = _stream(tokenizer, ids, skip)
    assert all("\ufffd" not in d or "\ufffd" in text for d in deltas)
    if not text.endswith("\ufffd"):
        assert tail == ""  # whole characters were all emitted by push
    else:
        assert tail.endswith("\ufffd")  # a genuine trailing U+FFFD waits for flush
    if not skip:
        assert "".join(deltas) + tail == unicodedata.normalize("NFC", text)  # the tokenizer normalizes to NFC


def test_multibyte_characters_are_held_back(tokenizer):
    ids = tokenizer.encode("中😀").ids
    assert len(ids) > 2  # split into partial-character byte tokens
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids]
    assert [d for d in deltas if d] == ["中", "😀"]
    assert deltas[-1] == "😀" and detok.flush() == ""


def test_special_tokens_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("hi").ids + [4002] + tokenizer.encode("\n").ids + [4000]
    skipped = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    kept = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    assert "".join(skipped.push(i) for i in ids) + skipped.flush() == "hi\n"
    assert "".join(kept.push(i) for i in ids) + kept.flush() == "hi<|im_end|>\n<|endoftext|>"


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_random_ids_over_whole_vocab(tokenizer, seed, skip):
    rng = np.random.default_rng(seed)
    vocab = tokenizer.get_vocab_size()
    for _ in range(40):
        n = int(rng.integers(1, 60))
        if seed % 2:  # mostly single-byte tokens: many split and invalid UTF-8 sequences, some specials
            pool = np.concatenate([np.arange(256), np.array(SPECIAL_IDS)])
            ids = rng.choice(pool, size=n).tolist()
        else:
            ids = rng.integers(0, vocab, size=n).tolist()
        _stream(tokenizer, ids, skip)


def test_window_stays_short(tokenizer):
    """O(1) per token: only a few recent ids are decoded, however long the sequence."""
    text = "长文本 with emoji 😀👍🏽 and accents café\n" * 60
    ids = tokenizer.encode(text).ids
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)
    out = "".join(detok.push(i) for i in ids) + detok.flush()
    assert out == tokenizer.decode(ids)
    assert len(ids) > 1000
    assert max(counting.windows) <= 8  # e.g. a 4-byte character in 4 byte tokens after another one


STOP_CASES = [
    # (stop strings, deltas, emitted text in total (pushes + flush), stop found)
    (["</s>"], ["Hello </", "s> more"], "Hello ", True),
    (["</s>"], ["Hello <", "/", "s", ">", " more"], "Hello ", True),
    (["world", "lo"], ["Hello world"], "Hel", True),  # earliest occurrence wins
    (["lo w", "Hello"], ["Hel", "lo world"], "", True),
    (["\n"], ["\nfoo"], "", True),  # stop at the very start
    (["STOP"], ["a", "b S", "T", "x"], "ab STx", False),  # no stop: a false start is emitted later
    (["STOP"], ["abc ST", "O"], "abc STO", False),  # held-back text comes out of flush
    (["aab"], ["a", "a", "a", "b", "c"], "a", True),  # overlapping false start
    (["。", "！"], ["你好", "，世界！", "再见。"], "你好，世界", True),
    (["😀"], ["ok 😀 more"], "ok ", True),
    ([], ["any", " text ", "passes"], "any text passes", False),
    (["END"], [], "", False),
    (["END"], ["", "E", "", "ND", "after"], "", True),
]


@pytest.mark.parametrize("stops,deltas,expected,found", STOP_CASES)
def test_stop_matcher(stops, deltas, expected, found):
    matcher = StopMatcher(stops)
    emitted, hit = [], False
    for delta in deltas:
        text, hit = matcher.push(delta)
        emitted.append(text)
        if hit:
            break
    if not hit:
        emitted.append(matcher.flush())
    out = "".join(emitted)
    assert (out, hit) == (expected, found)
    assert not any(s in out for s in stops)
    if hit:
        assert matcher.done and matcher.matched in stops
        assert matcher.push("more") == ("", True) and matcher.flush() == ""


def test_stop_matcher_holds_back_only_possible_starts():
    matcher = StopMatcher(["###", "<|user|>"])
    assert matcher.push("abc #") == ("abc ", False)
    assert matcher.push("# <|us") == ("## ", False)
    assert matcher.push("er|x") == ("<|user|x", False)
    assert matcher.flush() == ""


def test_stop_matcher_without_stops_passes_through():
    matcher = StopMatcher([])
    assert matcher.push("a#") == ("a#", False)
    assert matcher.push("") == ("", False)
    assert matcher.flush() == ""


def test_stop_matcher_rejects_empty_stop():
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher(["ok", ""])


def test_detokenizer_and_stop_matcher_together(tokenizer):
    text = "答案是：42。\n\nUser: next question"
    ids = tokenizer.encode(text).ids
    detok, matcher = IncrementalDetokenizer(tokenizer), StopMatcher(["\n\nUser:"])
    out = []
    for token_id in ids:
        piece, hit = matcher.push(detok.push(token_id))
        out.append(piece)
        if hit:
            break
    assert hit and "".join(out) == "答案是：42。"
