"""LongBench QA scores on hand-checked cases (normalization, token F1, ROUGE-L, exact match, max over references) and
against LongBench's own functions on adversarial inputs: ``rouge_score`` (the ``rouge`` package, a dev dependency) and
``qa_f1_score`` (copied verbatim from LongBench/metrics.py)."""
from __future__ import annotations

import math

import pytest

from sft.evaluation.metrics import (ROUGE_RECURSION_CALLS, bucket_label, bucket_labels, exact_match, lcs_length,
                                    mean_scores, normalize_answer, rouge_l, rouge_l_normalized, score, token_f1)


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


def test_rouge_l_normalized_hand_checked():
    assert lcs_length("a b c d".split(), "a c d b".split()) == 3
    assert rouge_l_normalized("the cat sat on the mat", "cat on mat") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert rouge_l_normalized("mat on cat", "cat on mat") == pytest.approx(1 / 3)  # order matters: LCS 1
    assert rouge_l_normalized("", "cat") == 0.0 and rouge_l_normalized("Cat!", "cat") == 1.0


def test_rouge_l_is_longbench_s_hand_checked():
    assert rouge_l("Cat!", "cat") == 0.0  # raw strings: case and punctuation count
    assert rouge_l("cat on mat", "cat on mat") == pytest.approx(2 / (2 + 1e-8), abs=1e-12)  # 2PR / (P + R + 1e-8)
    # distinct words: 'the' once in P; LCS words {cat, on, mat}: P 3/5, R 3/3
    assert rouge_l("the cat sat on the mat", "cat on mat") == pytest.approx(2 * 0.6 / 1.6, abs=1e-7)
    assert rouge_l("", "cat") == 0.0 and rouge_l("...", "cat") == 0.0 and rouge_l("cat", "") == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Against LongBench's own functions
# ----------------------------------------------------------------------------------------------------------------------


def longbench_rouge_score(prediction, ground_truth):
    """LongBench/metrics.py ``rouge_score``, verbatim."""
    from rouge import Rouge

    rouge = Rouge()
    try:
        scores = rouge.get_scores([prediction], [ground_truth], avg=True)
    except:  # noqa: E722 (as LongBench)
        return 0.0
    return scores["rouge-l"]["f"]


def longbench_qa_f1_score(prediction, ground_truth):
    """LongBench/metrics.py ``normalize_answer`` + ``f1_score`` + ``qa_f1_score``, verbatim."""
    import re
    import string
    from collections import Counter

    def normalize_answer(s):
        def remove_articles(text):
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    prediction, ground_truth = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(prediction), 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


ADVERSARIAL = [
    ("The Normans", "the normans"),                            # case
    ("Normandy, France.", "Normandy France"),                  # punctuation
    ("a cat and the dog", "cat and dog"),                      # articles
    ("the the the cat", "the cat cat"),                        # repeated words
    ("It rained. Then it snowed. It stopped.", "It snowed. It rained."),  # several sentences
    ("version 3.5 of it", "version 3 5 of it"),                # '.' inside a number splits a sentence
    ("Zürich – café naïve", "zurich cafe naive"),              # unicode
    ("Zürich – café", "Zürich café"),
    ("", "anything"), ("anything", ""), ("", ""),              # empty strings
    (".", "a"), ("a. . .", "a"), ("   ", "a"), ("a.  .b", "a b"),  # only dots, whitespace-only sentences
    ("New York City", "New York"), ("York New", "New York"),   # order; LCS tie-break
    ("a b c d e", "e d c b a"), ("b a b a", "a b a b"),
    ("\n\nParis\n", "Paris"), ("Paris\t France", "Paris France"),
]


def _fuzz_pairs(n: int, seed: int = 0):
    import random

    rng = random.Random(seed)
    vocabulary = ["the", "The", "cat", "cat.", "a", "A", "Paris", "café", ".", ",", "is", "in", "on", "...", "  "]
    text = lambda: " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 14)))  # noqa: E731
    return [(text(), text()) for _ in range(n)]


