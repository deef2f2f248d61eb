#!/usr/bin/env bash
# The one prepared GPU check (issue: GPU trials keep the GPU busy). Run from the project root on a machine with a
# CUDA GPU, torch and torchvision, after `../shared/tools/gpu-bundle` put the torch-pruning wheel and the CIFAR-10
# archive in .gpu-bundle/ (no optuna, ray or mlflow needed). About 6 minutes on an H100; writes under ${OUT:-out}/.
set -euo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/site /tmp/data
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-bundle/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD CASCADE_CACHE=/tmp/cascade-cache
[ -d /tmp/data/cifar10-jpg ] || tar -xJf .gpu-bundle/cifar10-jpg.tar.xz -C /tmp/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# 1. the step table (plain vs cascade N = 1..4, budgets flops / filters, compile off / on) and real epochs
timeout 300 python3 bench/throughput.py --width 1.0 --batch 128 --iters 30 --compile \
  --data /tmp/data/cifar10-jpg --out "$out/throughput_gpu.json" 2>&1 | tee "$out/throughput.log"
# 2. two joint + two fine-tune epochs of the quality benchmark's GPU mode (full width, 45k images)
timeout 240 python3 bench/quality.py --data /tmp/data/cifar10-jpg --mode gpu --epochs 2 2 --teacher-epochs 2 \
  --methods cascade_1ta l1_kd --targets 0.73 --seeds 0 --workdir /tmp/bq --out "$out/quality_gpu.json" \
  2>&1 | tee "$out/quality.log" || echo "quality run stopped (timeout or error): see $out/quality.log"
