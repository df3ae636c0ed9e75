"""EmbeddingModel against sentence-transformers 5.1.2 run live on folders it saved (see conftest.ST_KINDS), and
against HF's Qwen2Model where sentence-transformers cannot be the reference (bidirectional attention)."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import EMBED_TEXTS, write_qwen2_with_tokenizer
from paddle_qwen2.embedding import EmbeddingError
from paddle_qwen2.embedding.model import EmbeddingModel

st = pytest.importorskip("sentence_transformers")
TOL = 1e-5  # normalised embeddings


def st_encode(folder, texts=EMBED_TEXTS, **kwargs) -> np.ndarray:
    model = st.SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, batch_size=4, show_progress_bar=False, **kwargs)


def assert_embeddings(actual: np.ndarray, expected: np.ndarray, tol: float = TOL) -> None:
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.isfinite(actual).all()
    diff = np.abs(actual - expected).max()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", ["last", "mean_dense", "last-57", "mean_dense-57"])
@pytest.mark.parametrize("prompt", [{}, {"prompt_name": "query"}, {"prompt": "Represent this: "}])
def test_encode_equals_sentence_transformers(st_folder, kind, prompt):
    """last: EOS-appending tokenizer, left padding, last-token pooling; mean_dense: mean pooling without the prompt's
    tokens, Dense (tanh), Normalize; "-57": the same folder in the 5.7 format. Truncation at 24 tokens, an empty
    text and whitespace-only texts are in EMBED_TEXTS; batch size 4 mixes lengths."""
    expected = st_encode(st_folder(kind.split("-")[0]), **prompt)
    model = EmbeddingModel.from_pretrained(st_folder(kind))
    assert model.max_seq_length == 24
    actual = model.encode(EMBED_TEXTS, batch_size=4, **prompt)
    assert_embeddings(actual, expected)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-6)


def test_single_string_and_batch_size_do_not_change_results(st_folder):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    batched = model.encode(EMBED_TEXTS, batch_size=3)
    one_by_one = np.stack([model.encode(t) for t in EMBED_TEXTS])
    assert one_by_one.shape == batched.shape
    assert_embeddings(one_by_one, batched)


def test_truncate_dim_renormalises(st_folder):
    model = EmbeddingModel.from_pretrained(st_folder("mean_dense"))
    full = st_encode(st_folder("mean_dense"))
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert_embeddings(model.encode(EMBED_TEXTS, truncate_dim=8), expected)


def test_normalize_embeddings_false_skips_the_normalize_module(st_folder):
    model = EmbeddingModel.from_pretrained(st_folder("mean_dense"))
    raw = model.encode(EMBED_TEXTS, normalize_embeddings=False)
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    assert_embeddings(raw / norms[:, None], st_encode(st_folder("mean_dense")))


def _hf_reference(folder, texts, pooling: str, causal: bool) -> np.ndarray:
    """HF Qwen2Model (eager) on the HF tokenizer's batch, an additive 4D mask (bidirectional: padding only),
    then last-token or mean pooling and L2 normalisation in torch."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.Qwen2Model.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = tokenizer([t.strip() for t in texts], padding=True, truncation=True, max_length=24, return_tensors="pt")
    mask = batch["attention_mask"]
    seq = mask.shape[1]
    allowed = mask[:, None, None, :].bool().expand(-1, 1, seq, seq)
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=additive, position_ids=positions).last_hidden_state
    if pooling == "last":
        last = (torch.arange(seq) * mask).argmax(-1)
        pooled = hidden[torch.arange(len(texts)), last]
    else:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.paddle26
def test_bidirectional_attention_from_config(st_folder, tmp_path):
    """`"is_causal": false` in config.json (gte-Qwen2) turns on bidirectional attention: equal to HF's Qwen2Model
    given the padding-only 4D mask, and different from the causal embeddings."""
    folder = shutil.copytree(st_folder("last"), tmp_path / "bidirectional")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "is_causal": False}))
    texts = [t for t in EMBED_TEXTS if t.strip()]
    model = EmbeddingModel.from_pretrained(folder)
    assert model.transformer.config.is_causal is False
    actual = model.encode(texts, batch_size=4)
    assert_embeddings(actual, _hf_reference(folder, texts, "last", causal=False))
    causal = EmbeddingModel.from_pretrained(folder, is_causal=True).encode(texts, batch_size=4)
    assert_embeddings(causal, _hf_reference(folder, texts, "last", causal=True))
    assert np.abs(actual - causal).max() > 1e-2


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_plain_qwen2_folder(tmp_path, pooling):
    folder = write_qwen2_with_tokenizer(tmp_path / "plain", eos=False, padding_side="right")
    texts = [t for t in EMBED_TEXTS if t.strip()]
    model = EmbeddingModel.from_pretrained(folder, pooling=pooling, normalize=True, max_length=24)
    assert_embeddings(model.encode(texts, batch_size=4), _hf_reference(folder, texts, pooling, causal=True))


