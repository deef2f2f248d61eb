#!/usr/bin/env bash
# The one prepared GPU check: bench/gpu_check.py (throughput, real epochs against the compute floor, packing,
# compile) on a machine with a CUDA GPU, torch and torchvision, after `../shared/tools/gpu-bundle` put the
# torch-pruning wheel and the CIFAR-10 archive in .gpu-bundle/ (no optuna, ray or mlflow needed). Run from the
# project root (arguments go to gpu_check.py, e.g. --sections epochs --compile-mode reduce-overhead); sized to
# one run of ${DEADLINE:-400} s. Writes under ${OUT:-out}/: gpu.txt (the card),
# gpu_check.json (every figure, saved as it is measured) and gpu_check.log.
set -euo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/site /tmp/data
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-bundle/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD CASCADE_CACHE=/tmp/cascade-cache PYTHONUNBUFFERED=1
[ -d /tmp/data/cifar10-jpg ] || tar -xJf .gpu-bundle/cifar10-jpg.tar.xz -C /tmp/data
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
stamp() { while IFS= read -r line; do printf '%4ss %s\n' "$SECONDS" "$line"; done; }  # seconds since the start
timeout -k 10 $(( ${DEADLINE:-400} + 30 )) python3 bench/gpu_check.py --data /tmp/data/cifar10-jpg \
  --deadline $(( ${DEADLINE:-400} - SECONDS )) --out "$out/gpu_check.json" "$@" 2>&1 \
  | stamp | tee "$out/gpu_check.log"
