"""`POST /v1/embeddings` through the official `openai` client: token-id input (one list of ids, a list of id
lists) embeds as the text the ids came from, as sentence-transformers' `encode` embeds that text; `dimensions`
truncates and re-normalises as `encode(truncate_dim=...)` + normalize; base64 decodes to the float answer. The
served model is `st_folder("last")`: its tokenizer appends `<|endoftext|>` (id 4000), max length 24."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serving_helpers import API_KEY

openai = pytest.importorskip("openai")
st = pytest.importorskip("sentence_transformers")

TOL = 1e-5  # normalised embeddings
TEXTS = ["The capital of France is Paris.", "猫喜欢吃鱼。", "a", "hello world"]
LONG_TEXT = "Two plus three is five, five plus five is ten, ten plus ten is twenty. " * 4  # > 24 tokens


@pytest.fixture(scope="module")
def client(serving_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving_server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def st_model(st_folder):
    return st.SentenceTransformer(str(st_folder("last")), device="cpu")


@pytest.fixture(scope="module")
def tokenize(st_folder):
    """`tokenize(text)` -> the served model's token ids of `text` (its special tokens included, not truncated)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(st_folder("last") / "tokenizer.json"))
    tok.no_truncation()
    return lambda text: tok.encode(text.strip()).ids


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_token_ids_embed_as_their_text(client, st_model, tokenize):
    ids = tokenize(TEXTS[0])
    assert ids[-1] == 4000  # the post-processor's <|endoftext|>: part of the ids, as the text's tokenization has it
    out = client.embeddings.create(model="embed", input=ids)
    (item,) = out.data
    assert item.index == 0
    expected = st_model.encode([TEXTS[0]], show_progress_bar=False)[0]
    assert np.abs(np.array(item.embedding, dtype=np.float32) - expected).max() <= TOL
    assert out.usage.prompt_tokens == out.usage.total_tokens == len(ids)


def test_a_list_of_id_lists_embeds_as_the_texts(client, st_model, tokenize):
    ids = [tokenize(t) for t in [*TEXTS, LONG_TEXT]]
    assert len(ids[-1]) > 24  # truncated by the server as the text is: the text's tokens cut, the EOS kept
    out = client.embeddings.create(model="embed", input=ids)
    assert [d.index for d in out.data] == list(range(len(ids)))
    expected = st_model.encode([*TEXTS, LONG_TEXT], show_progress_bar=False)
    assert np.abs(_vectors(out) - expected).max() <= TOL
    assert out.usage.prompt_tokens == sum(len(i) for i in ids[:-1]) + 24


def test_texts_and_their_ids_give_the_same_vectors(client, tokenize):
    by_text = _vectors(client.embeddings.create(model="embed", input=TEXTS))
    by_ids = _vectors(client.embeddings.create(model="embed", input=[tokenize(t) for t in TEXTS]))
    assert np.abs(by_text - by_ids).max() <= TOL


@pytest.mark.parametrize("dimensions", [8, 33])
def test_dimensions_truncate_and_renormalise(client, st_model, tokenize, dimensions):
    expected = st_model.encode(TEXTS, truncate_dim=dimensions, normalize_embeddings=True, show_progress_bar=False)
    for inputs in (TEXTS, [tokenize(t) for t in TEXTS]):
        got = _vectors(client.embeddings.create(model="embed", input=inputs, dimensions=dimensions))
        assert got.shape == (len(TEXTS), dimensions)
        assert np.abs(got - expected).max() <= TOL
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dimensions", [None, 16])
def test_base64_decodes_to_the_float_answer(client, tokenize, dimensions):
    kwargs = {} if dimensions is None else {"dimensions": dimensions}
    for inputs in (TEXTS, [tokenize(t) for t in TEXTS]):
        floats = client.embeddings.create(model="embed", input=inputs, encoding_format="float", **kwargs)
        packed = client.embeddings.create(model="embed", input=inputs, encoding_format="base64", **kwargs)
        decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data])
        assert np.array_equal(decoded, _vectors(floats))
