"""The project's one middle-truncation rule, shared by the builder (``longqa.tokenize``: document tokens of a training
sample) and the evaluator (``sft.evaluation.qa``: an over-long prompt, ``qa.truncation: template``).

Rule: a sequence of `n` items longer than `budget` keeps its first ``ceil(budget / 2)`` and its last
``floor(budget / 2)`` items, exactly `budget` in all; the head gets the odd item (instructions and the start of a
document come first). LongBench's own rules differ by a token and are kept apart, under their names, in
:mod:`sft.evaluation.qa` (v1: ``int(max/2)`` from each end, ``max - 1`` in all when odd; v2: ``max//2`` head and
``ceil(max/2)`` tail).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def middle_split(n: int, budget: int) -> tuple[int, int]:
    """``(head, tail)``: how many leading and trailing items of `n` survive `budget` (``(n, 0)`` when it fits)."""
    if budget < 0:
        raise ValueError(f"middle truncation: negative budget {budget}")
    if n <= budget:
        return n, 0
    head = (budget + 1) // 2
    return head, budget - head


def middle_keep(items: Sequence[T], budget: int) -> list[T]:
    """`items` cut to `budget` by :func:`middle_split`."""
    head, tail = middle_split(len(items), budget)
    return list(items[:head]) + (list(items[len(items) - tail:]) if tail else [])
