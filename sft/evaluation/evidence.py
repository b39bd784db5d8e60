"""QA scores by the evidence's token position (issue 23), for datasets built with `distractors` (`longqa.distract`).

Each question of such a dataset records where its evidence is: the reference answer's first token in the gold
document (``answer_position``), or the document's first token where the answer does not occur in it
(``evidence_start``). The questions are bucketed by that position (``qa.evidence_buckets``); the buckets at or beyond
the base model's native window (its pretraining context: :func:`native_window`) are marked, so "questions whose
evidence lies beyond the base window" is one row of the report. A model whose window is shorter than a prompt sees it
cut in the middle (:mod:`longqa.truncation`): each bucket counts the prompts cut and the questions whose evidence was
in the part removed.

Pure functions of rows (dicts with ``id``, ``evidence_position``, the metrics, ``truncated``, ``evidence_cut``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from longqa.truncation import middle_split
from sft.evaluation.metrics import bucket_label, bucket_labels, mean_scores, paired_summary


def native_window(config) -> int:
    """The context a model was pretrained for: YaRN's ``original_max_position_embeddings``, ``max_position_embeddings``
    over the factor for linear scaling, else ``max_position_embeddings`` (dynamic NTK keeps the unscaled length)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    if rope.get("rope_type") == "linear" and rope.get("factor"):
        return int(round(config.max_position_embeddings / float(rope["factor"])))
    return int(config.max_position_embeddings)


def evidence_position(row: dict[str, Any]) -> int | None:
    """The evidence token of a built sample's row: its answer's position, else its gold document's start, else None
    (a dataset built without distractors)."""
    for key in ("answer_position", "evidence_start"):
        if row.get(key) is not None:
            return int(row[key])
    return None


def evidence_lost(position: int | None, n_tokens: int, budget: int) -> bool | None:
    """Whether middle truncation of an `n_tokens` prompt to `budget` removes token `position` (the project's one
    middle rule); None without a position."""
    if position is None:
        return None
    head, tail = middle_split(n_tokens, budget)
    return head <= position < n_tokens - tail


def by_evidence(rows: Sequence[dict[str, Any]], edges: Sequence[int], native: int) -> dict[str, Any] | None:
    """Scores per evidence bucket (:func:`sft.evaluation.metrics.mean_scores`: n and 95 % intervals), each with the
    prompts cut, the evidence cut and whether the bucket lies at or beyond `native`; per-question F1 for paired
    comparisons. None when no row has an evidence position."""
    rows = [r for r in rows if r.get("evidence_position") is not None]
    if not rows:
        return None
    buckets = {}
    bounds = [0, *edges]
    for i, label in enumerate(bucket_labels(edges)):
        members = [r for r in rows if bucket_label(r["evidence_position"], edges) == label]
        if members:
            buckets[label] = {**mean_scores(members), "truncated": sum(bool(r["truncated"]) for r in members),
                              "evidence_cut": sum(bool(r["evidence_cut"]) for r in members),
                              "beyond_native": bounds[i] >= native}
    beyond = [r for r in rows if r["evidence_position"] >= native]
    return {"edges": list(edges), "native_window": native, "n": len(rows), "buckets": buckets,
            "beyond_native": {**mean_scores(beyond), "evidence_cut": sum(bool(r["evidence_cut"]) for r in beyond)},
            "f1_by_id": {r["id"]: round(r["f1"], 6) for r in rows},
            "position_by_id": {r["id"]: r["evidence_position"] for r in rows}}


def paired(a: dict[str, Any], b: dict[str, Any], edges: Sequence[int] | None = None
           ) -> dict[str, dict[str, Any]]:
    """``b - a`` F1 (percent) per evidence bucket and beyond the native window of `a`, over the questions both
    answered, with the 95 % paired bootstrap interval of the mean difference (the questions resampled in pairs: what
    one question makes hard for both models cancels), and each model's mean F1 on those questions (``first_f1``:
    `a`'s, ``second_f1``: `b`'s)."""
    edges = a["edges"] if edges is None else edges
    shared = sorted(set(a["f1_by_id"]) & set(b["f1_by_id"]))
    groups: dict[str, list[str]] = {}
    for qid in shared:
        groups.setdefault(bucket_label(a["position_by_id"][qid], edges), []).append(qid)
    beyond = [q for q in shared if a["position_by_id"][q] >= a["native_window"]]
    out = {}
    for label, ids in [*((label, groups[label]) for label in bucket_labels(edges) if label in groups),
                       (f"beyond {a['native_window']}", beyond)]:
        if ids:
            out[label] = {**paired_summary([b["f1_by_id"][q] - a["f1_by_id"][q] for q in ids]),
                          "first_f1": round(100 * sum(a["f1_by_id"][q] for q in ids) / len(ids), 2),
                          "second_f1": round(100 * sum(b["f1_by_id"][q] for q in ids) / len(ids), 2)}
    return out
