"""Tensor and sequence parallelism for Qwen2 through `paddle.distributed.fleet`, and the checkpoint side of it.

Runtime plumbing used by the layers in `modeling.py`:
- `assign_kv_heads`: which key/value heads each tensor-parallel rank holds (split, or replicated when there are
  fewer kv heads than ranks), and `kv_replica_group` / `replicated_kv`, the group and projection of a replicated head;
- `parallel_matmul`: the LM-head matmul against a vocabulary shard;
- `scatter_sequence` / `gather_sequence` / `sequence_to_batch_major`: the sequence-parallel layout
  `[seq / tp * batch, hidden]` between the parallel linears.

Checkpoint layouts, for paddlenlp's loading and saving (`Qwen2PretrainedModel._get_tensor_parallel_mappings` etc.):
a rank's shard of a full weight is a list of `(start, stop)` ranges along the split axis (fused weights and
replicated kv heads are just longer lists): `tensor_parallel_layouts`, `tp_split`, `tp_merge`, and `fuse` /
`unfuse` between separate q/k/v, gate/up weights and the fused projections.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn
from paddle.distributed import fleet

from .configuration import Qwen2Config

__all__ = [
    "assign_kv_heads",
    "parallel_matmul",
    "model_parallel_world_size",
    "kv_replica_group",
    "replicated_kv",
    "scatter_sequence",
    "gather_sequence",
    "sequence_to_batch_major",
    "tensor_parallel_layouts",
    "tp_split",
    "tp_merge",
    "fuse",
    "unfuse",
    "fused_groups",
    "tensor_parallel_actions",
    "fuse_or_split_actions",
    "unfused_state_dict",
]

Intervals = list[tuple[int, int]]


# ----------------------------------------------------------------------------------------------------------------
# Runtime: heads, groups, the vocabulary-split matmul, the sequence-parallel layout
# ----------------------------------------------------------------------------------------------------------------


def model_parallel_world_size() -> int:
    """Size of the model-parallel group of the current fleet job (1 outside fleet)."""
    try:
        hcg = fleet.get_hybrid_communicate_group()
    except Exception:  # fleet not initialised
        return 1
    return hcg.get_model_parallel_world_size() if hcg is not None else 1


def assign_kv_heads(num_kv_heads: int, num_gpus: int) -> list[list[int]]:
    """Which key/value heads each tensor-parallel rank holds.

    Returns a list with one entry per rank, each the list of kv-head indices that rank computes.
    With at least as many kv heads as ranks the heads are split evenly (`[[0, 1], [2, 3]]` for 4 heads
    on 2 ranks); with fewer kv heads than ranks each head is replicated on `num_gpus // num_kv_heads`
    consecutive ranks (`[[0], [0], [1], [1]]` for 2 heads on 4 ranks).
    """
    if num_kv_heads <= 0 or num_gpus <= 0:
        raise ValueError(f"num_kv_heads ({num_kv_heads}) and num_gpus ({num_gpus}) must be positive")
    if num_kv_heads >= num_gpus:
        if num_kv_heads % num_gpus != 0:
            raise ValueError(f"num_key_value_heads ({num_kv_heads}) must be divisible by the TP degree ({num_gpus})")
        per_rank = num_kv_heads // num_gpus
        return [list(range(rank * per_rank, (rank + 1) * per_rank)) for rank in range(num_gpus)]
    if num_gpus % num_kv_heads != 0:
        raise ValueError(
            f"the TP degree ({num_gpus}) must be a multiple of num_key_value_heads ({num_kv_heads}) "
            "to replicate kv heads across ranks"
        )
    replicas = num_gpus // num_kv_heads
    return [[rank // replicas] for rank in range(num_gpus)]


def parallel_matmul(x: Tensor, y: Tensor, transpose_y: bool = False, tensor_parallel_output: bool = True) -> Tensor:
    """`x @ y` where `y` may be a vocabulary shard of a tensor-parallel LM head.

    x: `[batch, seq, hidden]`; y: `[hidden, vocab(/tp)]` (or `[vocab(/tp), hidden]` with `transpose_y`).
    Under tensor parallelism the input is marked for the backward all-reduce and, unless
    `tensor_parallel_output`, the per-rank logits are gathered to the full vocabulary.
    """
    is_split = getattr(y, "is_distributed", False) and model_parallel_world_size() > 1
    if not is_split:
        return paddle.matmul(x, y, transpose_y=transpose_y)
    from paddle.distributed.fleet.layers.mpu import mp_ops

    group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
    x = mp_ops._c_identity(x, group=group)
    logits = paddle.matmul(x, y, transpose_y=transpose_y)
    if tensor_parallel_output:
        return logits
    return mp_ops._c_concat(logits, group=group)


_KV_REPLICA_GROUPS: dict = {}


def kv_replica_group(config: Qwen2Config):
    """The communication group of the tensor-parallel ranks that hold the same (replicated) kv head as this rank.

    Groups are created once, for every model-parallel group of the job and in the same order on every process
    (as `new_group` requires), and cached.
    """
    hcg = fleet.get_hybrid_communicate_group()
    key = (config.num_key_value_heads, config.tensor_parallel_degree)
    if key not in _KV_REPLICA_GROUPS:
        heads = assign_kv_heads(*key)
        groups = {}
        for mp_ranks in hcg.topology().get_comm_list("model"):
            for head in sorted({h for rank_heads in heads for h in rank_heads}):
                members = [mp_ranks[r] for r, rank_heads in enumerate(heads) if head in rank_heads]
                group = paddle.distributed.new_group(members)
                for rank in members:
                    groups[rank] = group
        _KV_REPLICA_GROUPS[key] = groups
    return _KV_REPLICA_GROUPS[key][paddle.distributed.get_rank()]


def replicated_kv(
    hidden_states: Tensor, k_proj: nn.Linear, v_proj: nn.Linear, group, sequence_parallel: bool
) -> tuple[Tensor, Tensor]:
    """k and v `[tokens, head_dim]` of this rank's replicated kv head (local `k_proj` / `v_proj`).

    The input takes part in the tensor-parallel gradient all-reduce like a column-parallel input (gathered along
    the sequence under sequence parallelism); the weight gradients are summed over `group`, the ranks sharing
    the head (`kv_replica_group`)."""
    from paddle.distributed.fleet.layers.mpu import mp_ops

    if sequence_parallel:
        from paddle.distributed.fleet.utils.sequence_parallel_utils import AllGatherOp

        hidden_states = AllGatherOp.apply(hidden_states)
    else:
        mp_group = fleet.get_hybrid_communicate_group().get_model_parallel_group()
        hidden_states = mp_ops._c_identity(hidden_states, group=mp_group)
    key, value = (
        F.linear(
            hidden_states, mp_ops._c_identity(proj.weight, group=group), mp_ops._c_identity(proj.bias, group=group)
        )
        for proj in (k_proj, v_proj)
    )
    return key, value


def scatter_sequence(hidden_states: Tensor) -> Tensor:
    """Sequence parallel entry: `[batch, seq, hidden]` -> this rank's part of the sequence,
    `[seq / tp * batch, hidden]` (flattened sequence-major: row `i * batch + b` is position `i` of sequence `b`)."""
    from paddle.distributed.fleet.utils.sequence_parallel_utils import ScatterOp

    batch, seq_len, hidden_size = hidden_states.shape
    tp = model_parallel_world_size()
    if seq_len % tp != 0:
        raise ValueError(
            f"sequence_parallel splits the sequence across the {tp} tensor-parallel ranks: the sequence length "
            f"({seq_len}) must be divisible by tensor_parallel_degree ({tp})"
        )
    return ScatterOp.apply(hidden_states.transpose([1, 0, 2]).reshape([seq_len * batch, hidden_size]))


def gather_sequence(hidden_states: Tensor, batch: int, seq_len: int) -> Tensor:
    """Inverse of `scatter_sequence`: `[seq / tp * batch, hidden]` -> `[batch, seq, hidden]` on every rank."""
    from paddle.distributed.fleet.utils.sequence_parallel_utils import GatherOp

    full = GatherOp.apply(hidden_states)
    return full.reshape([seq_len, batch, full.shape[-1]]).transpose([1, 0, 2])


def sequence_to_batch_major(x: Tensor, batch: int, seq_len: int, num_heads: int, head_dim: int) -> Tensor:
    """Output of a sequence-parallel column linear `[seq * batch, heads * head_dim]` ->
    `[batch, seq, heads, head_dim]`."""
    return x.reshape([seq_len, batch, num_heads, head_dim]).transpose([1, 0, 2, 3])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: split a full weight into a rank's shard, merge shards back, fuse / unfuse projections
# ----------------------------------------------------------------------------------------------------------------


def _even_intervals(size: int, degree: int) -> list[Intervals]:
    """`size` cut into `degree` equal contiguous blocks: one interval list per rank."""
    block = size // degree
    return [[(rank * block, (rank + 1) * block)] for rank in range(degree)]


def _kv_intervals(config: Qwen2Config) -> list[Intervals]:
    """Per rank, the columns of the full k/v projection that hold its kv heads (`assign_kv_heads`)."""
    d = config.attention_head_dim
    heads = assign_kv_heads(config.num_key_value_heads, config.tensor_parallel_degree)
    return [[(h * d, (h + 1) * d) for h in rank_heads] for rank_heads in heads]


def _concat_intervals(*parts: tuple[int, list[Intervals]]) -> list[Intervals]:
    """Per-rank intervals of a fused tensor `[part_0 | part_1 | ...]` from `(part size, per-rank intervals)`."""
    fused, offset = [[] for _ in parts[0][1]], 0
    for size, per_rank in parts:
        for rank, intervals in enumerate(per_rank):
            fused[rank] += [(offset + start, offset + stop) for start, stop in intervals]
        offset += size
    return fused


def tensor_parallel_layouts(config: Qwen2Config) -> dict[str, tuple[int, list[Intervals]]]:
    """`{name: (axis, per-rank intervals)}` for every tensor-parallel weight, names relative to the base model
    (`layers.0.self_attn.q_proj.weight`) or the head (`lm_head.weight`). Axis -1 splits output features
    (column-parallel layers, the `[hidden, vocab]` LM head), axis 0 input features (row-parallel layers) and
    the vocabulary of the embedding. Weights not listed (norms, an embedding whose vocabulary does not divide)
    are replicated."""
    tp, d = config.tensor_parallel_degree, config.attention_head_dim
    q_size, kv_size, inter = config.num_attention_heads * d, config.num_key_value_heads * d, config.intermediate_size
    q, kv, mlp = _even_intervals(q_size, tp), _kv_intervals(config), _even_intervals(inter, tp)
    layouts = {}
    if config.vocab_size % tp == 0:
        layouts["embed_tokens.weight"] = (0, _even_intervals(config.vocab_size, tp))
        if not config.tie_word_embeddings:
            layouts["lm_head.weight"] = (-1, _even_intervals(config.vocab_size, tp))
    for i in range(config.num_hidden_layers):
        attn, ffn = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        if config.fuse_attention_qkv:
            column = {"qkv_proj": _concat_intervals((q_size, q), (kv_size, kv), (kv_size, kv))}
        else:
            column = {"q_proj": q, "k_proj": kv, "v_proj": kv}
        for proj, intervals in column.items():
            layouts[f"{attn}{proj}.weight"] = layouts[f"{attn}{proj}.bias"] = (-1, intervals)
        layouts[f"{attn}o_proj.weight"] = (0, q)
        if config.fuse_attention_ffn:
            layouts[f"{ffn}gate_up_fused_proj.weight"] = (-1, _concat_intervals((inter, mlp), (inter, mlp)))
        else:
            layouts[f"{ffn}gate_proj.weight"] = layouts[f"{ffn}up_proj.weight"] = (-1, mlp)
        layouts[f"{ffn}down_proj.weight"] = (0, mlp)
    return layouts


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, paddle.Tensor) else x


def tp_split(weight, axis: int, intervals: Intervals) -> np.ndarray:
    """One rank's shard of a full `weight` (numpy array, paddle Tensor or a lazy safetensors slice)."""
    weight = _to_numpy(weight)
    ndim = len(weight.get_shape()) if hasattr(weight, "get_shape") else weight.ndim
    rows = axis % ndim == 0
    pieces = [weight[start:stop] if rows else weight[:, start:stop] for start, stop in intervals]
    # contiguous: paddlenlp wraps the result with `paddle.Tensor(..., zero_copy=True)`, which ignores strides
    return np.ascontiguousarray(pieces[0]) if len(pieces) == 1 else np.concatenate(pieces, axis=0 if rows else 1)


