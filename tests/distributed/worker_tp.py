"""Tensor / sequence parallel checks on 2 CPU ranks, launched by test_tensor_parallel.py with
`python -m paddle.distributed.launch --nproc_per_node 2 worker_tp.py <spec.json>`.

Every check builds a TP=1 reference and a TP=2 model from the same HF-derived weights and records, per rank,
the largest differences of logits, loss and gradients (each rank's shard against the matching slice of the
reference gradient, and the shards gathered back into full gradients). Results go to `<out>/tp.rank<r>.json`;
the parent test asserts on them.
"""

import json
import os
import sys
import traceback
import zlib  # noqa: F401  # before paddle

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.distributed import fleet

import cpu_shims
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.parallel import tensor_parallel_layouts, tp_merge

SEQ = 8
TP = 2


def init_fleet():
    paddle.set_device("cpu")
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": TP, "pp_degree": 1, "sharding_degree": 1}
    fleet.init(is_collective=True, strategy=strategy)
    return fleet.get_hybrid_communicate_group()


def hf_state_dict(path: str, config: Qwen2Config) -> dict:
    """Full Paddle state dict (numpy) of the HF checkpoint at `path`, through `_get_name_mappings`."""
    from safetensors.numpy import load_file

    hf = load_file(os.path.join(path, "model.safetensors"))
    state = {}
    for m in Qwen2ForCausalLM._get_name_mappings(config):
        if m.source_name in hf:
            tensor = hf[m.source_name]
            state[m.target_name] = np.ascontiguousarray(tensor.T) if m.action == "transpose" else tensor
    return state


def relative_name(key: str) -> str:
    return key[len("qwen2.") :] if key.startswith("qwen2.") else key


def fused(full: dict, config: Qwen2Config) -> dict:
    """`full` (separate q/k/v, gate/up) in the layout of a model with `config`'s fuse flags."""
    state = dict(full)
    for names, fuse in Qwen2ForCausalLM._get_fuse_or_split_param_mappings(config, is_fuse=True).items():
        keys = ["qwen2." + n for n in names]
        state[keys[-1]] = fuse([state.pop(k) for k in keys[:-1]])
    return state


def shard(full: dict, config: Qwen2Config) -> dict:
    """This rank's tensors of `full` for a TP model with `config` (fused first if the config fuses)."""
    actions = Qwen2ForCausalLM._get_tensor_parallel_mappings(config, is_split=True)
    state = fused(full, config)
    return {k: actions[relative_name(k)](v) if relative_name(k) in actions else v for k, v in state.items()}


def build(config: Qwen2Config, state: dict) -> Qwen2ForCausalLM:
    paddle.seed(0)
    model = Qwen2ForCausalLM(config)
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    assert not missing and not unexpected, (missing, unexpected)
    model.train()  # recompute only acts in training mode; there is no dropout
    return model


def batch(vocab: int):
    rng = np.random.RandomState(1)
    ids = rng.randint(2, vocab, size=(2, SEQ)).astype("int64")
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    ids[mask == 0] = 0
    labels = np.where(mask == 1, ids, -100)
    return paddle.to_tensor(ids), paddle.to_tensor(mask), paddle.to_tensor(labels)


def run(model, ids, mask, labels, sequence_parallel: bool = False):
    """Gathered logits, loss and per-parameter gradients (numpy) of one forward/backward."""
    if sequence_parallel:
        from paddle.distributed.fleet.utils.sequence_parallel_utils import register_sequence_parallel_allreduce_hooks

        register_sequence_parallel_allreduce_hooks(model, accumulation_steps=1, fuse_sequence_parallel_allreduce=False)
    logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=True).loss
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
    return logits.numpy(), float(loss), grads


def max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max())


def compare(ref, tp, config: Qwen2Config, group) -> dict:
    """Differences between the reference (TP=1) and this rank's TP results."""
    (ref_logits, ref_loss, ref_grads), (logits, loss, grads) = ref, tp
    expected_shards = shard(ref_grads, config)
    expected_full = fused(ref_grads, config)
    layouts = tensor_parallel_layouts(config)
    shard_diffs, gathered_diffs = {}, {}
    for name in sorted(expected_shards):
        shard_diffs[name] = max_diff(grads.get(name, np.full([1], np.inf)), expected_shards[name])
        if relative_name(name) in layouts:
            axis, intervals = layouts[relative_name(name)]
            pieces = []
            dist.all_gather(pieces, paddle.to_tensor(grads[name]), group=group)
            gathered_diffs[name] = max_diff(tp_merge(pieces, axis, intervals), expected_full[name])
    worst = max(shard_diffs, key=shard_diffs.get)
    return {
        "logits": max_diff(logits, ref_logits),
        "loss": abs(loss - ref_loss),
        "loss_value": loss,
        "grad_shard": shard_diffs[worst],
        "grad_shard_worst": worst,
        "grad_gathered": max(gathered_diffs.values()),
        "num_grads": len(grads),
        "num_expected": len(expected_shards),
        "logits_scale": float(np.abs(ref_logits).max()),
    }