def test_paddle_layout_weights(st_folder, tmp_path):
    """The Transformer's weights converted to the Paddle layout embed the same."""
    from paddle_qwen2.conversion import convert_checkpoint

    src = st_folder("mean_dense")
    folder = tmp_path / "paddle-layout"
    convert_checkpoint(src, tmp_path / "converted", progress=False)
    shutil.copytree(src, folder)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(tmp_path / "converted" / name, folder / name)
    from paddle_qwen2.conversion import detect_layout

    assert detect_layout(folder) == "paddle"
    actual = EmbeddingModel.from_pretrained(folder).encode(EMBED_TEXTS, prompt_name="query")
    assert_embeddings(actual, st_encode(src, prompt_name="query"))


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", ["last", "mean_dense"])
def test_save_pretrained_loads_in_sentence_transformers(st_folder, tmp_path, kind):
    model = EmbeddingModel.from_pretrained(st_folder(kind))
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"
    expected = model.encode(EMBED_TEXTS, prompt_name="query")
    assert_embeddings(st_encode(out, prompt_name="query"), expected)
    assert_embeddings(EmbeddingModel.from_pretrained(out).encode(EMBED_TEXTS, prompt_name="query"), expected)


def test_unknown_prompt_name_lists_the_prompts(st_folder):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    with pytest.raises(EmbeddingError, match=r"unknown prompt name 'passage'.*'query', 'document'"):
        model.encode(["x"], prompt_name="passage")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(truncate_dim=0), r"truncate_dim must be in \[1, 64\]"),
        (dict(truncate_dim=65), r"truncate_dim must be in \[1, 64\]"),
        (dict(batch_size=0), r"batch_size must be positive"),
        (dict(max_batch_tokens=0), r"max_batch_tokens must be positive"),
    ],
)
def test_bad_encode_arguments(st_folder, kwargs, message):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    with pytest.raises(EmbeddingError, match=message):
        model.encode(["x"], **kwargs)


def test_a_batch_of_only_empty_texts(st_folder):
    """No tokens at all (no special token appended): pooling gives zeros, then Dense (tanh of its bias) and
    Normalize run, as they would on sentence-transformers' zero-pooled row (which itself fails on such a batch)."""
    model = EmbeddingModel.from_pretrained(st_folder("mean_dense"))
    out = model.encode(["", "   "])
    bias = np.tanh(model.dense[0].linear.bias.numpy())
    expected = bias / np.linalg.norm(bias)
    assert_embeddings(out, np.stack([expected, expected]))


def test_long_batches_are_split_and_give_the_same_embeddings(st_folder, monkeypatch):
    """Batches whose activations would exceed BATCH_TENSOR_BYTES run in fewer rows: same results."""
    from paddle_qwen2.embedding import encoder as model_module

    model = EmbeddingModel.from_pretrained(st_folder("last"))
    order = np.arange(6)
    assert [len(b) for b in model._batches(order, [24, 24, 10, 5, 3, 1], 4)] == [4, 2]
    monkeypatch.setattr(model_module, "BATCH_TENSOR_BYTES", 4 * 24 * 112 * 2)  # two rows of 24 tokens
    assert [len(b) for b in model._batches(order, [24, 24, 10, 5, 3, 1], 4)] == [2, 4]
    monkeypatch.setattr(model_module, "BATCH_TENSOR_BYTES", 1)
    assert [len(b) for b in model._batches(order, [24, 24, 10, 5, 3, 1], 4)] == [1] * 6
    assert_embeddings(model.encode(EMBED_TEXTS, batch_size=4), st_encode(st_folder("last")))


@pytest.mark.parametrize(
    "batch_size, max_batch_tokens, sizes",
    [
        (None, 48, [2, 4]),  # rows x longest <= 48: 2 x 24, then 4 x 10
        (None, 30, [1, 1, 3, 1]),  # a text longer than the budget runs alone
        (3, 48, [2, 3, 1]),  # both limits
        (None, None, [6]),
    ],
)
def test_token_budget_batches(st_folder, batch_size, max_batch_tokens, sizes):
    """`max_batch_tokens` caps a batch's padded tokens (rows x its longest text); the embeddings do not change."""
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    batches = model._batches(np.arange(6), [24, 24, 10, 5, 3, 1], batch_size, max_batch_tokens)
    assert [len(b) for b in batches] == sizes
    out, tokens = model.embed_texts(EMBED_TEXTS, max_batch_tokens=max_batch_tokens, batch_size=batch_size)
    assert_embeddings(out, st_encode(st_folder("last")))
    assert tokens == sum(len(ids) for ids in model.tokenizer.encode_ids(EMBED_TEXTS))


POOLING_MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1],  # no padding
        [1, 1, 1, 0, 0, 0],  # right padding
        [0, 0, 1, 1, 1, 1],  # left padding
        [0, 0, 0, 0, 0, 0],  # all padding
        [1, 0, 0, 0, 0, 0],  # one token
    ]
)


