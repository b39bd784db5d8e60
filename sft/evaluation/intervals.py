"""95 % intervals for evaluation scores, so a report says when a difference between models is noise.

- :func:`wilson` — for accuracies (successes of n trials: passkey, exact match, RULER's string match when each
  sample is right or wrong): the Wilson score interval, which stays inside [0, 1] and is not degenerate at 0 % or
  100 % (the normal approximation is).
- :func:`bootstrap_mean` — for means of per-question scores in [0, 1] (token F1, ROUGE-L, RULER's partial match):
  the percentile bootstrap over questions (resampled with replacement, seeded: the same data give the same interval).
- :func:`bootstrap_ratio` — for ``exp(sum / count)``-style scores over units of different sizes (perplexity over
  windows): the ratio of resampled sums.
- :func:`bootstrap_paired_ratio` — the same for the difference of two models scored on the same units (the ratio of
  two perplexities on the same windows), resampling the units in pairs.
- :func:`overlap` — whether two intervals share a point. Overlapping 95 % intervals do not show that two models
  differ (non-overlap is the conservative test; the converse does not hold).

Pure functions of lists (numpy); no torch. Shared with RULER (:mod:`sft.evaluation.ruler`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by ~0.1-0.5 points between seeds at this count


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n`` (fractions in [0, 1]); None when n is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: {successes} successes of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one per question); None when there are none."""
    import numpy as np

    if len(values) == 0:
        return None
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *, resamples: int = RESAMPLES,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``sum(numerators) / sum(denominators)`` over resampled units (e.g. windows:
    NLL sums and token counts); None when there are none."""
    import numpy as np

    if len(numerators) == 0:
        return None
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(resamples, len(num)))
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_paired_ratio(a: Sequence[float], b: Sequence[float], denominators: Sequence[float], *,
                           resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
                           ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``(sum(a) - sum(b)) / sum(denominators)`` over resampled units, `a` and `b`
    resampled together (paired: two models' NLL sums on the same windows); None when there are none. Pairing removes
    what the windows share (some text is harder for every model), so the interval is much narrower than the two
    models' own intervals suggest. It is :func:`bootstrap_ratio` of the per-unit differences."""
    if not len(a) == len(b) == len(denominators):
        raise ValueError(f"bootstrap_paired_ratio: {len(a)}, {len(b)} and {len(denominators)} units")
    return bootstrap_ratio([x - y for x, y in zip(a, b)], denominators, resamples=resamples, seed=seed, level=level)


def percent(interval: tuple[float, float] | None) -> list[float] | None:
    """An interval of fractions as ``[lo, hi]`` in percent, rounded to 2 decimals (the reports' unit)."""
    return None if interval is None else [round(100 * interval[0], 2), round(100 * interval[1], 2)]


def overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    """Whether intervals `a` and `b` share a point; None when either is missing."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]
