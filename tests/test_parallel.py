"""parallel.py in one process: kv heads are assigned to ranks, the vocabulary-split matmul is a plain matmul outside
fleet, the tensor-parallel split/merge actions round-trip every weight, and fused q/k/v, gate/up projections load
from and save to the separate-weight layout. (Multi-process runs are in tests/distributed/.)"""

import zlib  # noqa: F401
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from conftest import FUSED, PARALLEL_BASE, assert_close, load_paddle
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.parallel import assign_kv_heads, parallel_matmul, tensor_parallel_layouts, tp_merge, tp_split


def rand(*shape, seed=0):
    return np.random.RandomState(seed).standard_normal(shape).astype("float32")


def test_parallel_matmul_single_process():
    x, w = rand(2, 3, 8), rand(8, 5, seed=1)
    out = parallel_matmul(paddle.to_tensor(x), paddle.to_tensor(w), tensor_parallel_output=False)
    np.testing.assert_allclose(out.numpy(), x @ w, rtol=1e-5, atol=1e-5)
    out_t = parallel_matmul(paddle.to_tensor(x), paddle.to_tensor(w.T.copy()), transpose_y=True)
    np.testing.assert_allclose(out_t.numpy(), x @ w, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# assign_kv_heads
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kv_heads, ranks, expected",
    [
        (4, 2, [[0, 1], [2, 3]]),
        (8, 8, [[i] for i in range(8)]),
        (4, 8, [[0], [0], [1], [1], [2], [2], [3], [3]]),  # Qwen2-7B (4 kv heads) at TP 8
        (2, 4, [[0], [0], [1], [1]]),
        (1, 2, [[0], [0]]),
        (8, 1, [list(range(8))]),
    ],
)
def test_assign_kv_heads(kv_heads, ranks, expected):
    assert assign_kv_heads(kv_heads, ranks) == expected


@pytest.mark.parametrize("kv_heads, ranks", [(3, 2), (2, 3), (6, 4), (0, 2), (2, 0)])
def test_assign_kv_heads_refuses_uneven_layouts(kv_heads, ranks):
    with pytest.raises(ValueError, match=r"num_key_value_heads|TP degree|must be positive"):
        assign_kv_heads(kv_heads, ranks)


# ---------------------------------------------------------------------------------------------------------------
# _get_tensor_parallel_mappings: split for loading a full checkpoint into a rank, merge for saving it back
# ---------------------------------------------------------------------------------------------------------------


def full_state(path: Path, config: Qwen2Config) -> dict:
    """The HF checkpoint at `path` as a full Paddle state dict (numpy), in `config`'s fuse layout."""
    state = {k: v.numpy() for k, v in load_paddle(path).state_dict().items()}
    for names, fuse in Qwen2ForCausalLM._get_fuse_or_split_param_mappings(config, is_fuse=True).items():
        keys = ["qwen2." + n for n in names]
        state[keys[-1]] = fuse([state.pop(k) for k in keys[:-1]])
    return state


def action_for(actions: dict, key: str):
    """paddlenlp resolves mapping names as suffixes of the state-dict keys."""
    matches = [name for name in actions if key.endswith(name)]
    assert len(matches) <= 1, (key, matches)
    return actions[matches[0]] if matches else None


def split_all(state: dict, config: Qwen2Config, tp: int) -> list:
    shards = []
    for rank in range(tp):
        config.tensor_parallel_degree, config.tensor_parallel_rank = tp, rank
        actions = Qwen2ForCausalLM._get_tensor_parallel_mappings(config, is_split=True)
        shards.append({k: action_for(actions, k)(v) if action_for(actions, k) else v for k, v in state.items()})
    return shards


def merge_all(shards: list, config: Qwen2Config) -> dict:
    actions = Qwen2ForCausalLM._get_tensor_parallel_mappings(config, is_split=False)
    return {
        k: action_for(actions, k)([s[k] for s in shards]) if action_for(actions, k) else shards[0][k] for k in shards[0]
    }


