"""Tokenizer parity with transformers' Qwen2TokenizerFast on a tiny tokenizer trained here in Qwen2's format.

The tokenizer is built with the `tokenizers` library directly (not with paddle_qwen2's helpers): byte-level BPE,
Qwen2's pre-tokenizer regex, NFC, the three ChatML special tokens appended after the BPE vocabulary, plus one
non-special added token as Qwen2.5 has (`<tool_call>`). It is saved as Qwen2's files and read by HF and by ours.
"""

import json
import shutil
import unicodedata
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from paddle_qwen2.tokenizer import (  # noqa: E402
    CHATML_TEMPLATE,
    Qwen2Tokenizer,
    Qwen2TokenizerFast,
    load_tokenizer,
    save_qwen2_tokenizer,
    train_qwen2_bpe,
)

QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The chat template shipped with Qwen2-Instruct.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. She's reading; they'll come, we've seen it, I'm here.",
    "Tokenizers split text into pieces. Byte-level BPE never needs an unknown token.",
    "我们今天学习分词。中文的句子没有空格，模型需要学会切分。北京是中国的首都。",
    "def add(a, b):\n    return a + b  # 3.14159 and 2024-06-01\n\nfor i in range(10):\n    print(i)\n",
    "Numbers: 12345, 67890, 3.5e-3, 0x1F; emoji 😀👍🏽 and accents café naïve.",
] * 20

TEXTS = {
    "english": "Hello world! The fox's den isn't far; they'll arrive at 10:30.",
    "chinese": "你好，世界！我们今天学习分词，北京是中国的首都。",
    "code_numbers": "def f(x):\n    return x**2 + 3.14159 * 12345  # TODO(v2): 0x1F\n\tprint(f(7))\n",
    "whitespace_emoji": "  leading spaces\t\ttabs\n\n\nnewlines   trailing   😀👍🏽🇨🇳 e\u0301 cafe\u0301 ﬁ",
    "specials_inline": "<|im_start|>user\n hi there <|im_end|>\n\n<|endoftext|> after <tool_call> x </tool_call>",
    "mixed": "Qwen2 在 2024 年发布，支持 32768 tokens 的上下文 (context)！🎉",
}

CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "用中文说：谢谢！"},
]


