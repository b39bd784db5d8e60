"""The read stage: every input format, its ids and origins, every reader reject reason, and streaming."""
from __future__ import annotations

import json
import tracemalloc
import types
from typing import get_args

import pytest

from longqa.readers import READERS, read_input
from longqa.readers.longalpaca import split_instruction
from schemas.build import InputFormat
from schemas.records import Record, Reject
from tests.longqa.fixtures import (longalpaca_instruction, longalpaca_row, longbench_row, spec, split_items,
                                   squad_article, squad_qa, write_csv, write_docs, write_hf_disk, write_json,
                                   write_jsonl, write_longalpaca, write_longbench, write_parquet, write_squad)

PAPER = "Attention is all you need. " * 20
LONG = "x" * 1000


def read(path, fmt, **kw):
    return split_items(read_input(spec(path, fmt, **kw)))


def test_every_format_has_a_reader():
    assert set(READERS) == set(get_args(InputFormat))


# ----------------------------------------------------------------------------------------------------- longalpaca
def test_split_instruction_at_the_last_marker():
    text = longalpaca_instruction("A story. Now the story ends. More story.", "Who?", noun="story")
    document, question = split_instruction(text)
    assert document.startswith("Below is a story.") and document.endswith("More story.")
    assert question == "Now the story ends. \nWho?"
    assert split_instruction("no marker here") is None


@pytest.mark.parametrize("as_list", [True, False])
def test_longalpaca(tmp_path, as_list):
    rows = [longalpaca_row(PAPER, "What is needed?", "Attention."),
            {"instruction": "Summarise the text.", "input": "The text to summarise.", "output": "A summary."},
            longalpaca_row("A book.", "Which book?", "This one.", noun="book"),
            {"instruction": "What is it? (no material)", "input": "", "output": "?"}]
    path = write_longalpaca(tmp_path / ("la.json" if as_list else "la.jsonl"), rows, as_list=as_list)
    records, rejects = read(path, "longalpaca", license="cc-by-nc-4.0")

    assert [r.id for r in records] == [f"{path.name}-0", f"{path.name}-1", f"{path.name}-2"]
    first, second, third = records
    assert first.documents[0].text.startswith("Below is a paper.") and first.documents[0].text.endswith(PAPER.strip())
    assert first.question == "Now the paper ends. \nWhat is needed?"
    assert first.answers == ["Attention."]
    assert (second.documents[0].text, second.question) == ("The text to summarise.", "Summarise the text.")
    assert third.question == "Now the book ends. \nWhich book?"
    assert all(r.source == path.name and r.license == "cc-by-nc-4.0" and r.seq == 0 for r in records)

    (reject,) = rejects
    assert (reject.reason, reject.field) == ("missing_field", "input")
    assert "Now the … ends." in reject.message and "'input'" in reject.message
    if as_list:
        assert [r.origin.index for r in records] == [0, 1, 2] and reject.origin.index == 3
    else:
        assert [r.origin.line for r in records] == [1, 2, 3] and reject.origin.line == 4


def test_longalpaca_missing_output_and_non_text_instruction(tmp_path):
    path = write_longalpaca(tmp_path / "la.jsonl", [{"instruction": "q", "input": "doc"},
                                                    {"instruction": 42, "output": "a"}], as_list=False)
    _, rejects = read(path, "longalpaca", source="alpaca")
    assert [(r.reason, r.field, r.origin.line, r.source) for r in rejects] == [
        ("missing_field", "output", 1, "alpaca"), ("non_text", "instruction", 2, "alpaca")]


def test_json_list_stops_at_the_broken_item(tmp_path):
    good = json.dumps(longalpaca_row(PAPER, "Q?", "A."))
    path = tmp_path / "broken.json"
    path.write_text(f"[{good}, {good}, {{\"instruction\": \"x\",, }}, {good}]", encoding="utf-8")
    records, rejects = read(path, "longalpaca")
    assert len(records) == 2
    (reject,) = rejects
    assert (reject.reason, reject.origin.index) == ("malformed_json", 2)
    assert "rest of the file is not read" in reject.message


