#!/usr/bin/env bash
# On a GPU machine, in under 10 minutes: the GPU readiness check, then the paper architecture (widths
# 256/512, 4 layers, 8 heads) trained on realmini with the best offline backbone, both recipes (paper
# and plus), one unified model each; per-class metrics on stdout, JSON under benchmarks/results/.
#   benchmarks/gpu_realmini.sh [EPOCHS]     # default 30 epochs per recipe (the paper trains 200;
#                                           # raise it once the first run shows its samples/s)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
epochs="${1:-30}"
benchmarks/gpu_check.sh --steps 100
"$python" benchmarks/realmini.py --recipes paper plus --out benchmarks/results/realmini_gpu.json \
    backbone.name=tf_efficientnet_lite2 "model.hidden_dims=[256, 512]" model.num_layers=4 model.num_heads=8 \
    train.device=cuda train.batch_size=16 "train.epochs=$epochs"