@pytest.mark.parametrize("prediction, reference", ADVERSARIAL + _fuzz_pairs(300))
def test_rouge_l_and_f1_equal_longbench_s(prediction, reference):
    pytest.importorskip("rouge")
    assert rouge_l(prediction, reference) == pytest.approx(longbench_rouge_score(prediction, reference), abs=1e-12)
    assert token_f1(prediction, reference) == pytest.approx(longbench_qa_f1_score(prediction, reference), abs=1e-12)


def test_rouge_l_long_outputs_and_the_recursion_limit(monkeypatch):
    """The package rebuilds each LCS with one nested call per back-trace step, so long sentences hit Python's
    recursion limit and LongBench scores 0. Checked under a low limit (the package takes ~12 s to fail at 1000):
    the longest identical sentence the package survives calibrates our call budget (the frames below it vary with
    the caller), then shuffled, disjoint and multi-sentence inputs around the threshold agree."""
    import sys

    from sft.evaluation import metrics

    pytest.importorskip("rouge")
    longbench_rouge_score("warm up", "the import")

    def package(cases):
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(200)
        try:
            got = []
            for p, r in cases:  # (a comprehension would add a frame)
                got.append(longbench_rouge_score(p, r))
            return got
        finally:
            sys.setrecursionlimit(limit)

    low, high = 1, 199  # the package survives low identical words, not high (n words take n + 1 nested calls)
    assert package([("w", "w"), (" ".join(map(str, range(high))),) * 2])[1] == 0.0
    while high - low > 1:  # called from here as below: the same frames under each call
        mid = (low + high) // 2
        low, high = (mid, high) if package([(" ".join(map(str, range(mid))),) * 2])[0] > 0 else (low, mid)
    survived = low
    monkeypatch.setattr(metrics, "ROUGE_RECURSION_CALLS", survived + 1)
    cases = []
    for n in range(survived - 3, survived + 4):
        words = [f"w{i}" for i in range(n)]
        cases += [(" ".join(words), " ".join(reversed(words))), (" ".join(words[::2]), " ".join(words)),
                  (" ".join(words[: n // 2]), " ".join(w.upper() for w in words[n // 2:])),
                  (" ".join(words) + ". Short one.", "Short one. " + " ".join(words[1::2] + words[::2]))]
    expected = package(cases)
    assert [rouge_l(p, r) for p, r in cases] == pytest.approx(expected, abs=1e-12)
    assert 0.0 in expected and any(e > 0.5 for e in expected)  # both sides of the threshold were reached


def test_rouge_l_at_longbench_s_call_depth():
    words = [f"w{i}" for i in range(ROUGE_RECURSION_CALLS + 200)]
    # at LongBench's call depth (python eval.py), identical 990-word answers still score, 991 words do not
    assert rouge_l(" ".join(words[:990]), " ".join(words[:990])) == pytest.approx(1.0, abs=1e-7)
    assert rouge_l(" ".join(words[:991]), " ".join(words[:991])) == 0.0 == rouge_l(" ".join(words), "w0 w1")
    # the same words as many short sentences score (each back-trace is short)
    dotted = ". ".join(words[:80])
    assert rouge_l(dotted, dotted) == pytest.approx(longbench_rouge_score(dotted, dotted), abs=1e-12)


def test_exact_match_after_normalization():
    assert exact_match("The Normans.", "normans") == 1.0
    assert exact_match("Normans people", "normans") == 0.0


def test_score_is_the_max_over_references_per_metric():
    s = score("in France", ["Normandy, France", "France"])
    assert s == {"f1": pytest.approx(2 / 3), "rouge_l": pytest.approx(2 / 3, abs=1e-7),
                 "rouge_l_normalized": pytest.approx(2 / 3), "exact_match": 0.0}
    s = score("France", ["Normandy", "france."])
    assert s == {"f1": 1.0, "rouge_l": 0.0, "rouge_l_normalized": 1.0, "exact_match": 1.0}  # ROUGE-L: raw strings
    assert score("", ["a b", "c"]) == {"f1": 0.0, "rouge_l": 0.0, "rouge_l_normalized": 0.0, "exact_match": 0.0}
    with pytest.raises(ValueError):
        score("x", [])


def test_mean_scores_in_percent():
    rows = [{"f1": 1.0, "rouge_l": 0.5, "rouge_l_normalized": 0.5, "exact_match": 1.0},
            {"f1": 0.0, "rouge_l": 0.0, "rouge_l_normalized": 0.0, "exact_match": 0.0}]
    m = mean_scores(rows)
    assert {k: v for k, v in m.items() if k != "ci"} == \
        {"n": 2, "f1": 50.0, "rouge_l": 25.0, "rouge_l_normalized": 25.0, "exact_match": 50.0}
    assert m["ci"]["exact_match"] == [9.45, 90.55]  # Wilson, 1 of 2
    assert m["ci"]["f1"][0] == 0.0 and m["ci"]["f1"][1] == 100.0  # bootstrap of {0, 1}: all-wrong to all-right
    assert mean_scores(rows) == m  # seeded
    empty = mean_scores([])
    assert math.isnan(empty["f1"]) and empty["ci"]["f1"] is None


def test_length_buckets():
    edges = [2048, 4096, 8192]
    assert bucket_labels(edges) == ["0-2k", "2k-4k", "4k-8k", "8k+"]
    assert [bucket_label(n, edges) for n in (0, 2047, 2048, 8191, 8192, 10**6)] == \
        ["0-2k", "0-2k", "2k-4k", "4k-8k", "8k+", "8k+"]
    assert bucket_labels([100, 256]) == ["0-100", "100-256", "256+"]


def test_paired_difference_matches_questions_by_id_and_excludes_zero_only_when_it_should():
    from sft.evaluation.metrics import paired_difference, paired_verdict_zero

    def result(ids, f1):
        return {"per_question": {"id": ids, "f1": f1}}

    ids = [f"q{i}" for i in range(40)]
    base = [0.1 * (i % 5) for i in range(40)]  # questions differ a lot in difficulty
    better = result(ids[::-1], [b + 0.05 for b in base][::-1])  # other order: matched by id, not by position
    paired = paired_difference(result(ids, base), better)
    assert paired["n"] == 40 and paired["difference"] == pytest.approx(5.0)
    assert paired["higher"] == 40 and paired["lower"] == paired["same"] == 0
    assert paired["ci"][0] > 0 and "excludes 0" in paired_verdict_zero(paired["ci"])
    mixed = result(ids, [b + (0.05 if i % 2 else -0.05) for i, b in enumerate(base)])  # as many up as down
    paired = paired_difference(result(ids, base), mixed)
    assert paired["difference"] == pytest.approx(0.0, abs=1e-9) and paired["ci"][0] < 0 < paired["ci"][1]
    assert "includes 0" in paired_verdict_zero(paired["ci"])
    assert paired_difference(result(ids[:3], base[:3]), result(ids[1:5], base[1:5]))["n"] == 2
    assert paired_difference(result(["a"], [1.0]), result(["b"], [1.0])) is None
    assert paired_difference({"overall": {}}, better) is None  # an older report without per-question scores
    # one pair: every bootstrap resample is that pair, a zero-width interval that "excludes 0" says nothing
    one = paired_difference(result(ids[:1], base[:1]), result(ids[:1], [0.9]))
    assert one["n"] == 1 and one["ci"][0] == one["ci"][1] > 0
    assert paired_verdict_zero(one["ci"], one["n"]) == "1 paired: too few for an interval"
    assert "excludes 0" in paired_verdict_zero(paired_difference(result(ids, base), better)["ci"], 40)


def test_a_paired_perplexity_ratio_over_one_window_gives_no_verdict():
    from sft.evaluation.ppl import paired_ratio
    from sft.evaluation.report import paired_verdict

    one = paired_ratio({"per_window": [[2.0, 100]]}, {"per_window": [[3.0, 100]]})
    assert one["windows"] == 1 and one["ci"][0] == one["ci"][1] < 1
    assert paired_verdict(one["ci"], one["windows"]) == "1 window(s): too few for an interval"
    many = paired_ratio({"per_window": [[2.0 + 0.01 * i, 100] for i in range(8)]},
                        {"per_window": [[3.0 + 0.02 * i, 100] for i in range(8)]})
    assert paired_verdict(many["ci"], many["windows"]) == "paired interval excludes 1: differ"
