#!/usr/bin/env bash
# GPU readiness check: the paper config's training speed in fp32 and bf16 (samples/s, peak memory),
# the real trainer on each, and torchrun across all GPUs when there are two or more.
#   benchmarks/gpu_check.sh                  # on a GPU machine: 300 timed steps per variant
#   benchmarks/gpu_check.sh --compile        # also the torch.compile'd variants
#   benchmarks/gpu_check.sh --cpu --steps 2  # anywhere: slow, checks the script and the code paths
# Output: a table on stdout and benchmarks/results/gpu_check.json (--cpu: gpu_check_cpu.json).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" benchmarks/gpu_check.py "$@"