def tp_merge(shards: list, axis: int, intervals: list[Intervals]) -> np.ndarray:
    """The full weight from every rank's shard (a replicated kv head is taken from the first rank holding it)."""
    shards = [_to_numpy(shard) for shard in shards]
    if len(shards) != len(intervals):
        raise ValueError(f"expected {len(intervals)} tensor-parallel shards, got {len(shards)}")
    axis = axis % shards[0].ndim
    shape = list(shards[0].shape)
    shape[axis] = max(stop for rank_intervals in intervals for _, stop in rank_intervals)
    full, filled = np.empty(shape, dtype=shards[0].dtype), np.zeros(shape[axis], dtype=bool)
    for shard, rank_intervals in zip(shards, intervals):
        offset = 0
        for start, stop in rank_intervals:
            if not filled[start:stop].all():
                target = [slice(None)] * full.ndim
                source = list(target)
                target[axis], source[axis] = slice(start, stop), slice(offset, offset + stop - start)
                full[tuple(target)] = shard[tuple(source)]
                filled[start:stop] = True
            offset += stop - start
    return full


def fuse(tensors: list) -> np.ndarray | Tensor:
    """`[a | b | ...]` along the output (last) axis: q/k/v -> qkv_proj, gate/up -> gate_up_fused_proj."""
    if isinstance(tensors[0], paddle.Tensor):
        return paddle.concat(tensors, axis=-1)
    return np.concatenate(tensors, axis=-1)


