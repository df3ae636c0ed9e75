"""Each component of modeling.py (and the rope / losses / flops modules it uses), tested on its own against HF's
functions where HF has one; every name of the PaddleNLP layout importable. Masks: test_masks.py; the attention
core: test_attention.py; pooling against sentence-transformers: test_embedding_model.py."""

import math

import numpy as np
import paddle
import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2 as hf_qwen2

import paddle_qwen2
from conftest import BASE, VARIANTS, assert_close, load_hf, load_paddle
from paddle_qwen2 import Qwen2Config, modeling
from paddle_qwen2.modeling import (
    Qwen2Attention,
    Qwen2DecoderLayer,
    Qwen2ForCausalLM,
    Qwen2LMHead,
    Qwen2MLP,
    Qwen2Model,
    Qwen2PretrainedModel,
    Qwen2PretrainingCriterion,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    Qwen2SentenceEmbedding,
    apply_rotary_pos_emb,
    create_custom_forward,
    rotate_half,
)

LAYOUT_NAMES = [
    "__all__",
    "get_triangle_upper_mask",
    "assign_kv_heads",
    "parallel_matmul",
    "scaled_dot_product_attention",
    "masked_fill",
    "is_casual_mask",
    "_make_causal_mask",
    "_expand_2d_mask",
    "repeat_kv",
    "Qwen2RMSNorm",
    "Qwen2RotaryEmbedding",
    "rotate_half",
    "apply_rotary_pos_emb",
    "Qwen2MLP",
    "Qwen2Attention",
    "Qwen2DecoderLayer",
    "Qwen2PretrainedModel",
    "Qwen2Model",
    "Qwen2ForCausalLM",
    "Qwen2LMHead",
    "Qwen2ForSequenceClassification",
    "Qwen2ForTokenClassification",
    "Qwen2SentenceEmbedding",
    "Qwen2PretrainingCriterion",
    "recompute_training_full",
    "create_custom_forward",
    "Qwen2ForQuestionAnswering",
]


def tiny_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**dict(BASE, **overrides))


