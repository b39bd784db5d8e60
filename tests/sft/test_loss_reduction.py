"""loss_reduction over a global batch: one step on 4 samples gives the same loss and gradients whether the 4 come
as one batch, as 4 accumulated micro-batches, or as 2 ranks x 2 accumulated micro-batches (torchrun, gloo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from tests.sft.loss_probe import step
from tests.sft.conftest import launch_env

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = [1, 3, 8, 20]  # supervised tokens of the 4 samples (all 40 tokens long): the two reductions differ


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("four")
    rows = []
    for i, answer in enumerate(ANSWERS):
        ids = [3 + (7 * i + j) % 90 for j in range(40)]
        rows.append({"input_ids": ids, "labels": [-100] * (40 - answer) + ids[-answer:], "length": 40})
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder / "tokenized"))
    return str(folder)


def recipe(model: str, data: str, out: Path, **overrides) -> dict:
    return dict(model=model, data=data, output_dir=str(out), max_length=64, max_steps=1, save_steps=100,
                learning_rate=1e-3, warmup_steps=0, bf16=False, max_grad_norm=0.0, group_by_length=False, seed=0,
                eval_split=None, **overrides)


def first_loss(out: Path) -> float:
    return next(json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(line))


def assert_same_step(a: Path, b: Path, loss_a: float, loss_b: float, atol: float = 1e-5):
    ga, gb = torch.load(a), torch.load(b)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=atol, rtol=1e-4), (name, (ga[name] - gb[name]).abs().max())
    assert abs(loss_a - loss_b) < 1e-5


@pytest.mark.parametrize("reduction", ["token", "sample"])
def test_accumulated_micro_batches_give_the_one_batch_step(tiny_llama_dir, four_samples, tmp_path, reduction):
    one = tmp_path / "one"
    step(recipe(tiny_llama_dir, four_samples, one, per_device_batch_size=4, loss_reduction=reduction),
         tmp_path / "one.pt")
    acc = tmp_path / "acc"
    step(recipe(tiny_llama_dir, four_samples, acc, gradient_accumulation_steps=4, loss_reduction=reduction),
         tmp_path / "acc.pt")
    assert_same_step(tmp_path / "one.pt", tmp_path / "acc.pt", first_loss(one), first_loss(acc))
    line = next(json.loads(x) for x in (acc / "metrics.jsonl").read_text().splitlines() if "loss" in x)
    assert line["supervised_tokens"] == sum(ANSWERS) and line["padding_fraction"] == 0.0  # 4 x 40 tokens, no padding
    assert line["tokens_per_second"] > 0 and line["window_steps"] == 1 and line["window_seconds"] > 0

    if reduction == "token":  # the loss is the token mean over all 4 samples, not a mean of per-batch means
        plain = tmp_path / "plain"
        step(recipe(tiny_llama_dir, four_samples, plain, per_device_batch_size=4, chunked_loss=False),
             tmp_path / "plain.pt")
        assert_same_step(tmp_path / "one.pt", tmp_path / "plain.pt", first_loss(one), first_loss(plain))


@pytest.mark.slow  # ~30 s: two processes start and import transformers
def test_two_ranks_with_accumulation_give_the_one_batch_step(tiny_llama_dir, four_samples, tmp_path):
    recipes = {}
    for reduction in ("token", "sample"):
        recipes[reduction] = tmp_path / f"{reduction}.yaml"
        recipes[reduction].write_text(yaml.safe_dump(recipe(
            tiny_llama_dir, four_samples, tmp_path / f"ddp-{reduction}", gradient_accumulation_steps=2,
            loss_reduction=reduction)))
    # one launch, both reductions one after the other (each launch costs seconds of start-up)
    script = ("import sys, yaml; from pathlib import Path; from tests.sft.loss_probe import step\n"
              "from schemas.cli import setup_logging; setup_logging()  # the commands' logging: status lines, rank 0\n"
              "for recipe, grads in zip(sys.argv[1::2], sys.argv[2::2]):\n"
              "    step(yaml.safe_load(Path(recipe).read_text()), Path(grads))\n")
    (tmp_path / "probe.py").write_text(script)
    args = [str(a) for r in ("token", "sample") for a in (recipes[r], tmp_path / f"ddp-{r}.pt")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "probe.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("world size 2 (DDP, gloo backend), global batch 4 samples") == 2

    for reduction in ("token", "sample"):
        one = tmp_path / f"one-{reduction}"
        step(recipe(tiny_llama_dir, four_samples, one, per_device_batch_size=4, loss_reduction=reduction),
             tmp_path / f"one-{reduction}.pt")
        assert_same_step(tmp_path / f"one-{reduction}.pt", tmp_path / f"ddp-{reduction}.pt", first_loss(one),
                         first_loss(tmp_path / f"ddp-{reduction}"))
