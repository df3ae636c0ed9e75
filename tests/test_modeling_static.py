"""Every model class traces with `paddle.jit.to_static(full_graph=True)` on dynamic `[batch, seq]` inputs and the
program computes what dygraph does: unpadded, right- and left-padded batches, another batch shape through the same
program, several config variants; and a `paddle.jit.save` / `paddle.jit.load` round trip."""

import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from conftest import assert_close, load_paddle
from paddle_qwen2 import Qwen2SentenceEmbedding

pytestmark = [
    pytest.mark.paddle26,
    # Paddle 3's own warning while tracing `where` / `zeros_like` (PIR values have no place)
    pytest.mark.filterwarnings("ignore:Tensor do not have 'place' interface"),
]

SPEC = [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "attention_mask")]
TOL = 1e-5  # max abs, static program against dygraph
SEQ = 14  # longer than the sliding window (4) and than rope_dynamic's max_position_embeddings (12)
PAD_COUNT = 4


def make_batch(padding: str, batch: int = 2, seq: int = SEQ, seed: int = 1):
    """ids `[batch, seq]` (pad id 0 only at padding) and mask; the last row is padded on `padding` side."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, 128, size=(batch, seq)).astype("int64")
    mask = np.ones((batch, seq), dtype="int64")
    if padding == "right":
        mask[-1, seq - PAD_COUNT :] = 0
    elif padding == "left":
        mask[-1, :PAD_COUNT] = 0
    ids[mask == 0] = 0
    return ids, mask


BATCHES = [
    make_batch("none"),
    make_batch("right"),
    make_batch("left"),
    make_batch("left", batch=3, seq=9, seed=2),  # another shape through the same program
    make_batch("none", batch=1, seq=1, seed=3),  # a single token
]


class Output(paddle.nn.Layer):
    """`model(input_ids, attention_mask)` reduced to one tensor: the output field `field`, or the embeddings."""

    def __init__(self, model: paddle.nn.Layer, field: str | None = None, **kwargs):
        super().__init__()
        self.model, self.field, self.kwargs = model, field, kwargs

    def forward(self, input_ids, attention_mask):
        if self.field is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False, **self.kwargs)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **self.kwargs)
        return getattr(out, self.field)


def assert_static_equals_dygraph(layer: Output, batches=BATCHES):
    """Trace `layer` (full graph, dynamic batch and seq) and compare with its dygraph outputs on `batches`."""
    expected = [layer(paddle.to_tensor(ids), paddle.to_tensor(mask)).numpy() for ids, mask in batches]
    static = paddle.jit.to_static(layer, input_spec=SPEC, full_graph=True)
    for (ids, mask), want in zip(batches, expected):
        got = static(paddle.to_tensor(ids), paddle.to_tensor(mask))
        assert_close(got, want, max_abs=TOL, mean_abs=TOL, what=f"static vs dygraph, batch {ids.shape}")


def embedder(path, **config_overrides) -> Qwen2SentenceEmbedding:
    base = load_paddle(path, "base", **config_overrides)
    model = Qwen2SentenceEmbedding(base.config)
    model.qwen2 = base
    model.eval()
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", ["gqa", "mha", "tied", "sliding", "head_dim", "rope_linear", "rope_dynamic", "rope_yarn"]
)
def test_causal_lm_traces(hf_checkpoint, variant):
    assert_static_equals_dygraph(Output(load_paddle(hf_checkpoint(variant)), "logits"))


@pytest.mark.parametrize("variant", ["gqa", "sliding", "head_dim", "rope_dynamic"])
def test_base_model_traces(hf_checkpoint, variant):
    assert_static_equals_dygraph(Output(load_paddle(hf_checkpoint(variant, "base"), "base"), "last_hidden_state"))


@pytest.mark.parametrize("variant", ["gqa", "sliding"])
def test_bidirectional_base_model_traces(hf_checkpoint, variant):
    model = load_paddle(hf_checkpoint(variant, "base"), "base", is_causal=False)
    assert not model.config.is_causal
    assert_static_equals_dygraph(Output(model, "last_hidden_state"))


@pytest.mark.parametrize("variant", ["gqa", "rope_yarn"])
def test_sequence_classification_traces(hf_checkpoint, variant):
    assert_static_equals_dygraph(Output(load_paddle(hf_checkpoint(variant, "seq_cls"), "seq_cls"), "logits"))


@pytest.mark.parametrize(("head", "field"), [("token_cls", "logits"), ("qa", "start_logits"), ("qa", "end_logits")])
def test_token_heads_trace(hf_checkpoint, head, field):
    assert_static_equals_dygraph(Output(load_paddle(hf_checkpoint("gqa", head), head), field))


@pytest.mark.parametrize(
    ("variant", "pooling", "is_causal"), [("gqa", "last", True), ("sliding", "mean", True), ("gqa", "mean", False)]
)
def test_sentence_embedding_traces(hf_checkpoint, variant, pooling, is_causal):
    model = embedder(hf_checkpoint(variant, "base"), is_causal=is_causal)
    batches = [*BATCHES, (np.array([[5, 6, 7], [0, 0, 0]]), np.array([[1, 1, 1], [0, 0, 0]]))]  # an empty row
    assert_static_equals_dygraph(Output(model, None, pooling=pooling), batches)


def test_flash_attention_kernel_traces(hf_checkpoint):
    """`use_flash_attention`: the fused kernel (CPU SDPA on Paddle 3) or the math path, traced alike."""
    model = load_paddle(hf_checkpoint("gqa"), use_flash_attention=True)
    assert_static_equals_dygraph(Output(model, "logits"))


def test_traced_program_keeps_rank_check(hf_checkpoint):
    """The data-dependent checks are dygraph's; the trace still rejects a mask of the wrong rank."""
    model = load_paddle(hf_checkpoint("gqa", "base"), "base")
    spec = [SPEC[0], InputSpec([None, None, None], "int64", "attention_mask")]
    static = paddle.jit.to_static(Output(model, "last_hidden_state"), input_spec=spec, full_graph=True)
    with pytest.raises(ValueError, match="attention_mask has 3 dimensions"):
        static(paddle.ones([1, 2], "int64"), paddle.ones([1, 2, 2], "int64"))
    with pytest.raises(ValueError, match="outside the vocabulary"):  # dygraph keeps its errors
        model(paddle.to_tensor([[1, 500]]))


