"""Qwen2 tokenizers: byte-level BPE with Qwen2's pre-tokenizer regex and NFC, ChatML special tokens.

Two classes read the files a Qwen2 checkpoint ships (`vocab.json` + `merges.txt` and/or `tokenizer.json`, plus
`tokenizer_config.json` with its added tokens and chat template) and give the same ids as transformers'
`Qwen2TokenizerFast`:

- `Qwen2Tokenizer`: paddlenlp's Python BPE tokenizer, with added tokens kept exactly (paddlenlp strips the
  whitespace around special tokens that are not `AddedToken`s; HF does not), and an HF-style `apply_chat_template`.
- `Qwen2TokenizerFast`: the same on the `tokenizers` library (Rust); built from `tokenizer.json`, or from
  `vocab.json` + `merges.txt` when there is none. Gives offsets; the one to use for data preparation.

Padding uses `<|endoftext|>` (never id 0, which is an ordinary byte token in Qwen2's vocabulary).

`train_qwen2_bpe` / `save_qwen2_tokenizer` make a new tokenizer in Qwen2's format from a corpus (this is how
the bundled example model's tokenizer was made).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable
from typing import Any

from paddlenlp.transformers import PretrainedTokenizerFast
from paddlenlp.transformers.qwen2.tokenizer import Qwen2Tokenizer as _PaddleNLPQwen2Tokenizer
from paddlenlp.transformers.tokenizer_utils import Trie
from paddlenlp.transformers.tokenizer_utils_base import AddedToken, BatchEncoding

from .chat_template import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    Conversation,
    check_conversation,
    render_chat,
)

__all__ = [
    "QWEN2_PRETOKENIZE_REGEX",
    "ENDOFTEXT",
    "IM_START",
    "IM_END",
    "SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "Qwen2Tokenizer",
    "Qwen2TokenizerFast",
    "build_qwen2_backend",
    "train_qwen2_bpe",
    "save_qwen2_tokenizer",
    "load_tokenizer",
    "render_chat",
]

# Qwen2's pre-tokenizer: contractions, letter runs with one leading non-letter, single digits, punctuation runs,
# newline runs, and whitespace (trailing whitespace before a non-space stays with the next word).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class _Qwen2ChatMixin:
    """HF-compatible chat templating and Qwen2 special-token checks, shared by both tokenizers."""

    def _setup_qwen2(self, chat_template: str | None) -> None:
        # paddlenlp compiles `chat_template` into its own object; keep the source string for HF-style rendering.
        self.chat_template_str = chat_template if isinstance(chat_template, str) else None
        if self.pad_token is None:
            self.pad_token = ENDOFTEXT
        if self.convert_tokens_to_ids(str(self.pad_token)) == 0:
            raise ValueError(
                f"pad token {str(self.pad_token)!r} has id 0, an ordinary byte token in Qwen2's vocabulary; "
                f"use {ENDOFTEXT!r} (an added token after the BPE vocabulary)"
            )

    @property
    def default_chat_template(self) -> str:
        return CHATML_TEMPLATE

    def apply_chat_template(
        self,
        conversation: Conversation | list[Conversation],
        tools: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **template_kwargs,
    ):
        """Render a conversation with the tokenizer's chat template (ChatML if the files give none), as HF does.

        Returns the text (`tokenize=False`), the token ids `List[int]` (default), or a `BatchEncoding` with
        `input_ids` and `attention_mask` (`return_dict=True`). A list of conversations gives a list of results.
        Special tokens are not added again around the rendered text.
        """
        if conversation and isinstance(conversation, (list, tuple)) and isinstance(conversation[0], (list, tuple)):
            return [
                self.apply_chat_template(
                    c, tools, chat_template, add_generation_prompt, tokenize, return_dict, **template_kwargs
                )
                for c in conversation
            ]
        check_conversation(conversation)
        template = chat_template or self.chat_template_str or self.default_chat_template
        if tools is not None:
            template_kwargs["tools"] = tools
        text = render_chat(
            conversation, template, add_generation_prompt, special_tokens=self.special_tokens_map, **template_kwargs
        )
        if not tokenize:
            return text
        encoded = self(text, add_special_tokens=False, return_attention_mask=True)
        if return_dict:
            return BatchEncoding({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
        return list(encoded["input_ids"])


def _as_added_token(token: Any) -> Any:
    if isinstance(token, str):
        return AddedToken(token, lstrip=False, rstrip=False, single_word=False, normalized=False, special=True)
    return token


def _special_tokens_as_added(kwargs: dict) -> None:
    """Turn the string entries of `kwargs["additional_special_tokens"]` into whole-match `AddedToken`s."""
    if kwargs.get("additional_special_tokens") is not None:
        kwargs["additional_special_tokens"] = [_as_added_token(t) for t in kwargs["additional_special_tokens"]]


class Qwen2Tokenizer(_Qwen2ChatMixin, _PaddleNLPQwen2Tokenizer):
    """Qwen2 byte-level BPE tokenizer from `vocab.json` + `merges.txt` (paddlenlp's Python implementation).

    Added tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ... from `tokenizer_config.json`) are matched
    before BPE and keep their neighbouring whitespace unless the token says `lstrip` / `rstrip`, as in HF.
    """

    def __init__(
        self,
        vocab_file: str,
        merges_file: str,
        errors: str = "replace",
        unk_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str = ENDOFTEXT,
        pad_token: str = ENDOFTEXT,
        chat_template: str | None = None,
        **kwargs,
    ):
        _special_tokens_as_added(kwargs)
        # Qwen2's files leave unk_token null; every byte is in the vocabulary, so it is never produced.
        super().__init__(
            vocab_file,
            merges_file,
            errors=errors,
            unk_token=unk_token if unk_token is not None else eos_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            chat_template=chat_template,
            **kwargs,
        )
        self._setup_qwen2(chat_template)

    def _added_tokens_trie(self, added: dict[str, AddedToken]) -> Trie:
        """A trie of every added token, special or not (paddlenlp's own trie holds only the special ones)."""
        key = tuple(sorted(added))
        if getattr(self, "_qwen2_trie_key", None) != key:
            trie = Trie()
            for content in key:
                trie.add(content)
            self._qwen2_trie, self._qwen2_trie_key = trie, key
        return self._qwen2_trie

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Split on added tokens (honouring their lstrip/rstrip flags only), NFC-normalise, BPE the rest."""
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        text = unicodedata.normalize("NFC", text)
        if split_special_tokens:
            return self._tokenize(text)
        added = {token.content: token for token in self.added_tokens_decoder.values()}
        pieces = self._added_tokens_trie(added).split(text)
        for i, piece in enumerate(pieces):
            token = added.get(piece)
            if token is None:
                continue
            if token.rstrip and i + 1 < len(pieces):
                pieces[i + 1] = pieces[i + 1].lstrip()
            if token.lstrip and i > 0:
                pieces[i - 1] = pieces[i - 1].rstrip()
        tokens: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            tokens.extend([piece] if piece in added else self._tokenize(piece))
        return tokens


def build_qwen2_backend(vocab: dict[str, int], merges: list[tuple], special_tokens: Iterable[str] = ()):
    """A `tokenizers.Tokenizer` with Qwen2's pipeline: NFC, regex split, byte-level BPE, byte-level decoding."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    _set_qwen2_pipeline(backend, normalizers, pre_tokenizers, decoders, processors, Regex)
    added = [AddedToken(t, special=True, normalized=False) for t in special_tokens]
    if added:
        backend.add_special_tokens([_to_rust_added_token(t) for t in added])
    return backend


def _set_qwen2_pipeline(backend, normalizers, pre_tokenizers, decoders, processors, Regex) -> None:
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def _to_rust_added_token(token: AddedToken):
    import tokenizers

    return tokenizers.AddedToken(
        token.content,
        single_word=token.single_word,
        lstrip=token.lstrip,
        rstrip=token.rstrip,
        normalized=token.normalized,
        special=token.special,
    )


def _read_vocab_and_merges(vocab_file: str, merges_file: str):
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if (i == 0 and line.startswith("#version:")) or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_file}:{i + 1}: expected two space-separated symbols, got {line!r}")
            merges.append((parts[0], parts[1]))
    return vocab, merges