def test_json_list_with_invalid_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"instruction": "q", "input": "doc", "output": "a"}, {"instruction": "\xff\xfe"}]')
    records, rejects = read(path, "longalpaca")
    assert len(records) == 1 and [(r.reason, r.origin.index) for r in rejects] == [("invalid_utf8", 1)]


def test_json_list_with_bom_and_non_object_items(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf  [" + json.dumps(longalpaca_row("doc", "q", "a")).encode() + b', "text", 3]')
    records, rejects = read(path, "longalpaca")
    assert len(records) == 1
    assert [(r.reason, r.origin.index) for r in rejects] == [("malformed_json", 1), ("malformed_json", 2)]


# ------------------------------------------------------------------------------------------------------ longbench
def test_longbench(tmp_path):
    path = write_longbench(tmp_path / "qasper.jsonl", [
        longbench_row(PAPER, "What is needed?", ["attention", "Attention"], _id="lb-0"),
        "",  # blank lines are skipped, line numbers still count them
        longbench_row(PAPER, "Second?", ["yes"]),
        {"input": "q", "answers": ["a"], "length": 3},
    ])
    records, rejects = read(path, "longbench")
    assert [r.id for r in records] == ["lb-0", "qasper.jsonl-1"]
    assert records[0].answers == ["attention", "Attention"] and records[0].question == "What is needed?"
    assert records[0].documents[0].text == PAPER and records[0].documents[0].title is None
    assert [r.origin.line for r in records] == [1, 3]
    (reject,) = rejects
    assert (reject.reason, reject.field, reject.origin.line) == ("missing_field", "context", 4)
    assert str(reject.origin) == f"{path}:4"


# ---------------------------------------------------------------------------------------------------------- squad
def squad_file(tmp_path, **kw):
    articles = [
        squad_article("Normans", [
            ("The Normans were a people.", [squad_qa("q1", "Who were the Normans?", ["a people", "a people", "people"]),
                                            squad_qa("q2", "Unanswerable?", [], impossible=True)]),
            ("They gave their name to Normandy.", [squad_qa("q3", "What name?", ["Normandy"], impossible=False)]),
        ]),
        squad_article("Physics", [("Energy is conserved.", [squad_qa(None, "What is conserved?", ["Energy"]),
                                                            squad_qa("q5", "No answers listed?", [])])]),
    ]
    return write_squad(tmp_path / "squad.json", articles, **kw)


def test_squad_whole_article_document(tmp_path):
    path = squad_file(tmp_path)
    records, rejects = read(path, "squad", source="squad-v2")
    assert [r.id for r in records] == ["q1", "q3", "squad-v2-3"]
    normans = "The Normans were a people.\n\nThey gave their name to Normandy."
    assert [r.documents[0].text for r in records] == [normans, normans, "Energy is conserved."]
    assert [r.documents[0].title for r in records] == ["Normans", "Normans", "Physics"]
    assert records[0].answers == ["a people", "people"]  # distinct, in order
    assert [r.origin.pointer for r in records] == ["data[0].paragraphs[0].qas[0]", "data[0].paragraphs[1].qas[0]",
                                                   "data[1].paragraphs[0].qas[0]"]
    assert records[0].doc_id() == records[1].doc_id()

    assert [(r.reason, r.field, r.origin.pointer) for r in rejects] == [
        ("unanswerable", "answers", "data[0].paragraphs[0].qas[1]"),
        ("unanswerable", "answers", "data[1].paragraphs[0].qas[1]")]
    assert str(rejects[0].origin) == f"{path}:data[0].paragraphs[0].qas[1]"


def test_squad_keeps_unanswerable_with_an_answer(tmp_path):
    records, rejects = read(squad_file(tmp_path), "squad", unanswerable_answer="unanswerable")
    assert not rejects and len(records) == 5
    assert records[1].answers == ["unanswerable"] and records[1].id == "q2"


def test_squad_broken_article_and_malformed_file(tmp_path):
    articles = [squad_article("ok", [("c", [squad_qa("a", "q?", ["x"])])]),
                {"title": "no context",
                 "paragraphs": [{"qas": [squad_qa("b", "q?", ["x"]), squad_qa("c", "q?", ["y"])]}]},
                {"title": "no paragraphs"}]
    _, rejects = read(write_squad(tmp_path / "s.json", articles), "squad")
    assert [(r.reason, r.field, r.origin.pointer) for r in rejects] == [
        ("missing_field", "context", "data[1].paragraphs[0].qas[0]"),
        ("missing_field", "context", "data[1].paragraphs[0].qas[1]"),
        ("missing_field", "paragraphs", "data[2]")]

    text = json.dumps({"version": "v2.0", "data": articles[:1] * 2})
    broken = tmp_path / "broken.json"
    broken.write_text(text[: text.rindex("{")] + "{oops", encoding="utf-8")
    records, rejects = read(broken, "squad")
    assert len(records) == 1
    assert [(r.reason, r.origin.pointer) for r in rejects] == [("malformed_json", "data[1]")]

    _, rejects = read(write_json(tmp_path / "list.json", [1, 2]), "squad")
    assert [(r.reason, r.field) for r in rejects] == [("missing_field", "data")]


# ----------------------------------------------------------------------------------------------- generic: jsonl
def test_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [
        {"context": PAPER, "q": "Q1?", "a": ["A1", "A1b"], "uid": 7, "name": "Paper", "sys": "Be brief."},
        {"context": [PAPER, "second doc"], "q": "Q2?", "a": "A2", "name": ""},
    ])
    fields = {"document": "context", "question": "q", "answer": "a", "id": "uid", "title": "name", "system": "sys"}
    (first, second), rejects = read(path, "jsonl", fields=fields)
    assert not rejects
    assert (first.id, first.question, first.answers, first.system) == ("7", "Q1?", ["A1", "A1b"], "Be brief.")
    assert first.documents[0].title == "Paper"
    assert second.id == "gen.jsonl-1" and second.answers == ["A2"] and second.system is None
    assert [d.text for d in second.documents] == [PAPER, "second doc"] and second.documents[0].title is None


def test_jsonl_rejects_with_line_numbers(tmp_path):
    good = {"document": PAPER, "question": "q", "answer": "a"}
    path = write_jsonl(tmp_path / "bad.jsonl", [
        good,
        '{"document": "unterminated',
        b'{"document": "caf\xe9", "question": "q", "answer": "a"}',  # latin-1, not UTF-8
        "",
        "[1, 2]",
        {"document": PAPER, "answer": "a"},
        {"document": PAPER, "question": None, "answer": "a"},
        {"document": LONG, "question": "q", "answer": "a", "system": 3},
        good,
    ])
    records, rejects = read(path, "jsonl")
    assert [r.origin.line for r in records] == [1, 9]
    assert [(r.reason, r.field, r.origin.line) for r in rejects] == [
        ("malformed_json", None, 2), ("invalid_utf8", None, 3), ("malformed_json", None, 5),
        ("missing_field", "question", 6), ("missing_field", "question", 7), ("non_text", "system", 8)]
    assert "is missing" in rejects[3].message and "columns present: document, answer" in rejects[3].message
    assert "is null" in rejects[4].message
    assert rejects[5].record["document"] == "x" * 200 + "…"  # rejects keep a clipped copy of the record
    assert all(r.source == "bad.jsonl" for r in rejects)


# -------------------------------------------------------------------------------------------------- generic: csv
def test_csv(tmp_path):
    big = "word " * 40_000  # over the csv module's default 128 KiB field limit
    rows = [{"text": "line one\nline two", "query": "Q1?", "reply": "A1", "id": "c1"},
            {"text": big, "query": "Q2?", "reply": "A2", "id": ""}]
    path = write_csv(tmp_path / "data.csv", rows, extra_lines=[
        b'"caf\xe9 latin-1",Q3?,A3,c3',
        b"only,three,cells,and,more",
        b"",
        b"doc,Q5?,,c5"])
    records, rejects = read(path, "csv", fields={"document": "text", "question": "query", "answer": "reply"})
    assert [(r.id, r.origin.line) for r in records] == [("c1", 2), ("data.csv-1", 4), ("c5", 8)]
    assert records[0].documents[0].text == "line one\nline two" and records[1].documents[0].text == big
    assert records[2].answers == [""]  # empty cells are text: the validate stage rejects them
    assert [(r.reason, r.field, r.origin.line) for r in rejects] == [
        ("invalid_utf8", "text", 5), ("malformed_csv", None, 6)]
    json.dumps(rejects[0].record)  # the clipped record is writable (no lone surrogates)
    assert "\ufffd" in rejects[0].record["text"]


def test_csv_missing_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"document": "d", "question": "q"}])
    _, (reject,) = read(path, "csv")
    assert (reject.reason, reject.field, reject.origin.line) == ("missing_field", "answer", 2)