def _write_qwen2_tokenizer(folder: Path) -> Path:
    """Train byte-level BPE with Qwen2's pipeline and write vocab.json, merges.txt, tokenizer.json and a
    tokenizer_config.json shaped like Qwen2's (added tokens, pad = eos = <|endoftext|>, chat template)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    backend.model.save(str(folder))
    added = backend.get_added_tokens_decoder()
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": t.content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": t.special,
            }
            for i, t in sorted(added.items())
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return _write_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2-tok"))


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    return transformers.Qwen2TokenizerFast.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module", params=["fast", "slow"])
def ours(request, tok_dir):
    cls = Qwen2TokenizerFast if request.param == "fast" else Qwen2Tokenizer
    return cls.from_pretrained(str(tok_dir))


def test_tokenizer_really_is_qwen2_shaped(tok_dir, hf_tok):
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    assert len(vocab) > 400  # merges were learned
    endoftext = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    assert endoftext == len(vocab) and hf_tok.convert_tokens_to_ids("<|im_end|>") == len(vocab) + 2
    assert len(hf_tok("你好，世界")["input_ids"]) < len("你好，世界".encode())  # not byte-per-token


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_ids_match_hf(ours, hf_tok, name):
    text = TEXTS[name]
    expected = hf_tok(text)["input_ids"]
    assert ours(text)["input_ids"] == expected
    assert ours.encode(text, add_special_tokens=False)["input_ids"] == expected


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_decode_round_trips(ours, hf_tok, name):
    text = TEXTS[name]
    ids = hf_tok(text)["input_ids"]
    assert ours.decode(ids) == hf_tok.decode(ids) == unicodedata.normalize("NFC", text)
    assert ours.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)


def test_nfc_applied(ours, hf_tok):
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    assert ours(decomposed)["input_ids"] == ours(composed)["input_ids"] == hf_tok(composed)["input_ids"]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_hf(ours, hf_tok, add_generation_prompt):
    for chat in (CHAT, CHAT[1:3], CHAT[1:2]):
        text = hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt) == text
        expected = hf_tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt) == expected
        encoded = ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, return_dict=True)
        assert encoded["input_ids"] == expected and encoded["attention_mask"] == [1] * len(expected)
    assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in ours.apply_chat_template(
        CHAT[1:2], tokenize=False
    )


def test_default_chat_template_is_chatml(tok_dir, tmp_path, hf_tok):
    """Files without a chat template still render ChatML (the template Qwen2 ships)."""
    bare = tmp_path / "bare"
    shutil.copytree(tok_dir, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Qwen2TokenizerFast.from_pretrained(str(bare))
    assert ours.apply_chat_template(CHAT, tokenize=False) == hf_tok.apply_chat_template(CHAT, tokenize=False)
    assert CHATML_TEMPLATE


@pytest.mark.paddle26
def test_special_tokens_and_padding(ours, hf_tok):
    endoftext = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    assert ours.pad_token == ours.eos_token == "<|endoftext|>"
    assert ours.pad_token_id == ours.eos_token_id == endoftext != 0
    for token in ("<|im_start|>", "<|im_end|>"):
        assert ours.convert_tokens_to_ids(token) == hf_tok.convert_tokens_to_ids(token)
    batch = ours(["hi", "hello world, 你好"], padding=True)
    expected = hf_tok(["hi", "hello world, 你好"], padding=True)
    assert batch["input_ids"] == expected["input_ids"] and batch["attention_mask"] == expected["attention_mask"]
    assert batch["input_ids"][0][-1] == endoftext and batch["attention_mask"][0][-1] == 0


def test_fast_from_vocab_and_merges_only(tok_dir, tmp_path, hf_tok):
    only_bpe = tmp_path / "bpe-only"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, only_bpe / name)
    ours = Qwen2TokenizerFast.from_pretrained(str(only_bpe))
    for text in TEXTS.values():
        assert ours(text)["input_ids"] == hf_tok(text)["input_ids"]


def test_saved_files_reload_in_hf(ours, hf_tok, tmp_path):
    ours.save_pretrained(str(tmp_path))
    again = transformers.Qwen2TokenizerFast.from_pretrained(str(tmp_path))
    for text in TEXTS.values():
        assert again(text)["input_ids"] == hf_tok(text)["input_ids"]
    assert again.pad_token_id == hf_tok.pad_token_id
    assert again.apply_chat_template(CHAT, tokenize=False) == hf_tok.apply_chat_template(CHAT, tokenize=False)


def test_package_trainer_writes_files_hf_reads(tmp_path):
    backend = train_qwen2_bpe(TRAINING_TEXT, vocab_size=500)
    save_qwen2_tokenizer(backend, str(tmp_path))
    hf = transformers.Qwen2TokenizerFast.from_pretrained(str(tmp_path))
    ours = load_tokenizer(str(tmp_path))
    slow = load_tokenizer(str(tmp_path), fast=False)
    assert hf.convert_tokens_to_ids("<|endoftext|>") == backend.get_vocab_size() - 3 == ours.pad_token_id
    for text in TEXTS.values():
        assert ours(text)["input_ids"] == slow(text)["input_ids"] == hf(text)["input_ids"]
    assert ours.apply_chat_template(CHAT) == hf.apply_chat_template(CHAT)


def test_bad_tokenizer_files(tok_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="id 0"):
        Qwen2TokenizerFast.from_pretrained(str(tok_dir), pad_token="!")
    with pytest.raises(ValueError, match="non-empty list"):
        Qwen2TokenizerFast.from_pretrained(str(tok_dir)).apply_chat_template([])
    with pytest.raises(ValueError, match="message 1"):
        Qwen2TokenizerFast.from_pretrained(str(tok_dir)).apply_chat_template([CHAT[0], {"role": "user"}])
