"""`--format onnx` files that weight tools can read: every weight is an initializer (the tied LM head too, read by
its MatMul without a Transpose), `onnxruntime.quantization`'s MatMul n-bits quantizer turns every linear projection
into MatMulNBits and onnxruntime runs the result; large exports go to ONNX external data, and weights too large
for paddle2onnx are added after it converted the program alone."""

import json

import numpy as np
import paddle
import pytest

from conftest import assert_close, load_paddle
from paddle_qwen2 import Qwen2ForCausalLM
from paddle_qwen2.export import FUSED, export_model, onnx_graph, onnx_saver

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface")

VOCAB = 128


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, hf_checkpoint):
    """`onnx_export(variant)` -> a causal-lm `--format onnx` folder of `hf_checkpoint(variant)` (cached)."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp(f"onnx-{variant}") / "exp"
            cache[variant] = export_model(hf_checkpoint(variant), out, "causal-lm", format="onnx")
        return cache[variant]

    return get


def batch(seed: int = 3) -> dict:
    """Two rows of 9 tokens, the second left-padded by 3."""
    ids = np.random.RandomState(seed).randint(2, VOCAB, size=(2, 9)).astype("int64")
    mask = np.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def run(path, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def paddle_logits(checkpoint, feed: dict) -> np.ndarray:
    model = load_paddle(checkpoint)
    mask = feed["attention_mask"]
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=-1) - 1).astype("int64")
    with paddle.no_grad():
        out = model(
            input_ids=paddle.to_tensor(feed["input_ids"]),
            attention_mask=paddle.to_tensor(mask),
            position_ids=paddle.to_tensor(positions),
            return_dict=True,
        )
    return out.logits.numpy()


def projections(checkpoint) -> int:
    """The program's linear projections: its 2-D weights but the embedding, plus the LM head when tied (the export
    loads the model with `FUSED`: q/k/v and gate/up are one projection each)."""
    model = Qwen2ForCausalLM.from_pretrained(str(checkpoint), **FUSED)
    embedding = model.qwen2.embed_tokens.weight.name
    matrices = [p for p in model.parameters() if len(p.shape) == 2 and p.name != embedding]
    assert len(matrices) == 4 * model.config.num_hidden_layers + (not model.config.tie_word_embeddings)
    return len(matrices) + int(model.config.tie_word_embeddings)


@pytest.mark.parametrize("variant", ["gqa", "tied"])
def test_weights_are_initializers(onnx_export, hf_checkpoint, variant):
    folder = onnx_export(variant)
    assert json.loads((folder / "export_meta.json").read_text())["files"] == {"onnx": "model.onnx"}
    assert not (folder / onnx_graph.EXTERNAL_DATA_FILE).exists()
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [n.output[0] for n in graph.node if n.op_type == "Constant"] == []
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    readers = [n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(readers) == projections(hf_checkpoint(variant))
    embedding = [n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in weights]
    assert len(embedding) == 1
    if variant == "tied":
        # the head reads the embedding stored once, transposed [hidden, vocab]; the lookup gathers its columns
        assert embedding[0].endswith("_transposed") and weights[embedding[0]] == (64, VOCAB)
        assert embedding[0] == readers[-1]
        assert [n.op_type for n in graph.node if embedding[0] in n.input] == ["Gather", "MatMul"]
    else:
        assert weights[embedding[0]] == (VOCAB, 64) and weights[readers[-1]] == (64, VOCAB)
    feed = batch()
    assert_close(run(folder / "model.onnx", feed), paddle_logits(hf_checkpoint(variant), feed), what=variant)


@pytest.mark.parametrize("variant, bits", [("gqa", 4), ("tied", 4), ("tied", 8)])
def test_matmul_nbits_quantizer_takes_every_projection(onnx_export, hf_checkpoint, tmp_path, variant, bits):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    folder = onnx_export(variant)
    model = onnx.load(str(folder / "model.onnx"))
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    weights = {t.name for t in quantized.graph.initializer}
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMulNBits") == projections(hf_checkpoint(variant))
    assert not [n.name for n in quantized.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    path = tmp_path / "int4.onnx"
    onnx.save_model(quantized, str(path))
    feed = batch()
    got, want = run(path, feed), run(folder / "model.onnx", feed)
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"{variant} int{bits}: relative logits error {error:.2e}")
    assert 1e-5 < error < (0.3 if bits == 4 else 0.03), error  # quantized (not the float weights), and close


@pytest.mark.parametrize("weights", ["converted", "added"])
def test_external_data(hf_checkpoint, onnx_export, tmp_path, monkeypatch, weights):
    """Tensors above the threshold go to model.onnx.data; weights above paddle2onnx's limit are converted without
    it and added from the model ("added"); both forced by tiny limits here."""
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 1000)
    if weights == "added":
        monkeypatch.setattr(onnx_saver, "PADDLE2ONNX_LIMIT", 1000)
    folder = export_model(hf_checkpoint("tied"), tmp_path / "exp", "causal-lm", format="onnx")
    files = json.loads((folder / "export_meta.json").read_text())["files"]
    assert files == {"onnx": "model.onnx", "onnx_data": "model.onnx.data"}
    data = (folder / "model.onnx.data").stat().st_size
    assert (folder / "model.onnx").stat().st_size < 200_000 < data  # the weights (~0.9 MB) are in the data file
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "scratch folder left behind"
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert not [n.name for n in model.graph.node if n.op_type == "Constant"]
    reference = onnx.load(str(onnx_export("tied") / "model.onnx"))
    shapes = sorted((t.data_type, *t.dims) for t in model.graph.initializer)
    assert shapes == sorted((t.data_type, *t.dims) for t in reference.graph.initializer)
    feed = batch()
    np.testing.assert_array_equal(run(folder / "model.onnx", feed), run(onnx_export("tied") / "model.onnx", feed))


def test_save_model_threshold(tmp_path):
    """The threshold counts the tensors' bytes: at it the file is one, above it two."""
    weight = onnx.numpy_helper.from_array(np.ones((16, 16), np.float32), "w")
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 16])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 16])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], [weight]))
    assert onnx_graph.tensor_bytes(model) == 1024
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert onnx_graph.save_model(model, tmp_path / "a", threshold=1024) == {"onnx": "model.onnx"}
    files = onnx_graph.save_model(model, tmp_path / "b", threshold=1023)
    assert files == {"onnx": "model.onnx", "onnx_data": "model.onnx.data"}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model.onnx", "model.onnx.data"]
    feed = {"x": np.arange(32, dtype=np.float32).reshape(2, 16)}
    np.testing.assert_array_equal(run(tmp_path / "b" / "model.onnx", feed), feed["x"] @ np.ones((16, 16)))


def test_every_initializer_is_read(onnx_export):
    graph = onnx.load(str(onnx_export("tied") / "model.onnx")).graph
    read = {name for node in graph.node for name in node.input}
    assert [t.name for t in graph.initializer if t.name not in read] == []
