#!/usr/bin/env python
"""Hybrid-parallel (pre)training of Qwen2 with paddle.distributed.fleet: tensor (+ sequence), pipeline, sharding
stage 1 and data parallelism. Start one process per device with `paddle.distributed.launch`; the data-parallel
degree is what is left: dp = processes / (tp * pp * sharding).

    # one machine, 2 GPUs, tensor parallel (see examples/pretrain_tp.sh for more launch lines)
    python -m paddle.distributed.launch --devices 0,1 examples/pretrain_tp.py --tp 2 --model path/to/Qwen2-0.5B

    # N machines x 8 GPUs: TP 8 inside a machine, one pipeline stage per machine (run on every machine)
    python -m paddle.distributed.launch --nnodes N --ips 10.0.0.1,10.0.0.2,... --devices 0,1,2,3,4,5,6,7 \\
        examples/pretrain_tp.py --tp 8 --pp N --sequence-parallel --model path/to/Qwen2-72B

`--model` is a checkpoint folder (an HF one, or a paddlenlp one written by `save_pretrained`; with `--pp > 1` it
must be a paddlenlp one: convert HF checkpoints with `paddle-qwen2 convert`); every rank reads only its slice.
`--config` (a config.json) starts from random weights instead. Training data: `--tokens`, a 1-D .npy array of
token ids cut into random windows, or random tokens (a smoke run). At the end the model is saved merged into one
full checkpoint in `--output-dir` (tensor parallel shards merged; pipeline runs save one folder per stage).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
from paddle.distributed import fleet

from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.modeling_pp import Qwen2ForCausalLMPipe


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder to start from (HF or paddlenlp)")
    source.add_argument("--config", help="config.json to start from random weights")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel degree")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel degree (stages split by decoder layer)")
    p.add_argument("--sharding", type=int, default=1, help="sharding stage 1 degree (optimizer states split)")
    p.add_argument(
        "--sequence-parallel", action="store_true", help="split activations along the sequence (needs --tp > 1)"
    )
    p.add_argument("--fuse", action="store_true", help="fused q/k/v and gate/up projections")
    p.add_argument("--recompute", choices=["none", "full", "full_attn", "core_attn"], default="none")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--tokens", help="1-D .npy array of token ids (default: random tokens)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--micro-batch-size", type=int, default=1, help="sequences per rank and step (per micro-batch with --pp)"
    )
    p.add_argument("--accumulate-steps", type=int, default=1, help="pipeline micro-batches per step (--pp > 1)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output-dir", default="output/pretrain_tp")
    return p.parse_args(argv)


def init_fleet(args):
    """fleet's hybrid topology; the data-parallel degree is what the other degrees leave of the world size."""
    world = dist.get_world_size()
    model_ranks = args.tp * args.pp * args.sharding
    if world % model_ranks != 0:
        raise SystemExit(f"{world} processes cannot hold tp {args.tp} x pp {args.pp} x sharding {args.sharding}")
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {
        "dp_degree": world // model_ranks,
        "mp_degree": args.tp,
        "pp_degree": args.pp,
        "sharding_degree": args.sharding,
    }
    if args.pp > 1:
        strategy.pipeline_configs = {
            "accumulate_steps": args.accumulate_steps,
            "micro_batch_size": args.micro_batch_size,
        }
    strategy.tensor_parallel_configs = {"tensor_init_seed": args.seed}
    fleet.init(is_collective=True, strategy=strategy)
    return fleet.get_hybrid_communicate_group()


def build_model(args, hcg):
    """Qwen2ForCausalLM (or the pipeline version) with this rank's slice of every weight."""
    flags = dict(
        tensor_parallel_degree=args.tp,
        tensor_parallel_rank=hcg.get_model_parallel_rank(),
        sequence_parallel=args.sequence_parallel,
        fuse_attention_qkv=args.fuse,
        fuse_attention_ffn=args.fuse,
        pipeline_parallel_degree=args.pp,
        use_cache=False,
    )
    if args.recompute != "none":
        flags.update(recompute=True, recompute_granularity=args.recompute)
    cls = Qwen2ForCausalLMPipe if args.pp > 1 else Qwen2ForCausalLM
    if args.model:
        return cls.from_pretrained(args.model, dtype=args.dtype, **flags)
    config = Qwen2Config.from_pretrained(args.config)
    for key, value in flags.items():
        setattr(config, key, value)
    paddle.set_default_dtype(args.dtype)
    return cls(config)


def batches(args, vocab_size: int, hcg):
    """Endless (input_ids, labels) `[micro_batch * accumulate, seq_len]`, different on every data-parallel and
    sharding rank and identical across the tensor-parallel and pipeline ranks of one model replica."""
    data_rank = hcg.get_data_parallel_rank() * args.sharding + hcg.get_sharding_parallel_rank()
    rows = args.micro_batch_size * (args.accumulate_steps if args.pp > 1 else 1)
    tokens = np.load(args.tokens, mmap_mode="r") if args.tokens else None
    for step in range(args.steps):
        rng = np.random.RandomState(args.seed + 1000 * step + data_rank)
        if tokens is None:
            ids = rng.randint(0, vocab_size, size=(rows, args.seq_len))
        else:
            starts = rng.randint(0, len(tokens) - args.seq_len, size=rows)
            ids = np.stack([tokens[s : s + args.seq_len] for s in starts])
        ids = paddle.to_tensor(ids.astype("int64"))
        yield ids, ids  # labels aligned with the inputs; the criterion shifts them


def main(argv=None) -> None:
    args = parse_args(argv)
    if not paddle.is_compiled_with_cuda():
        paddle.set_device("cpu")
    hcg = init_fleet(args)
    paddle.seed(args.seed + hcg.get_data_parallel_rank())
    model = build_model(args, hcg)
    vocab_size = model.config.vocab_size
    if args.sequence_parallel:
        from paddle.distributed.fleet.utils.sequence_parallel_utils import register_sequence_parallel_allreduce_hooks

        register_sequence_parallel_allreduce_hooks(model, args.accumulate_steps, fuse_sequence_parallel_allreduce=False)
    optimizer = paddle.optimizer.AdamW(
        learning_rate=args.lr, parameters=model.parameters(), multi_precision=args.dtype != "float32"
    )
    model, optimizer = fleet.distributed_model(model), fleet.distributed_optimizer(optimizer)

    log = []
    for step, (ids, labels) in enumerate(batches(args, vocab_size, hcg), start=1):
        start = time.time()
        if args.pp > 1:
            loss = model.train_batch([(ids, None, None), labels], optimizer)
        else:
            loss = model(input_ids=ids, labels=labels, return_dict=True).loss
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
        log.append({"step": step, "loss": float(loss), "seconds": round(time.time() - start, 3)})
        if dist.get_rank() == 0:
            print(json.dumps(log[-1]), flush=True)

    save(args, model, hcg, log)


def save(args, model, hcg, log) -> None:
    """One full checkpoint (TP shards merged by `_get_tensor_parallel_mappings`); a folder per pipeline stage."""
    out = Path(args.output_dir)
    if args.pp > 1:
        out = out / f"stage{hcg.get_stage_id()}"
    raw = model._layers if hasattr(model, "_layers") else model
    first_of_replica = hcg.get_data_parallel_rank() == 0 and hcg.get_sharding_parallel_rank() == 0
    if first_of_replica:  # every TP rank takes part in the merge; rank 0 of the TP group writes
        raw.save_pretrained(str(out), merge_tensor_parallel=args.tp > 1, safe_serialization=True)
    if dist.get_rank() == 0:
        (Path(args.output_dir) / "train_log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
