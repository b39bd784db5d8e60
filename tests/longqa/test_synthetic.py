"""`format: synthetic`: tasks hidden in real text, seeded, at controlled lengths and depths, over train-side haystacks.

(The build with a synthetic input, its card note and its train-only split are checked in test_mix.py, in one build.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from longqa.readers import read_input
from schemas import BuildConfig, InputSpec, Record


def write_haystacks(folder: Path, n: int = 6, sentences: int = 400) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n):
        text = " ".join(f"Document {d} sentence {s} tells of harbours, councils and winter trade." for s in
                        range(sentences))
        (folder / f"doc{d}.txt").write_text(text, encoding="utf-8")
    return folder


def records(path: Path, seed: int = 0, **synthetic) -> list[Record]:
    spec = InputSpec(path=str(path), format="synthetic", synthetic=synthetic)
    cfg = BuildConfig(inputs=[spec], seed=seed, heldout_docs=["doc0.txt", "doc1.txt"], max_length=32768)
    return [r for r in read_input(spec, cfg) if isinstance(r, Record)]


def test_samples_are_seeded_and_answerable_from_their_text(tmp_path):
    folder = write_haystacks(tmp_path / "docs")
    first = records(folder, samples=24)
    assert [r.model_dump() for r in first] == [r.model_dump() for r in records(folder, samples=24)]
    assert [r.documents[0].text for r in records(folder, seed=1, samples=24)] != [r.documents[0].text for r in first]
    assert {r.id.split("-")[1] for r in first} == {"kv_single", "kv_multi", "variable_tracking", "counting"}
    for r in first:
        text, answer, task = r.documents[0].text, r.answers[0], r.id.split("-")[1]
        assert r.train_only
        if task == "kv_single":
            key = re.search(r"number for (\S+) mentioned", r.question).group(1)
            assert f"The special magic number for {key} is: {answer}." in text
        elif task == "kv_multi":
            for pair in answer.split(", "):
                key, value = pair.split(": ")
                assert f"The special magic number for {key} is: {value}." in text
        elif task == "variable_tracking":
            names = answer.split(", ")
            value = re.search(r"value (\d+)", r.question).group(1)
            assert f"VAR {names[0]} = {value}." in text
            assert all(f"VAR {b} = VAR {a}." in text for a, b in zip(names, names[1:]))
        else:
            word = re.search(r"remember the word (\S+)\?", r.question).group(1)
            assert text.count(f"Remember the word {word}.") == int(answer)


def test_lengths_and_depths_are_controlled(tmp_path):
    folder = write_haystacks(tmp_path / "docs")
    got = records(folder, samples=12, tasks={"kv_single": 1}, lengths=[300, 1200], depths=[0.0, 0.5, 1.0])
    for i, r in enumerate(got):
        length, depth = [300, 1200][i % 2], [0.0, 0.5, 1.0][(i // 2) % 3]
        text = r.documents[0].text
        assert length - 20 <= len(text.split()) <= length + 15
        where = text.index("The special magic number") / len(text)
        assert abs(where - depth) < 0.05, (i, where, depth)


def test_haystacks_come_from_the_train_side_only(tmp_path):
    folder = write_haystacks(tmp_path / "docs")
    used = {r.documents[0].title.split(" in ")[1] for r in records(folder, samples=40, lengths=[100])}
    assert used and not used & {"doc0.txt", "doc1.txt"}  # the held-out documents never become training text

    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "heldout").mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"kind": "longqa-long-text-corpus"}))
    row = {"id": "a", "source": "s", "title": "train-doc", "license": "x",
           "text": "A train sentence of the corpus. " * 300}
    (corpus / "train" / "s.jsonl").write_text(json.dumps(row) + "\n")
    (corpus / "heldout" / "s.jsonl").write_text(json.dumps({**row, "title": "heldout-doc"}) + "\n")
    titles = {r.documents[0].title for r in records(corpus, samples=6, lengths=[100])}
    assert all(t.endswith(" in train-doc") for t in titles)


def test_lengths_beyond_max_length_are_a_config_problem():
    with pytest.raises(ValueError, match="truncation could cut the hidden facts out"):
        BuildConfig(inputs=[{"path": "x", "format": "synthetic", "synthetic": {"lengths": [8000]}}], max_length=8192)
    with pytest.raises(ValueError, match="format synthetic only"):
        InputSpec(path="x", format="docs", synthetic={})