# ---------------------------------------------------------------------------------------------- generic: parquet
def test_parquet(tmp_path):
    rows = [{"document": f"doc {i}", "question": f"q{i}", "answer": [f"a{i}", "b"], "extra": i} for i in range(150)]
    path = write_parquet(tmp_path / "p.parquet", rows, row_group_size=40)
    records, rejects = read(path, "parquet", source="pq")
    assert not rejects and len(records) == 150
    assert [r.origin.index for r in records] == list(range(150))
    assert records[149].id == "pq-149" and records[149].answers == ["a149", "b"]
    assert str(records[3].origin) == f"{path}[3]"


def test_parquet_missing_column_and_broken_file(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"context": "d", "question": "q", "answer": "a"}])
    _, (reject,) = read(path, "parquet")
    assert (reject.reason, reject.field, reject.origin.index) == ("missing_field", "document", 0)
    assert "context" in reject.message  # the columns present are listed

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    _, (reject,) = read(broken, "parquet")
    assert reject.reason == "malformed_parquet"


# --------------------------------------------------------------------------------------------- generic: hf-disk
def test_hf_disk_dataset_dict(tmp_path):
    splits = {"train": [{"ctx": "doc a", "question": "qa?", "answer": ["A"]},
                        {"ctx": "doc b", "question": "qb?", "answer": ["B", "b"]}],
              "test": [{"ctx": "doc c", "question": "qc?", "answer": "C"}]}
    path = write_hf_disk(tmp_path / "ds", splits)
    records, rejects = read(path, "hf-disk", fields={"document": "ctx"})
    assert not rejects
    assert [r.question for r in records] == ["qa?", "qb?", "qc?"]
    assert [(r.origin.file, r.origin.index) for r in records] == [
        (f"{path}#train", 0), (f"{path}#train", 1), (f"{path}#test", 0)]
    assert [r.id for r in records] == ["ds-train-0", "ds-train-1", "ds-test-0"]
    assert records[1].answers == ["B", "b"] and records[0].source == "ds"


