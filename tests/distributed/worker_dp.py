"""Data-parallel and group-sharded optimizer smoke checks on 2 CPU ranks, launched by test_data_parallel.py.

fleet runs with sharding_degree 2 (both ranks in one sharding group). Each rank trains on its half of the batch
for one SGD step (lr 1): with `paddle.DataParallel` (what `fleet.distributed_model` returns for dp_degree > 1)
and with fleet's sharding stage 1 (`fleet.distributed_model` / `fleet.distributed_optimizer`). Each rank's loss
must equal one process's loss on the same half, and the update (= the averaged gradient) one process's update
on the whole batch. Group-sharded stage 2 is attempted and its error recorded. Results: `<out>/dp.rank<r>.json`.
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
from worker_tp import hf_state_dict, max_diff

SEQ = 8


def init_fleet():
    paddle.set_device("cpu")
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": 1, "mp_degree": 1, "pp_degree": 1, "sharding_degree": 2}
    fleet.init(is_collective=True, strategy=strategy)


def data(vocab: int):
    rng = np.random.RandomState(3)
    ids = rng.randint(2, vocab, size=(4, SEQ)).astype("int64")
    labels = ids.copy()
    labels[3, -2:] = -100
    return ids, labels


def fresh_model(config: Qwen2Config, state: dict) -> Qwen2ForCausalLM:
    model = Qwen2ForCausalLM(config)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.train()
    return model


def loss_of(model, ids, labels):
    return model(input_ids=paddle.to_tensor(ids), labels=paddle.to_tensor(labels), return_dict=True).loss


def reference(config, state, ids, labels, rank):
    """One process: the loss on each half and the SGD(lr=1) update of the mean of the two half losses."""
    model = fresh_model(config, state)
    halves = [loss_of(model, ids[i * 2 : i * 2 + 2], labels[i * 2 : i * 2 + 2]) for i in range(2)]
    ((halves[0] + halves[1]) / 2).backward()
    updates = {k: p.grad.numpy() for k, p in model.named_parameters()}
    return float(halves[rank]), updates


def step(model, optimizer, params, ids, labels):
    before = {k: p.numpy().copy() for k, p in params}
    loss = loss_of(model, ids, labels)
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
    return float(loss), {k: before[k] - p.numpy() for k, p in params}


def main():
    spec = json.load(open(sys.argv[1]))
    init_fleet()
    rank = dist.get_rank()
    config = Qwen2Config.from_pretrained(spec["hf"])
    state = hf_state_dict(spec["hf"], config)
    ids, labels = data(config.vocab_size)
    mine = slice(rank * 2, rank * 2 + 2)
    ref_loss, ref_updates = reference(config, state, ids, labels, rank)
    results = {}

    def compare(loss, updates):
        diffs = {k: max_diff(u, ref_updates[k]) for k, u in updates.items()}
        worst = max(diffs, key=diffs.get)
        return {
            "loss": abs(loss - ref_loss),
            "loss_value": loss,
            "update": diffs[worst],
            "update_worst": worst,
            "num_params": len(updates),
        }

    def data_parallel():
        model = fresh_model(config, state)
        params = list(model.named_parameters())
        optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=model.parameters())
        return compare(*step(paddle.DataParallel(model), optimizer, params, ids[mine], labels[mine]))

    def sharding_stage1():
        model = fresh_model(config, state)
        params = list(model.named_parameters())
        optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=model.parameters())
        wrapped, optimizer = fleet.distributed_model(model), fleet.distributed_optimizer(optimizer)
        return compare(*step(wrapped, optimizer, params, ids[mine], labels[mine]))

    def sharding_stage2():
        from paddle.distributed.sharding import group_sharded_parallel

        model = fresh_model(config, state)
        params = list(model.named_parameters())
        optimizer = paddle.optimizer.SGD(learning_rate=1.0, parameters=model.parameters())
        model, optimizer, _ = group_sharded_parallel(model, optimizer, level="os_g")
        return compare(*step(model, optimizer, params, ids[mine], labels[mine]))

    for name, fn in (
        ("data_parallel", data_parallel),
        ("sharding_stage1", sharding_stage1),
        ("sharding_stage2", sharding_stage2),
    ):
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = {"error": traceback.format_exc(), "message": f"{type(exc).__name__}: {exc}"}

    with open(os.path.join(spec["out"], f"dp.rank{rank}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
    # The results are written. Leave without the interpreter's teardown: paddle's gloo process group can abort
    # (SIGABRT) while it is destroyed, after every check has passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
