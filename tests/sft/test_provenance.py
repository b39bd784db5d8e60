"""Fingerprints in the evaluation report: they follow the files that define a model or the data, not the cards."""
from __future__ import annotations

import hashlib
import json
import shutil

from sft.evaluation.provenance import data_fingerprint, environment, ids_sha256, model_fingerprint


def test_model_fingerprint_follows_weights_and_configs_not_cards(tmp_path, tiny_llama_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    first = model_fingerprint(str(model))["sha256"]
    assert first == model_fingerprint(str(model))["sha256"] and len(first) == 64

    (model / "README.md").write_text("a card that changes with every upload")
    assert model_fingerprint(str(model))["sha256"] == first
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
    assert model_fingerprint(str(model))["sha256"] != first


def test_a_gguf_file_is_hashed_whole_and_a_hub_id_has_no_fingerprint(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    assert model_fingerprint(str(gguf)) == {"sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}
    assert model_fingerprint("some-org/not-on-disk") == {"sha256": None}


def test_an_adapter_names_its_base_and_the_base_files(tmp_path, tiny_llama_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_llama_dir}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    found = model_fingerprint(str(adapter))
    assert found["base"] == tiny_llama_dir
    assert found["base_sha256"] == model_fingerprint(tiny_llama_dir)["sha256"] != found["sha256"]


def test_data_fingerprints(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    (built / "manifest.json").write_text(json.dumps({"name": "demo", "fingerprints": {"text": {"test": "abc"}}}))
    assert data_fingerprint(str(built), "test") == {"data": str(built), "built": "demo", "split": "test",
                                                    "fingerprint": "abc"}
    jsonl = tmp_path / "lb.jsonl"
    jsonl.write_text('{"input": "q"}\n')
    assert data_fingerprint(str(jsonl), "test")["sha256"] == hashlib.sha256(jsonl.read_bytes()).hexdigest()
    assert data_fingerprint(str(tmp_path / "missing"))["sha256"] is None
    assert ids_sha256(["a", "b"]) != ids_sha256(["b", "a"])


def test_environment_names_versions_and_device():
    import torch

    env = environment("cpu", "float32")
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["transformers"]
    assert env["device"].startswith("cpu (") and env["threads"] >= 1 and env["dtype"] == "float32"
