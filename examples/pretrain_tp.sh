#!/usr/bin/env bash
# Launch lines for examples/pretrain_tp.py (hybrid-parallel Qwen2 training with paddle.distributed.fleet).
#
#   bash examples/pretrain_tp.sh <mode> [extra pretrain_tp.py options]
#
# modes:
#   tp2         1 machine, 2 GPUs: tensor parallel 2
#   tp2-sp      1 machine, 2 GPUs: tensor + sequence parallel, full recompute, fused projections
#   tp4-pp2     1 machine, 8 GPUs: tensor parallel 4 x pipeline 2
#   multi-node  N machines x 8 GPUs: TP 8 inside a machine, one pipeline stage per machine, data parallel on top
#               when there are more machines than stages. Run the same line on every machine:
#                 IPS=10.0.0.1,10.0.0.2 PP=2 bash examples/pretrain_tp.sh multi-node
#   cpu-dp      no GPU: 2 CPU processes, data parallel (a smoke run of the launch and the training loop)
#
# MODEL is a checkpoint folder (HF or paddlenlp; for pipeline modes a paddlenlp one: `paddle-qwen2 convert`).
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=${1:-tp2}
shift || true
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-output/qwen2-0.5b}
OUT=${OUT:-output/pretrain_tp/$MODE}
LAUNCH=("$PYTHON" -m paddle.distributed.launch --log_dir "$OUT/logs")

case "$MODE" in
  tp2)
    "${LAUNCH[@]}" --devices 0,1 examples/pretrain_tp.py \
      --model "$MODEL" --tp 2 --seq-len 2048 --dtype bfloat16 --output-dir "$OUT" "$@"
    ;;
  tp2-sp)
    "${LAUNCH[@]}" --devices 0,1 examples/pretrain_tp.py \
      --model "$MODEL" --tp 2 --sequence-parallel --recompute full --fuse \
      --seq-len 4096 --dtype bfloat16 --output-dir "$OUT" "$@"
    ;;
  tp4-pp2)
    "${LAUNCH[@]}" --devices 0,1,2,3,4,5,6,7 examples/pretrain_tp.py \
      --model "$MODEL" --tp 4 --pp 2 --accumulate-steps 8 --seq-len 4096 --dtype bfloat16 --output-dir "$OUT" "$@"
    ;;
  multi-node)
    # Every machine runs this line; --ips lists all machines (the first one hosts the rendezvous).
    # Equivalent without --ips: --master <ip of machine 0>:<port> --nnodes N --rank <i>.
    IPS=${IPS:?set IPS=ip1,ip2,... (all machines)}
    NNODES=$(tr ',' '\n' <<<"$IPS" | wc -l)
    PP=${PP:-$NNODES}
    "${LAUNCH[@]}" --nnodes "$NNODES" --ips "$IPS" --devices 0,1,2,3,4,5,6,7 examples/pretrain_tp.py \
      --model "$MODEL" --tp 8 --pp "$PP" --sequence-parallel --recompute full \
      --accumulate-steps 16 --seq-len 4096 --dtype bfloat16 --output-dir "$OUT" "$@"
    ;;
  cpu-dp)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "${LAUNCH[@]}" --nproc_per_node 2 examples/pretrain_tp.py \
      --config configs/tiny-gqa.json --steps 5 --seq-len 32 --micro-batch-size 2 --output-dir "$OUT" "$@"
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
