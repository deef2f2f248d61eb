#!/usr/bin/env bash
# The one prepared GPU check, sized to one 8-minute run. Run from the project root on a machine with a CUDA GPU,
# torch and torchvision, after `../shared/tools/gpu-bundle` put the torch-pruning wheel and the CIFAR-10 archive in
# .gpu-bundle/ (no optuna, ray or mlflow needed). Writes under ${OUT:-out}/:
# - compile_check.log: `cascade prune` on digits with the opt-in `compile: true` (joint and fine-tune steps through
#   torch.compile), in the background while the teacher trains;
# - quality_gpu.json / .png, quality.log: bench/quality.py's comparison at full width on 45k images (--mode gpu),
#   ${EPOCHS:-3} + ${EPOCHS:-3} epochs, a ${TEACHER_EPOCHS:-20}-epoch teacher, rows ${JOBS:-8} at a time, saved as
#   they finish (seed-major: a run cut short at ${DEADLINE:-470} s after the start has whole seeds);
#   rows.tar.gz: each row's log and result. On an H200 this took 382 s (BENCHMARKS.md).
set -euo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/site /tmp/data
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-bundle/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD CASCADE_CACHE=/tmp/cascade-cache PYTHONUNBUFFERED=1
[ -d /tmp/data/cifar10-jpg ] || tar -xJf .gpu-bundle/cifar10-jpg.tar.xz -C /tmp/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
stamp() { while IFS= read -r line; do printf '%4ss %s\n' "$SECONDS" "$line"; done; }  # seconds since the start

(timeout 300 python3 -m cascade.cli prune --out /tmp/compile_check --set data.name=digits --set teacher.epochs=1 \
   --set schedule.joint_epochs=1 --set schedule.finetune_epochs=1 --set cascade.ratios=[0.73,0.0] \
   --set compile=true 2>&1 \
   | stamp > "$out/compile_check.log"; echo "compile check: exit ${PIPESTATUS[0]}" >> "$out/compile_check.log") &

timeout -k 10 $(( ${DEADLINE:-470} - SECONDS )) python3 bench/quality.py \
  --data /tmp/data/cifar10-jpg --mode gpu --epochs "${EPOCHS:-3}" "${EPOCHS:-3}" --teacher-epochs "${TEACHER_EPOCHS:-20}" \
  --jobs "${JOBS:-8}" --targets 0.83 0.73 --seeds 0 1 2 --methods cascade_1ta cascade_0ta tp_global_taylor l1_kd \
  --workdir /tmp/bq --out "$out/quality_gpu.json" 2>&1 | stamp | tee "$out/quality.log" || true
wait
tar -czf "$out/rows.tar.gz" --exclude='*.pt' --exclude='*.png' -C /tmp/bq . || true
