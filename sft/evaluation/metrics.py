"""QA scores as LongBench v1 computes them (Bai et al. 2023, ``LongBench/metrics.py``), each the maximum over the
reference answers, plus the length buckets scores are grouped by. Pure functions of strings; no torch.

- ``f1`` — LongBench ``qa_f1_score``: SQuAD normalization (lower case, ASCII punctuation and English articles removed,
  whitespace collapsed), multiset token F1. Identical to LongBench's.
- ``rouge_l`` — LongBench ``rouge_score``: ROUGE-L F of the ``rouge`` package (1.0.1) on the *raw* strings, as
  :func:`rouge_l` reimplements it exactly (tested against the package). Its semantics and quirks:
  case-sensitive, punctuation kept as part of words (``cat`` != ``cat,``); sentences split at every ``.`` (also in
  ``3.5``), whitespace collapsed inside each, words split at spaces; precision and recall count *distinct* words and
  the union of the per-sentence-pair LCS words (so repeated words count once); ``F = 2PR / (P + R + 1e-8)``, so a
  perfect match scores 0.99999999..., not 1; an empty prediction or reference (or one that is only dots) raises
  inside the package and LongBench's bare ``except`` scores it 0; and the package rebuilds the LCS recursively, so
  when a sentence pair's back-trace needs more than :data:`ROUGE_RECURSION_CALLS` nested calls (Python's default
  recursion limit of 1000 minus LongBench's 9 calling frames; e.g. an identical 991-word sentence) it raises
  ``RecursionError`` and LongBench scores 0. We reproduce that 0 deterministically (the package's own threshold
  moves with the caller's stack depth).
- ``rouge_l_normalized`` — our earlier ROUGE-L (not LongBench's): LCS F1 over SQuAD-normalized tokens, repeated
  words counted, one sequence (no sentence split), exact 1 for a perfect match.
- ``exact_match`` — normalized strings equal (SQuAD's EM; LongBench does not report it for QA).
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


def rouge_l_normalized(prediction: str, reference: str) -> float:
    """LCS F1 on SQuAD-normalized tokens: ``2PR / (P + R)`` with ``P = LCS / |prediction|``, ``R = LCS / |reference|``
    (not LongBench's ROUGE-L, which is :func:`rouge_l`; the two agree on normalized single-sentence answers without
    repeated words, up to LongBench's 1e-8)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    lcs = lcs_length(pred, ref) if pred and ref else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


#: nested ``_recon`` calls the ``rouge`` package survives at LongBench's call depth: 1000 (Python's default recursion
#: limit) - 9 frames (eval.py's module, scorer, rouge_score, get_scores, _get_avg_scores, the metric lambda,
#: rouge_l_summary_level, _union_lcs, _recon_lcs). Measured: identical 990-word strings score 1, 991 words 0.
ROUGE_RECURSION_CALLS = 991


class _RougeFailed(Exception):
    """Where the ``rouge`` package raises (empty input, recursion limit): LongBench's ``except`` returns 0."""


def _rouge_sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's split: sentences at '.', non-empty before whitespace is collapsed, words at ' '."""
    return [" ".join(s.split()).split(" ") for s in text.split(".") if len(s) > 0]


def _rouge_lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """The words of the LCS of `x` (a reference sentence) and `y` (a prediction sentence) that the package's
    ``_recon_lcs`` back-trace picks (ties go left: ``table[i-1, j] > table[i, j-1]`` to go up), as a set."""
    n, m = len(x), len(y)
    if min(n, m) >= ROUGE_RECURSION_CALLS:  # the back-trace takes at least min(n, m) + 1 calls
        raise _RougeFailed("recursion limit")
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if xi == y[j - 1] else max(above[j], row[j - 1])
    picked, i, j, calls = set(), n, m, 1
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            picked.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
        calls += 1
    if calls > ROUGE_RECURSION_CALLS:
        raise _RougeFailed("recursion limit")
    return picked


def rouge_l(prediction: str, reference: str) -> float:
    """LongBench's ``rouge_score(prediction, reference)``: the ``rouge`` package's ROUGE-L F (summary level, distinct
    words) on the raw strings, 0.0 where the package raises. See the module docstring for its quirks."""
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(reference)
    if not hyp or not ref:
        return 0.0
    try:
        union: set[str] = set()
        for r in ref:
            for h in hyp:
                union |= _rouge_lcs_words(r, h)
    except _RougeFailed:
        return 0.0
    n_ref = len({w for r in ref for w in r})
    n_hyp = len({w for h in hyp for w in h})
    recall, precision = len(union) / n_ref, len(union) / n_hyp
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


METRICS: dict[str, Callable[[str, str], float]] = {"f1": token_f1, "rouge_l": rouge_l,
                                                   "rouge_l_normalized": rouge_l_normalized,
                                                   "exact_match": exact_match}


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


#: metrics whose per-question value is right (1) or wrong (0): an accuracy, with a Wilson interval
ACCURACIES = frozenset({"exact_match"})


def mean_scores(rows: Sequence[dict[str, float]]) -> dict:
    """Per-metric mean of score dicts, in percent (LongBench reports ``round(100 * mean, 2)``); ``n`` the count;
    ``ci`` each metric's 95 % interval in percent (:mod:`sft.evaluation.intervals`: Wilson for the accuracies of
    :data:`ACCURACIES`, else the bootstrap over questions), None without rows."""
    from sft.evaluation.intervals import bootstrap_mean, percent, wilson

    out: dict = {"n": len(rows)}
    for name in METRICS:
        out[name] = round(100 * sum(r[name] for r in rows) / len(rows), 2) if rows else float("nan")
    out["ci"] = {name: percent(wilson(round(sum(r[name] for r in rows)), len(rows)) if name in ACCURACIES
                               else bootstrap_mean([r[name] for r in rows]))
                 for name in METRICS}
    return out


def paired_difference(a: dict, b: dict, metric: str = "f1") -> dict | None:
    """`b` minus `a` on the questions both answered (``per_question`` of two QA results, matched by id): the mean
    difference in percent with its paired 95 % interval (the bootstrap over questions of the per-question
    differences, which removes what the questions share: some are hard for every model), and on how many `b` scored
    higher, lower or the same. None when they share no question or a result lacks per-question scores (older
    reports)."""
    if "per_question" not in a or "per_question" not in b:
        return None
    scores_a = dict(zip(a["per_question"]["id"], a["per_question"][metric]))
    scores_b = dict(zip(b["per_question"]["id"], b["per_question"][metric]))
    shared = [i for i in scores_a if i in scores_b]
    if not shared:
        return None
    return {"metric": metric, **paired_summary([scores_b[i] - scores_a[i] for i in shared])}


def paired_summary(diffs: list[float]) -> dict:
    """Per-question differences (fractions) summarised: n, the mean in percent with its 95 % paired bootstrap
    interval, and on how many the second model scored higher, lower or the same."""
    from sft.evaluation.intervals import bootstrap_mean, percent

    return {"n": len(diffs), "difference": round(100 * sum(diffs) / len(diffs), 2),
            "ci": percent(bootstrap_mean(diffs)), "higher": sum(d > 0 for d in diffs),
            "lower": sum(d < 0 for d in diffs), "same": sum(d == 0 for d in diffs)}


#: fewer paired items than this and a bootstrap interval is degenerate (one item: every resample is that item)
MIN_PAIRED = 2


def paired_verdict_zero(ci, n: int | None = None) -> str:
    """Whether a paired difference's interval excludes 0 (`n`: the items paired; too few give no verdict)."""
    if ci is None:
        return "–"
    if n is not None and n < MIN_PAIRED:
        return f"{n} paired: too few for an interval"
    return "paired interval excludes 0: differ" if ci[0] > 0 or ci[1] < 0 else "paired interval includes 0: not " \
        "established"
