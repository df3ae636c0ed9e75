"""paddle_qwen2.training.data: ChatML rendering, label masking, packing, collators and bad-input errors."""

import json

import numpy as np
import paddle
import pytest

from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.jsonl import JSONLError
from paddle_qwen2.tokenizer import load_tokenizer, save_qwen2_tokenizer, train_qwen2_bpe
from paddle_qwen2.training.data import (
    IGNORE_INDEX,
    DataCollatorForClassification,
    DataCollatorForSFT,
    DataError,
    DataStats,
    build_classification_dataset,
    build_sft_dataset,
    load_chats,
    load_classification,
    pack_examples,
    tokenize_chat,
)

CORPUS = [
    "Hello there! How are you today? I am fine, thank you. See you tomorrow.",
    "The capital of France is Paris. 法国的首都是巴黎。猫喜欢吃鱼。",
    "What is two plus two? Two plus two is four. 1 + 2 = 3.",
] * 30

CHAT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you tomorrow."},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    save_qwen2_tokenizer(train_qwen2_bpe(CORPUS, vocab_size=400), str(folder))
    return load_tokenizer(str(folder))


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))
    return path


def test_labels_cover_exactly_the_answers(tok):
    example = tokenize_chat(tok, CHAT)
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False)
    learned = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in learned)
    # two contiguous spans: each answer and the <|im_end|> that closes it, nothing else
    spans, start = [], learned[0]
    for prev, cur in zip(learned, learned[1:] + [None]):
        if cur != prev + 1:
            spans.append(tok.decode(ids[start : prev + 1]))
            start = cur
    assert spans == ["Hello!<|im_end|>", "See you tomorrow.<|im_end|>"]
    n_answer = len(tok("Hello!")["input_ids"]) + len(tok("See you tomorrow.")["input_ids"]) + 2
    assert len(learned) == n_answer
    # the prompt is tokenized exactly as generation sees it
    prompt = tok.apply_chat_template(CHAT[:1], add_generation_prompt=True)
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_prompt_response_records_are_chatml(tok, tmp_path):
    path = write_jsonl(
        tmp_path / "pr.jsonl",
        [
            {"prompt": "Hi there", "response": "Hello!"},
            {"messages": CHAT[:2]},
            {"prompt": "Hi there", "response": "Hello!", "system": "Be brief."},
        ],
    )
    chats = load_chats(path)
    assert chats[0] == chats[1] == CHAT[:2]
    assert chats[2][0] == {"role": "system", "content": "Be brief."}
    dataset, stats = build_sft_dataset(tok, path, max_length=128)
    assert stats.examples == 3 and dataset[0] == dataset[1]
    assert tok.decode(dataset[2]["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


@pytest.mark.paddle26
def test_collator_pads_with_pad_id_and_masks_labels(tok):
    features = [tokenize_chat(tok, CHAT[:2]), tokenize_chat(tok, CHAT)]
    batch = DataCollatorForSFT(tok.pad_token_id)(features)
    ids, labels, mask = (batch[k].numpy() for k in ("input_ids", "labels", "attention_mask"))
    n0 = len(features[0]["input_ids"])
    assert ids.shape == labels.shape == mask.shape == (2, len(features[1]["input_ids"]))
    assert tok.pad_token_id != 0
    assert (ids[0, n0:] == tok.pad_token_id).all() and (labels[0, n0:] == IGNORE_INDEX).all()
    assert (mask[0, n0:] == 0).all() and (mask[0, :n0] == 1).all() and (mask[1] == 1).all()
    assert labels[0, :n0].tolist() == features[0]["labels"]
    padded = DataCollatorForSFT(tok.pad_token_id, pad_to_multiple_of=64)(features)
    assert padded["input_ids"].shape[1] % 64 == 0


# (lines of bad.jsonl, the error type, the message after "bad.jsonl:")
BAD_SFT_FILES = [
    (
        [{"messages": CHAT[:2]}, "", '{"messages": [oops]}'],
        JSONLError,
        r"3: not valid JSON \(Expecting value at column 15\)",
    ),
    (
        [{"messages": CHAT[:2]}, {"question": "x"}],
        DataError,
        r"2: expected a 'messages' list or 'prompt' and 'response'",
    ),
    ([{"messages": [{"role": "user", "content": 3}]}], DataError, r"1: messages\[0\] must be an object"),
    (["[1, 2]"], DataError, r"1: expected a JSON object, got list"),
    ([{"prompt": 3, "response": "b"}], DataError, r"1: 'prompt' must be a string"),
]


@pytest.mark.parametrize("lines, error, message", BAD_SFT_FILES)
def test_malformed_line_names_its_number(tok, tmp_path, lines, error, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(error, match=r"bad\.jsonl:" + message):
        load_chats(path)
    with pytest.raises(error, match=r"bad\.jsonl:" + message):
        build_sft_dataset(tok, path, max_length=64)


def test_chat_without_assistant_is_skipped_and_counted(tok, tmp_path):
    path = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {"messages": CHAT[:2]},
            {"messages": [{"role": "user", "content": "Anyone?"}]},
            {"messages": CHAT},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
        ],
    )
    with pytest.warns(UserWarning, match=r"chats\.jsonl:[24]: chat has no assistant turn, skipped") as record:
        dataset, stats = build_sft_dataset(tok, path, max_length=128)
    assert [str(w.message).split(": ")[0].rsplit(":", 1)[1] for w in record] == ["2", "4"]
    assert (stats.lines, stats.examples, stats.skipped_no_assistant, stats.skipped_lines) == (4, 2, 2, [2, 4])
    assert len(dataset) == 2


def test_truncation(tok, tmp_path):
    short = tokenize_chat(tok, CHAT[:2])
    long_answer = {"messages": [CHAT[0], {"role": "assistant", "content": "Hello there! " * 40}]}
    long_prompt = {"messages": [{"role": "user", "content": "Hi there " * 40}, CHAT[1]]}
    path = write_jsonl(tmp_path / "long.jsonl", [long_answer, {"messages": CHAT[:2]}, long_prompt])
    limit = len(short["input_ids"])
    dataset, stats = build_sft_dataset(tok, path, max_length=limit)
    assert (stats.truncated, stats.skipped_truncated, stats.examples) == (2, 1, 2)
    assert [len(e["input_ids"]) for e in dataset] == [limit, limit]
    assert dataset[1] == short and any(label != IGNORE_INDEX for label in dataset[0]["labels"])
    with pytest.raises(DataError, match="no usable examples"):
        build_sft_dataset(tok, write_jsonl(tmp_path / "only_long.jsonl", [long_prompt]), max_length=limit)


@pytest.mark.paddle26
def test_packing_rows_and_block_mask(tok):
    examples = [tokenize_chat(tok, CHAT[:2]), tokenize_chat(tok, CHAT), tokenize_chat(tok, CHAT[:2])]
    lengths = [len(e["input_ids"]) for e in examples]
    rows = pack_examples(examples, max_length=lengths[0] + lengths[1])
    assert [len(r["input_ids"]) for r in rows] == [lengths[0] + lengths[1], lengths[2]]
    assert rows[0]["position_ids"] == list(range(lengths[0])) + list(range(lengths[1]))
    assert rows[0]["segment_ids"] == [1] * lengths[0] + [2] * lengths[1]
    assert rows[0]["labels"] == examples[0]["labels"] + examples[1]["labels"]
    batch = DataCollatorForSFT(tok.pad_token_id)(rows)
    mask = batch["attention_mask"].numpy()
    assert mask.shape == (2, 1, rows[0]["input_ids"].__len__(), rows[0]["input_ids"].__len__()) and mask.dtype == bool
    a = lengths[0]
    assert mask[0, 0, a, a] and not mask[0, 0, a, a - 1] and mask[0, 0, a - 1, 0] and not mask[0, 0, 0, 1]
    assert not mask[1, 0, :, lengths[2] :].any()  # padding is never attended
    assert batch["position_ids"].numpy()[0, a] == 0


@pytest.mark.paddle26
def test_packed_example_gives_the_same_logits_as_alone(tok):
    """The block-diagonal mask and restarted positions make a packed example see exactly what it sees alone."""
    config = Qwen2Config(
        vocab_size=len(tok) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    paddle.seed(3)
    model = Qwen2ForCausalLM(config)
    model.eval()
    examples = [tokenize_chat(tok, CHAT[:2]), tokenize_chat(tok, CHAT)]
    packed = DataCollatorForSFT(tok.pad_token_id)(pack_examples(examples, max_length=1000))
    labels = packed.pop("labels")
    logits = model(**packed, return_dict=True).logits.numpy()[0]
    a = len(examples[0]["input_ids"])
    for offset, example in ((0, examples[0]), (a, examples[1])):
        alone = model(paddle.to_tensor([example["input_ids"]]), return_dict=True).logits.numpy()[0]
        np.testing.assert_allclose(logits[offset : offset + len(alone)], alone, atol=1e-4, rtol=0)
    # and the packed loss is the mean over both examples' answer tokens
    loss = model(**packed, labels=labels, return_dict=True).loss.item()
    per_token = []
    for example in examples:
        out = model(paddle.to_tensor([example["input_ids"]]), return_dict=True).logits.numpy()[0]
        lab = np.array(example["labels"])
        for t in range(1, len(lab)):
            if lab[t] != IGNORE_INDEX:
                row = out[t - 1] - out[t - 1].max()
                per_token.append(np.log(np.exp(row).sum()) - row[lab[t]])
    assert loss == pytest.approx(float(np.mean(per_token)), abs=1e-4)


@pytest.mark.paddle26
def test_classification_csv_and_jsonl(tok, tmp_path):
    csv_path = tmp_path / "cls.csv"
    csv_path.write_text('text,label\nI love it,1\n"bad, very bad",0\nso-so,2\n')
    assert load_classification(csv_path, num_labels=3) == [("I love it", 1), ("bad, very bad", 0), ("so-so", 2)]
    jsonl = write_jsonl(tmp_path / "cls.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    dataset = build_classification_dataset(tok, jsonl, num_labels=2, max_length=8)
    batch = DataCollatorForClassification(tok.pad_token_id)([dataset[0], dataset[1]])
    assert batch["labels"].numpy().tolist() == [1, 0] and batch["labels"].dtype == paddle.int64
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_classification_bad_labels(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("text,label\nfine,1\nout of range,3\n")
    with pytest.raises(DataError, match=r"cls\.csv:3: label 3 is outside \[0, num_labels=3\)"):
        load_classification(path, num_labels=3)
    path.write_text("text,label\nfine,positive\n")
    with pytest.raises(DataError, match=r"cls\.csv:2: label 'positive' is not an integer"):
        load_classification(path, num_labels=2)
    path.write_text("sentence,label\nfine,1\n")
    with pytest.raises(DataError, match=r"cls\.csv:1: header lacks column\(s\) \['text'\]"):
        load_classification(path, num_labels=2)
    jsonl = write_jsonl(tmp_path / "cls.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": -1}])
    with pytest.raises(DataError, match=r"cls\.jsonl:2: label -1 is outside"):
        load_classification(jsonl, num_labels=2)
    jsonl = write_jsonl(tmp_path / "cls2.jsonl", [{"text": "a", "label": 1.5}])
    with pytest.raises(DataError, match=r"cls2\.jsonl:1: label 1\.5 is not an integer"):
        load_classification(jsonl, num_labels=2)


def test_stats_defaults():
    assert DataStats().skipped_lines == []
