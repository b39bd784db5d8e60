"""The whole build on fixture files with a tiny tokenizer: outputs, counts, splits, determinism, atomicity, shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from longqa.build import main as build_main
from longqa.merge import main as merge_main
from longqa.pipeline import build
from tests.longqa.fixtures import cfg_for, corpus, document

ROOT = Path(__file__).resolve().parents[2]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_build_writes_loadable_datasets_and_balanced_counts(tmp_path, tiny_tokenizer_path, tiny_tokenizer):
    bad = ['{"context": "x", "input": "q?"', {"context": "", "input": "q?", "answers": ["a"]},
           {"context": document(0), "input": "What is fact0-0?", "answers": ["again"]}]
    cfg = cfg_for(tmp_path, tiny_tokenizer_path, [corpus(tmp_path / "lb.jsonl", extra=bad)], heldout_fraction=0.3)
    m = build(cfg, progress=False)
    out = Path(cfg.out)
    c = m["counts"]
    assert c["read"] == 63 and c["written"] == 60 and c["rejected"] == 3 and c["balanced"]
    assert c["by_reason"] == {"duplicate_pair": 1, "empty_document": 1, "malformed_json": 1}
    stages = c["by_stage"]  # each stage in order: what it kept and dropped, summing to the same totals
    assert list(stages) == ["read", "validate", "split", "dedup", "render", "tokenize"]
    assert stages["read"]["dropped"] == {"malformed_json": 1} and stages["dedup"]["dropped"] == {"duplicate_pair": 1}
    assert stages["tokenize"]["kept"] == c["written"] and stages["read"]["kept"] == c["read"] - 1
    assert sum(sum(s["dropped"].values()) for s in stages.values()) == c["rejected"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == sorted(c["by_reason"])
    assert {r["origin"] for r in rejects} == {f"{tmp_path}/lb.jsonl:{n}" for n in (61, 62, 63)}
    text, tok = datasets.load_from_disk(str(out / "text")), datasets.load_from_disk(str(out / "tokenized"))
    assert set(text) == set(tok) == {"train", "test"}
    assert sum(len(d) for d in text.values()) == 60
    for split in text:
        assert text[split]["id"] == tok[split]["id"]
        for row_text, row_tok in zip(text[split], tok[split]):
            ids, labels = np.array(row_tok["input_ids"]), np.array(row_tok["labels"])
            assert row_tok["length"] == len(ids) <= 512
            assert tiny_tokenizer.decode(ids[labels != -100]) == row_text["answers"][0] + "<|im_end|>"
            assert row_text["messages"][-1] == {"role": "assistant", "content": row_text["answers"][0]}
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["task_categories"] == ["question-answering", "text-generation"] and meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["text", "tokenized"]
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert m["tokens"]["train"]["max"] <= 512 and m["inputs"][0]["sha256"]


def test_no_document_in_two_splits(tmp_path, tiny_tokenizer_path):
    cfg = cfg_for(tmp_path, tiny_tokenizer_path, [corpus(tmp_path / "lb.jsonl", n_docs=40)], heldout_fraction=0.5)
    build(cfg, progress=False)
    text = datasets.load_from_disk(f"{cfg.out}/text")
    train, test = set(text["train"]["doc_id"]), set(text["test"]["doc_id"])
    assert train and test and not train & test
    assert len(train | test) == 40


def test_explicit_heldout_and_denied_documents(tmp_path, tiny_tokenizer_path):
    src = corpus(tmp_path / "lb.jsonl", n_docs=6)
    probe = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name="probe"), progress=False)
    ids = datasets.load_from_disk(f"{tmp_path}/probe/text")
    doc_ids = sorted(set(ids["train"]["doc_id"]) | set(ids["test"]["doc_id"]))
    deny = tmp_path / "deny.txt"
    deny.write_text(f"# evaluation documents\n{doc_ids[0]}\n")
    cfg = cfg_for(tmp_path, tiny_tokenizer_path, [src], heldout_docs=[doc_ids[1]], deny_docs=str(deny))
    m = build(cfg, progress=False)
    text = datasets.load_from_disk(f"{cfg.out}/text")
    assert set(text["test"]["doc_id"]) == {doc_ids[1]}
    assert doc_ids[0] not in set(text["train"]["doc_id"]) | set(text["test"]["doc_id"])
    assert m["counts"]["by_reason"] == {"denied_document": 3} and probe["counts"]["rejected"] == 0


def test_same_inputs_same_fingerprints_whatever_num_proc(tmp_path, tiny_tokenizer_path):
    src = corpus(tmp_path / "lb.jsonl")
    a = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name="a", batch_size=7), progress=False)
    b = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name="b", batch_size=7, num_proc=3), progress=False)
    c = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name="c", max_length=300), progress=False)
    assert a["fingerprints"] == b["fingerprints"]
    assert a["fingerprints"]["tokenized"] != c["fingerprints"]["tokenized"]
    assert c["truncation"]["total"]["samples_truncated"] > 0


def test_shards_merge_into_the_single_machine_build(tmp_path, tiny_tokenizer_path):
    src = corpus(tmp_path / "lb.jsonl", extra=['{"broken'])
    single = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name="single"), progress=False)
    parts = []
    for i in range(3):
        part = build(cfg_for(tmp_path, tiny_tokenizer_path, [src], out_name=f"part{i}", shard_index=i, num_shards=3),
                     progress=False)
        assert 0 < part["counts"]["read"] < single["counts"]["read"]
        parts.append(str(tmp_path / f"part{i}"))
    assert merge_main([*parts, "--out", str(tmp_path / "merged")]) == 0
    merged = manifest(tmp_path / "merged")
    assert merged["fingerprints"] == single["fingerprints"]
    assert merged["counts"] == single["counts"]
    for split in ("train", "test"):
        a = datasets.load_from_disk(f"{tmp_path}/merged/tokenized/{split}")
        b = datasets.load_from_disk(f"{tmp_path}/single/tokenized/{split}")
        assert a["input_ids"] == b["input_ids"] and a["id"] == b["id"]
    assert merge_main([*parts[:2], "--out", str(tmp_path / "incomplete")]) == 2


def test_failed_build_leaves_no_output_and_rerun_succeeds(tmp_path, tiny_tokenizer_path, monkeypatch):
    import longqa.tokenize

    src = corpus(tmp_path / "lb.jsonl")
    cfg = cfg_for(tmp_path, tiny_tokenizer_path, [src], batch_size=5)
    calls = []
    original = longqa.tokenize.Encoder.encode

    def failing(self, samples, keys):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(self, samples, keys)

    monkeypatch.setattr(longqa.tokenize.Encoder, "encode", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        build(cfg, progress=False)
    assert not Path(cfg.out).exists() and not list(tmp_path.glob(".out.*"))
    monkeypatch.setattr(longqa.tokenize.Encoder, "encode", original)
    assert build(cfg, progress=False)["counts"]["written"] == 60


SLOW_BUILD = """
import sys, time
import longqa.tokenize as t
original = t.Encoder.encode
def slow(self, samples, keys):
    time.sleep(0.5)
    return original(self, samples, keys)
