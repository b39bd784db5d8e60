"""Long QA with distractors (`longqa.distract`): split isolation, exact lengths, evidence spans, answer positions,
determinism, counts in the manifest and card."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from longqa.distract import find_answer
from longqa.pipeline import build
from schemas.build import BuildConfig
from tests.longqa.fixtures import document, longbench_row, write_longbench

LENGTH = 1000


def qa_corpus(path: Path, n_docs: int = 20, per_doc: int = 3, extra=()) -> Path:
    """`n_docs` documents, `per_doc` questions each, whose answers occur in their document (`fact{d}-{q}`)."""
    rows = [longbench_row(document(d), f"What is fact{d}-{q + 3}?", [f"fact{d}-{q + 3}"], _id=f"d{d}q{q}")
            for d in range(n_docs) for q in range(per_doc)]
    return write_longbench(path, rows + list(extra))


def distract_cfg(tmp_path: Path, tokenizer: str, *, out: str = "out", length: int = LENGTH, seed: int | None = None,
                 corpus: Path | None = None, **kw) -> BuildConfig:
    corpus = corpus or qa_corpus(tmp_path / "qa.jsonl")
    return BuildConfig(inputs=[{"path": str(corpus), "format": "longbench",
                                "distractors": {"length": length, "seed": seed}}],
                       tokenizer=tokenizer, out=str(tmp_path / out), max_length=kw.pop("max_length", 1024),
                       heldout_fraction=0.3, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer_path):
    tmp = tmp_path_factory.mktemp("distract")
    cfg = distract_cfg(tmp, tiny_tokenizer_path)
    manifest = build(cfg, progress=False)
    out = Path(cfg.out)
    return (manifest, datasets.load_from_disk(str(out / "text")), datasets.load_from_disk(str(out / "tokenized")),
            out)


def user_turn(row) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def test_held_out_samples_hold_no_train_document_and_the_reverse(built):
    _, text, _, _ = built
    docs = {split: {row["doc_id"]: document(int(row["id"][1:].split("q")[0])) for row in text[split]}
            for split in text}
    assert docs["train"] and docs["test"] and not set(docs["train"]) & set(docs["test"])
    for split, other in (("test", "train"), ("train", "test")):
        for row in text[split]:
            material = user_turn(row)
            assert not [d for d in docs[other].values() if d[:60] in material]  # no document of the other split
            assert sum(d[:60] in material for d in docs[split].values()) >= 2  # the gold one and distractors


def test_every_sample_has_the_target_length_less_a_word_at_most_and_is_not_truncated(built):
    manifest, _, tok, _ = built
    for split in tok:
        lengths = np.asarray(tok[split]["length"])
        # never above; below by less than a word per cut document (the tiny tokenizer spends up to ~8 on a word)
        assert lengths.max() == LENGTH and lengths.min() >= LENGTH - 16 and lengths.mean() > LENGTH - 4
        assert set(tok[split]["n_doc_tokens_dropped"]) == {0}
    assert all(s["under_length"] == 0 for s in manifest["distractors"]["by_split"].values())


def test_evidence_span_decodes_to_the_gold_document_and_the_answer_position_to_the_answer(built, tiny_tokenizer):
    _, text, tok, _ = built
    depths = set()
    for split in tok:
        for row_text, row in zip(text[split], tok[split]):
            ids = row["input_ids"]
            start, end, answer = row["evidence_start"], row["evidence_end"], row["answer_position"]
            gold = document(int(row["id"][1:].split("q")[0]))
            assert tiny_tokenizer.decode(ids[start:end]) == gold
            assert answer is not None and start <= answer < end
            reference = row_text["answers"][0]
            span = tiny_tokenizer.decode(ids[answer:answer + 8])
            assert span.strip().startswith(reference)
            assert tiny_tokenizer.decode(ids[start:answer]) == gold[:find_answer(gold, reference)].rstrip(" ")
            assert row_text["evidence_start"] == start and row_text["depth"] == row["depth"]
            depths.add(row["depth"])
    assert depths == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_depth_places_the_gold_document(built):
    _, _, tok, _ = built
    rows = [r for split in tok for r in tok[split]]
    first = [r for r in rows if r["depth"] == 0.0]
    last = [r for r in rows if r["depth"] == 1.0]
    middle = [r for r in rows if r["depth"] == 0.5]
    assert max(r["evidence_start"] for r in first) < 50  # right after the template's opening
    assert min(r["evidence_end"] for r in last) > LENGTH - 60  # just before the question
    assert all(r["evidence_start"] > 100 and r["evidence_end"] < LENGTH - 100 for r in middle)


def test_counts_in_manifest_and_card(built):
    manifest, text, _, out = built
    d = manifest["distractors"]
    assert d["inputs"][next(iter(d["inputs"]))]["length"] == LENGTH
    for split in text:
        assert d["by_split"][split]["samples"] == len(text[split]) == manifest["counts"]["by_split"][split]
        assert d["by_split"][split]["answer_in_gold"] == len(text[split])
        assert sum(d["by_split"][split]["by_depth"].values()) == len(text[split])
    assert manifest["counts"]["by_stage"]["distract"]["kept"] == manifest["counts"]["written"]
    card = (out / "README.md").read_text()
    assert "## Long QA with distractors" in card and f"{LENGTH} tokens" in card
    assert json.loads((out / "manifest.json").read_text())["distractors"] == d


def test_the_same_seed_builds_the_same_dataset_another_seed_other_depths(tmp_path, tiny_tokenizer_path):
    corpus = qa_corpus(tmp_path / "qa.jsonl")
    manifest = build(distract_cfg(tmp_path, tiny_tokenizer_path, corpus=corpus), progress=False)
    again = build(distract_cfg(tmp_path, tiny_tokenizer_path, out="again", corpus=corpus, batch_size=7), progress=False)
    assert again["fingerprints"] == manifest["fingerprints"]
    tok = datasets.load_from_disk(str(tmp_path / "out" / "tokenized"))
    other = build(distract_cfg(tmp_path, tiny_tokenizer_path, out="other", seed=7, corpus=corpus), progress=False)
    assert other["fingerprints"]["tokenized"] != manifest["fingerprints"]["tokenized"]
    other_tok = datasets.load_from_disk(str(tmp_path / "other" / "tokenized"))
    assert other_tok["test"]["depth"] != tok["test"]["depth"]


def test_a_document_longer_than_the_length_is_rejected_with_a_reason(tmp_path, tiny_tokenizer_path):
    long_doc = longbench_row(document(99, words=2000), "What is fact99-3?", ["fact99-3"], _id="long")
    cfg = distract_cfg(tmp_path, tiny_tokenizer_path, corpus=qa_corpus(tmp_path / "qa.jsonl", n_docs=6,
                                                                      extra=[long_doc]), max_length=8192)
    manifest = build(cfg, progress=False)
    assert manifest["counts"]["by_stage"]["distract"]["dropped"] == {"gold_over_length": 1}
    assert manifest["counts"]["balanced"]
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()[0])
    assert reject["reason"] == "gold_over_length" and f"distractors.length {LENGTH}" in reject["message"]


def test_samples_without_distractors_have_null_evidence(tmp_path, tiny_tokenizer_path):
    cfg = BuildConfig(inputs=[{"path": str(qa_corpus(tmp_path / "qa.jsonl", n_docs=4)), "format": "longbench"}],
                      tokenizer=tiny_tokenizer_path, out=str(tmp_path / "out"), max_length=1024)
    manifest = build(cfg, progress=False)
    tok = datasets.load_from_disk(str(tmp_path / "out" / "tokenized"))
    assert set(tok["train"]["evidence_start"]) == {None} and "distractors" not in manifest
    assert "distract" not in manifest["counts"]["by_stage"]


def test_a_length_above_max_length_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="distractors.length 16384 exceeds max_length"):
        BuildConfig(inputs=[{"path": str(tmp_path), "format": "jsonl", "distractors": {"length": 16384}}],
                    max_length=8192)
    with pytest.raises(ValueError, match="depths"):
        BuildConfig(inputs=[{"path": str(tmp_path), "format": "jsonl", "distractors": {"depths": [1.5]}}],
                    max_length=16384)


def test_find_answer():
    assert find_answer("The Normans came", "normans") == 4
    assert find_answer("The Normans came", "Vikings") is None
    assert find_answer("abc", "abc") == 0 and find_answer("abc", " ") is None


def test_a_pool_too_small_to_fill_the_length_is_counted(tmp_path, tiny_tokenizer_path):
    cfg = distract_cfg(tmp_path, tiny_tokenizer_path, corpus=qa_corpus(tmp_path / "qa.jsonl", n_docs=2, per_doc=1),
                       length=1500, max_length=2048)
    cfg = cfg.model_copy(update={"heldout_fraction": 0.0})
    manifest = build(cfg, progress=False)
    tok = datasets.load_from_disk(str(tmp_path / "out" / "tokenized"))
    assert manifest["distractors"]["by_split"]["train"]["under_length"] == 2
    assert max(tok["train"]["length"]) < 1500 - 100  # both documents in each sample, and nothing more to add
    assert manifest["distractors"]["by_split"]["train"]["distractor_documents_used"] == 2
