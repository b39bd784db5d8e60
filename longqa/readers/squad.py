"""SQuAD v1/v2 JSON, streamed article by article: one record per question, the WHOLE article as its document
(or, with the input's `context: paragraph`, only the question's own paragraph: short samples for a mix).

`{"version": …, "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
"answer_start"}], "is_impossible"?}]}]}]}`. The document is the article's paragraph contexts joined with a blank line,
titled with the article title; the answers are the distinct answer texts, in order. An unanswerable v2 question
(`is_impossible`, or no answer) is rejected as 'unanswerable' (a counted policy skip) unless the input sets
`unanswerable_answer`, which then becomes its answer. Origins are JSON pointers: "data[3].paragraphs[2].qas[5]".
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ijson

from longqa.readers._common import Source, json_error_reject, skip_bom
from schemas.build import InputSpec
from schemas.records import Document, Origin, Record, Reject

#: Separator of the paragraph contexts in an article's document.
PARAGRAPH_SEPARATOR = "\n\n"


class _Shape:
    """Watches the parse events for the top-level 'data' array, so a file of another shape is reported, not skipped."""

    def __init__(self, events: Iterable[tuple[str, str, Any]]):
        self.events = events
        self.data_is_list = False

    def __iter__(self) -> Iterator[tuple[str, str, Any]]:
        for event in self.events:
            if event[0] == "data" and event[1] == "start_array":
                self.data_is_list = True
            yield event


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the questions of a SQuAD file as records."""
    src = Source.of(spec, path)
    questions = itertools.count()  # running question index: ids of questions without their own
    with path.open("rb") as f:
        skip_bom(f)
        shape = _Shape(ijson.parse(f, use_float=True))
        i = 0
        try:
            for article in ijson.items(iter(shape), "data.item"):
                yield from _article(article, i, src, spec, questions)
                i += 1
        except ijson.JSONError as error:
            yield json_error_reject(error, src, src.origin(pointer=f"data[{i}]"))
            return
    if not shape.data_is_list:
        yield src.reject("missing_field", src.origin(), "not a SQuAD file: no top-level 'data' list of articles",
                         field="data")


def _article(article: Any, i: int, src: Source, spec: InputSpec,
             questions: Iterator[int]) -> Iterator[Record | Reject]:
    pointer = f"data[{i}]"
    if not isinstance(article, dict):
        yield src.reject("malformed_json", src.origin(pointer=pointer), "article is not a JSON object", raw=article)
        return
    paragraphs = article.get("paragraphs")
    if not isinstance(paragraphs, list):
        yield src.reject("missing_field", src.origin(pointer=pointer), "article has no 'paragraphs' list",
                         field="paragraphs", raw=article)
        return
    title = article.get("title")
    title = None if title is None else str(title)

    contexts, problems = [], {}  # problems: paragraph -> why its context is unusable
    for j, paragraph in enumerate(paragraphs):
        context = paragraph.get("context") if isinstance(paragraph, dict) else None
        if not isinstance(context, str):
            what = "no 'context'" if context is None else f"a {type(context).__name__} 'context', not text"
            problems[j] = ("missing_field" if context is None else "non_text",
                           f"paragraph {pointer}.paragraphs[{j}] has {what}")
        contexts.append(context)
    by_paragraph = spec.context == "paragraph"
    article = None if problems else Document(text=PARAGRAPH_SEPARATOR.join(contexts), title=title)

    for j, paragraph in enumerate(paragraphs):
        qas = paragraph.get("qas", []) if isinstance(paragraph, dict) else []
        if not isinstance(qas, list):
            yield src.reject("malformed_json", src.origin(pointer=f"{pointer}.paragraphs[{j}]"),
                             "'qas' is not a list", field="qas", raw={"qas": qas})
            continue
        # the document: the paragraph's own context (context: paragraph), or the whole article
        document = (None if j in problems else Document(text=contexts[j], title=title)) if by_paragraph else article
        broken = None
        if document is None:
            j_bad = j if by_paragraph else min(problems)
            reason, message = problems[j_bad]
            broken = (reason, message if by_paragraph else f"{message}: the article's document cannot be built")
        for k, qa in enumerate(qas):
            index, origin = next(questions), src.origin(pointer=f"{pointer}.paragraphs[{j}].qas[{k}]")
            if broken is not None:
                yield src.reject(broken[0], origin, broken[1], field="context", raw=qa)
            elif not isinstance(qa, dict):
                yield src.reject("malformed_json", origin, "question entry is not a JSON object", raw=qa)
            else:
                yield _question(qa, index, origin, document, src, spec)


def _question(qa: dict[str, Any], index: int, origin: Origin, document: Document, src: Source,
              spec: InputSpec) -> Record | Reject:
    if qa.get("question") is None:
        return src.reject("missing_field", origin, "question entry has no 'question'", field="question", raw=qa)
    raw_answers = qa.get("answers") or []
    if not isinstance(raw_answers, list):
        return src.reject("malformed_json", origin, "'answers' is not a list", field="answers", raw=qa)
    answers: list[Any] = []
    for m, answer in enumerate(raw_answers):
        text = answer.get("text") if isinstance(answer, dict) else answer
        if text is None:
            return src.reject("missing_field", origin, f"answers[{m}] has no 'text'", field=f"answers[{m}].text",
                              raw=qa)
        if text not in answers:
            answers.append(text)
    if qa.get("is_impossible") is True or not answers:
        if spec.unanswerable_answer is None:
            return src.reject("unanswerable", origin, "unanswerable question (is_impossible, or no answer); set "
                              "unanswerable_answer on the input to keep such questions", field="answers", raw=qa)
        answers = [spec.unanswerable_answer]
    return src.record(origin, id=src.record_id(qa.get("id"), index), documents=[document],
                      question=qa["question"], answers=answers)