class DecodeStep(paddle.nn.Layer):
    """One step with the KV cache as inputs and outputs: `(input_ids [batch, new], attention_mask [batch, past + new],
    cache [k0, v0, k1, v1, ...] [batch, past, kv_heads, head_dim])` -> `[last logits [batch, vocab], *new cache]`;
    position ids from the mask (left padding), an empty cache for the prefill."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, cache):
        past = tuple((cache[2 * i], cache[2 * i + 1]) for i in range(len(cache) // 2))
        positions = attention_mask.cumsum(-1) - 1
        positions = paddle.where(attention_mask == 0, paddle.ones_like(positions), positions)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions[:, -input_ids.shape[1] :],
            past_key_values=past,
            use_cache=True,
            return_dict=True,
        )
        return [out.logits[:, -1], *[t for kv in out.past_key_values for t in kv]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gqa", "sliding", "rope_dynamic"])
def test_decode_step_traces(hf_checkpoint, variant):
    """Prefill (empty cache) of a left-padded batch, then greedy steps feeding the program its own cache: the
    program's logits and cache equal dygraph's at every step."""
    model = load_paddle(hf_checkpoint(variant))
    cfg = model.config
    step = DecodeStep(model)
    cache_spec = [
        InputSpec([None, None, cfg.num_key_value_heads, cfg.attention_head_dim], "float32", f"cache_{i}")
        for i in range(2 * cfg.num_hidden_layers)
    ]
    static = paddle.jit.to_static(step, input_spec=[*SPEC, cache_spec], full_graph=True)
    ids, mask = (paddle.to_tensor(x) for x in make_batch("left", seq=10))
    cache = [paddle.zeros([2, 0, cfg.num_key_value_heads, cfg.attention_head_dim]) for _ in cache_spec]
    for i in range(4):  # positions up to 13: past rope_dynamic's 12
        want, got = step(ids, mask, cache), static(ids, mask, cache)
        for w, g in zip(want, got):
            assert_close(g, w, max_abs=TOL, mean_abs=TOL, what=f"step {i}")
        cache, ids = got[1:], got[0].argmax(-1).reshape([-1, 1])
        mask = paddle.concat([mask, paddle.ones([2, 1], "int64")], axis=-1)


@pytest.mark.parametrize("head", ["causal_lm", "embedding"])
def test_jit_save_load_round_trip(hf_checkpoint, tmp_path, head):
    if head == "causal_lm":
        layer = Output(load_paddle(hf_checkpoint("rope_dynamic")), "logits")
    else:
        layer = Output(embedder(hf_checkpoint("gqa", "base")), None, pooling="last")
    expected = [layer(paddle.to_tensor(ids), paddle.to_tensor(mask)).numpy() for ids, mask in BATCHES]
    static = paddle.jit.to_static(layer, input_spec=SPEC, full_graph=True)
    paddle.jit.save(static, str(tmp_path / "model"))
    loaded = paddle.jit.load(str(tmp_path / "model"))
    loaded.eval()
    for (ids, mask), want in zip(BATCHES, expected):
        got = loaded(paddle.to_tensor(ids), paddle.to_tensor(mask))
        assert_close(got, want, max_abs=TOL, mean_abs=TOL, what=f"jit.load vs dygraph, batch {ids.shape}")
