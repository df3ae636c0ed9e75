"""paddle_qwen2.training.embedding and `finetune --task embedding`: the retrieval reader's errors, the InfoNCE loss
against numpy, a trained folder that sentence-transformers loads and embeds as this package does (full and LoRA),
`--resume` on the same loss curve, and the bundled config improving held-out retrieval."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import CAPITALS, QUERY_PROMPT, kill_at_first_checkpoint, write_qwen2_with_tokenizer
from paddle_qwen2.cli import finetune
from paddle_qwen2.cli.finetune import parse_args
from paddle_qwen2.conversion import convert_checkpoint
from paddle_qwen2.embedding.model import EmbeddingModel
from paddle_qwen2.jsonl import JSONLError
from paddle_qwen2.training.callbacks import read_log
from paddle_qwen2.training.data import DataError
from paddle_qwen2.training.embedding import (
    ContrastiveEmbeddingModel,
    EmbeddingCollator,
    RetrievalDataset,
    info_nce_loss,
    load_retrieval_examples,
    matryoshka_dims,
    prompt_length,
)

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # normalised embeddings
TEXTS = ["What is the capital of Peru?", "The capital of Peru is Lima.", "猫喜欢吃鱼。", "a"]


def _rows() -> list[dict]:
    """A query per country; two phrasings of the positive for every other one; 2-3 hard negatives each."""
    rows = []
    for i, (country, city) in enumerate(CAPITALS):
        pos = f"The capital of {country} is {city}."
        negs = [f"The capital of {c} is {k}." for c, k in CAPITALS[i + 1 : i + 1 + 2 + i % 2]] or ["Water is wet."]
        row = {"query": f"What is the capital of {country}?", "pos": pos, "neg": negs}
        if i % 2:
            row["pos"] = [pos, f"{city} is the capital city of {country}."]
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    evaluation = [
        {"query": f"Which city is the capital of {c}?", "pos": f"The capital of {c} is {k}."} for c, k in CAPITALS
    ]
    return {"train": _write_jsonl(root / "train.jsonl", _rows()), "eval": _write_jsonl(root / "eval.jsonl", evaluation)}


def embedding_args(model, data, out, *extra) -> list[str]:
    return [
        "--task",
        "embedding",
        "--model",
        str(model),
        "--train-file",
        str(data["train"]),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--num-negatives",
        "1",
        "--learning-rate",
        "1e-3",
        "--logging-steps",
        "1",
        "--quiet",
        *extra,
    ]


def np_info_nce(q: np.ndarray, p: np.ndarray, labels, temperature: float, dims=None) -> float:
    """InfoNCE by hand: for each dimension, cosine scores / temperature, log-softmax over the passages at the label;
    averaged over the dimensions."""
    losses = []
    for d in dims or [q.shape[1]]:
        qd = q[:, :d] / np.linalg.norm(q[:, :d], axis=1, keepdims=True)
        pd = p[:, :d] / np.linalg.norm(p[:, :d], axis=1, keepdims=True)
        scores = (qd @ pd.T / temperature).astype(np.float64)
        top = scores.max(axis=1)
        log_z = top + np.log(np.exp(scores - top[:, None]).sum(axis=1))
        losses.append(np.mean(log_z - scores[np.arange(len(q)), labels]))
    return float(np.mean(losses))


def st_encode(folder, texts, **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, show_progress_bar=False, **kwargs)


def assert_embeddings(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and np.isfinite(actual).all()
    diff = np.abs(actual - expected).max()
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"


# ------------------------------------------------------------------------------------------------------ reading
GOOD = {"query": "q", "pos": "p", "neg": ["n"]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
        ('["q", "p"]', r"expected a JSON object with 'query', 'pos' and 'neg', got list"),
        ('{"pos": "p"}', r"'query' must be a non-empty string \(missing\)"),
        ('{"query": 3, "pos": "p"}', r"'query' must be a non-empty string \(got 3\)"),
        ('{"query": "  ", "pos": "p"}', r"'query' must be a non-empty string"),
        ('{"query": "q", "neg": "n"}', r"missing 'pos'"),
        ('{"query": "q", "pos": []}', r"'pos' is an empty list"),
        ('{"query": "q", "pos": 7}', r"'pos' must be a string or a list of strings, got 7"),
        ('{"query": "q", "pos": ["p", null]}', r"'pos' must be a string or a list of strings"),
        ('{"query": "q", "pos": "p", "pos_passage": "p"}', r"give 'pos' or 'pos_passage', not both"),
        ('{"query": "q", "pos": "p", "neg": {"a": 1}}', r"'neg' must be a string or a list of strings"),
        ('{"query": "q", "pos": "p", "neg_passage": ["n", ""]}', r"'neg_passage' holds an empty passage"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises((DataError, JSONLError), match=rf"train\.jsonl:3: {message}"):
        load_retrieval_examples(path)


def test_reader_accepts_both_spellings_and_single_strings(tmp_path):
    rows = [
        {"query": "q1", "pos": "p1", "neg": "n1"},
        {"query": "q2", "pos_passage": ["p2", "p2b"], "neg_passage": ["n2", "n3"]},
        {"query": "q3", "pos": ["p3"]},
    ]
    examples = load_retrieval_examples(_write_jsonl(tmp_path / "t.jsonl", rows))
    assert [(e.query, e.positives, e.negatives) for e in examples] == [
        ("q1", ["p1"], ["n1"]),
        ("q2", ["p2", "p2b"], ["n2", "n3"]),
        ("q3", ["p3"], []),
    ]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no examples"):
        load_retrieval_examples(tmp_path / "empty.jsonl")
    with pytest.raises(JSONLError, match="missing.jsonl: no such file"):
        load_retrieval_examples(tmp_path / "missing.jsonl")


def test_bad_files_stop_before_training(st_folder, data, tmp_path):
    bad = _write_jsonl(tmp_path / "eval.jsonl", [{"query": "q", "pos": "p"}, {"query": "q"}])
    with pytest.raises(DataError, match=r"eval\.jsonl:2: missing key 'pos'"):
        finetune.main(embedding_args(st_folder("last"), data, tmp_path / "out", "--eval-file", str(bad)))
    assert not (tmp_path / "out" / "checkpoints").exists()
    train = tmp_path / "train.jsonl"
    train.write_text('{"query": "q", "pos": "p"}\n{"query": "q", "pos": ["p", 3]}\n')
    args = embedding_args(st_folder("last"), data, tmp_path / "out", "--max-steps", "1")
    args[args.index("--train-file") + 1] = str(train)
    result = subprocess.run([sys.executable, "-m", "paddle_qwen2", "finetune", *args], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {train}:2: 'pos' must be a string or a list of strings, got ['p', 3]"
    )


# ------------------------------------------------------------------------------------------ dataset and collator
@pytest.mark.paddle26
def test_dataset_tokenizes_as_encode_and_collator_shares_passages(st_folder, data):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    examples = load_retrieval_examples(data["train"])
    dataset = RetrievalDataset(examples, model.tokenizer, QUERY_PROMPT, "Passage: ", num_negatives=2, seed=0)
    item = dataset[3]
    assert item["query"] == model.tokenizer.encode_ids([QUERY_PROMPT + examples[3].query])[0]
    assert len(item["passages"]) == 3
    positive_key, positive_ids = item["passages"][0]
    assert positive_ids == model.tokenizer.encode_ids(["Passage: " + dataset_text(dataset, positive_key)])[0]
    assert dataset_text(dataset, positive_key) in examples[3].positives
    # rows 0 and 2 share a passage ("The capital of Italy is Rome." is 0's negative and 2's positive)
    features = [dataset[0], dataset[2]]
    batch = EmbeddingCollator(model.tokenizer)(features)
    keys = list(dict.fromkeys(k for f in features for k, _ in f["passages"]))
    assert batch["passage_ids"].shape[0] == len(keys) < sum(len(f["passages"]) for f in features)
    assert batch["labels"].tolist() == [keys.index(f["passages"][0][0]) for f in features]
    assert batch["query_ids"].shape == batch["query_mask"].shape and batch["query_mask"][:, -1].all()  # left padding


def dataset_text(dataset: RetrievalDataset, key: int) -> str:
    return next(text for text, k in dataset.key.items() if k == key)


def test_choices_depend_on_seed_epoch_and_index_only(st_folder, data):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    examples = load_retrieval_examples(data["train"])

    def picks(epoch: int, seed: int = 0) -> list[list[int]]:
        dataset = RetrievalDataset(examples, model.tokenizer, None, None, num_negatives=1, seed=seed)
        dataset.set_epoch(epoch)
        return [[k for k, _ in dataset[i]["passages"]] for i in reversed(range(len(dataset)))]

    assert picks(0) == picks(0) and picks(0) != picks(1) and picks(0) != picks(0, seed=1)
    for epoch in range(4):
        assert all(len(p) == 2 for p in picks(epoch))


# ---------------------------------------------------------------------------------------------------------- loss
@pytest.mark.paddle26
@pytest.mark.parametrize("matryoshka", [[], [8, 4]])
def test_info_nce_against_numpy(matryoshka):
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(4, 16)).astype("float32"), rng.normal(size=(7, 16)).astype("float32")
    labels = np.array([2, 0, 5, 2])
    dims = matryoshka_dims(matryoshka, 16)
    assert dims == [16, *matryoshka]
    loss = info_nce_loss(paddle.to_tensor(q), paddle.to_tensor(p), paddle.to_tensor(labels), 0.05, dims)
    assert loss.shape == [] or loss.shape == [1]
    np.testing.assert_allclose(float(loss), np_info_nce(q, p, labels, 0.05, dims), rtol=1e-5, atol=1e-5)
    if matryoshka:  # the truncated dimensions count
        assert abs(float(loss) - np_info_nce(q, p, labels, 0.05)) > 1e-3


def test_matryoshka_dims_must_fit_the_embedding():
    assert matryoshka_dims([16, 8, 8], 16) == [16, 8]
    with pytest.raises(ValueError, match=r"--matryoshka-dims \[32\]: each must be in \[1, 16\]"):
        matryoshka_dims([32, 8], 16)


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", ["last", "mean_dense"])
@pytest.mark.parametrize("matryoshka", [[], [16]])
def test_training_loss_uses_the_embeddings_encode_gives(st_folder, data, kind, matryoshka):
    """The wrapper's loss on a collated batch equals numpy InfoNCE over `encode`'s embeddings of the same texts
    (prompts prepended; mean_dense pools without the prompt tokens, through a Dense; last pads on the left). Max
    length 64: the query prompt alone is 35 tokens."""
    model = EmbeddingModel.from_pretrained(st_folder(kind), max_length=64)
    examples = load_retrieval_examples(data["train"])[:6]
    passage_prompt = "Passage: "
    dataset = RetrievalDataset(examples, model.tokenizer, QUERY_PROMPT, passage_prompt, num_negatives=2, seed=0)
    features = [dataset[i] for i in range(len(dataset))]
    batch = EmbeddingCollator(model.tokenizer)(features)
    dims = matryoshka_dims(matryoshka, model.dimension)
    q_len, p_len = prompt_length(model, QUERY_PROMPT), prompt_length(model, passage_prompt)
    assert (q_len > 0) == (kind == "mean_dense")
    wrapper = ContrastiveEmbeddingModel(model, 0.02, dims, q_len, p_len)
    with paddle.no_grad():
        loss = float(wrapper(**batch))
    keys = list(dict.fromkeys(k for f in features for k, _ in f["passages"]))
    q = model.encode([e.query for e in examples], prompt=QUERY_PROMPT)
    p = model.encode([dataset_text(dataset, k) for k in keys], prompt=passage_prompt)
    expected = np_info_nce(q, p, batch["labels"].numpy(), 0.02, dims)
    assert loss == pytest.approx(expected, abs=1e-3, rel=1e-4)


# -------------------------------------------------------------------------------------------------------- options
def test_embedding_options(tmp_path):
    required = ["--task", "embedding", "--model", "m", "--train-file", "t.jsonl"]
    args = parse_args([*required, "--matryoshka-dims", "32,16", "--lora"])
    assert (args.temperature, args.num_negatives, args.matryoshka_dims) == (0.02, 3, [32, 16])
    assert args.max_length is None and args.pooling is None and args.query_prompt is None and args.lora
    assert parse_args(required).matryoshka_dims == []
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"task": "embedding", "matryoshka_dims": [64, 8], "bidirectional": True}))
    args = parse_args(["--config", str(config), "--model", "m", "--train-file", "t.jsonl"])
    assert args.matryoshka_dims == [64, 8] and args.bidirectional
    assert parse_args(["--model", "m", "--train-file", "t.jsonl"]).max_length == 256  # other tasks: unchanged


def test_embedding_config_parses():
    args = parse_args(["--config", str(REPO / "configs" / "finetune_embedding.json")])
    assert args.task == "embedding" and (REPO / args.train_file).is_file() and (REPO / args.eval_file).is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--packing"], "--packing does not apply to --task embedding"),
        (["--export-hf"], "--export-hf does not apply to --task embedding"),
        (["--eval-steps", "5"], "--eval-steps does not apply to --task embedding"),
        (["--temperature", "0"], "--temperature must be positive"),
        (["--num-negatives", "-1"], "--num-negatives must be >= 0"),
        (["--matryoshka-dims", "32,x"], "expected comma-separated integers"),
        (["--matryoshka-dims", "0"], "dimensions must be positive"),
        (["--pooling", "median"], "invalid choice: 'median'"),
    ],
)
def test_bad_embedding_options(extra, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--task", "embedding", "--model", "m", "--train-file", "t.jsonl", *extra])
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.paddle26
@pytest.mark.parametrize("lora", [False, True])
def test_trained_folder_embeds_alike_in_sentence_transformers(st_folder, data, tmp_path, lora):
    """last: EOS-appending tokenizer, left padding, prompts "query" / "document" and max length 24 from the folder."""
    base = st_folder("last")
    extra = ["--max-steps", "4", "--eval-file", str(data["eval"])]
    extra += ["--lora", "--lora-rank", "4", "--lora-targets", "q_proj", "v_proj", "--learning-rate", "1e-2"] * lora
    summary = finetune.main(embedding_args(base, data, tmp_path / "out", *extra))
    final = Path(summary["final"])
    assert summary["steps"] == 4 and set(summary["eval_before"]) == {"recall@1", "recall@10", "mrr@10"}
    texts = TEXTS + [t.upper() for t in TEXTS]
    ours = EmbeddingModel.from_pretrained(final)
    assert ours.max_seq_length == 24 and ours.prompts == {"query": QUERY_PROMPT, "document": ""}
    for prompt in ({}, {"prompt_name": "query"}):
        assert_embeddings(st_encode(final, texts, **prompt), ours.encode(texts, **prompt))
    assert not np.allclose(ours.encode(texts), EmbeddingModel.from_pretrained(base).encode(texts), atol=1e-4)
    if lora:
        assert (tmp_path / "out" / "lora-adapter").is_dir()
        cfg = ours.transformer.config
        per_layer = 4 * (cfg.hidden_size + cfg.num_attention_heads * cfg.attention_head_dim)
        per_layer += 4 * (cfg.hidden_size + cfg.num_key_value_heads * cfg.attention_head_dim)
        assert summary["parameters"]["trainable"] == cfg.num_hidden_layers * per_layer
        changed = _changed_tensors(base, final)
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


def _changed_tensors(a: Path, b: Path) -> list[str]:
    from safetensors.numpy import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(x) == sorted(y)
    return [k for k in x if not np.array_equal(x[k], y[k])]


@pytest.mark.paddle26
def test_plain_paddle_folder_mean_pooling_bidirectional(data, tmp_path):
    """A plain Qwen2 folder in the Paddle layout: --pooling mean, --bidirectional, prompts from the options; the
    result is a sentence-transformers folder with `is_causal: false` that reloads with the same embeddings."""
    hf = write_qwen2_with_tokenizer(tmp_path / "hf", eos=False, padding_side="right")
    plain = tmp_path / "paddle"
    convert_checkpoint(hf, plain, to_paddle=True, progress=False)
    extra = ["--max-steps", "3", "--pooling", "mean", "--bidirectional", "--query-prompt", "Q: ", "--max-length", "32"]
    out = tmp_path / "out"
    summary = finetune.main(embedding_args(plain, data, out, *extra, "--eval-file", str(data["eval"])))
    final = Path(summary["final"])
    assert json.loads((final / "config.json").read_text())["is_causal"] is False
    pooling = json.loads((final / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_lasttoken"]
    assert [m["type"].rsplit(".", 1)[1] for m in json.loads((final / "modules.json").read_text())] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    model = EmbeddingModel.from_pretrained(final)
    assert model.transformer.config.is_causal is False and model.max_seq_length == 32
    assert model.prompts == {"query": "Q: ", "document": ""}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["eval_after"] == summary["eval_after"]
    np.testing.assert_allclose(np.linalg.norm(model.encode(TEXTS), axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.paddle26
@pytest.mark.parametrize("lora", [False, True])
def test_resume_after_kill_continues_the_same_loss_curve(st_folder, data, tmp_path, lora):
    """12 rows, batch 4: 3 steps an epoch, so the kill (at the first checkpoint, step 5) falls in the middle of the
    second epoch, and the resumed run crosses many epochs (new data order, positives and negatives each)."""
    steps = 60
    common = ["--max-steps", str(steps), "--save-steps", "5", "--save-total-limit", "3"]
    common += ["--lora", "--lora-rank", "4", "--learning-rate", "1e-2"] * lora
    model = st_folder("mean_dense")
    reference = tmp_path / "uninterrupted"
    finetune.main(embedding_args(model, data, reference, *common))
    ref_log = read_log(reference / "train_log.jsonl")
    assert sorted(ref_log) == list(range(1, steps + 1))

    killed = tmp_path / "killed"
    checkpoint = kill_at_first_checkpoint(embedding_args(model, data, killed, *common), killed)
    k = int(checkpoint.name.split("-")[1])
    assert k < steps, "the kill came after training finished"

    summary = finetune.main(embedding_args(model, data, killed, *common, "--resume"))
    assert summary["steps"] == steps
    log = read_log(killed / "train_log.jsonl")
    for step in range(k + 1, steps + 1):
        assert log[step]["loss"] == pytest.approx(ref_log[step]["loss"], abs=1e-5, rel=1e-5), step
        assert log[step]["learning_rate"] == pytest.approx(ref_log[step]["learning_rate"])
    assert log[k + 1]["loss"] != pytest.approx(ref_log[1]["loss"], abs=1e-3)  # it did not start over
    assert_embeddings(
        EmbeddingModel.from_pretrained(summary["final"]).encode(TEXTS),
        EmbeddingModel.from_pretrained(reference / "final").encode(TEXTS),
    )


# ---------------------------------------------------------------------------------------------- bundled config
@pytest.mark.slow
def test_bundled_config_improves_held_out_retrieval(tmp_path):
    """configs/finetune_embedding.json (examples/model, examples/data/retrieval_*.jsonl) on CPU."""
    summary = finetune.main(
        [
            "--config",
            str(REPO / "configs" / "finetune_embedding.json"),
            "--output-dir",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["recall@1"] >= before["recall@1"] + 0.3, (before, after)
    assert after["mrr@10"] >= before["mrr@10"] + 0.3, (before, after)
