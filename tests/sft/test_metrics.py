"""LongBench QA scores on hand-checked cases: normalization, token F1, ROUGE-L, exact match, max over references."""
from __future__ import annotations

import math

import pytest

from sft.evaluation.metrics import (bucket_label, bucket_labels, exact_match, lcs_length, mean_scores,
                                    normalize_answer, rouge_l, score, token_f1)


@pytest.mark.parametrize("text, expected", [
    ("The Cat", "cat"),                                   # case, article
    ("  Paris,   France! ", "paris france"),              # punctuation, whitespace
    ("an apple a day", "apple day"),                      # articles a / an
    ("Theatre", "theatre"),                               # 'the' only as a word
    ("Eiffel-Tower (1889)", "eiffeltower 1889"),          # punctuation removed, not replaced by a space
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1_hand_checked():
    assert token_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 2/2, R 2/4
    assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap: one 'cat'
    assert token_f1("Normandy", "normandy!") == 1.0
    assert token_f1("", "anything") == 0.0 and token_f1("x", "") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalize to nothing


def test_rouge_l_hand_checked():
    assert lcs_length("a b c d".split(), "a c d b".split()) == 3
    assert rouge_l("the cat sat on the mat", "cat on mat") == pytest.approx(2 * 0.75 * 1 / 1.75)  # LCS 3 of 4 / 3
    assert rouge_l("mat on cat", "cat on mat") == pytest.approx(1 / 3)  # order matters: LCS 1
    assert rouge_l("", "cat") == 0.0 and rouge_l("Cat!", "cat") == 1.0


def test_exact_match_after_normalization():
    assert exact_match("The Normans.", "normans") == 1.0
    assert exact_match("Normans people", "normans") == 0.0


def test_score_is_the_max_over_references_per_metric():
    s = score("in France", ["Normandy, France", "France"])
    assert s == {"f1": pytest.approx(2 / 3), "rouge_l": pytest.approx(2 / 3), "exact_match": 0.0}
    s = score("France", ["Normandy", "france."])
    assert s == {"f1": 1.0, "rouge_l": 1.0, "exact_match": 1.0}
    assert score("", ["a b", "c"]) == {"f1": 0.0, "rouge_l": 0.0, "exact_match": 0.0}
    with pytest.raises(ValueError):
        score("x", [])


def test_mean_scores_in_percent():
    m = mean_scores([{"f1": 1.0, "rouge_l": 0.5, "exact_match": 1.0}, {"f1": 0.0, "rouge_l": 0.0, "exact_match": 0.0}])
    assert m == {"n": 2, "f1": 50.0, "rouge_l": 25.0, "exact_match": 50.0}
    assert math.isnan(mean_scores([])["f1"])


def test_length_buckets():
    edges = [2048, 4096, 8192]
    assert bucket_labels(edges) == ["0-2k", "2k-4k", "4k-8k", "8k+"]
    assert [bucket_label(n, edges) for n in (0, 2047, 2048, 8191, 8192, 10**6)] == \
        ["0-2k", "0-2k", "2k-4k", "4k-8k", "8k+", "8k+"]
    assert bucket_labels([100, 256]) == ["0-100", "100-256", "256+"]
