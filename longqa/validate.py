"""The validate stage: typed rules over a `Record`, each returning `None` (ok) or a `Reject` with a reason code.

Rules run in the order of `RULES`; the first failing rule wins. A rule is a small pure function
`(record, cfg) -> Reject | None` that tests can call alone. One rule also normalises: `empty_answer` drops
whitespace-only answers from `record.answers` (in place) when at least one answer has text, and rejects the record
only when every answer is empty.

Reason codes are split into `INVALID_REASONS` (bad data: `--strict` stops at the first one) and `POLICY_REASONS`
(records skipped on purpose, e.g. unanswerable SQuAD questions: counted, never fatal).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from schemas.build import BuildConfig
from schemas.records import Record, Reject

#: Longest string kept in a reject's `record` (longer ones are cut and end with "…"), so rejects.jsonl stays small.
CLIP_CHARS = 200

#: Reasons that mean the input is broken; `--strict` stops at the first record rejected with one of them.
INVALID_REASONS = frozenset({
    # readers
    "malformed_json", "malformed_csv", "malformed_parquet", "invalid_utf8", "missing_field", "missing_document",
    # validate
    "non_text", "empty_document", "empty_question", "empty_answer", "document_too_short", "document_too_long",
    # deduplicate
    "duplicate_pair",
})

#: Reasons for records left out by policy: counted in the manifest, never fatal in strict mode.
POLICY_REASONS = frozenset({"unanswerable", "denied_document"})

_SURROGATE = re.compile("[\ud800-\udfff]")

Rule = Callable[[Record, BuildConfig], "Reject | None"]


def clip_record(obj: Any, limit: int = CLIP_CHARS) -> Any:
    """A JSON-writable copy of `obj` (dicts, lists, nested) with every string longer than `limit` cut to `limit` + "…".

    Shared by the readers and the stages that reject, so rejects.jsonl stays small. Lone surrogates (bytes that were
    not UTF-8, read with 'surrogateescape') become U+FFFD, bytes are decoded with replacement, and values JSON has no
    type for (dates, decimals…) become their `str`.
    """
    if isinstance(obj, str):
        if len(obj) > limit:
            obj = obj[:limit] + "…"
        return _SURROGATE.sub("\ufffd", obj) if not obj.isascii() else obj
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, dict):
        return {str(k): clip_record(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clip_record(v, limit) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return clip_record(bytes(obj[: limit * 4]).decode("utf-8", "replace"), limit)
    return clip_record(str(obj), limit)


def reject_record(record: Record, reason: str, field: str | None, message: str) -> Reject:
    """A `Reject` for `record` with its origin and a clipped copy of it."""
    return Reject(reason=reason, origin=record.origin, field=field, message=message, source=record.source,
                  seq=record.seq, record=clip_record(record.model_dump(mode="python")))


def _is_blank(text: str) -> bool:
    return not text.strip()


def doc_chars(record: Record) -> int:
    """Total characters of all the record's documents (the measure `min_doc_chars`/`max_doc_chars` bound)."""
    return sum(len(doc.text) for doc in record.documents if isinstance(doc.text, str))


# ---------------------------------------------------------------------------------------------------------- rules
def non_text(record: Record, cfg: BuildConfig) -> Reject | None:
    """Every document text, the question and every answer must be a `str` (not a number, list, null…)."""
    for i, doc in enumerate(record.documents):
        if not isinstance(doc.text, str):
            return reject_record(record, "non_text", f"documents[{i}].text",
                           f"document text is {type(doc.text).__name__}, not text")
    if not isinstance(record.question, str):
        return reject_record(record, "non_text", "question", f"question is {type(record.question).__name__}, not text")
    for i, answer in enumerate(record.answers):
        if not isinstance(answer, str):
            return reject_record(record, "non_text", f"answers[{i}]", f"answer is {type(answer).__name__}, not text")
    return None


def empty_document(record: Record, cfg: BuildConfig) -> Reject | None:
    """A record needs at least one document, and no document may be empty or whitespace-only."""
    if not record.documents:
        return reject_record(record, "empty_document", "documents", "the record has no document")
    for i, doc in enumerate(record.documents):
        if _is_blank(doc.text):
            return reject_record(record, "empty_document", f"documents[{i}].text",
                                 "document is empty or whitespace-only")
    return None


def empty_question(record: Record, cfg: BuildConfig) -> Reject | None:
    """The question must hold non-whitespace text."""
    if _is_blank(record.question):
        return reject_record(record, "empty_question", "question", "question is empty or whitespace-only")
    return None


def empty_answer(record: Record, cfg: BuildConfig) -> Reject | None:
    """At least one answer must hold text; empty ones beside a real one are dropped (in place), not rejected."""
    kept = [answer for answer in record.answers if not _is_blank(answer)]
    if not kept:
        return reject_record(record, "empty_answer", "answers",
                             "no answer, or every answer is empty or whitespace-only")
    if len(kept) != len(record.answers):
        record.answers = kept
    return None


def document_too_short(record: Record, cfg: BuildConfig) -> Reject | None:
    """All documents together must have at least `cfg.min_doc_chars` characters."""
    n = doc_chars(record)
    if n < cfg.min_doc_chars:
        return reject_record(record, "document_too_short", "documents",
                       f"documents have {n} characters, fewer than min_doc_chars={cfg.min_doc_chars}")
    return None


def document_too_long(record: Record, cfg: BuildConfig) -> Reject | None:
    """All documents together must have at most `cfg.max_doc_chars` characters (when set)."""
    n = doc_chars(record)
    if cfg.max_doc_chars is not None and n > cfg.max_doc_chars:
        return reject_record(record, "document_too_long", "documents",
                       f"documents have {n} characters, more than max_doc_chars={cfg.max_doc_chars}")
    return None


#: The rules, in the order they are applied. `non_text` comes first: the others may then assume `str` values.
RULES: tuple[Rule, ...] = (non_text, empty_document, empty_question, empty_answer, document_too_short,
                           document_too_long)


def validate(record: Record, cfg: BuildConfig) -> Reject | None:
    """Apply `RULES` in order; return the first `Reject`, or `None` when the record is valid."""
    for rule in RULES:
        reject = rule(record, cfg)
        if reject is not None:
            return reject
    return None
