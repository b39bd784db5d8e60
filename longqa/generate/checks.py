"""Checks of a generated pair: grounding (its quotes occur in the document) and near-duplicate questions.

Each check returns None (ok) or a message; the caller rejects the pair with the check's reason code
(`unsupported`, `duplicate_question`); a kept quote is stored as the document writes it.
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


def find_quote(quote: str, document: str) -> str | None:
    """The passage of `document` that `quote` cites, as the document writes it (its own whitespace), or None.

    Quotation marks and trailing ellipses around the quote are not part of it; whitespace may differ, nothing else."""
    words = quote.split()
    while words and not words[0].strip(_QUOTE_EDGES):
        words.pop(0)
    while words and not words[-1].strip(_QUOTE_EDGES):
        words.pop()
    if not words:
        return None
    words[0], words[-1] = words[0].lstrip(_QUOTE_EDGES), words[-1].rstrip(_QUOTE_EDGES)
    found = re.search(r"\s+".join(map(re.escape, words)), document)
    return found.group(0) if found else None


def supporting_quotes(quotes: list, document: str, min_chars: int) -> list[str] | str:
    """The quotes as `document` writes them, or why they do not support the answer: every quote must occur in the
    document (whitespace, quotation marks and trailing ellipses aside), and one at least must have `min_chars`
    characters; a short quote that is found is kept but does not count as support on its own."""
    found = []
    for quote in quotes:
        if not isinstance(quote, str):
            return f"quote {quote!r} is not text"
        if not quote.strip(_QUOTE_EDGES + "\n\t\r"):
            continue
        text = find_quote(quote, document)
        if text is None:
            return f"quote not in the document: {normalize_ws(quote)[:160]!r}"
        found.append(text)
    if not any(len(normalize_ws(text)) >= min_chars for text in found):
        return f"no supporting quote of at least {min_chars} characters"
    return found


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
