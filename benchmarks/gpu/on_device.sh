#!/usr/bin/env bash
# bash benchmarks/gpu/on_device.sh [experiment|efficiency|steps]   (on the GPU machine, in the repository root)
#
# After `python benchmarks/gpu/carry.py pack` here and two device calls carrying gpu_carry/a and gpu_carry/b: joins
# and checks the model and corpus (carry.py unpack), installs the carried gguf wheel (no network, no dependencies),
# then runs one GPU script, writing its results under $OUT (the device tool's folder; default benchmarks/results):
#   experiment  benchmarks/gpu/longlora_experiment.py (the arms of issue 10 at 16k; BUDGET_S, default 400 s)
#   efficiency  benchmarks/gpu/efficiency.py (S2-Attn vs full attention, 7B and 1.7B shapes; BUDGET_S, default 280 s)
#   steps       benchmarks/gpu/train_steps.py (SmolLM2 steps at 8k-32k, the longest sample one GPU holds)
# One script a call: each fits the device tool's 10-minute limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/results}
model=$(ls gpu_carry/a/*.gguf.part1 2>/dev/null | head -1)
model=gpu_carry/model/$(basename "${model%.part1}")
python benchmarks/gpu/carry.py unpack
python -c "import gguf" 2>/dev/null || pip install --no-deps --no-index -q gpu_carry/a/gguf-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
budget=()
[ -n "${BUDGET_S:-}" ] && budget=(--budget-s "$BUDGET_S")
case "${1:-experiment}" in
  experiment) python benchmarks/gpu/longlora_experiment.py --model "$model" --corpus data/long-text \
                --out "$out/longlora_experiment_gpu.md" "${budget[@]}" ;;
  efficiency) python benchmarks/gpu/efficiency.py --out "$out/efficiency_gpu.md" "${budget[@]}" ;;
  steps)      python benchmarks/gpu/train_steps.py --model "$model" --out "$out/train_steps_gpu.md" ;;
  *) echo "on_device.sh: unknown script '$1' (experiment, efficiency or steps)" >&2; exit 2 ;;
esac
