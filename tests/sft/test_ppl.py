"""Perplexity window generators (LongLoRA sliding window, HF strided), the window NLL, the document stream and the
paired comparison of two models on the same windows."""
from __future__ import annotations

import math

import pytest

from sft.evaluation.ppl import (Window, aggregate, load_texts, paired_ratio, sliding_windows, strided_windows,
                                token_stream, window_nll)


def test_sliding_windows_exact():
    # starts range(0, 1000 - 256, 256) = 0, 256, 512, minus the last (LongLoRA eval.py pops it)
    assert sliding_windows(1000, 256, 256) == [Window(0, 257, 1), Window(256, 513, 257)]
    assert sliding_windows(10, 4, 2) == [Window(0, 5, 1), Window(2, 7, 3)]  # starts 0, 2, (4 popped)
    assert sliding_windows(256, 256) == [] and sliding_windows(300, 256) == []


@pytest.mark.parametrize("n, length, stride", [(5000, 1024, 256), (4097, 4096, 256), (777, 100, 30)])
def test_sliding_windows_counts(n, length, stride):
    windows = sliding_windows(n, length, stride)
    assert len(windows) == max(len(range(0, n - length, stride)) - 1, 0)
    assert all(w.n_inputs == length and w.n_scored == length and w.end <= n for w in windows)
    assert all(b.begin - a.begin == stride for a, b in zip(windows, windows[1:]))


def test_strided_windows_exact():
    assert strided_windows(10, 4, 2) == [Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    # stride == length: each window's first token has no context in it and is not scored (as HF)
    assert strided_windows(10, 4, 4) == [Window(0, 4, 1), Window(4, 8, 5), Window(8, 10, 9)]
    assert strided_windows(3, 8, 4) == [Window(0, 3, 1)]


@pytest.mark.parametrize("n, length, stride", [(1000, 128, 64), (1000, 128, 100), (129, 128, 1), (5000, 512, 256)])
def test_strided_windows_score_every_token_once(n, length, stride):
    windows = strided_windows(n, length, stride)
    targets = [p for w in windows for p in range(w.first_target, w.end)]
    assert targets == list(range(1, n))  # every token but the first, once, in order
    assert all(w.end - w.begin <= length for w in windows) and windows[-1].end == n


def test_window_generators_reject_bad_arguments():
    with pytest.raises(ValueError):
        strided_windows(100, 16, 32)
    with pytest.raises(ValueError):
        sliding_windows(100, 0)


def test_window_nll_matches_the_model_loss(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokens = torch.randint(3, 400, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    nll, n = window_nll(model, tokens, Window(10, 51, 11))  # all 40 targets
    with torch.no_grad():
        ids = torch.tensor([tokens[10:51]])
        loss = model(input_ids=ids, labels=ids).loss  # HF shifts inside: predicts tokens 11..50
    assert n == 40 and nll / n == pytest.approx(float(loss), rel=1e-5)
    part, m = window_nll(model, tokens, Window(10, 51, 41))  # only the last 10 targets
    with torch.no_grad():
        labels = ids.clone()
        labels[0, :31] = -100
        loss = model(input_ids=ids, labels=labels).loss
    assert m == 10 and part / m == pytest.approx(float(loss), rel=1e-5) and math.isfinite(part)


def test_token_stream_and_text_file(tmp_path, tiny_tokenizer):
    (tmp_path / "a.txt").write_text("The Normans were the people.", encoding="utf-8")
    texts = load_texts(str(tmp_path / "a.txt"))
    assert texts == ["The Normans were the people."]
    stream = token_stream(["ab", "cd"], tiny_tokenizer)
    ab, cd = (tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("ab", "cd"))
    assert stream == ab + [tiny_tokenizer.eos_token_id] + cd


def test_paired_ratio_of_two_models_on_the_same_windows():
    reference = aggregate([(300.0, 100), (500.0, 100), (200.0, 100), (400.0, 100)], "sliding")
    model = aggregate([(290.0, 100), (480.0, 100), (205.0, 100), (380.0, 100)], "sliding")
    paired = paired_ratio(model, reference)
    assert paired["ratio"] == pytest.approx(model["ppl"] / reference["ppl"], rel=1e-3)
    assert paired["ratio"] == pytest.approx(math.exp(-45.0 / 400), rel=1e-4)
    assert paired["windows"] == 4 and paired["lower_windows"] == 3
    assert paired["ci"][0] <= paired["ratio"] <= paired["ci"][1] < 1  # better on the whole, paired
    assert paired_ratio(reference, reference)["ratio"] == 1.0
    # other windows (token counts), or a report from before per-window scores: no paired comparison
    assert paired_ratio(model, aggregate([(300.0, 100), (500.0, 90), (200.0, 100), (400.0, 100)], "sliding")) is None
    assert paired_ratio(model, {k: v for k, v in reference.items() if k != "per_window"}) is None
