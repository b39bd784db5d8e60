"""sft.publish: the staged adapter / merged model load with the standard loaders; upload to a local hub."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from schemas.train import TrainConfig
from sft.merge import save_adapter
from sft.model import add_lora_plus, apply_rope_scaling, load_config, load_model
from sft.publish import main as publish_main
from tests.hub_server import FakeHub

TOKEN = "hf_model_token_never_shown_42"


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, tmp_path_factory):
    """A run folder as `python -m sft.run` leaves it: adapter/, train_config.yaml, eval/report.md."""
    run = tmp_path_factory.mktemp("run")
    config = load_config(tiny_llama_dir)
    apply_rope_scaling(config, 512)
    config.s2_attn = {"group_size_ratio": 0.25}
    model, tokenizer = load_model(tiny_llama_dir, config=config)
    peft_model = add_lora_plus(model)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_adapter(peft_model, tokenizer, run / "adapter")
    cfg = TrainConfig(model=tiny_llama_dir, data=str(run), max_length=512, output_dir=str(run))
    (run / "train_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "eval").mkdir()
    (run / "eval/report.md").write_text("| task | base | tuned |\n|---|---|---|\n| qa f1 | 1.0 | 2.0 |\n")
    return run


def test_adapter_dry_run_card_and_peft_load(run_dir, tiny_llama_dir, tmp_path):
    staged = tmp_path / "staged"
    assert publish_main([str(run_dir), "--repo-id", "org/tiny-longlora", "--adapter", "--dry-run", str(staged)]) == 0
    assert (staged / "adapter_model.safetensors").is_file() and (staged / "train_config.yaml").is_file()
    card = (staged / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    for expected in (f"`{tiny_llama_dir}`", "512 tokens (base: 256)", '"factor": 2.0', "group size 0.25",
                     "r=8, alpha=16", "k_proj, o_proj, q_proj, v_proj", "| qa f1 | 1.0 | 2.0 |"):
        assert expected in card, expected
    config = AutoConfig.from_pretrained(str(staged), subfolder="model_config")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, config=config), str(staged))
    assert model.get_base_model().config.rope_parameters["factor"] == 2.0


def test_merged_dry_run_loads_without_flags_and_names_the_hub_base(run_dir, tmp_path):
    staged = tmp_path / "merged"
    assert publish_main([str(run_dir), "--repo-id", "org/tiny-merged", "--merged", "--base-model-id",
                         "org/tiny-base", "--dry-run", str(staged)]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(staged))
    assert model.config.rope_parameters["factor"] == 2.0 and model.config.max_position_embeddings == 512
    meta = yaml.safe_load((staged / "README.md").read_text().split("---")[1])
    assert meta["library_name"] == "transformers" and meta["base_model"] == "org/tiny-base"


def test_upload_adapter_one_commit_no_token_leak(run_dir, tmp_path, monkeypatch, capsys, caplog, hub_online):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        code = publish_main([str(run_dir), "--repo-id", "org/tiny-longlora", "--endpoint", hub.url,
                             "--base-model-id", "org/tiny-base"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip().endswith(f"{hub.url}/org/tiny-longlora")
    assert len(hub.commits) == 1 and "/api/models/org/tiny-longlora/commit/main" in hub.commits[0]["path"]
    files = hub.commits[0]["files"]
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "train_config.yaml",
            "model_config/config.json"} <= set(files)
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/tiny-base"
    assert not [n for n, c in files.items() if TOKEN.encode() in c]
    assert TOKEN not in out.out + out.err + caplog.text