LAYOUT_CASES = {
    # name: (HF variant, TP degree, config overrides)
    "gqa_tp2": ("gqa", 2, {}),
    "mha_tp4": ("mha", 4, {}),
    "replicated_kv_tp4": ("gqa", 4, {}),  # 2 kv heads on 4 ranks
    "tied_tp2": ("tied", 2, {}),
    "fused_tp2": ("gqa", 2, FUSED),
    "fused_mha_tp4": ("mha", 4, FUSED),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_split_then_merge_restores_every_weight(hf_checkpoint, case):
    variant, tp, overrides = LAYOUT_CASES[case]
    path = hf_checkpoint(variant)
    config = Qwen2Config.from_pretrained(path, **overrides)
    state = full_state(path, config)
    shards = split_all(state, config, tp)
    layouts = {
        k: tensor_parallel_layouts(config)[k.replace("qwen2.", "", 1)]
        for k in state
        if k.replace("qwen2.", "", 1) in tensor_parallel_layouts(config)
    }
    # every matrix and bias is split (tied: the embedding only), the norms are replicated
    assert set(layouts) == {k for k in state if not k.endswith("norm.weight")}
    for rank, shard in enumerate(shards):
        for key, (axis, intervals) in layouts.items():
            expected = list(state[key].shape)
            expected[axis] = sum(stop - start for start, stop in intervals[rank])
            assert list(shard[key].shape) == expected and shard[key].flags["C_CONTIGUOUS"], (key, rank)
        assert all(shard[k] is state[k] for k in state if k not in layouts)
    merged = merge_all(shards, config)
    assert list(merged) == list(state)
    for key in state:
        np.testing.assert_array_equal(merged[key], state[key], err_msg=key)


def test_shards_hold_the_expected_slices(hf_checkpoint):
    """Spot checks of what a rank receives: column / row / vocabulary splits, fused [q|k|v] and [gate|up]
    per rank, and a replicated kv head."""
    path = hf_checkpoint("gqa")  # 4 heads of 16, 2 kv heads, intermediate 112, vocab 128
    plain = full_state(path, Qwen2Config.from_pretrained(path))
    layer = "qwen2.layers.1."
    q, k, v = (plain[f"{layer}self_attn.{p}_proj.weight"] for p in "qkv")
    gate, up = plain[f"{layer}mlp.gate_proj.weight"], plain[f"{layer}mlp.up_proj.weight"]

    shards = split_all(plain, Qwen2Config.from_pretrained(path), 2)
    np.testing.assert_array_equal(shards[1][f"{layer}self_attn.q_proj.weight"], q[:, 32:])
    np.testing.assert_array_equal(
        shards[1][f"{layer}self_attn.k_proj.bias"], plain[f"{layer}self_attn.k_proj.bias"][16:]
    )
    np.testing.assert_array_equal(
        shards[1][f"{layer}self_attn.o_proj.weight"], plain[f"{layer}self_attn.o_proj.weight"][32:]
    )
    np.testing.assert_array_equal(shards[0][f"{layer}mlp.down_proj.weight"], plain[f"{layer}mlp.down_proj.weight"][:56])
    np.testing.assert_array_equal(shards[1]["qwen2.embed_tokens.weight"], plain["qwen2.embed_tokens.weight"][64:])
    np.testing.assert_array_equal(shards[0]["lm_head.weight"], plain["lm_head.weight"][:, :64])

    config = Qwen2Config.from_pretrained(path, **FUSED)
    fused = split_all(full_state(path, config), config, 2)
    np.testing.assert_array_equal(
        fused[1][f"{layer}self_attn.qkv_proj.weight"], np.concatenate([q[:, 32:], k[:, 16:], v[:, 16:]], 1)
    )
    np.testing.assert_array_equal(
        fused[0][f"{layer}mlp.gate_up_fused_proj.weight"], np.concatenate([gate[:, :56], up[:, :56]], 1)
    )

    replicated = split_all(plain, Qwen2Config.from_pretrained(path), 4)  # kv head 0 on ranks 0, 1; head 1 on 2, 3
    for rank, head in enumerate([0, 0, 1, 1]):
        np.testing.assert_array_equal(
            replicated[rank][f"{layer}self_attn.v_proj.weight"], v[:, head * 16 : (head + 1) * 16]
        )
        np.testing.assert_array_equal(
            replicated[rank][f"{layer}self_attn.q_proj.weight"], q[:, rank * 16 : (rank + 1) * 16]
        )


def test_split_reads_lazily_from_safetensors(hf_checkpoint, tmp_path):
    """from_pretrained hands the split actions safetensors slices, not arrays."""
    path = hf_checkpoint("gqa")
    config = Qwen2Config.from_pretrained(path, tensor_parallel_degree=4, tensor_parallel_rank=3)
    state = full_state(path, config)
    save_file(state, str(tmp_path / "model.safetensors"))
    actions = Qwen2ForCausalLM._get_tensor_parallel_mappings(config)
    with safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
        for key in state:
            action = action_for(actions, key)
            if action:
                np.testing.assert_array_equal(action(f.get_slice(key)), action(state[key]), err_msg=key)


def test_merge_rejects_a_wrong_number_of_shards():
    config = Qwen2Config(**PARALLEL_BASE, tensor_parallel_degree=2)
    axis, intervals = tensor_parallel_layouts(config)["layers.0.self_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="expected 2 tensor-parallel shards, got 3"):
        tp_merge([np.zeros([64, 32], "float32")] * 3, axis, intervals)
    assert tp_split(np.arange(64 * 64, dtype="float32").reshape(64, 64), axis, intervals[1]).shape == (64, 32)


# ---------------------------------------------------------------------------------------------------------------
# Fused q/k/v and gate/up: load from separate weights, save back separate
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paddle_checkpoint(hf_checkpoint, tmp_path_factory):
    """paddlenlp checkpoint (separate q/k/v, gate/up) of the gqa HF checkpoint, and the HF model's logits input."""
    folder = tmp_path_factory.mktemp("paddle-gqa")
    load_paddle(hf_checkpoint("gqa")).save_pretrained(str(folder), safe_serialization=True)
    return folder


def logits_of(model, seed: int = 0):
    ids = paddle.to_tensor(np.random.RandomState(seed).randint(2, 128, size=(2, 10)))
    mask = paddle.to_tensor(np.array([[1] * 10, [1] * 7 + [0] * 3]))
    model.eval()
    return model(input_ids=ids, attention_mask=mask, return_dict=True).logits


@pytest.mark.parametrize("flags", [dict(fuse_attention_qkv=True), dict(fuse_attention_ffn=True), FUSED])
def test_fused_model_loads_separate_weights_and_saves_them_back(paddle_checkpoint, tmp_path, flags):
    unfused = Qwen2ForCausalLM.from_pretrained(str(paddle_checkpoint), dtype="float32")
    fused = Qwen2ForCausalLM.from_pretrained(str(paddle_checkpoint), dtype="float32", **flags)
    names = set(fused.state_dict())
    assert ("qwen2.layers.0.self_attn.qkv_proj.weight" in names) == bool(flags.get("fuse_attention_qkv"))
    assert ("qwen2.layers.0.mlp.gate_up_fused_proj.weight" in names) == bool(flags.get("fuse_attention_ffn"))
    assert_close(logits_of(fused), logits_of(unfused), max_abs=1e-5, mean_abs=1e-6, what="fused vs unfused logits")

    fused.save_pretrained(str(tmp_path), safe_serialization=True)
    saved = (tmp_path / "model.safetensors").read_bytes()
    assert saved == (paddle_checkpoint / "model.safetensors").read_bytes()


def test_fused_checkpoint_loads_into_separate_projections(paddle_checkpoint, tmp_path):
    """A checkpoint written in the fused layout (e.g. a fused model's state dict) is cut apart on load."""
    fused = Qwen2ForCausalLM.from_pretrained(str(paddle_checkpoint), dtype="float32", **FUSED)
    save_file(
        {k: v.numpy() for k, v in fused.state_dict().items()},
        str(tmp_path / "model.safetensors"),
        metadata={"format": "np"},
    )
    (tmp_path / "config.json").write_text((paddle_checkpoint / "config.json").read_text())
    assert "qwen2.layers.1.self_attn.qkv_proj.bias" in load_file(str(tmp_path / "model.safetensors"))

    unfused = Qwen2ForCausalLM.from_pretrained(str(tmp_path), dtype="float32")
    reference = Qwen2ForCausalLM.from_pretrained(str(paddle_checkpoint), dtype="float32")
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(unfused.state_dict()[key].numpy(), value.numpy(), err_msg=key)