def rand(*shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype("float32")


def test_every_layout_name_importable():
    """From paddle_qwen2.modeling and from the top-level package alike (the same objects)."""
    for name in LAYOUT_NAMES:
        if name == "recompute_training_full":
            assert hasattr(Qwen2Model, name)
        elif name != "__all__":
            assert getattr(paddle_qwen2, name) is getattr(modeling, name), name
    for name in modeling.__all__:
        assert hasattr(modeling, name), name
    assert set(modeling.PADDLENLP_LAYOUT_ONLY) <= set(LAYOUT_NAMES) & set(modeling.__all__)
    for method in ("config_class", "_get_name_mappings", "_init_weights", "_get_model_flops"):
        assert hasattr(Qwen2PretrainedModel, method)
    assert hasattr(Qwen2Model, "_prepare_decoder_attention_mask")
    assert hasattr(Qwen2ForCausalLM, "prepare_inputs_for_generation")


# ---------------------------------------------------------------------------------------------- layers vs HF


@pytest.mark.paddle26
def test_rmsnorm_matches_hf():
    weight = 1 + 0.3 * rand(64, seed=1)
    x = 3 * rand(2, 5, 64)
    ours = Qwen2RMSNorm(64, eps=1e-5)
    ours.weight.set_value(weight)
    theirs = hf_qwen2.Qwen2RMSNorm(64, eps=1e-5)
    theirs.weight.data = torch.tensor(weight)
    assert_close(ours(paddle.to_tensor(x)), theirs(torch.tensor(x)), what="rmsnorm")
    assert Qwen2RMSNorm(tiny_config(rms_norm_eps=1e-5)).variance_epsilon == 1e-5


@pytest.mark.paddle26
def test_mlp_matches_hf():
    config = tiny_config()
    ours, theirs = Qwen2MLP(config), hf_qwen2.Qwen2MLP(__import__("transformers").Qwen2Config(**BASE))
    for name in ("gate_proj", "up_proj", "down_proj"):
        w = 0.1 * rand(*getattr(theirs, name).weight.shape, seed=len(name))
        getattr(theirs, name).weight.data = torch.tensor(w)
        getattr(ours, name).weight.set_value(w.T)
    x = rand(2, 5, 64)
    assert_close(ours(paddle.to_tensor(x)), theirs(torch.tensor(x)), what="mlp")


@pytest.mark.paddle26
@pytest.mark.parametrize("variant", ["gqa", "rope_linear", "rope_dynamic", "rope_yarn", "head_dim"])
def test_rotary_embedding_matches_hf(variant):
    import transformers

    cfg = dict(BASE, **VARIANTS[variant])
    ours = Qwen2RotaryEmbedding(Qwen2Config(**cfg))
    theirs = hf_qwen2.Qwen2RotaryEmbedding(transformers.Qwen2Config(**cfg))
    for length in (10, 40):  # 40 exceeds rope_dynamic's max_position_embeddings: frequencies re-derived
        pos = np.tile(np.arange(length), (2, 1))
        cos, sin = ours(paddle.zeros([1], "float32"), paddle.to_tensor(pos))
        hcos, hsin = theirs(torch.zeros(1), torch.tensor(pos))
        assert_close(cos, hcos, what="cos")
        assert_close(sin, hsin, what="sin")


@pytest.mark.paddle26
def test_rotate_half_and_apply_rotary_match_hf():
    q, k = rand(2, 6, 4, 16, seed=1), rand(2, 6, 2, 16, seed=2)
    cos, sin = rand(2, 6, 16, seed=3), rand(2, 6, 16, seed=4)
    assert_close(rotate_half(paddle.to_tensor(q)), hf_qwen2.rotate_half(torch.tensor(q)), what="rotate_half")
    pq, pk = apply_rotary_pos_emb(*(paddle.to_tensor(a) for a in (q, k, cos, sin)))
    # HF works in [batch, heads, seq, dim]
    hq, hk = hf_qwen2.apply_rotary_pos_emb(
        torch.tensor(q).transpose(1, 2), torch.tensor(k).transpose(1, 2), torch.tensor(cos), torch.tensor(sin)
    )
    assert_close(pq, hq.transpose(1, 2), what="q")
    assert_close(pk, hk.transpose(1, 2), what="k")
    # table form: cos/sin `[max_pos, dim]` gathered at position_ids
    table_cos, table_sin = rand(20, 16, seed=5), rand(20, 16, seed=6)
    pos = np.array([[3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5]])
    tq, _ = apply_rotary_pos_emb(
        paddle.to_tensor(q),
        paddle.to_tensor(k),
        paddle.to_tensor(table_cos),
        paddle.to_tensor(table_sin),
        position_ids=paddle.to_tensor(pos),
    )
    gq, _ = apply_rotary_pos_emb(
        paddle.to_tensor(q), paddle.to_tensor(k), paddle.to_tensor(table_cos[pos]), paddle.to_tensor(table_sin[pos])
    )
    assert_close(tq, gq, max_abs=0, mean_abs=0, what="gathered table")


@pytest.mark.paddle26
def test_attention_and_decoder_layer_match_hf(hf_checkpoint):
    """One decoder layer (and its attention) on random input with a padded causal mask."""
    path = hf_checkpoint("gqa")
    hf_model, pd_model = load_hf(path), load_paddle(path)
    x = rand(2, 7, 64, seed=9)
    mask2d = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    pos = np.tile(np.arange(7), (2, 1))
    hf_layer, pd_layer = hf_model.model.layers[1], pd_model.qwen2.layers[1]
    assert isinstance(pd_layer, Qwen2DecoderLayer) and isinstance(pd_layer.self_attn, Qwen2Attention)
    hf_pe = hf_model.model.rotary_emb(torch.tensor(x), torch.tensor(pos))
    pd_pe = pd_model.qwen2.rotary_emb(paddle.to_tensor(x), paddle.to_tensor(pos))
    pd_mask = Qwen2Model._prepare_decoder_attention_mask(paddle.to_tensor(mask2d), [2, 7], 0, paddle.float32)
    hf_mask = torch.tensor(pd_mask.numpy())
    with torch.no_grad():
        hf_out = hf_layer(torch.tensor(x), attention_mask=hf_mask, position_embeddings=hf_pe)
        hf_out = hf_out[0] if isinstance(hf_out, tuple) else hf_out
        hf_attn = hf_layer.self_attn(torch.tensor(x), hf_pe, hf_mask)[0]
    pd_out = pd_layer(paddle.to_tensor(x), pd_pe, pd_mask)[0]
    pd_attn = pd_layer.self_attn(paddle.to_tensor(x), pd_pe, pd_mask)[0]
    rows = mask2d == 1
    assert_close(pd_out.numpy()[rows], hf_out.numpy()[rows], what="decoder layer")
    assert_close(pd_attn.numpy()[rows], hf_attn.numpy()[rows], what="attention")


# ---------------------------------------------------------------------------------------------- heads & losses


def test_lm_head_tied_and_untied():
    config = tiny_config()
    untied = Qwen2LMHead(config)
    assert untied.weight.shape == [64, 128] and not untied.transpose_y
    embedding = paddle.nn.Embedding(128, 64)
    tied = Qwen2LMHead(config, tied_embedding=embedding)
    assert "weight" not in dict(tied.named_parameters()) and tied.transpose_y
    x = rand(1, 2, 64)
    np.testing.assert_allclose(tied(paddle.to_tensor(x)).numpy(), x @ embedding.weight.numpy().T, rtol=1e-5, atol=1e-5)
    model = Qwen2ForCausalLM(tiny_config(tie_word_embeddings=True))
    assert "lm_head.weight" not in model.state_dict() and model.lm_head.projection is model.qwen2.embed_tokens.weight


def test_pretraining_criterion_means_over_non_ignored_labels():
    """A confidently right token has loss exactly 0; it still counts in the mean (not a `loss > 0` mean)."""
    criterion = Qwen2PretrainingCriterion(tiny_config(vocab_size=4))
    logits = np.zeros((1, 5, 4), "float32")
    labels = np.array([[9, 2, 1, -100, 3]])  # position 0 is never predicted; -100 ignored
    logits[0, 0, 2] = 200.0  # predicts label 2 with loss 0
    logits[0, 1, 1] = 1.0
    logits[0, 3, 0] = 2.0
    loss = float(criterion(paddle.to_tensor(logits), paddle.to_tensor(labels)))
    l_second = -math.log(math.e / (math.e + 3))
    l_last = -math.log(1 / (math.e**2 + 3))
    assert loss == pytest.approx((0.0 + l_second + l_last) / 3, rel=1e-5)
    all_ignored = criterion(paddle.to_tensor(logits), paddle.to_tensor(np.full((1, 5), -100)))
    assert float(all_ignored) == 0.0


def test_return_dict_honoured(hf_checkpoint):
    model = load_paddle(hf_checkpoint("gqa"))
    ids = paddle.to_tensor([[3, 4, 5]])
    as_tuple = model(ids, labels=ids, return_dict=False)
    as_dict = model(ids, labels=ids, return_dict=True)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3  # loss, logits, past_key_values
    np.testing.assert_array_equal(as_tuple[1].numpy(), as_dict.logits.numpy())
    assert model.config.return_dict is False and isinstance(model(ids), tuple)  # paddlenlp's default


def test_sequence_classification_pad_id_rules(hf_checkpoint):
    model = load_paddle(hf_checkpoint("gqa", "seq_cls"), "seq_cls")
    model.config.pad_token_id = None
    single = model(paddle.to_tensor([[3, 4, 5]]), return_dict=True).logits
    assert single.shape == [1, 3]
    with pytest.raises(ValueError, match="pad_token_id"):
        model(paddle.to_tensor([[3, 4, 5], [6, 7, 8]]))
    model.config.pad_token_id = 0
    with pytest.raises(ValueError, match="num_labels=3"):
        model(paddle.to_tensor([[3, 4, 5]]), labels=paddle.to_tensor([7]))


def test_sentence_embedding_pooling(hf_checkpoint):
    """Last-token and mean pooling equal HF's hidden states pooled by hand; padding side does not matter."""
    path = hf_checkpoint("gqa", "base")
    hf_model = load_hf(path, "base")
    model = load_paddle(path, "base")
    embedder = Qwen2SentenceEmbedding(model.config)
    embedder.qwen2 = model
    embedder.eval()
    sentence = [7, 21, 9, 44, 3]
    alone = embedder(paddle.to_tensor([sentence]), attention_mask=paddle.ones([1, 5], "int64"), normalize=False)
    with torch.no_grad():
        hf_hidden = hf_model(torch.tensor([sentence])).last_hidden_state[0].numpy()
    assert_close(alone[0], hf_hidden[-1], what="last-token embedding")
    mean = embedder(
        paddle.to_tensor([sentence]), attention_mask=paddle.ones([1, 5], "int64"), pooling="mean", normalize=False
    )
    assert_close(mean[0], hf_hidden.mean(0), what="mean embedding")

    right = [sentence + [0, 0], [5] * 7]
    left = [[0, 0] + sentence, [5] * 7]
    for ids in (right, left):
        mask = (np.array(ids) != 0).astype("int64")
        mask[1] = 1
        for pooling in ("last", "mean"):
            got = embedder(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), pooling=pooling)
            ref = embedder(paddle.to_tensor([sentence]), attention_mask=paddle.ones([1, 5], "int64"), pooling=pooling)
            assert_close(got[0], ref[0], what=f"{pooling} pooling with padding")
            np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        embedder(paddle.to_tensor([sentence]), pooling="max")