def unfuse(fused, ratios: tuple[int, ...]) -> list:
    """Inverse of `fuse` for parts whose widths are in proportion `ratios` (holds for a full weight and for a
    tensor-parallel shard alike, since each part is split evenly across ranks)."""
    width = fused.shape[-1]
    sizes = [width * r // sum(ratios) for r in ratios]
    if isinstance(fused, paddle.Tensor):  # split copies; a slice would be a strided view
        return paddle.split(fused, sizes, axis=-1)
    return [np.ascontiguousarray(part) for part in np.split(fused, np.cumsum(sizes)[:-1], axis=-1)]


def fused_groups(config: Qwen2Config, qkv: bool, ffn: bool) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """`((part names..., fused name), width ratios)` of the fused q/k/v (if `qkv`) and gate/up (if `ffn`)
    projections of every layer, names relative to the base model."""
    groups = []
    for i in range(config.num_hidden_layers):
        attn, mlp = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        if qkv:
            heads = (config.num_attention_heads, config.num_key_value_heads, config.num_key_value_heads)
            for suffix in ("weight", "bias"):
                names = tuple(f"{attn}{proj}.{suffix}" for proj in ("q_proj", "k_proj", "v_proj", "qkv_proj"))
                groups.append((names, heads))
        if ffn:
            names = tuple(f"{mlp}{proj}.weight" for proj in ("gate_proj", "up_proj", "gate_up_fused_proj"))
            groups.append((names, (1, 1)))
    return groups


def tensor_parallel_actions(config: Qwen2Config, is_split: bool = True) -> dict[str, Callable]:
    """`{parameter name: action}` for paddlenlp's tensor-parallel loading and saving; names are suffixes of the
    state-dict keys. With `is_split` an action takes a full weight and returns the shard of rank
    `config.tensor_parallel_rank`; otherwise it takes the list of every rank's shard and returns the full weight."""
    rank, actions = config.tensor_parallel_rank, {}
    for name, (axis, intervals) in tensor_parallel_layouts(config).items():
        if is_split:
            actions[name] = partial(tp_split, axis=axis, intervals=intervals[rank])
        else:
            actions[name] = partial(tp_merge, axis=axis, intervals=intervals)
    return actions


def fuse_or_split_actions(config: Qwen2Config, is_fuse: bool = True) -> dict[tuple[str, ...], Callable]:
    """paddlenlp's fuse/split actions, `{(part names..., fused name): action}`. With `is_fuse` (for a model with
    `fuse_attention_qkv` / `fuse_attention_ffn`) the separate q/k/v or gate/up weights of a checkpoint are
    concatenated; otherwise (for a model without them) a fused checkpoint weight is cut into its parts."""
    qkv, ffn = config.fuse_attention_qkv, config.fuse_attention_ffn
    if is_fuse:
        return {names: fuse for names, _ in fused_groups(config, qkv, ffn)}
    return {names: partial(unfuse, ratios=ratios) for names, ratios in fused_groups(config, not qkv, not ffn)}


def unfused_state_dict(state_dict: dict, config: Qwen2Config) -> dict:
    """`state_dict` with every fused projection replaced by its separate parts (q/k/v, gate/up), order kept."""
    fused = fused_groups(config, config.fuse_attention_qkv, config.fuse_attention_ffn)
    groups = {names[-1]: (names[:-1], ratios) for names, ratios in fused}
    unfused = {}
    for key, value in state_dict.items():
        name = key
        while name not in groups and "." in name:
            name = name.split(".", 1)[1]
        if name not in groups or value is None:
            unfused[key] = value
            continue
        parts, ratios = groups[name]
        for part, tensor in zip(parts, unfuse(value, ratios)):
            unfused[key[: len(key) - len(name)] + part] = tensor
    return unfused
