"""95 % intervals: Wilson against hand-computed values, the seeded bootstrap, overlap."""
from __future__ import annotations

import pytest

from sft.evaluation.intervals import bootstrap_mean, bootstrap_ratio, overlap, percent, wilson


def test_wilson_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # not degenerate at 0 %
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(8, 16) == pytest.approx((0.2800, 0.7200), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    values = [0.0, 0.1, 0.9, 1.0, 0.5, 0.3, 0.0, 0.7]
    lo, hi = bootstrap_mean(values)
    assert lo < sum(values) / len(values) < hi and bootstrap_mean(values) == (lo, hi)
    assert bootstrap_mean([0.4] * 5) == pytest.approx((0.4, 0.4))
    assert bootstrap_mean([]) is None
    wide, narrow = bootstrap_mean(values), bootstrap_mean(values * 25)  # 25x the questions: ~5x narrower
    assert (narrow[1] - narrow[0]) < (wide[1] - wide[0]) / 3


def test_bootstrap_ratio_weights_units_by_their_size():
    lo, hi = bootstrap_ratio([10.0, 30.0], [10, 10])
    assert lo == pytest.approx(1.0) and hi == pytest.approx(3.0)
    assert bootstrap_ratio([5.0, 5.0], [5, 5]) == pytest.approx((1.0, 1.0))


def test_percent_and_overlap():
    assert percent((0.1234, 0.56789)) == [12.34, 56.79] and percent(None) is None
    assert overlap([1, 3], [2, 4]) and overlap([1, 2], [2, 3]) and not overlap([1, 2], [2.5, 3])
    assert overlap(None, [1, 2]) is None