# ---------------------------------------------------------------------------------------------- weights, flops


def test_init_weights():
    paddle.seed(0)
    model = Qwen2ForCausalLM(
        tiny_config(hidden_size=256, intermediate_size=512, vocab_size=512, initializer_range=0.05)
    )
    layer = model.qwen2.layers[0]
    assert abs(float(layer.mlp.up_proj.weight.std()) - 0.05) < 0.005
    assert abs(float(model.lm_head.weight.std()) - 0.05) < 0.005
    assert float(paddle.abs(layer.self_attn.q_proj.bias).max()) == 0.0
    assert float(layer.input_layernorm.weight.min()) == 1.0 == float(layer.input_layernorm.weight.max())


def test_model_flops_counts_every_matmul():
    config = tiny_config()
    model = Qwen2Model(config)
    seq = 10
    per_layer = 2 * seq * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 112) + 4 * seq * seq * 64
    expected = 3 * per_layer + 2 * seq * 64 * 128
    assert model._get_model_flops(batch_size=2, seq_length=seq) == 2 * expected
    assert model._get_hardware_flops(batch_size=1, seq_length=seq) == 3 * expected
    recompute = Qwen2Model(tiny_config(recompute=True, recompute_granularity="full", no_recompute_layers=[0]))
    assert recompute._get_hardware_flops(1, seq) == 3 * expected + 2 * per_layer
    core = Qwen2Model(tiny_config(recompute=True, recompute_granularity="core_attn"))
    assert core._get_hardware_flops(1, seq) == 3 * expected + 3 * 4 * seq * seq * 64


