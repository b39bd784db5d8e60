"""sft.train and sft.run: a tiny LongLoRA run end to end, resume, the NaN stop, and configuration errors."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from schemas.train import TrainConfig
from sft import run as cli
from sft.train import NonFiniteLoss, run, training_arguments
from tests.sft.conftest import config, write_tokenized

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [20, 24, 28, 30, 36, 40, 44, 48, 52, 60, 600]  # the 600-token sample exceeds max_length: dropped, counted


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return write_tokenized(tmp_path_factory.mktemp("built"), LENGTHS)


def metric_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Spy(TrainerCallback):
    """Records the attention implementation the model trains with."""

    attn = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.attn = model.get_base_model().config._attn_implementation


class InjectNaN(TrainerCallback):
    """From optimizer step `at` on, the input embeddings output NaN (so the loss is NaN); the weights stay intact."""

    def __init__(self, at: int):
        self.at, self.handle = at, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.at and self.handle is None:
            self.handle = model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def test_three_steps_write_a_loadable_adapter_and_metrics(tiny_llama_dir, built, tmp_path):
    from sft.merge import load_adapter

    spy = Spy()
    result = run(config(tiny_llama_dir, built, tmp_path / "run"), callbacks=(spy,))
    assert spy.attn == "s2_attn"
    assert result.global_step == 3 and result.data.samples == 10 and result.data.dropped_too_long == 1
    assert 0 < result.trainable_params < result.total_params
    assert result.rope_scaling["rope_type"] == "linear" and result.rope_scaling["factor"] == 2.0  # 256 -> 512

    losses = [line["loss"] for line in metric_lines(tmp_path / "run") if "loss" in line]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert yaml.safe_load((tmp_path / "run/train_config.yaml").read_text())["max_steps"] == 3
    assert json.loads((tmp_path / "run/data_stats.json").read_text())["dropped_too_long"] == 1

    model, tokenizer = load_adapter(result.adapter_dir)  # peft loads it; every saved tensor checked in place
    assert model.get_base_model().config.max_position_embeddings == 512
    assert any("norm" in k for k in adapter_tensors(result.adapter_dir))  # LoRA+: norms travel with the adapter
    assert tokenizer.eos_token == "<|im_end|>"


def test_extend_mode_with_checkpointing_and_a_bf16_base(tiny_llama_dir, tmp_path):
    """The GPU recipe's switches: activation checkpointing, bfloat16 base weights, float32 trainable ones, autocast."""
    (tmp_path / "text").mkdir()
    (tmp_path / "text/book.txt").write_text("Question answering over long documents needs long context. " * 40)
    cfg = config(tiny_llama_dir, str(tmp_path / "text"), tmp_path / "run", mode="extend", max_length=64,
                 max_steps=2, gradient_checkpointing=True, bf16=True, model_dtype="bfloat16")
    result = run(cfg)
    assert result.data.documents == 1 and result.data.samples > 2 and result.global_step == 2
    assert all(math.isfinite(line["loss"]) for line in metric_lines(tmp_path / "run") if "loss" in line)
    assert {t.dtype for t in adapter_tensors(result.adapter_dir).values()} == {torch.float32}


def test_held_out_loss_is_measured_before_and_after_training(tiny_llama_dir, built, tmp_path, caplog):
    import datasets

    splits = datasets.load_from_disk(str(Path(built) / "tokenized"))
    splits["test"] = splits["train"].select([9, 0, 1, 2])  # the 600-token sample does not fit: skipped
    splits.save_to_disk(str(tmp_path / "built/tokenized"))
    caplog.set_level(logging.INFO, logger="sft")
    result = run(config(tiny_llama_dir, str(tmp_path / "built"), tmp_path / "run", eval_samples=2, max_steps=4))

    evals = [line for line in metric_lines(tmp_path / "run") if "eval_loss" in line]
    assert [line["step"] for line in evals] == [0, 4]
    assert (result.eval_before, result.eval_after) == (evals[0]["eval_loss"], evals[1]["eval_loss"])
    assert result.eval_after < result.eval_before  # the eval samples repeat the training pattern: it is learnt
    assert f"eval loss before {result.eval_before:.4f} → after {result.eval_after:.4f} (2 held-out 'test'" in \
        caplog.text

    resumed = run(config(tiny_llama_dir, str(tmp_path / "built"), tmp_path / "run", eval_samples=2, max_steps=5,
                         resume=True))  # the loss before comes from the interrupted run's metrics.jsonl
    assert resumed.eval_before == result.eval_before and resumed.eval_after is not None
    assert [line["step"] for line in metric_lines(tmp_path / "run") if "eval_loss" in line] == [0, 4, 5]


