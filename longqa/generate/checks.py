"""Checks of a generated pair: grounding (its quotes occur in the document) and near-duplicate questions.

Each check returns None (ok) or a message; the caller rejects the pair with the check's reason code
(`unsupported`, `duplicate_question`).
"""
from __future__ import annotations

import re
from collections import defaultdict

#: Quotation marks and ellipses a model puts around a quote; removed before it is looked up.
_QUOTE_EDGES = "\"'“”‘’«»`…. "

_WORD = re.compile(r"\w+")


def normalize_ws(text: str) -> str:
    """Runs of whitespace (spaces, tabs, newlines) become one space; the ends are stripped."""
    return " ".join(text.split())


def unsupported(quotes: list, document: str, min_chars: int) -> str | None:
    """Why `quotes` do not support the answer, or None: at least one quote of `min_chars` or more characters, and
    every quote (quotation marks and trailing ellipses aside) found in the whitespace-normalised `document`."""
    kept = []
    for quote in quotes:
        if not isinstance(quote, str):
            return f"quote {quote!r} is not text"
        text = normalize_ws(quote).strip(_QUOTE_EDGES)
        if len(text) >= min_chars:
            kept.append(text)
    if not kept:
        return f"no supporting quote of at least {min_chars} characters"
    for text in kept:
        if text not in document:
            return f"quote not in the document: {text[:160]!r}"
    return None


def words(text: str) -> frozenset[str]:
    return frozenset(w.casefold() for w in _WORD.findall(text))


class QuestionIndex:
    """The questions kept so far on each document; `similar` finds one too close to a new question."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._by_doc: dict[str, dict[str, frozenset[str]]] = defaultdict(dict)

    def similar(self, doc: str, question: str) -> str | None:
        """The id of an earlier question on `doc` whose word-set Jaccard similarity reaches the threshold."""
        new = words(question)
        for key, old in self._by_doc[doc].items():
            union = len(new | old)
            if union and len(new & old) / union >= self.threshold:
                return key
        return None

    def add(self, doc: str, key: str, question: str) -> None:
        self._by_doc[doc][key] = words(question)

    def discard(self, doc: str, key: str) -> None:
        self._by_doc[doc].pop(key, None)