def gloo_sequence_parallel_collectives(group) -> dict:
    """Which of the collectives sequence parallelism uses run on gloo as shipped (before the CPU shims)."""
    from paddle.distributed.fleet.utils import sequence_parallel_utils as sp

    outcome = {}
    for name, fn in (
        ("all_gather", lambda: sp.all_gather(paddle.ones([2, 3]))),
        ("reduce_scatter", lambda: sp.reduce_scatter(paddle.ones([2, 3]))),
        ("process_group.allreduce", lambda: group.process_group.allreduce(paddle.ones([2])).wait()),
    ):
        try:
            fn()
            outcome[name] = "ok"
        except Exception as exc:  # recorded for the report
            outcome[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return outcome


LAYOUTS = {"unfused": {}, "fused": {"fuse_attention_qkv": True, "fuse_attention_ffn": True}}
SOURCES = ("paddle", "hf")


def checkpoint_round_trip(spec: dict, rank: int, ref_logits, ids, mask) -> dict:
    """Full checkpoints (paddlenlp's and the HF folder it came from) loaded into the TP ranks by
    `from_pretrained`, unfused and fused, then saved back merged to `<out>/merged-<source>-<layout>`."""
    results = {}
    for source in SOURCES:
        path = spec["paddle_checkpoint"] if source == "paddle" else spec["hf"]["gqa"]
        for layout, flags in LAYOUTS.items():
            model = Qwen2ForCausalLM.from_pretrained(
                path, tensor_parallel_degree=TP, tensor_parallel_rank=rank, dtype="float32", **flags
            )
            model.eval()
            logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits.numpy()
            out_dir = os.path.join(spec["out"], f"merged-{source}-{layout}")
            model.save_pretrained(out_dir, merge_tensor_parallel=True, safe_serialization=True)
            results[f"{source}-{layout}"] = {"logits": max_diff(logits, ref_logits)}
    return results


CHECKS = {
    # name: (HF variant, config overrides)
    "gqa": ("gqa", {}),
    "gqa_gathered_logits_loss": ("gqa", {"tensor_parallel_output": False}),
    "tied": ("tied", {}),
    "one_kv_head": ("mqa", {}),
    "fused": ("gqa", {"fuse_attention_qkv": True, "fuse_attention_ffn": True}),
    "vocab_not_divisible": ("vocab_odd", {}),
    "recompute_full": ("gqa", {"recompute": True, "recompute_granularity": "full", "no_recompute_layers": [1]}),
    "recompute_full_attn": ("gqa", {"recompute": True, "recompute_granularity": "full_attn"}),
    "recompute_core_attn": ("gqa", {"recompute": True, "recompute_granularity": "core_attn"}),
}
SP_CHECKS = {
    "sp": ("gqa", {"sequence_parallel": True}),
    "sp_one_kv_head": ("mqa", {"sequence_parallel": True}),
    "sp_fused_recompute": (
        "gqa",
        {"sequence_parallel": True, "fuse_attention_qkv": True, "fuse_attention_ffn": True, "recompute": True},
    ),
}


def main():
    spec = json.load(open(sys.argv[1]))
    cpu_shims.install_tensor_parallel()
    hcg = init_fleet()
    rank, group = hcg.get_model_parallel_rank(), hcg.get_model_parallel_group()
    results, refs = {}, {}

    def check(name, variant, overrides, sequence_parallel=False):
        path = spec["hf"][variant]
        base = Qwen2Config.from_pretrained(path)
        full = hf_state_dict(path, base)
        ids, mask, labels = batch(base.vocab_size)
        if variant not in refs:
            refs[variant] = run(build(base, full), ids, mask, labels)
        config = Qwen2Config.from_pretrained(path, tensor_parallel_degree=TP, tensor_parallel_rank=rank, **overrides)
        model = build(config, shard(full, config))
        # fleet's TensorParallel wrapper broadcasts the non-distributed parameters from rank 0 when it wraps (the
        # kv heads of different ranks must survive that); its forward broadcasts inputs, which needs a GPU.
        fleet.distributed_model(model)
        results[name] = compare(refs[variant], run(model, ids, mask, labels, sequence_parallel), config, group)
        return model

    for name, (variant, overrides) in CHECKS.items():
        try:
            check(name, variant, overrides)
        except Exception:
            results[name] = {"error": traceback.format_exc()}

    results["gloo"] = gloo_sequence_parallel_collectives(group)
    cpu_shims.install_sequence_parallel()
    for name, (variant, overrides) in SP_CHECKS.items():
        try:
            model = check(name, variant, overrides, sequence_parallel=True)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    try:  # a sequence the ranks cannot share evenly
        model(input_ids=paddle.to_tensor(np.full([2, SEQ - 1], 5, dtype="int64")))
        results["sp_indivisible_sequence"] = "no error"
    except Exception as exc:
        results["sp_indivisible_sequence"] = f"{type(exc).__name__}: {exc}"

    try:
        ids, mask, _ = batch(128)
        results["checkpoint"] = checkpoint_round_trip(spec, rank, refs["gqa"][0], ids, mask)
    except Exception:
        results["checkpoint"] = {"error": traceback.format_exc()}

    with open(os.path.join(spec["out"], f"tp.rank{dist.get_rank()}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
    # The results are written. Leave without the interpreter's teardown: paddle's gloo process group can abort
    # (SIGABRT) while it is destroyed, after every check has passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