class Qwen2TokenizerFast(_Qwen2ChatMixin, PretrainedTokenizerFast):
    """Qwen2 tokenizer on the `tokenizers` library: from `tokenizer.json`, or `vocab.json` + `merges.txt`.

    Same ids as `Qwen2Tokenizer` and as HF's `Qwen2TokenizerFast`; adds `return_offsets_mapping`.
    """

    resource_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_file": "tokenizer.json"}
    slow_tokenizer_class = Qwen2Tokenizer
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        tokenizer_file: str | None = None,
        unk_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str = ENDOFTEXT,
        pad_token: str = ENDOFTEXT,
        chat_template: str | None = None,
        **kwargs,
    ):
        _special_tokens_as_added(kwargs)
        eos_token, pad_token = _as_added_token(eos_token), _as_added_token(pad_token)
        if tokenizer_file is None or not os.path.isfile(tokenizer_file):
            if not (vocab_file and merges_file and os.path.isfile(vocab_file) and os.path.isfile(merges_file)):
                raise ValueError(
                    "Qwen2TokenizerFast needs tokenizer.json, or vocab.json and merges.txt; got "
                    f"tokenizer_file={tokenizer_file!r}, vocab_file={vocab_file!r}, merges_file={merges_file!r}"
                )
            kwargs["tokenizer_object"] = build_qwen2_backend(*_read_vocab_and_merges(vocab_file, merges_file))
            tokenizer_file = None
        super().__init__(
            vocab_file=vocab_file,
            merges_file=merges_file,
            tokenizer_file=tokenizer_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            chat_template=chat_template,
            **kwargs,
        )
        self.vocab_file, self.merges_file = vocab_file, merges_file
        self._setup_qwen2(chat_template)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        """Write `vocab.json` and `merges.txt` from the BPE model (HF's format)."""
        return tuple(self._tokenizer.model.save(save_directory, filename_prefix))


