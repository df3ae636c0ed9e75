"""Sentence embeddings through the exported program (`InferenceEmbeddingModel`, `embed --engine inference`):
equal to sentence-transformers for every pooling kind, from the folder (exported on the fly) or an export folder;
what the program cannot do is refused with a clear error."""

import numpy as np
import pytest

from conftest import EMBED_TEXTS, QUERY_PROMPT, ST_KINDS
from paddle_qwen2.cli import main
from paddle_qwen2.embedding import EmbeddingError
from paddle_qwen2.export import export_model
from paddle_qwen2.inference.embedding import InferenceEmbeddingModel

st = pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface", "ignore:.*include_prompt false")
TOL = 1e-5


def reference(folder, texts, **kwargs) -> np.ndarray:
    return st.SentenceTransformer(str(folder), device="cpu").encode(texts, show_progress_bar=False, **kwargs)


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", sorted(ST_KINDS))
def test_encode_equals_sentence_transformers(st_folder, kind):
    folder = st_folder(kind)
    model = InferenceEmbeddingModel.from_pretrained(folder)
    got = model.encode(EMBED_TEXTS, batch_size=4)
    assert got.shape == (len(EMBED_TEXTS), model.dimension) and got.dtype == np.float32
    assert np.abs(got - reference(folder, EMBED_TEXTS, batch_size=4)).max() <= TOL
    if ST_KINDS[kind][4]:  # include_prompt: the prompt is pooled as any text
        got = model.encode(EMBED_TEXTS, prompt_name="query", truncate_dim=16)
        want = reference(folder, EMBED_TEXTS, prompt_name="query", truncate_dim=16)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        assert np.abs(got - want).max() <= TOL


@pytest.mark.paddle26
def test_export_folder_encodes_alone(st_folder, tmp_path):
    folder = export_model(st_folder("last"), tmp_path / "exp", "embedding")
    model = InferenceEmbeddingModel.from_pretrained(folder)
    assert model.prompts["query"] == QUERY_PROMPT
    got = model.encode(EMBED_TEXTS[:4], prompt_name="query")
    assert np.abs(got - reference(st_folder("last"), EMBED_TEXTS[:4], prompt_name="query")).max() <= TOL


@pytest.mark.paddle26
def test_embed_command_with_the_inference_engine(st_folder, tmp_path, capsys):
    src = tmp_path / "in.txt"
    texts = [t for t in EMBED_TEXTS if "\n" not in t]
    src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.npy"
    argv = ["embed", "--model", str(st_folder("last")), "--input", str(src), "--output", str(out)]
    assert main([*argv, "--engine", "inference", "--prompt-name", "query"]) == 0
    want = reference(st_folder("last"), texts, prompt_name="query")
    assert np.abs(np.load(out) - want).max() <= TOL


def _prompt_left_out(folder):
    kind = next(k for k, v in ST_KINDS.items() if not v[4])
    return folder(kind), ["--prompt-name", "query"]


BAD = [
    # (folder and extra arguments, message part)
    (lambda f: (f("last"), ["--pooling", "mean"]), "--pooling: the exported program fixes the pipeline"),
    (lambda f: (f("last"), ["--no-normalize"]), "unnormalised embeddings need the dygraph EmbeddingModel"),
    (_prompt_left_out, "include_prompt false), which the exported program cannot do"),
]


@pytest.mark.parametrize("case, message", BAD, ids=[m[:24] for _, m in BAD])
def test_what_the_program_cannot_do_is_refused(st_folder, tmp_path, capsys, case, message):
    folder, extra = case(st_folder)
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n")
    out = tmp_path / "out.npy"
    argv = ["embed", "--model", str(folder), "--input", str(src), "--output", str(out), "--engine", "inference"]
    assert main([*argv, "--quiet", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()


@pytest.mark.paddle26
def test_library_errors(st_folder, tmp_path):
    model = InferenceEmbeddingModel.from_pretrained(st_folder("last"))
    with pytest.raises(EmbeddingError, match="unnormalised embeddings need the dygraph EmbeddingModel"):
        model.encode(["a"], normalize_embeddings=False)
    with pytest.raises(EmbeddingError, match="no such model folder"):
        InferenceEmbeddingModel.from_pretrained(tmp_path / "missing")


@pytest.mark.paddle26
def test_encode_tokens_of_a_texts_ids_is_its_encode(st_folder):
    """Token-id input through the exported program: the tokenizer's ids of a text embed as the text; the table's
    size bounds the ids."""
    model = InferenceEmbeddingModel.from_pretrained(st_folder("last"))
    ids = model.tokenizer.encode_ids(EMBED_TEXTS)
    assert np.abs(model.encode_tokens(ids, batch_size=4) - model.encode(EMBED_TEXTS, batch_size=4)).max() <= TOL
    assert model.vocab_size == 4096
    with pytest.raises(EmbeddingError, match=r"token_ids\[0\]\[0\] is 4096"):
        model.encode_tokens([[4096]])