# ---------------------------------------------------------------------------------------------- recompute


@pytest.mark.parametrize("granularity, skip", [("full", None), ("full_attn", None), ("core_attn", None), ("full", [1])])
def test_recompute_gradients_equal(hf_checkpoint, granularity, skip):
    path = hf_checkpoint("gqa")
    ids = np.random.RandomState(0).randint(2, 128, size=(2, 9))
    grads = []
    for overrides in ({}, dict(recompute=True, recompute_granularity=granularity, no_recompute_layers=skip)):
        model = load_paddle(path, **overrides)
        model.train()
        loss = model(paddle.to_tensor(ids), labels=paddle.to_tensor(ids), return_dict=True).loss
        loss.backward()
        grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_recompute_training_full_and_create_custom_forward():
    config = tiny_config()
    layer = Qwen2DecoderLayer(config, 0)
    fn = create_custom_forward(layer)
    x = paddle.to_tensor(rand(1, 4, 64))
    pe = Qwen2RotaryEmbedding(config)(x, paddle.arange(4).unsqueeze(0))
    np.testing.assert_array_equal(fn(x, pe)[0].numpy(), layer(x, pe)[0].numpy())
    model = Qwen2Model(config)
    x.stop_gradient = False
    out = model.recompute_training_full(layer, x, pe, None, None, False, False)[0]
    out.sum().backward()
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(out.numpy(), layer(x, pe)[0].numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    # (what, model inputs, error message pattern)
    ("id past the vocabulary", dict(input_ids=[[1, 2, 128]]), r"token id 128, outside the vocabulary \[0, 128\)"),
    ("negative id", dict(input_ids=[[1, -1, 2]]), "token id -1"),
    ("too long", dict(input_ids=[[1] * 65]), r"sequence length 65 .* exceeds max_position_embeddings \(64\)"),
    (
        "mask shape",
        dict(input_ids=[[1] * 4] * 2, attention_mask=[[1] * 5] * 2),
        r"attention_mask has shape \[2, 5\]; expected .*\[2, 4\]",
    ),
    ("no input", {}, "exactly one of input_ids or inputs_embeds"),
]


