"""The passkey generator (LongLoRA protocol): exact prompt text, filler counts for a target length, seeded keys."""
from __future__ import annotations

import pytest

from sft.evaluation.passkey import (FILLER, KEY_LINE, QUESTION, TASK, answer_key, draw_keys, fit_filler,
                                    passkey_cases, passkey_prompt)


def words(text: str) -> int:
    """A stand-in token counter: whitespace-separated words."""
    return len(text.split())


def test_prompt_exact_text():
    assert passkey_prompt(7, 2, 0.5) == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.\n"
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
        "The pass key is 7. Remember it. 7 is the pass key.\n"
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
        "What is the pass key? The pass key is")


@pytest.mark.parametrize("depth, before", [(0.0, 0), (0.25, 1), (0.5, 2), (1.0, 4)])
def test_depth_places_the_key_line(depth, before):
    lines = passkey_prompt(123, 4, depth).split("\n")
    assert lines[0] == TASK and lines[2] == KEY_LINE.format(key=123) and lines[4] == QUESTION
    assert lines[1].count(FILLER) == before and lines[3].count(FILLER) == 4 - before


def test_prompt_rejects_bad_depth():
    with pytest.raises(ValueError):
        passkey_prompt(1, 3, 1.5)


def test_fit_filler_counts():
    # 26 task words + 12 key-line words + 9 question words = 47, plus 19 words per filler copy
    assert words(passkey_prompt(1, 0, 0.5)) == 47 and words(FILLER) == 19
    assert fit_filler(words, 1, 0.5, 100) == (2, 85)
    assert fit_filler(words, 1, 0.0, 47) == (0, 47)
    assert fit_filler(words, 1, 1.0, 47 + 19 * 50) == (50, 47 + 19 * 50)
    for length in range(47, 600, 7):
        n, size = fit_filler(words, 99, 0.5, length)
        assert size <= length < size + 19 and n == (length - 47) // 19
    with pytest.raises(ValueError, match="without filler"):
        fit_filler(words, 1, 0.5, 46)


def test_keys_are_seeded_in_the_paper_range():
    assert draw_keys(0, 3) == [25248, 49674, 27563]  # random.Random(0).randint(1, 50000)
    keys = draw_keys(5, 1000)
    assert all(1 <= k <= 50000 for k in keys) and keys == draw_keys(5, 1000) and keys != draw_keys(6, 1000)


def test_cases_grid_and_determinism():
    cases = passkey_cases(words, [100, 200], [0.0, 0.5, 1.0], 2, seed=0)
    assert len(cases) == 12
    assert [(c.length, c.depth, c.trial) for c in cases[:3]] == [(100, 0.0, 0), (100, 0.0, 1), (100, 0.5, 0)]
    assert [c.key for c in cases] == draw_keys(0, 12)
    assert {(c.length, c.n_filler, c.n_tokens) for c in cases} == {(100, 2, 85), (200, 8, 199)}
    assert all(c.prompt == passkey_prompt(c.key, c.n_filler, c.depth) for c in cases)
    assert passkey_cases(words, [100, 200], [0.0, 0.5, 1.0], 2, seed=0) == cases
    assert [c.key for c in passkey_cases(words, [100], [0.5], 2, seed=1)] != [c.key for c in cases[:2]]


def test_answer_key():
    assert answer_key(" 31415. Remember it.") == 31415
    assert answer_key("is 42 and 7") == 42
    assert answer_key("no digits") is None


def test_real_text_filler_lines():
    from sft.evaluation.passkey import filler_lines

    lines = filler_lines(["one two\n\nthree four five\n", "six\nseven eight"])
    assert lines == ["one two", "three four five", "six", "seven eight"]
    prompt = passkey_prompt(5, 3, 0.5, lines)
    assert prompt.split("\n")[1:5] == ["one two", "three four five", KEY_LINE.format(key=5), "six"]
    n, size = fit_filler(words, 5, 0.5, words(passkey_prompt(5, 0, 0.5, lines)) + 6, lines)
    assert (n, size) == (3, 47 + 6) and FILLER not in passkey_prompt(5, n, 0.5, lines)
    with pytest.raises(ValueError, match="shorter than the length"):
        fit_filler(words, 5, 0.5, 1000, lines)
    cases = passkey_cases(words, [54], [0.0, 1.0], 1, seed=0, filler=lines)
    assert all(c.prompt == passkey_prompt(c.key, c.n_filler, c.depth, lines) for c in cases)