def test_hf_disk_dataset_and_missing_column(tmp_path):
    path = write_hf_disk(tmp_path / "one", [{"document": "d", "question": "q", "answer": "a", "id": "x1"},
                                            {"document": "d", "question": None, "answer": "a", "id": "x2"}])
    records, rejects = read(path, "hf-disk")
    assert [(r.id, r.origin.file) for r in records] == [("x1", str(path))]
    assert [(r.reason, r.field, r.origin.index) for r in rejects] == [("missing_field", "question", 1)]


# ---------------------------------------------------------------------------------------------------------- docs
def test_docs_folder(tmp_path):
    folder = write_docs(tmp_path / "docs", {"a.txt": "Document A. " * 10, "sub/b.md": "# B\n\nDocument B."}, [
        {"doc": "a.txt", "question": "About A?", "answer": "A"},
        {"doc": "a.txt", "question": "Again A?", "answer": ["A", "a"]},
        {"doc": ["a.txt", "sub/b.md"], "question": "Both?", "answer": "AB", "id": "both"},
        {"doc": "nope.txt", "question": "q", "answer": "a"},
        {"doc": "../outside.txt", "question": "q", "answer": "a"},
        {"question": "q", "answer": "a"},
    ])
    (tmp_path / "outside.txt").write_text("outside", encoding="utf-8")
    records, rejects = read(folder, "docs", license="cc-by-4.0")
    assert [r.id for r in records] == ["docs-0", "docs-1", "both"]
    assert records[0].documents[0].title == "a.txt" and records[0].documents[0].text == "Document A. " * 10
    assert records[0].documents[0] is records[1].documents[0]  # read once, served from the cache
    assert [d.title for d in records[2].documents] == ["a.txt", "sub/b.md"]
    assert all(r.origin.file == str(folder / "qa.jsonl") and r.license == "cc-by-4.0" for r in records)
    assert [(r.reason, r.field, r.origin.line) for r in rejects] == [
        ("missing_document", "doc", 4), ("missing_document", "doc", 5), ("missing_field", "doc", 6)]
    assert "outside" in rejects[1].message


