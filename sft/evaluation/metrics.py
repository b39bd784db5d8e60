"""QA scores as LongBench computes them (Bai et al. 2023, ``metrics.py``): SQuAD answer normalization, token F1,
ROUGE-L and exact match, each the maximum over the reference answers; plus the length buckets scores are grouped by.

Pure functions of strings; no torch.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, ASCII punctuation removed, English articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def token_f1(prediction: str, reference: str) -> float:
    """LongBench ``qa_f1_score``: harmonic mean of token precision and recall (multiset overlap) after normalization;
    0 when nothing overlaps (an empty prediction included)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of `a` and `b` (O(len(a) * len(b)) dynamic programme, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on normalized tokens: ``2PR / (P + R)`` with ``P = LCS / |prediction|``, ``R = LCS / |reference|``.

    LongBench calls the ``rouge`` package (1.0.1) on the raw strings, which splits sentences at '.', uses the same F1
    of the union LCS but counts *distinct* words in P and R; on normalized single-sentence answers without repeated
    words the two agree.
    """
    pred, ref = _tokens(prediction), _tokens(reference)
    lcs = lcs_length(pred, ref) if pred and ref else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


METRICS: dict[str, Callable[[str, str], float]] = {"f1": token_f1, "rouge_l": rouge_l, "exact_match": exact_match}


def score(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """Every metric of :data:`METRICS`, each the maximum over `references` (LongBench's ``max`` over answers)."""
    if not references:
        raise ValueError("score: at least one reference answer is required")
    return {name: max(fn(prediction, ref) for ref in references) for name, fn in METRICS.items()}


def bucket_label(n_tokens: int, edges: Sequence[int]) -> str:
    """The length bucket of `n_tokens` for ascending `edges` (tokens): with ``[2048, 4096]`` the buckets are
    ``0-2k`` (< 2048), ``2k-4k`` and ``4k+``."""
    lower = 0
    for edge in edges:
        if n_tokens < edge:
            return f"{_k(lower)}-{_k(edge)}"
        lower = edge
    return f"{_k(lower)}+"


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """All bucket labels of `edges`, shortest first."""
    bounds = [0, *edges]
    return [f"{_k(lo)}-{_k(hi)}" for lo, hi in zip(bounds, bounds[1:])] + [f"{_k(bounds[-1])}+"]


def _k(n: int) -> str:
    return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean of score dicts, in percent (LongBench reports ``round(100 * mean, 2)``); ``n`` the count."""
    out: dict[str, float] = {"n": len(rows)}
    for name in METRICS:
        out[name] = round(100 * sum(r[name] for r in rows) / len(rows), 2) if rows else float("nan")
    return out
