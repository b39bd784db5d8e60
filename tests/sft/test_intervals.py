"""95 % intervals: Wilson against hand-computed values, the seeded bootstrap (plain, ratio, paired), overlap."""
from __future__ import annotations

import pytest

from sft.evaluation.intervals import (bootstrap_mean, bootstrap_paired_ratio, bootstrap_ratio, overlap, percent,
                                     wilson)


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


def test_paired_bootstrap_removes_what_the_units_share():
    # windows of very different difficulty; model b is better by exactly 0.1 nats a token on every window
    tokens = [100, 100, 100, 100, 100, 100]
    a = [150.0, 420.0, 260.0, 610.0, 330.0, 500.0]
    b = [x - 10.0 for x in a]
    assert bootstrap_paired_ratio(a, b, tokens) == pytest.approx((0.1, 0.1))  # a constant shift: no spread at all
    own_a, own_b = bootstrap_ratio(a, tokens), bootstrap_ratio(b, tokens)
    assert overlap(own_a, own_b)  # unpaired, the two models' intervals overlap widely
    # a noisy gain: the paired interval still excludes 0 though the models' own intervals overlap
    noisy = [x - d for x, d in zip(a, [5.0, 15.0, 8.0, 12.0, 6.0, 14.0])]
    lo, hi = bootstrap_paired_ratio(a, noisy, tokens)
    assert 0 < lo < 0.1 < hi < 0.15 and overlap(bootstrap_ratio(noisy, tokens), own_a)
    assert bootstrap_paired_ratio(a, a, tokens) == pytest.approx((0.0, 0.0))
    assert bootstrap_paired_ratio([], [], []) is None
    with pytest.raises(ValueError):
        bootstrap_paired_ratio(a, b[:-1], tokens)


def test_percent_and_overlap():
    assert percent((0.1234, 0.56789)) == [12.34, 56.79] and percent(None) is None
    assert overlap([1, 3], [2, 4]) and overlap([1, 2], [2, 3]) and not overlap([1, 2], [2.5, 3])
    assert overlap(None, [1, 2]) is None