@pytest.mark.paddle26
@pytest.mark.parametrize("prompt_length", [0, 2])
@pytest.mark.parametrize("mode", ["cls", "lasttoken", "max", "mean", "mean_sqrt_len_tokens", "weightedmean"])
def test_pooling_equals_sentence_transformers_pooling(mode, prompt_length):
    """`paddle_qwen2.pooling.pool` (behind EmbeddingModel and Qwen2SentenceEmbedding) against sentence-transformers'
    own Pooling module run live, on a batch with an all-padding row; `prompt_length` is `include_prompt=False`."""
    import paddle

    from paddle_qwen2 import Qwen2SentenceEmbedding
    from paddle_qwen2.embedding.modules import pool as embedding_pool
    from paddle_qwen2.pooling import POOLING_MODES, pool

    assert mode in POOLING_MODES and embedding_pool is pool
    hidden = np.random.RandomState(0).standard_normal((len(POOLING_MASK), 6, 8)).astype("float32")
    module = st.models.Pooling(8, pooling_mode=mode, include_prompt=prompt_length == 0)
    features = {"token_embeddings": torch.tensor(hidden), "attention_mask": torch.tensor(POOLING_MASK)}
    if prompt_length:
        features["prompt_length"] = prompt_length
    with torch.no_grad():
        expected = module(features)["sentence_embedding"].numpy()
    ours = pool(paddle.to_tensor(hidden), paddle.to_tensor(POOLING_MASK), [mode], prompt_length).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL, err_msg=mode)
    own_name = {"lasttoken": "last", "mean": "mean"}.get(mode)
    if own_name and not prompt_length:
        embedded = Qwen2SentenceEmbedding.pool(paddle.to_tensor(hidden), paddle.to_tensor(POOLING_MASK), own_name)
        np.testing.assert_allclose(embedded.numpy(), expected, rtol=0, atol=TOL, err_msg=own_name)


# ----------------------------------------------------------------------------------------- token-id input
LONG_TEXT = "Two plus three is five, five plus five is ten, ten plus ten is twenty. " * 4  # > 24 tokens


def _untruncated_ids(folder, text: str, special: bool = True) -> list[int]:
    """The ids of `text` as the folder's tokenizer gives them without truncation."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    return tok.encode(text.strip(), add_special_tokens=special).ids


@pytest.mark.parametrize("kind", ["last", "mean_dense"])
def test_encode_tokens_of_a_texts_ids_is_its_encode(st_folder, kind):
    """The ids the tokenizer gives a text (its special tokens included) embed as the text does, and as
    sentence-transformers embeds it; no prompt is added to ids."""
    model = EmbeddingModel.from_pretrained(st_folder(kind))
    ids = model.tokenizer.encode_ids(EMBED_TEXTS)
    got = model.encode_tokens(ids, batch_size=3)
    assert_embeddings(got, st_encode(st_folder(kind)))
    assert_embeddings(model.encode_tokens(ids, truncate_dim=8), model.encode(EMBED_TEXTS, truncate_dim=8))


def test_long_token_ids_are_truncated_as_the_text(st_folder):
    """Ids longer than max_seq_length: the EOS the post-processor appends stays, the text's tokens are cut (as
    the tokenizer truncates the text); ids without it are cut at the end."""
    folder = st_folder("last")
    model = EmbeddingModel.from_pretrained(folder)
    full = _untruncated_ids(folder, LONG_TEXT)
    assert len(full) > 24 and full[-1] == 4000
    assert model.tokenizer.truncate_ids(full) == model.tokenizer.encode_ids([LONG_TEXT])[0]
    assert_embeddings(model.encode_tokens([full]), model.encode([LONG_TEXT]))
    bare = _untruncated_ids(folder, LONG_TEXT, special=False)
    assert model.tokenizer.truncate_ids(bare) == bare[:24]
    assert_embeddings(model.encode_tokens([bare]), model.encode_tokens([bare[:24]]))


def test_embed_inputs_mixes_texts_and_ids(st_folder):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    texts = EMBED_TEXTS[:4]
    ids = model.tokenizer.encode_ids(texts[2:])
    out, counts = model.embed_inputs([texts[0], ids[0], texts[1], ids[1]], batch_size=2)
    assert_embeddings(out, model.encode([texts[0], texts[2], texts[1], texts[3]]))
    lengths = [len(r) for r in model.tokenizer.encode_ids(texts)]
    assert counts == [lengths[0], lengths[2], lengths[1], lengths[3]]


@pytest.mark.parametrize(
    "token_ids, message",
    [
        ([[1, 4096]], r"token_ids\[0\]\[1\] is 4096, expected a token id in \[0, 4096\)"),
        ([[1], [-1]], r"token_ids\[1\]\[0\] is -1"),
        ([[1, "a"]], r"token_ids\[0\]\[1\] is 'a'"),
        (["abc"], r"token_ids\[0\] is str, expected a list of token ids"),
    ],
)
def test_bad_token_ids(st_folder, token_ids, message):
    model = EmbeddingModel.from_pretrained(st_folder("last"))
    with pytest.raises(EmbeddingError, match=message):
        model.encode_tokens(token_ids)
