"""`bf16: null` by measurement (issue 21): the probe, the rule, the cache, the start-up report."""
from __future__ import annotations

import json
import math

import pytest
from transformers import LlamaConfig

from schemas.train import TrainConfig
from sft import precision, train

REAL_PROBE = precision.probe_seconds  # tests/conftest.py replaces it in every test


def tiny_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 9000,
                          "max_position_embeddings": 512, "pad_token_id": 8999, **overrides})


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU without accelerator, an empty cache, and a probe that reports `seconds` and counts its calls."""
    monkeypatch.setattr(precision, "has_accelerator", lambda: False)
    monkeypatch.setenv("LONGQA_CACHE", str(tmp_path / "cache"))
    state = {"calls": 0, "seconds": {"float32": 1.0, "bf16": 1.0}}

    def probe(*_args, **_kwargs):
        state["calls"] += 1
        return dict(state["seconds"])

    monkeypatch.setattr(precision, "probe_seconds", probe)
    return state


@pytest.mark.parametrize(("bf16_seconds", "expected"), [(0.5, True), (0.89, True), (0.95, False), (1.5, False)])
def test_bf16_null_on_a_cpu_follows_the_measured_step(cpu, bf16_seconds, expected):
    cpu["seconds"] = {"float32": 1.0, "bf16": bf16_seconds}
    choice = precision.choose_bf16(tiny_config(), requested=None)
    assert choice.bf16 is expected
    assert f"{bf16_seconds:.2f}x the float32 one" in choice.reason and "measured now" in choice.reason
    assert choice.describe().startswith("bf16 autocast (" if expected else "float32 (")


def test_the_config_and_a_bfloat16_base_decide_without_a_probe(cpu):
    assert precision.choose_bf16(tiny_config(), requested=True).bf16
    assert not precision.choose_bf16(tiny_config(), requested=False).bf16
    assert precision.choose_bf16(tiny_config(), requested=None, model_dtype="bfloat16").bf16
    assert cpu["calls"] == 0


def test_the_measurement_is_cached_per_machine_and_model(cpu, monkeypatch):
    cpu["seconds"] = {"float32": 1.0, "bf16": 0.5}
    assert precision.choose_bf16(tiny_config(), requested=None).bf16
    cpu["seconds"] = {"float32": 1.0, "bf16": 2.0}  # a second probe would now say float32
    again = precision.choose_bf16(tiny_config(), requested=None)
    assert again.bf16 and "cached in" in again.reason and cpu["calls"] == 1
    assert not precision.choose_bf16(tiny_config(hidden_size=64), requested=None).bf16  # other shapes: measured
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # oneDNN capped below bf16: another machine, in effect
    assert not precision.choose_bf16(tiny_config(), requested=None).bf16
    assert cpu["calls"] == 3
    entries = json.loads(precision.cache_file().read_text())
    assert len(entries) == 3 and all(set(v) == {"float32", "bf16"} for v in entries.values())


def test_an_unreadable_cache_is_measured_again(cpu):
    precision.cache_file().parent.mkdir(parents=True)
    precision.cache_file().write_text("{not json")
    assert not precision.choose_bf16(tiny_config(), requested=None).bf16
    assert cpu["calls"] == 1 and json.loads(precision.cache_file().read_text())


def test_the_probe_times_a_one_layer_copy_of_the_model():
    config = tiny_config(layer_types=["full_attention"] * 3)
    model = precision.probe_model(config, "sdpa")
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert model.config.vocab_size == precision.PROBE_VOCAB and model.config.pad_token_id is None
    assert model.config.hidden_size == 32 and config.num_hidden_layers == 3  # the model's own config is untouched
    seconds = REAL_PROBE(config, "sdpa", tokens=32, repeats=1)
    assert set(seconds) == {"float32", "bf16"} and all(0 < s < 60 and math.isfinite(s) for s in seconds.values())


def test_the_probe_runs_the_models_attention_function(monkeypatch):
    import sft.s2attn  # noqa: F401  (registers s2_attn)

    config = tiny_config()
    config.s2_attn = {"group_size_ratio": 0.25, "wrap": "roll"}
    calls = []
    real = sft.s2attn.s2_attention_forward
    monkeypatch.setattr(sft.s2attn, "s2_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    from transformers import AttentionInterface

    AttentionInterface.register("s2_attn", sft.s2attn.s2_attention_forward)
    try:
        REAL_PROBE(config, "s2_attn", tokens=32, repeats=1)
    finally:
        AttentionInterface.register("s2_attn", real)
    assert calls  # the probe's layer ran S2-Attn, as the run's layers will


def test_the_trainer_gets_the_chosen_precision(cpu, tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"))
    cpu["seconds"] = {"float32": 1.0, "bf16": 0.4}
    choice = train.choose_precision(cfg, tiny_config())
    assert choice.bf16 and "0.40x" in choice.reason
    assert train.training_arguments(cfg, bf16=choice.bf16).bf16
    assert not train.training_arguments(cfg, bf16=False).bf16
    assert not train.training_arguments(cfg).bf16  # without a choice: the config's own value (null: float32)
