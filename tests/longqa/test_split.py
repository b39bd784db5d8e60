"""The split stage's rules: splits by document hash, held-out and denied documents, shards, deduplication."""
from __future__ import annotations

import pytest

from longqa.split import HELDOUT, TRAIN, Deduplicator, Splitter, read_doc_list, shard_of, unit_hash
from tests.longqa.fixtures import config, document, record


def test_unit_hash_is_deterministic_in_range_and_separates_its_parts():
    values = [unit_hash("salt", str(i)) for i in range(2000)]
    assert all(0 <= v < 1 for v in values) and values == [unit_hash("salt", str(i)) for i in range(2000)]
    assert unit_hash("a", "bc") != unit_hash("ab", "c")  # the parts are joined with a separator
    assert 0.45 < sum(v < 0.5 for v in values) / len(values) < 0.55


def test_shards_cover_every_key_once():
    keys = [f"doc{i}" for i in range(300)]
    shards = [shard_of(k, 3) for k in keys]
    assert set(shards) == {0, 1, 2} and all(shards.count(s) > 60 for s in range(3))
    assert shards == [shard_of(k, 3) for k in keys] and {shard_of(k, 1) for k in keys} == {0}


def test_held_out_fraction_is_by_document_and_follows_the_salt(tmp_path):
    records = [record(doc=document(i)) for i in range(400)]
    splitter = Splitter(config(tmp_path, heldout_fraction=0.25))
    splits = [splitter.assign(r, r.doc_id()) for r in records]
    assert 0.18 < splits.count(HELDOUT) / len(splits) < 0.32
    again = [splitter.assign(record(doc=document(i), question="Another?"), records[i].doc_id()) for i in range(400)]
    assert again == splits  # the split depends on the document only
    other = Splitter(config(tmp_path, heldout_fraction=0.25, split_salt="other"))
    assert [other.assign(r, r.doc_id()) for r in records] != splits


def test_named_held_out_and_denied_documents_by_hash_or_title(tmp_path):
    a, b, c = (record(doc=document(i)) for i in range(3))
    b.documents[0].title = "Normandy"
    deny = tmp_path / "deny.txt"
    deny.write_text(f"# denied\n\n{c.doc_id()}\n", encoding="utf-8")
    splitter = Splitter(config(tmp_path, heldout_docs=["Normandy"], deny_docs=str(deny)))
    assert [splitter.assign(r, r.doc_id()) for r in (a, b, c)] == [TRAIN, HELDOUT, None]
    assert read_doc_list(str(deny)) == {c.doc_id()}


def test_train_only_records_never_go_to_the_held_out_split(tmp_path):
    short = record(doc=document(1))
    splitter = Splitter(config(tmp_path, heldout_docs=[short.doc_id()]))
    short.train_only = True
    assert splitter.assign(short, short.doc_id()) == TRAIN
    assert splitter.assign(record(doc=document(1)), short.doc_id()) == HELDOUT


def test_missing_deny_list_is_named():
    with pytest.raises(FileNotFoundError, match="deny_docs: nowhere.txt"):
        read_doc_list("nowhere.txt")


def test_duplicates_are_the_same_document_and_question_up_to_case_and_spaces():
    seen = Deduplicator()
    assert seen.first_seen("d1", "Who gave their name?", 0) is None
    assert seen.first_seen("d1", "  who GAVE their\nname? ", 5) == 0
    assert seen.first_seen("d2", "Who gave their name?", 6) is None  # another document
    assert seen.first_seen("d1", "Who gave their names?", 7) is None  # another question