t.Encoder.encode = slow
from longqa.build import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_build_leaves_no_half_output(tmp_path, tiny_tokenizer_path):
    src = corpus(tmp_path / "lb.jsonl")
    out = tmp_path / "out"
    args = ["--input", str(src), "--format", "longbench", "--tokenizer", tiny_tokenizer_path, "--out", str(out),
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, *args, "--max-length", "512"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 900  # a hang guard: the test waits on the event (rejects.jsonl written), not the clock
    while not list(tmp_path.glob(".out.partial-*/rejects.jsonl")):
        assert proc.poll() is None and time.time() < deadline, "the build ended or hung before writing rejects.jsonl"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".out.partial-*")) and not out.exists()
    assert build_main([*args, "--max-length", "512"]) == 0
    assert manifest(out)["counts"]["written"] == 60 and not list(tmp_path.glob(".out.partial-*"))


def test_strict_stops_naming_file_line_and_field(tmp_path, tiny_tokenizer_path, capsys):
    src = corpus(tmp_path / "lb.jsonl", extra=[{"context": document(99), "input": "  ", "answers": ["a"]}])
    code = build_main(["--input", str(src), "--format", "longbench", "--tokenizer", tiny_tokenizer_path,
                       "--out", str(tmp_path / "out"), "--strict", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "lb.jsonl:61" in err and "question" in err and "empty_question" in err
    assert not (tmp_path / "out").exists()


def test_cli_flags_override_recipe_and_print_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.csv", "q.csv"):
        (tmp_path / name).write_text("context,q,a\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"inputs": [{"path": "a.csv", "format": "csv"}], "max_length": 1024}))
    assert build_main(["--config", str(recipe), "--max-length", "2048", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_length"] == 2048 and printed["inputs"][0]["path"] == "a.csv"
    assert build_main(["--input", "q.csv", "--format", "csv", "--field", "document=context", "--field", "question=q",
                       "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["inputs"][0]["fields"] == {"document": "context", "question": "q"}


def test_config_problems_are_reported_at_once(tmp_path, capsys):
    code = build_main(["--input", "x.jsonl", "--format", "nope", "--max-length", "3", "--truncation", "sideways"])
    err = capsys.readouterr().err
    assert code == 2 and "4 problem(s)" in err
    assert "inputs.0.format" in err and "max_length" in err and "truncation" in err
    assert "inputs.0.path: x.jsonl does not exist" in err


def test_batches_never_part_a_documents_consecutive_samples():
    from types import SimpleNamespace

    from longqa.pipeline import MAX_BATCH_GROWTH, batched_by_document

    items = [SimpleNamespace(doc_id=d) for d in "aaabbbbbcdd"] + [SimpleNamespace(doc_id="e")] * 40
    batches = list(batched_by_document(items, 2))
    assert ["".join(x.doc_id for x in b) for b in batches[:3]] == ["aaa", "bbbbb", "cdd"]
    assert [len(b) for b in batches[3:]] == [16, 16, 8]  # 40 samples of "e": parted at 8 x 2
    for a, b in zip(batches, batches[1:]):  # a document runs on into the next batch only past the growth cap
        assert a[-1].doc_id != b[0].doc_id or len(a) == MAX_BATCH_GROWTH * 2
    assert sum(map(len, batches)) == len(items)
