"""One optimizer step of a tiny run whose gradients are saved: ``python tests/sft/loss_probe.py RECIPE.yaml GRADS.pt``
(also under torchrun). The global-batch tests of ``test_loss_reduction.py`` compare such steps."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback


class SaveGradients(TrainerCallback):
    """Before the first optimizer step, rank 0 saves every trainable gradient (after the DDP all-reduce) to `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and state.is_world_process_zero:
            torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, self.path)


def step(recipe: dict, grads_path: Path):
    from schemas.train import TrainConfig
    from sft.train import run

    return run(TrainConfig(**recipe), callbacks=(SaveGradients(grads_path),))


if __name__ == "__main__":
    step(yaml.safe_load(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
