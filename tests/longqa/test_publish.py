"""Publishing a built dataset: the staged Hub tree loads with `datasets`, and the upload talks to a local hub."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import datasets
import pytest
import yaml

from longqa.pipeline import build
from longqa.publish import main as publish_main
from schemas.outdir import MARKER
from tests.hub_server import FakeHub
from tests.longqa.fixtures import cfg_for, corpus

TOKEN = "hf_testtoken_do_not_leak_0123456789"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer_path):
    tmp = tmp_path_factory.mktemp("publish")
    cfg = cfg_for(tmp, tiny_tokenizer_path, [corpus(tmp / "lb.jsonl", n_docs=12)], heldout_fraction=0.3,
                  license="cc-by-4.0")
    build(cfg, progress=False)
    return Path(cfg.out)


def test_dry_run_stages_the_hub_tree_and_it_loads(built, tmp_path, capsys):
    staged = tmp_path / "staged"
    assert publish_main([str(built), "--repo-id", "org/longqa-test", "--dry-run", str(staged)]) == 0
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == [MARKER, "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
                     "lengths.png", "manifest.json", "tokenized/test-00000-of-00001.parquet",
                     "tokenized/train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset(str(staged), cache_dir=str(tmp_path / "cache"))
    original = datasets.load_from_disk(str(built / "text"))
    assert set(loaded) == set(original)
    for split in original:
        assert loaded[split].features == original[split].features
        assert loaded[split].to_list() == original[split].to_list()
    tokenized = datasets.load_dataset(str(staged), "tokenized", cache_dir=str(tmp_path / "cache"))
    assert tokenized["train"]["input_ids"] == datasets.load_from_disk(str(built / "tokenized"))["train"]["input_ids"]
    meta = yaml.safe_load((staged / "README.md").read_text().split("---")[1])
    assert meta["license"] == "cc-by-4.0" and meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0] == {"config_name": "default", "default": True, "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}, {"split": "test", "path": "data/test-*.parquet"}]}
    info = {c["config_name"]: c for c in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in info["default"]["splits"]} == {s: len(d) for s, d in original.items()}
    assert 'load_dataset("org/longqa-test")' in (staged / "README.md").read_text()


def test_a_build_fingerprinted_before_version_2_still_publishes(built, tmp_path):
    """A manifest written with version-1 digests (bare hex, every string hashed as JSON) verifies against the staged
    rows by that version; a wrong digest of either version is caught."""
    import shutil

    from longqa.manifest import fingerprint, fingerprint_version

    old = tmp_path / "old"
    shutil.copytree(built, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert {fingerprint_version(d) for kind in ("text", "tokenized") for d in manifest["fingerprints"][kind].values()} \
        == {2}
    for kind in ("text", "tokenized"):
        folder = datasets.load_from_disk(str(old / kind))
        manifest["fingerprints"][kind] = {split: fingerprint(ds.data.table, 1) for split, ds in folder.items()}
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert publish_main([str(old), "--repo-id", "org/longqa-test", "--dry-run", str(tmp_path / "staged")]) == 0
    manifest["fingerprints"]["text"]["train"] = "0" * 64
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert publish_main([str(old), "--repo-id", "org/longqa-test", "--dry-run", str(tmp_path / "staged2")]) != 0


def test_dry_run_refuses_an_unfinished_build(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert publish_main([str(tmp_path / "half"), "--repo-id", "a/b", "--dry-run", str(tmp_path / "s")]) == 2
    assert "no manifest.json" in capsys.readouterr().err  # a path problem: found before any work (exit code 2)


def test_upload_makes_one_commit_with_the_staged_files_and_never_leaks_the_token(built, tmp_path, monkeypatch,
                                                                                 capsys, caplog, hub_online):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(fail_commits=1) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code = publish_main([str(built), "--repo-id", "org/longqa-test", "--private"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip().endswith(f"{hub.url}/datasets/org/longqa-test")
    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    body = json.loads(create["body"])
    assert body["type"] == "dataset" and (body.get("visibility") == "private" or body.get("private") is True)
    assert len(hub.commits) == 1 and "/api/datasets/org/longqa-test/commit/main" in hub.commits[0]["path"]
    assert sorted(hub.commits[0]["files"]) == ["README.md", "data/test-00000-of-00001.parquet",
                                              "data/train-00000-of-00001.parquet", "lengths.png", "manifest.json",
                                              "tokenized/test-00000-of-00001.parquet",
                                              "tokenized/train-00000-of-00001.parquet"]
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)  # the client used it...
    leaked = [name for name, content in hub.commits[0]["files"].items() if TOKEN.encode() in content]
    assert not leaked and TOKEN not in out.out + out.err + caplog.text  # ...and it appears nowhere else


def test_unreachable_endpoint_fails_fast_with_a_clear_message(built, monkeypatch, capsys, hub_online):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    code = publish_main([str(built), "--repo-id", "org/x", "--endpoint", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    # no retry loop: it fails at the first refused connection (the bound is a hang guard, not a speed target)
    assert code == 1 and time.time() - start < 300
    assert f"cannot reach the hub at http://127.0.0.1:{port}" in err and TOKEN not in err


def test_offline_mode_fails_at_once_and_says_what_to_do(built, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with FakeHub() as hub:
        code = publish_main([str(built), "--repo-id", "org/x", "--endpoint", hub.url])
    err = capsys.readouterr().err
    assert code == 1 and "offline mode" in err and "unset" in err and "--dry-run" in err
    assert not hub.requests and not sleeps


def test_the_clients_offline_error_is_not_retried(tmp_path, monkeypatch, hub_online):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    from longqa import hub as hub_module

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    calls, sleeps = [], []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OfflineModeIsEnabled("Cannot reach the hub: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with FakeHub() as hub, pytest.raises(hub_module.HubError, match="offline mode"):
        hub_module.upload(tmp_path, "org/x", repo_type="dataset", endpoint=hub.url)
    assert len(calls) == 1 and not sleeps
