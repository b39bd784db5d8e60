"""`python -m sft.run` under torchrun: two CPU processes (gloo) train one tiny LongLoRA run data-parallel."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.sft.conftest import ROOT, launch_env, write_tokenized

LENGTHS = [20, 24, 28, 30, 36, 40, 44, 48, 52, 60]  # 10 samples


def test_torchrun_two_cpu_processes_train_one_adapter(tiny_llama_dir, tmp_path):
    from sft.merge import load_adapter

    data = write_tokenized(tmp_path / "built", LENGTHS)
    out = tmp_path / "run"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        model=tiny_llama_dir, data=data, output_dir=str(out), max_length=512, max_steps=3, save_steps=3,
        learning_rate=1e-3, warmup_steps=0, bf16=False, per_device_batch_size=2, seed=0, group_by_length=False)))

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sft.run", "--config", str(recipe)]
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # both ranks took part: gloo DDP over 2 processes, a global batch of 2 x 2 samples
    assert "world size 2 (DDP, gloo backend), global batch 4 samples" in proc.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    assert steps == [1, 2, 3]  # one line a step: only rank 0 wrote metrics.jsonl
    # each rank reads half of the 10 samples: 3 batches of 2 make an epoch, so step 3 ends epoch 1 (one process
    # alone reads 5 batches an epoch and would be at 0.6)
    assert [round(line["epoch"], 4) for line in lines if "loss" in line] == [0.3333, 0.6667, 1.0]
    assert json.loads((out / "checkpoint-3/trainer_state.json").read_text())["global_step"] == 3
    assert proc.stdout.count("saved the adapter") == 1  # rank 0 logs and saves

    model, _ = load_adapter(out / "adapter")
    assert model.get_base_model().config.max_position_embeddings == 512


# ----------------------------------------------------------------------------------------------------------------------
# Launcher configs (DeepSpeed, FSDP): shipped, parseable, accepted by the recipe; deepspeed itself is not needed
# ----------------------------------------------------------------------------------------------------------------------


def test_deepspeed_configs_parse_and_leave_the_recipe_settings_to_the_trainer():
    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        ds = json.loads((ROOT / "configs/deepspeed" / name).read_text())
        assert ds["zero_optimization"]["stage"] == stage
        # batch, accumulation, clipping and the optimizer's lr come from TrainConfig via the Trainer's "auto" values
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto"
        assert ds["optimizer"]["params"]["lr"] == "auto" and ds["bf16"]["enabled"] == "auto"


def test_accelerate_configs_are_valid_for_accelerate_launch():
    from accelerate.commands.config.config_args import ClusterConfig

    for path in sorted((ROOT / "configs/accelerate").glob("*.yaml")):
        assert path.read_text().startswith("# accelerate launch --config_file configs/accelerate/" + path.name)
        ClusterConfig.from_yaml_file(str(path))  # raises on unknown keys
    fsdp = yaml.safe_load((ROOT / "configs/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer" and fsdp["fsdp_use_orig_params"]


def test_the_recipe_takes_a_deepspeed_config(tmp_path):
    from schemas.train import TrainConfig
    from sft import run as cli

    zero3 = str(ROOT / "configs/deepspeed/zero3.json")
    assert TrainConfig(deepspeed=zero3).deepspeed == zero3
    assert TrainConfig().deepspeed is None
    assert cli.resolve({}, cli.COMMAND.overrides(["--deepspeed", zero3]), check_paths=False).deepspeed == zero3
    with pytest.raises(cli.ConfigError, match="deepspeed: .*missing.json is not a file"):
        cli.resolve({}, {"deepspeed": str(tmp_path / "missing.json"), "output_dir": str(tmp_path / "run")})


# ----------------------------------------------------------------------------------------------------------------------
# benchmarks/gpu/train_steps.py: its CPU smoke mode, where neither datasets nor pydantic exist (as on the GPU machine)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_training_step_benchmark_runs_on_cpu_without_datasets_or_pydantic(tmp_path):
    out = tmp_path / "smoke.md"
    script = ROOT / "benchmarks/gpu/train_steps.py"
    code = ("import runpy, sys\n"
            "sys.modules['datasets'] = None; sys.modules['pydantic'] = None  # importing either now fails\n"
            f"sys.argv = [{str(script)!r}, '--cpu-smoke', '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=launch_env(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = out.read_text()
    for n in (128, 256):
        for kind in ("full", "s2"):
            assert f"| {n} | sdpa | {kind} |" in table
