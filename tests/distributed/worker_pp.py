"""Pipeline-parallel checks on 2 CPU ranks (2 stages), launched by test_pipeline_parallel.py.

Each check builds `Qwen2ForCausalLMPipe` from HF-derived weights, wraps it with `fleet.distributed_model`
(PipelineParallel, 1F1B, 2 micro-batches of one row) and runs one `train_batch` with SGD (lr 1), so the loss and
the parameter update (= the gradient) of every stage can be compared with one process running the same two
micro-batches. gloo cannot send/recv on the calculation stream, so the strategy turns batched p2p off.
Results go to `<out>/pp.rank<r>.json`.
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

from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.modeling_pp import Qwen2ForCausalLMPipe
from worker_tp import hf_state_dict, max_diff

SEQ = 8
MICRO_BATCHES = 2


def init_fleet():
    paddle.set_device("cpu")
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": 1, "pp_degree": 2, "sharding_degree": 1}
    strategy.hybrid_configs["pp_configs"].use_batch_p2p_comm = False  # gloo: no p2p on the calc stream
    strategy.pipeline_configs = {"accumulate_steps": MICRO_BATCHES, "micro_batch_size": 1}
    fleet.init(is_collective=True, strategy=strategy)
    dist.ParallelEnv._device_id = 0  # PipelineLayer reads a device id; the CPU ParallelEnv has none
    return fleet.get_hybrid_communicate_group()


def batch(vocab: int):
    rng = np.random.RandomState(2)
    ids = rng.randint(2, vocab, size=(MICRO_BATCHES, SEQ)).astype("int64")
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    ids[mask == 0] = 0
    labels = np.where(mask == 1, ids, -100)
    return ids, mask, labels


def reference(config: Qwen2Config, state: dict, ids, mask, labels):
    """Loss (mean over micro-batches) and gradients of one process on the same micro-batches."""
    model = Qwen2ForCausalLM(config)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.train()
    losses = [
        model(
            input_ids=paddle.to_tensor(ids[i : i + 1]),
            attention_mask=paddle.to_tensor(mask[i : i + 1]),
            labels=paddle.to_tensor(labels[i : i + 1]),
            return_dict=True,
        ).loss
        for i in range(MICRO_BATCHES)
    ]
    loss = paddle.add_n(losses) / MICRO_BATCHES
    loss.backward()
    return float(loss), {k: p.grad.numpy() for k, p in model.state_dict().items() if p.grad is not None}


def pipeline_step(pipe: Qwen2ForCausalLMPipe, ids, mask, labels):
    """One train_batch with SGD(lr=1): loss and this stage's gradients (parameter before - after)."""
    model = fleet.distributed_model(pipe)
    optimizer = fleet.distributed_optimizer(paddle.optimizer.SGD(learning_rate=1.0, parameters=pipe.parameters()))
    params = pipe.state_dict()  # Qwen2ForCausalLM names
    before = {k: v.numpy().copy() for k, v in params.items()}
    data = [(paddle.to_tensor(ids), paddle.to_tensor(mask), None), paddle.to_tensor(labels)]
    loss = model.train_batch(data, optimizer)
    return float(loss), {k: before[k] - v.numpy() for k, v in params.items()}


CHECKS = {
    # name: (HF variant, config overrides)
    "untied": ("gqa", {}),
    "tied": ("tied", {}),
    "sliding_window": ("sliding", {}),
    "recompute_full": ("gqa", {"recompute": True, "recompute_granularity": "full", "no_recompute_layers": [0]}),
    "recompute_core_attn": ("tied", {"recompute": True, "recompute_granularity": "core_attn"}),
    "recompute_full_attn": ("sliding", {"recompute": True, "recompute_granularity": "full_attn"}),
    # fleet's hybrid recompute (pp_recompute_interval > 1) runs on GPU only; recorded, see the test
    "recompute_interval_2": ("gqa", {"recompute": True, "recompute_granularity": "full", "pp_recompute_interval": 2}),
}


def main():
    spec = json.load(open(sys.argv[1]))
    hcg = init_fleet()
    results = {"stage": hcg.get_stage_id()}
    refs = {}

    def check(variant, overrides, from_pretrained=False):
        path = spec["hf"][variant]
        config = Qwen2Config.from_pretrained(path)
        state = hf_state_dict(path, config)
        ids, mask, labels = batch(config.vocab_size)
        if variant not in refs:
            refs[variant] = reference(config, state, ids, mask, labels)
        ref_loss, ref_grads = refs[variant]
        if from_pretrained:
            pipe = Qwen2ForCausalLMPipe.from_pretrained(spec["paddle_checkpoint"], dtype="float32")
        else:
            pipe = Qwen2ForCausalLMPipe(Qwen2Config.from_pretrained(path, **overrides))
            pipe.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
        loss, grads = pipeline_step(pipe, ids, mask, labels)
        diffs = {k: max_diff(g, ref_grads[k]) for k, g in grads.items()}
        worst = max(diffs, key=diffs.get)
        return {
            "loss": abs(loss - ref_loss),
            "loss_value": loss,
            "grad": diffs[worst],
            "grad_worst": worst,
            "params": sorted(grads),
        }

    # An error on one stage leaves the other waiting on a send/recv, so stop at the first one.
    checks = [item for item in CHECKS.items() if item[0] != "recompute_interval_2"] + [
        ("from_pretrained", ("gqa", None))
    ]
    for name, (variant, overrides) in checks + [("recompute_interval_2", CHECKS["recompute_interval_2"])]:
        try:
            results[name] = check(variant, overrides or {}, from_pretrained=overrides is None)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
            break

    with open(os.path.join(spec["out"], f"pp.rank{dist.get_rank()}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
    # The results are written. Leave without the interpreter's teardown: paddle's gloo process group can abort
    # (SIGABRT) while it is destroyed, after every check has passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