def test_no_held_out_split_means_no_evaluation(tiny_llama_dir, built, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sft")
    result = run(config(tiny_llama_dir, built, tmp_path / "run", max_steps=1))
    assert result.eval_before is None and result.eval_after is None
    assert "no held-out evaluation" in caplog.text
    assert not any("eval_loss" in line for line in metric_lines(tmp_path / "run"))


def test_nan_loss_stops_before_the_bad_step_and_keeps_the_last_checkpoint(tiny_llama_dir, built, tmp_path):
    from peft import PeftModel

    from sft.model import load_model

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"stopped at step 3: the loss .* became NaN/inf.*checkpoint-2"):
        run(config(tiny_llama_dir, built, out, max_steps=5), callbacks=(InjectNaN(at=2),))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not (out / "adapter").exists()  # the bad state is not saved
    assert [line["step"] for line in metric_lines(out)] == [1, 2]

    saved = adapter_tensors(out / "checkpoint-2")
    assert all(torch.isfinite(t).all() for t in saved.values())
    base, _ = load_model(tiny_llama_dir)
    PeftModel.from_pretrained(base, str(out / "checkpoint-2"))  # loadable


def test_resume_continues_to_max_steps_like_an_uninterrupted_run(tiny_llama_dir, built, tmp_path):
    straight = run(config(tiny_llama_dir, built, tmp_path / "straight", max_steps=4, save_steps=10))

    first = config(tiny_llama_dir, built, tmp_path / "resumed", max_steps=2, save_steps=2)
    run(first)
    with pytest.raises(FileExistsError, match="pass --resume"):
        run(first)
    resumed = run(first.model_copy(update={"max_steps": 4, "resume": True}))

    assert resumed.global_step == 4
    assert [line["step"] for line in metric_lines(tmp_path / "resumed") if "loss" in line] == [1, 2, 3, 4]
    a, b = adapter_tensors(straight.adapter_dir), adapter_tensors(resumed.adapter_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_training_arguments_come_from_the_config(tmp_path):
    args = training_arguments(TrainConfig(output_dir=str(tmp_path), max_steps=7, gradient_accumulation_steps=4,
                                          learning_rate=3e-4, group_by_length=True, bf16=False))
    assert (args.max_steps, args.gradient_accumulation_steps, args.learning_rate) == (7, 4, 3e-4)
    assert args.train_sampling_strategy == "group_by_length" and args.length_column_name == "length"
    assert not args.logging_nan_inf_filter and not args.remove_unused_columns and not args.bf16
    assert not args.disable_tqdm  # the progress bar, unless --no-progress / --quiet:
    assert training_arguments(TrainConfig(output_dir=str(tmp_path)), progress=False).disable_tqdm


# ----------------------------------------------------------------------------------------------------------------------
# Configuration (sft.run)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_and_name_their_command(recipe):
    cli.resolve(cli.load_recipe(recipe), {}, str(recipe), check_paths=False)
    assert recipe.read_text().startswith(f"# python -m sft.run --config configs/train/{recipe.name}")


def test_the_default_recipe_is_the_schema_defaults(capsys, tmp_path, monkeypatch):
    shipped = cli.resolve(cli.load_recipe(ROOT / "configs/train/smollm2_squad.yaml"), {}, check_paths=False)
    assert shipped == TrainConfig()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "tokenized").mkdir(parents=True)  # the default data, so that no path problem is reported
    assert cli.main(["--print-config", "--max-steps", "3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == {**TrainConfig().model_dump(mode="json"), "max_steps": 3}


def test_every_config_error_is_reported_at_once_before_any_model_loads(monkeypatch, capsys, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded despite configuration errors")

    monkeypatch.setattr("sft.train.run", no_model)
    monkeypatch.setattr("sft.model.load_model", no_model)
    code = cli.main(["--max-length", "8", "--learning-rate", "-1", "--mode", "pretrain", "--trainable", "embed,bias",
                     "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert "6 problem(s)" in err
    for expected in ("max_length:", "learning_rate:", "mode:", "trainable: unknown group(s) ['bias']",
                     f"data: {tmp_path / 'missing'} does not exist", "resume: no checkpoint-* folder"):
        assert expected in err


def test_cross_field_problems_are_listed_together(built, tmp_path):
    with pytest.raises(cli.ConfigError) as info:
        cli.resolve({}, {"data": [built, built], "warmup_steps": 50, "max_steps": 5, "model_dtype": "bfloat16",
                         "bf16": False, "output_dir": str(tmp_path)})
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "sft trains on one built dataset folder" in message and "warmup_steps: 50 exceeds max_steps (5)" in message
    assert "model_dtype: bfloat16 base weights need bf16: true" in message


def test_missing_built_dataset_says_how_to_build_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "run")]) == 2
    assert f"python -m longqa.build --out {tmp_path / 'empty'}" in capsys.readouterr().err


@pytest.mark.slow
def test_default_run_on_the_default_build(tmp_path, default_build):
    """The embedded default (SmolLM2-135M on the default build), shortened to one step."""
    result = run(TrainConfig(data=str(default_build[0]), output_dir=str(tmp_path / "run"), max_steps=1, warmup_steps=0,
                             eval_samples=1))
    assert result.global_step == 1 and (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert math.isfinite(result.eval_before) and math.isfinite(result.eval_after)  # the held-out test split
    assert math.isfinite(next(m["loss"] for m in metric_lines(tmp_path / "run") if "loss" in m))


def test_sft_on_a_build_recipe_builds_it_on_the_fly(tmp_path, tiny_llama_dir):
    """`data: recipe.yaml` builds the recipe into output_dir/data, trains on it, and reuses it on the next run."""
    from tests.longqa.fixtures import corpus

    src = corpus(tmp_path / "lb.jsonl", n_docs=6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"inputs": [{"path": str(src), "format": "longbench"}],
                                      "tokenizer": tiny_llama_dir, "max_length": 256, "heldout_fraction": 0.3,
                                      "out": "ignored"}))
    cfg = TrainConfig(model=tiny_llama_dir, data=str(recipe), output_dir=str(tmp_path / "run"), max_length=256,
                      max_steps=1, warmup_steps=0, eval_samples=0, bf16=False, save_steps=1)
    result = run(cfg)
    manifest = tmp_path / "run" / "data" / "manifest.json"
    assert result.global_step == 1 and manifest.is_file() and result.data.samples > 0
    stamp = manifest.stat().st_mtime_ns
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"inputs": [], "max_length": 3}))
    with pytest.raises(cli.ConfigError, match="data: .*bad.yaml"):
        cli.resolve({}, {"data": str(bad), "output_dir": str(tmp_path / "run2")})
    run(cfg.model_copy(update={"output_dir": str(tmp_path / "run"), "resume": True, "max_steps": 2}))
    assert manifest.stat().st_mtime_ns == stamp  # the same recipe is not built twice


