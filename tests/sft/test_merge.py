"""sft/merge.py: a trained LoRA+ adapter reloads and merges into a plain model with the same logits and RoPE scaling."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import sft.merge
from sft.merge import CONFIG_SUBDIR, check_adapter_loaded, load_adapter, main, merge_adapter, save_adapter
from sft.model import (AdapterSetupError, add_lora_plus, apply_rope_scaling, embeddings_tied, load_config, load_model,
                       trainable_parameters)

ATOL = 1e-5
TARGET = 512  # tiny models have 256 positions: linear factor 2


def _batch(seed=0, length=48):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (2, length), generator=generator)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _train(peft_model, steps=3):
    """A few AdamW steps on random tokens (every trainable tensor moves)."""
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for step in range(steps):
        ids = _batch(seed=100 + step)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def trained(request, tiny_llama_dir, tiny_llama_untied_dir, tmp_path_factory):
    """(base dir, adapter dir, logits of the trained model on `_batch()`, tied?) after training with RoPE x2."""
    tie = request.param
    base_dir = tiny_llama_dir if tie else tiny_llama_untied_dir
    config = load_config(base_dir)
    apply_rope_scaling(config, TARGET)
    config.s2_attn = {"group_size_ratio": 0.25}  # trained with S2-Attn, as sft.run does (eval mode is dense)
    config.use_cache = False  # as with gradient checkpointing
    model, tokenizer = load_model(base_dir, config=config, attn_implementation="s2_attn")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = add_lora_plus(model)
    _train(peft_model)

    base = peft_model.get_base_model()
    active = {"embed": base.model.embed_tokens.token_adapter.trainable_tokens_delta["default"],
              "norm": base.model.layers[1].post_attention_layernorm.modules_to_save["default"].weight,
              "final_norm": base.model.norm.modules_to_save["default"].weight}
    original = {"embed": before["model.embed_tokens.weight"],
                "norm": before["model.layers.1.post_attention_layernorm.weight"],
                "final_norm": before["model.norm.weight"]}
    for key, weight in active.items():
        assert not torch.equal(weight, original[key]), f"{key} did not train"
    assert base.model.layers[0].self_attn.v_proj.lora_B["default"].weight.abs().sum() > 0
    assert embeddings_tied(peft_model) == tie
    if tie:  # the output layer uses the trained embedding itself, not a stale copy
        assert base.lm_head.token_adapter.trainable_tokens_delta["default"] is active["embed"]

    adapter_dir = save_adapter(peft_model, tokenizer, tmp_path_factory.mktemp("adapter") / "adapter")
    return base_dir, adapter_dir, _logits(peft_model, _batch()), tie


def test_adapter_folder_layout(trained):
    base_dir, adapter_dir, _, _ = trained
    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", CONFIG_SUBDIR} <= names
    assert "config.json" not in names  # would make transformers take the folder for a full model
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == base_dir
    assert "model.norm" in adapter_config["modules_to_save"]
    saved = json.loads((adapter_dir / CONFIG_SUBDIR / "config.json").read_text())
    assert saved["rope_parameters"]["factor"] == 2.0 and saved["max_position_embeddings"] == TARGET
    assert saved["use_cache"] is True and saved["s2_attn"] == {"group_size_ratio": 0.25}  # a record; not merged
    assert not adapter_dir.with_name(adapter_dir.name + ".tmp").exists()


def test_a_tied_embedding_is_saved_once(trained):
    from safetensors.torch import load_file

    _, adapter_dir, _, tie = trained
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    vocab_by_hidden = [k for k, t in saved.items() if t.shape[0] >= 300]  # tiny vocabulary 400: embedding-sized
    assert vocab_by_hidden == ["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    embedding_bytes = 400 * 64 * 4
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size < 1.5 * embedding_bytes  # LoRA + norms: small


def test_peft_from_pretrained_reproduces_the_trained_model(trained):
    base_dir, adapter_dir, expected, tie = trained
    config = AutoConfig.from_pretrained(str(adapter_dir), subfolder=CONFIG_SUBDIR)
    base = AutoModelForCausalLM.from_pretrained(base_dir, config=config)
    reloaded = PeftModel.from_pretrained(base, str(adapter_dir))
    torch.testing.assert_close(_logits(reloaded, _batch()), expected, atol=ATOL, rtol=0)
    assert embeddings_tied(reloaded) == tie


def test_load_adapter_reproduces_the_trained_model(trained):
    _, adapter_dir, expected, tie = trained
    reloaded, tokenizer = load_adapter(adapter_dir)
    torch.testing.assert_close(_logits(reloaded, _batch()), expected, atol=ATOL, rtol=0)
    assert reloaded.get_base_model().config.rope_parameters["factor"] == 2.0
    assert tokenizer.chat_template


def test_load_adapter_for_more_training_and_its_checks(trained):
    base_dir, adapter_dir, _, tie = trained
    reloaded, _ = load_adapter(adapter_dir, is_trainable=True)  # verifies the LoRA+ trainable set
    fresh = add_lora_plus(load_model(base_dir)[0])
    assert trainable_parameters(reloaded) == trainable_parameters(fresh) and embeddings_tied(reloaded) == tie
    with torch.no_grad():
        reloaded.get_base_model().model.norm.modules_to_save["default"].weight.add_(1.0)
    with pytest.raises(AdapterSetupError, match="different values.*norm"):
        check_adapter_loaded(reloaded, adapter_dir)
    with pytest.raises(ValueError, match="must not replace"):
        merge_adapter(adapter_dir, adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file()


def test_base_without_scaling_differs(trained):
    """The saved RoPE scaling matters: the same adapter on an unscaled base gives other logits."""
    base_dir, adapter_dir, expected, _ = trained
    unscaled = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    assert not torch.allclose(_logits(unscaled, _batch()), expected, atol=1e-3)


def test_merged_model_loads_without_flags(trained, tmp_path):
    _, adapter_dir, expected, tie = trained
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    torch.testing.assert_close(_logits(merged, _batch()), expected, atol=ATOL, rtol=0)
    assert merged.config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert merged.config.max_position_embeddings == TARGET
    assert not hasattr(merged.config, "s2_attn") and merged.config._attn_implementation != "s2_attn"
    assert merged.config.use_cache is True
    assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == tie
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)


def test_cli_merges_with_base_override_and_dtype(trained, tmp_path):
    base_dir, adapter_dir, expected, _ = trained
    assert main([str(adapter_dir), "--out", str(tmp_path / "m"), "--base", base_dir, "--dtype", "bfloat16"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    assert merged.dtype == torch.bfloat16
    logits = _logits(merged.float(), _batch())
    assert (logits - expected).abs().max() < 0.1  # bf16 rounding only


def test_cli_docstring_and_errors(tmp_path):
    assert sft.merge.__doc__.splitlines()[0].startswith("python -m sft.merge ADAPTER_DIR --out DIR")
    assert main([str(tmp_path)]) == 2  # --out is required, and tmp_path is no adapter folder
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    with pytest.raises(FileNotFoundError, match=CONFIG_SUBDIR):
        load_adapter(tmp_path)


@pytest.mark.skipif(sys.platform != "linux", reason="the atomic exchange is a Linux system call")
def test_replacing_an_output_never_leaves_a_moment_without_it(tmp_path, monkeypatch):
    """sft.merge writes into a temporary folder and swaps it with the old output; the old one is deleted only after."""
    import shutil

    from longqa import atomic
    from sft.merge import _write_atomically

    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("old")
    present = []
    real_rename, real_rmtree = Path.rename, shutil.rmtree
    monkeypatch.setattr(Path, "rename",
                        lambda self, target: (present.append(out.is_dir()), real_rename(self, target))[1])
    monkeypatch.setattr(atomic.shutil, "rmtree",
                        lambda path, **kw: (present.append(out.is_dir()), real_rmtree(path, **kw)))

    _write_atomically(out, lambda tmp: (tmp / "config.json").write_text("new"))
    assert (out / "config.json").read_text() == "new" and present and all(present)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary or old copy left