@pytest.mark.parametrize("what, inputs, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(hf_checkpoint, what, inputs, message):
    model = load_paddle(hf_checkpoint("gqa"))
    with pytest.raises(ValueError, match=message):
        model(**{name: paddle.to_tensor(value, dtype="int64") for name, value in inputs.items()})


def test_rope_scaling_allows_longer_sequences(hf_checkpoint):
    """With rope scaling, sequences past max_position_embeddings are allowed (that is what the scaling is for)."""
    scaled = load_paddle(hf_checkpoint("rope_dynamic"))
    assert scaled(paddle.to_tensor(np.ones((1, 30), "int64")), return_dict=True).logits.shape == [1, 30, 128]


def test_all_padding_row_gives_defined_finite_result(hf_checkpoint):
    model = load_paddle(hf_checkpoint("gqa"))
    ids = paddle.to_tensor([[5, 6, 7, 8], [0, 0, 0, 0]])
    mask = paddle.to_tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    out = model(ids, attention_mask=mask, return_dict=True).logits.numpy()
    assert np.isfinite(out).all()
    alone = model(ids[:1], attention_mask=mask[:1], return_dict=True).logits.numpy()
    np.testing.assert_allclose(out[0], alone[0], rtol=1e-5, atol=1e-5)  # the padded row does not leak
    embedder = Qwen2SentenceEmbedding(model.config)
    embedder.qwen2 = model.qwen2
    mean = embedder(ids, attention_mask=mask, pooling="mean", normalize=False).numpy()
    assert np.isfinite(mean).all() and np.all(mean[1] == 0.0)
    last = embedder(ids, attention_mask=mask, pooling="last", normalize=False).numpy()
    assert np.all(last[1] == 0.0)  # as sentence-transformers' last-token pooling
    normed = embedder(ids, attention_mask=mask, pooling="mean").numpy()
    assert np.isfinite(normed).all()