def test_eval_every_logs_a_long_context_curve_that_resume_keeps(tiny_llama_dir, built, tmp_path):
    """eval_every: passkey before the first step and every 2 steps, in metrics.jsonl; a resumed run keeps the
    points up to its checkpoint and adds the rest, each step once."""
    settings = dict(eval_every=2, eval_tasks="passkey", eval_passkey_lengths=[300], eval_passkey_trials=1)
    first = config(tiny_llama_dir, built, tmp_path / "run", max_steps=2, save_steps=2, **settings)
    run(first)
    curve = [line for line in metric_lines(tmp_path / "run") if "longctx_passkey_300" in line]
    assert [line["step"] for line in curve] == [0, 2]
    assert all(0 <= line["longctx_passkey_300"] <= 100 and line["longctx_seconds"] > 0 for line in curve)
    run(first.model_copy(update={"max_steps": 4, "resume": True}))
    lines = metric_lines(tmp_path / "run")
    assert [line["step"] for line in lines if "longctx_passkey_300" in line] == [0, 2, 4]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]


def test_eval_every_problems_are_reported_with_the_config():
    with pytest.raises(ValueError, match="eval_passkey_lengths/eval_ppl_lengths: \\[8192\\] exceed max_length"):
        TrainConfig(eval_every=5, eval_passkey_lengths=[1024, 8192])
    with pytest.raises(ValueError, match="in extend mode use eval_tasks: passkey"):
        TrainConfig(mode="extend", data=["a.txt"], eval_every=5, eval_tasks="passkey,qa")