def test_docs_qa_file_mapping_and_bad_utf8(tmp_path):
    folder = write_docs(tmp_path / "d", {"x.txt": "text x", "bad.txt": b"caf\xe9"}, [], qa_name=None)
    qa = write_jsonl(tmp_path / "questions.jsonl", [{"file": "x.txt", "ask": "q?", "reply": "r"},
                                                    {"file": "bad.txt", "ask": "q?", "reply": "r"}])
    records, rejects = read(folder, "docs", qa_file=str(qa),
                            fields={"document": "file", "question": "ask", "answer": "reply"})
    assert [(r.question, r.answers, r.origin.line) for r in records] == [("q?", ["r"], 1)]
    assert [(r.reason, r.field, r.origin.line) for r in rejects] == [("invalid_utf8", "file", 2)]


# ---------------------------------------------------------------------------------------------- missing inputs
@pytest.mark.parametrize("fmt", sorted(get_args(InputFormat)))
def test_missing_input_raises_at_once(tmp_path, fmt):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_input(spec(tmp_path / "nothing-here", fmt))  # not iterated: the check is eager


def test_docs_without_qa_file(tmp_path):
    folder = write_docs(tmp_path / "d", {"x.txt": "x"}, [], qa_name=None)
    with pytest.raises(FileNotFoundError, match="qa.jsonl"):
        read_input(spec(folder, "docs"))


# ---------------------------------------------------------------------------------------------------- streaming
def test_reader_is_a_lazy_generator(tmp_path):
    """Later lines are never parsed before the first record is taken (they are broken here)."""
    path = write_jsonl(tmp_path / "s.jsonl", [{"document": "d", "question": "q", "answer": "a"}] +
                       ["{broken"] * 1000)
    items = read_input(spec(path, "jsonl"))
    assert isinstance(items, types.GeneratorType)
    assert isinstance(next(items), Record)
    assert isinstance(next(items), Reject)
    items.close()

    listed = tmp_path / "s.json"
    listed.write_text("[" + json.dumps(longalpaca_row("d", "q", "a")) + ", {broken", encoding="utf-8")
    items = read_input(spec(listed, "longalpaca"))
    assert isinstance(items, types.GeneratorType) and isinstance(next(items), Record)
    items.close()


@pytest.mark.parametrize("fmt,as_list", [("longalpaca", True), ("longalpaca", False), ("jsonl", False)])
def test_memory_does_not_grow_with_the_input(tmp_path, fmt, as_list):
    n, doc = 2000, "lorem ipsum dolor sit amet " * 150  # ~4 KB per record, ~8 MB in all
    if fmt == "longalpaca":
        rows = [{"instruction": f"Question {i}?", "input": doc, "output": "yes"} for i in range(n)]
        path = write_longalpaca(tmp_path / ("big.json" if as_list else "big.jsonl"), rows, as_list=as_list)
    else:
        rows = ({"document": doc, "question": "q", "answer": "a"} for _ in range(n))
        path = write_jsonl(tmp_path / "big.jsonl", rows)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_input(spec(path, fmt)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < size / 8, f"peak {peak} bytes while reading {size} bytes"