def train_qwen2_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = False):
    """Train a byte-level BPE `tokenizers.Tokenizer` in Qwen2's format on `texts`.

    The byte alphabet (256 tokens) comes first, then the learned merges, then `<|endoftext|>`, `<|im_start|>`,
    `<|im_end|>` as special added tokens at the end of the vocabulary (as in Qwen2). `vocab_size` counts the BPE
    vocabulary without the 3 special tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    _set_qwen2_pipeline(backend, normalizers, pre_tokenizers, decoders, processors, Regex)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_special_tokens([_to_rust_added_token(_as_added_token(t)) for t in SPECIAL_TOKENS])
    return backend


def save_qwen2_tokenizer(
    backend, save_directory: str, model_max_length: int = 32768, chat_template: str = CHATML_TEMPLATE
) -> None:
    """Write a `tokenizers.Tokenizer` as Qwen2's files: tokenizer.json, vocab.json, merges.txt and a
    tokenizer_config.json with the added tokens, `pad_token` = `eos_token` = `<|endoftext|>` and the chat template."""
    os.makedirs(save_directory, exist_ok=True)
    backend.save(os.path.join(save_directory, "tokenizer.json"))
    backend.model.save(save_directory)
    added = backend.get_added_tokens_decoder()
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(idx): {
                "content": tok.content,
                "lstrip": tok.lstrip,
                "normalized": tok.normalized,
                "rstrip": tok.rstrip,
                "single_word": tok.single_word,
                "special": tok.special,
            }
            for idx, tok in sorted(added.items())
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(save_directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")


def load_tokenizer(path: str, fast: bool = True) -> Qwen2Tokenizer | Qwen2TokenizerFast:
    """`Qwen2TokenizerFast` (default) or `Qwen2Tokenizer` from a checkpoint folder; a clear error if it has no
    tokenizer files."""
    path = str(path)
    has_json = os.path.isfile(os.path.join(path, "tokenizer.json"))
    has_bpe = all(os.path.isfile(os.path.join(path, f)) for f in ("vocab.json", "merges.txt"))
    if not (has_json or has_bpe):
        raise FileNotFoundError(f"{path}: no tokenizer files (expected tokenizer.json, or vocab.json + merges.txt)")
    if fast:
        return Qwen2TokenizerFast.from_pretrained(path)
    if not has_bpe:
        raise FileNotFoundError(f"{path}: Qwen2Tokenizer (slow) needs vocab.json and merges.txt")
    return Qwen2Tokenizer.from_pretrained(path)
