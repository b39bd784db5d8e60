"""Issue 24: no command deletes or writes over a file it did not write.

Every command that writes a folder is run on a folder holding a user's file: it exits 2 with one error naming the
folder and what it holds, and the file survives byte for byte. The command's own earlier output is replaced (or
resumed); ``--overwrite`` forces a foreign folder but never the current directory, a folder above it or a repository.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from schemas.outdir import LEGACY, MARKER, is_own, out_problems
from tests.longqa.fixtures import cfg_for, corpus

FOREIGN = b"my notes \x00\xff kept\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer_path):
    from longqa.pipeline import build

    root = tmp_path_factory.mktemp("built")
    cfg = cfg_for(root, tiny_tokenizer_path, [corpus(root / "lb.jsonl", n_docs=6)])
    build(cfg, progress=False)
    return Path(cfg.out)


def users_folder(tmp_path: Path, name: str = "mydir") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "notes.txt").write_bytes(FOREIGN)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def command_cases():
    """(command, main, argv(tmp_path, target, fixtures)) for every command that writes a folder."""
    from longqa.build import main as build_main
    from longqa.corpus import main as corpus_main
    from longqa.generate.__main__ import main as generate_main
    from longqa.merge import main as merge_main
    from longqa.publish import main as dataset_publish_main
    from sft.eval import main as eval_main
    from sft.experiment import main as experiment_main
    from sft.merge import main as adapter_merge_main
    from sft.publish import main as model_publish_main
    from sft.run import main as run_main

    def experiment(tmp_path, target, f):
        train = tmp_path / "train.yaml"
        train.write_text(yaml.safe_dump({"model": f["model"], "data": str(f["built"]), "max_length": 128}))
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({"out": str(target), "train": str(train), "arms": [{"name": "base"}],
                                        "eval": {"tasks": ["ppl"], "ppl": {"data": str(f["built"])}}}))
        return [str(path)]

    return [
        ("longqa.build", build_main, lambda tmp_path, target, f: [
            "--input", str(f["src"]), "--format", "longbench", "--tokenizer", f["tokenizer"], "--out", str(target)]),
        ("longqa.merge", merge_main, lambda tmp_path, target, f: [str(f["built"]), "--out", str(target)]),
        ("longqa.corpus", corpus_main, lambda tmp_path, target, f: [
            "--sources", "stdlib", "--tokenizer", f["tokenizer"], "--out", str(target)]),
        ("longqa.publish", dataset_publish_main, lambda tmp_path, target, f: [
            str(f["built"]), "--repo-id", "org/data", "--dry-run", str(target)]),
        ("sft.run", run_main, lambda tmp_path, target, f: [
            "--model", f["model"], "--data", str(f["built"]), "--max-length", "128", "--output-dir", str(target)]),
        ("sft.merge", adapter_merge_main, lambda tmp_path, target, f: [str(f["adapter"]), "--out", str(target)]),
        ("sft.eval", eval_main, lambda tmp_path, target, f: [
            "--models", f"a={f['model']}", "--tasks", "ppl", "--ppl-data", str(f["built"]), "--out", str(target)]),
        ("sft.experiment", experiment_main, experiment),
        ("sft.publish", model_publish_main, lambda tmp_path, target, f: [
            str(f["run"]), "--repo-id", "org/model", "--dry-run", str(target)]),
        ("longqa.generate", generate_main, None),  # its own test below: its files live beside the documents
    ]


CASES = [case for case in command_cases() if case[2] is not None]


@pytest.fixture(scope="module")
def fixtures(built, tiny_tokenizer_path, tmp_path_factory):
    from tests.sft.conftest import make_tiny_llama

    root = tmp_path_factory.mktemp("inputs")
    tiny_llama_dir = make_tiny_llama(root / "tiny-llama")
    run = root / "run"  # an sft.run folder as sft.publish reads it
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return {"src": corpus(root / "src.jsonl", n_docs=4), "tokenizer": tiny_tokenizer_path, "built": built,
            "model": tiny_llama_dir, "adapter": run / "adapter", "run": run}


@pytest.mark.parametrize("name,main,argv", CASES, ids=[c[0] for c in CASES])
def test_a_folder_holding_a_users_file_is_refused_and_kept(name, main, argv, fixtures, tmp_path, capsys):
    target = users_folder(tmp_path)
    before = snapshot(target)
    assert main(argv(tmp_path, target, fixtures)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"{target} is not empty and not an earlier output of {name}" in err
    assert "notes.txt (1 entry)" in err and "--overwrite" in err
    assert snapshot(target) == before  # byte for byte, nothing added


@pytest.mark.parametrize("name,main,argv", CASES, ids=[c[0] for c in CASES])
def test_the_current_directory_and_a_repository_are_refused_even_with_overwrite(name, main, argv, fixtures, tmp_path,
                                                                                monkeypatch, capsys):
    repo = users_folder(tmp_path, "checkout")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = snapshot(repo)
    assert main([*argv(tmp_path, repo, fixtures), "--overwrite"]) == 2
    assert "holds .git" in capsys.readouterr().err and snapshot(repo) == before
    here = users_folder(tmp_path, "here")
    monkeypatch.chdir(here)
    assert main([*argv(tmp_path, Path("."), fixtures), "--overwrite"]) == 2
    assert "current directory" in capsys.readouterr().err and snapshot(here) == {"notes.txt": FOREIGN}


def test_the_builds_own_output_is_replaced_and_a_forced_folder_is_written(fixtures, tmp_path, capsys):
    from longqa.build import main

    out = tmp_path / "out"
    args = ["--input", str(fixtures["src"]), "--format", "longbench", "--tokenizer", fixtures["tokenizer"]]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / MARKER).read_text()) == {"command": "longqa.build"}
    (out / "stale.txt").write_text("from an older build")  # inside its own output: replaced with the rest
    assert main([*args, "--out", str(out), "--max-length", "400"]) == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["max_length"] == 400
    forced = users_folder(tmp_path)
    assert main([*args, "--out", str(forced), "--overwrite"]) == 0
    assert (forced / "manifest.json").is_file() and not (forced / "notes.txt").exists()


def test_a_killed_rebuild_leaves_the_old_output(fixtures, tmp_path, monkeypatch):
    import longqa.tokenize
    from longqa.build import main

    out = tmp_path / "out"
    args = ["--input", str(fixtures["src"]), "--format", "longbench", "--tokenizer", fixtures["tokenizer"],
            "--out", str(out)]
    assert main(args) == 0
    before = snapshot(out)

    def killed(self, samples, keys):
        raise KeyboardInterrupt  # as a Ctrl-C (SIGINT) mid-build

    monkeypatch.setattr(longqa.tokenize.Encoder, "encode", killed)
    assert main(args) == 130  # interrupted
    assert snapshot(out) == before and not list(tmp_path.glob(".out.partial-*"))


def test_outputs_made_before_the_marker_are_still_recognised(tmp_path):
    old = tmp_path / "old-build"
    old.mkdir()
    for name in LEGACY["longqa.build"]:
        (old / name).mkdir() if name != "manifest.json" else (old / name).write_text("{}")
    assert is_own(old, "longqa.build") and is_own(old, "longqa.merge")  # a merged build is a build
    assert not is_own(old, "sft.run") and out_problems("out", old, "longqa.build") == []


def test_an_output_inside_an_input_or_holding_one_is_refused(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("text")
    inside = out_problems("out", docs / "out", "longqa.build", inputs=[docs])
    assert inside == [f"out: {docs / 'out'} is inside the input folder {docs}; write the output elsewhere"]
    holding = out_problems("out", tmp_path, "longqa.build", inputs=[docs / "a.txt"], overwrite=True)
    assert holding == [f"out: {tmp_path} holds the input {docs / 'a.txt'}; write the output elsewhere"]


def test_generate_never_appends_to_or_cuts_a_qa_file_it_did_not_write(tmp_path, capsys):
    from longqa.generate.__main__ import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("A document about the Normans. " * 20)
    (docs / "qa.jsonl").write_bytes(b'{"mine": 1}\n{"cut": "no newline at the end"')
    before = snapshot(docs)
    argv = ["--docs", str(docs), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"docs: {docs} holds qa.jsonl that no earlier longqa.generate run wrote" in err
    assert snapshot(docs) == before
    out = users_folder(tmp_path, "elsewhere")
    (out / "rejects.jsonl").write_text("{}\n")
    assert main([*argv, "--out", str(out)]) == 2
    assert "holds rejects.jsonl" in capsys.readouterr().err and (out / "rejects.jsonl").read_text() == "{}\n"
