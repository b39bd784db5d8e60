"""python -m sft.run [--config configs/train/RECIPE.yaml] [--max-steps N --output-dir DIR ...] [--print-config]

LongLoRA fine-tuning: S2-Attn while training, LoRA + embeddings + norms, RoPE position interpolation to --max-length.
With no --config, runs the embedded default: the defaults of TrainConfig (configs/train/smollm2_squad.yaml resolves to
the same values: SmolLM2-135M-Instruct on the default built dataset out/, a few minutes on CPU cores). Every field of TrainConfig
is a flag (`--help` lists them); flags override the recipe. Every configuration problem (fields, cross-field checks,
paths) is reported at once, before any model loads (exit code 2). Under torchrun/accelerate launch it trains
data-parallel.
"""
from __future__ import annotations

import sys
from typing import Any

from schemas.cli import Command, Options
from schemas.errors import ConfigError  # noqa: F401 (re-exported for callers of resolve)
from schemas.paths import train_problems
from schemas.resolve import load_recipe  # noqa: F401 (re-exported)
from schemas.resolve import resolve as resolve_config
from schemas.train import TrainConfig

COMMAND = Command("python -m sft.run", __doc__, TrainConfig, paths=train_problems)


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config", *,
            check_paths: bool = True) -> TrainConfig:
    """``base`` updated with ``overrides``, validated; every problem (fields, cross-field checks, and with
    ``check_paths`` the model, data and output folders) in one :class:`ConfigError`."""
    return resolve_config(TrainConfig, base, overrides, origin, train_problems if check_paths else None)


def train(cfg: TrainConfig, options: Options) -> None:
    from sft.train import run

    run(cfg, progress=options.progress)


def main(argv: list[str] | None = None) -> int:
    try:
        return COMMAND.main(argv, train)
    finally:
        close_process_group()


def close_process_group() -> None:
    """Under torchrun: leave the process group before the interpreter exits (a group left open can abort a rank at
    exit with "terminate called without an active exception", failing a finished run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
