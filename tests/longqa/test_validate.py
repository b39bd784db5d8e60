"""The validate stage: each rule's reason and field, rule order, reason classes and the clipped reject record."""
from __future__ import annotations

import json

import pytest

from longqa.readers import read_input
from longqa.validate import (INVALID_REASONS, POLICY_REASONS, RULES, clip_record, document_too_long,
                             document_too_short, empty_answer, validate)
from schemas.build import BuildConfig
from schemas.records import Document, Origin, Record
from tests.longqa.fixtures import spec, split_items, write_jsonl

DOC = "A long document about the Normans. " * 10


def config(**kw) -> BuildConfig:
    return BuildConfig(inputs=[{"path": "unused.jsonl", "format": "jsonl"}], **kw)


def record(documents=(DOC,), question="Who were the Normans?", answers=("A people",)) -> Record:
    return Record(id="r", documents=[Document(text=t) for t in documents], question=question, answers=list(answers),
                  source="test", origin=Origin(file="in.jsonl", line=7))


def test_a_valid_record_passes():
    assert validate(record(), config()) is None


@pytest.mark.parametrize("kw,field", [
    ({"documents": (DOC, 42)}, "documents[1].text"),
    ({"question": ["q"]}, "question"),
    ({"answers": ("ok", None)}, "answers[1]"),
])
def test_non_text(kw, field):
    reject = validate(record(**kw), config())
    assert (reject.reason, reject.field) == ("non_text", field)
    assert str(reject.origin) == "in.jsonl:7" and reject.source == "test"


@pytest.mark.parametrize("kw,reason,field", [
    ({"documents": ()}, "empty_document", "documents"),
    ({"documents": (DOC, " \n\t")}, "empty_document", "documents[1].text"),
    ({"question": "   "}, "empty_question", "question"),
    ({"answers": ()}, "empty_answer", "answers"),
    ({"answers": ("", "  ")}, "empty_answer", "answers"),
])
def test_empty(kw, reason, field):
    reject = validate(record(**kw), config())
    assert (reject.reason, reject.field) == (reason, field)


def test_empty_answers_next_to_a_real_one_are_dropped():
    rec = record(answers=("", "A people", "  "))
    assert empty_answer(rec, config()) is None
    assert rec.answers == ["A people"]


def test_document_length_bounds_count_all_documents():
    rec = record(documents=("a" * 60, "b" * 60))
    assert document_too_short(rec, config(min_doc_chars=120)) is None
    reject = validate(rec, config(min_doc_chars=121))
    assert (reject.reason, reject.field) == ("document_too_short", "documents") and "120" in reject.message
    assert document_too_long(rec, config(max_doc_chars=120)) is None
    reject = validate(rec, config(max_doc_chars=119))
    assert (reject.reason, reject.field) == ("document_too_long", "documents")


def test_first_failing_rule_wins():
    reject = validate(record(question=" ", answers=("",)), config(min_doc_chars=10_000))
    assert reject.reason == "empty_question"
    assert [rule.__name__ for rule in RULES] == ["non_text", "empty_document", "empty_question", "empty_answer",
                                                "document_too_short", "document_too_long"]


def test_reason_classes():
    assert not INVALID_REASONS & POLICY_REASONS
    assert {"malformed_json", "invalid_utf8", "missing_field", "missing_document", "non_text", "empty_document",
            "empty_question", "empty_answer", "document_too_short", "document_too_long",
            "duplicate_pair"} <= INVALID_REASONS
    assert {"unanswerable", "denied_document"} <= POLICY_REASONS
    assert {rule.__name__ for rule in RULES} <= INVALID_REASONS


def test_reject_record_is_clipped_and_writable():
    reject = validate(record(documents=("x" * 5000,), question=""), config())
    doc = reject.record["documents"][0]["text"]
    assert doc == "x" * 200 + "…"
    json.dumps(reject.record)


def test_clip_record():
    clipped = clip_record({"a": "y" * 201, "b": ["z" * 200, 3, None], "c": "bad \udcff byte", "d": b"\xff ok"})
    assert clipped == {"a": "y" * 200 + "…", "b": ["z" * 200, 3, None], "c": "bad \ufffd byte", "d": "\ufffd ok"}


def test_validate_after_a_reader(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"document": DOC, "question": "q?", "answer": "a"},
        {"document": DOC, "question": 12, "answer": "a"},
        {"document": "short", "question": "q?", "answer": ["", "a"]},
        {"document": DOC, "question": "q?", "answer": []},
    ])
    records, rejects = split_items(read_input(spec(path, "jsonl")))
    assert not rejects
    results = [validate(r, config(min_doc_chars=20)) for r in records]
    assert [(r.reason, r.field, r.origin.line) if r else None for r in results] == [
        None, ("non_text", "question", 2), ("document_too_short", "documents", 3), ("empty_answer", "answers", 4)]
