"""RULER: prompts equal those RULER's own scripts write (fixtures made by them: scripts/ruler_fixtures.py), its
metrics and effective length, the config's task spec, and a tiny model end to end through sft.eval."""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from schemas.eval import RULER_TASKS, EvalConfig
from sft.evaluation import ruler
from tests.sft.ruler_tokenizer import make_word_tokenizer

FIXTURES = Path(__file__).with_name("fixtures") / "ruler_prompts.jsonl.gz"


def _fixture_cases() -> dict[tuple[str, int, str], list[dict]]:
    cases: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    with gzip.open(FIXTURES, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cases[(row["task"], row["length"], row["template"])].append(row)
    return dict(cases)


CASES = _fixture_cases()


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_word_tokenizer(tmp_path_factory.mktemp("word-tokenizer")))


def test_fixtures_cover_every_task_and_both_template_paths():
    assert {task for task, _, _ in CASES} == set(ruler.TASKS) == set(RULER_TASKS)
    assert {template for _, _, template in CASES} == {"base", "chat"}
    assert any(length >= 4096 for _, length, _ in CASES)


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_prompts_equal_rulers_own(case, word_tokenizer):
    """For seed 42 (prepare.py's), RULER's scripts and the port write the same inputs, references and lengths."""
    task, length, template = case
    want = CASES[case]
    got = ruler.generate_samples(task, word_tokenizer, length=length, num_samples=len(want), seed=42,
                                 template=template)
    for g, w in zip(got, want):
        assert g.input == w["input"], f"{task} sample {w['index']}: prompts differ"
        assert g.outputs == w["outputs"]
        assert g.length == w["tokens"]


def test_other_seeds_give_other_prompts_of_the_same_length(word_tokenizer):
    a = ruler.generate_samples("niah_single_1", word_tokenizer, length=1024, num_samples=1, seed=42)[0]
    b = ruler.generate_samples("niah_single_1", word_tokenizer, length=1024, num_samples=1, seed=7)[0]
    assert a.input != b.input and abs(a.length - b.length) < 30


def test_metrics_follow_rulers_definitions():
    assert ruler.string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert ruler.string_match_all("ABC-def", ["abc-DEF"]) == 1.0
    assert ruler.string_match_part("Paris, France", ["London", "france"]) == 1.0
    assert ruler.string_match_part("nothing", ["London", "Paris"]) == 0.0
    assert ruler.postprocess("  a\x00b\tc ") == "a\nb\nc"
    assert ruler.postprocess(None) == ""


def test_cell_score_rounds_as_ruler_does():
    """RULER: round(sum(fractions) / n * 100, 2). 23 of 40 samples at 25 % is 14.37 there (the mean of percentages,
    575 / 40 = 14.375 exactly, would round to 14.38)."""
    fractions = [0.25] * 23 + [0.0] * 17
    assert ruler.cell_score(fractions) == round(sum(fractions) / len(fractions) * 100, 2) == 14.37
    assert ruler.cell_score([1.0, 0.0, 1 / 3]) == 44.44


def test_unknown_template_name_is_refused(word_tokenizer):
    with pytest.raises(ruler.DataError, match="not a RULER template name"):
        ruler.generate_samples("niah_single_1", word_tokenizer, length=1024, num_samples=1, template="meta_chat")
    assert ruler.resolve_model_template("Q: {task_template}", word_tokenizer) == "Q: {task_template}"


def test_cells_get_wilson_intervals_when_binary_and_the_bootstrap_with_partial_credit():
    assert ruler.cell_interval([0.0, 0.0]) == [0.0, 65.76]  # Wilson: not degenerate at 0 %
    assert ruler.cell_interval([100.0] * 10)[0] > 60 and ruler.cell_interval([100.0] * 10)[1] == 100.0
    low, high = ruler.cell_interval([25.0, 50.0, 75.0, 100.0])
    assert 25.0 <= low < 62.5 < high <= 100.0


def test_effective_length_is_the_longest_length_at_or_above_the_threshold():
    assert ruler.effective_length({4096: 90.0, 8192: 85.6, 16384: 70.0}) == 8192
    assert ruler.effective_length({4096: 80.0, 8192: 60.0}) is None
    assert ruler.THRESHOLD == 85.6


def test_adjective_noun_keys_are_indexed_in_sorted_order():
    adjectives = ["big", "red", "a", "zany", "big", "blue", "blue-eyed", "blue-eyed-x", "blu"]
    nouns = ["cat", "ant", "dog", "eye", "eyes", "ex", "e"]
    keys = ruler.AdjectiveNouns(adjectives, nouns)
    assert list(keys) == sorted({f"{a}-{n}" for a in adjectives for n in nouns})
    assert keys[-1] == "zany-eyes" and keys[3] == "a-e"
    with pytest.raises(ValueError, match="interleave"):
        ruler.AdjectiveNouns(["well", "well-known"], ["known-thing", "cat"])
    real = ruler.needle_words()  # RULER's 6.2 million keys (checked whole against wonderwords by the fixtures)
    assert len(real) == 6_171_620
    picks = [real[i] for i in range(0, len(real), 12_347)]
    assert picks == sorted(picks) and len(set(picks)) == len(picks)


def test_essay_sentences_rebuild_the_prefix():
    hay = ruler.essay()
    sentences = hay.sentences(3000)
    assert " ".join(sentences).replace(" ", "") == "".join(hay.words[:3000])
    assert len(sentences) > 100


def test_chat_template_wraps_the_task_before_the_answer_prefix(word_tokenizer):
    template = ruler.task_template("qa_1", ruler.resolve_model_template("auto", word_tokenizer))
    assert template.startswith("<|im_start|>system\n") and "<|im_start|>user\nAnswer the question" in template
    assert template.endswith("<|im_end|>\n<|im_start|>assistant\n Answer:")
    assert ruler.task_template("vt", ruler.resolve_model_template("base", word_tokenizer)).startswith("Memorize")


def test_config_names_ruler_tasks_inline():
    cfg = EvalConfig.model_validate({"tasks": "qa,ruler:niah_single_1,vt,passkey"})
    assert cfg.tasks == ["qa", "ruler", "passkey"] and cfg.ruler.tasks == ["niah_single_1", "vt"]
    cfg = EvalConfig.model_validate({"tasks": ["ruler"], "ruler": {"lengths": [8192, 4096]}})
    assert cfg.ruler.tasks == list(RULER_TASKS) and cfg.ruler.lengths == [4096, 8192]
    assert "ruler" not in EvalConfig().tasks  # opt-in: the default run does not get slower
    for bad in ({"tasks": "ruler:nope"}, {"ruler": {"lengths": [100]}}, {"ruler": {"template": "odd"}}):
        with pytest.raises(ValueError):
            EvalConfig.model_validate(bad)


def test_tiny_model_end_to_end_through_sft_eval(tmp_path):
    from sft.eval import evaluate
    from tests.sft.conftest import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny", max_position_embeddings=1024)
    cfg = EvalConfig.model_validate({
        "models": {"a": model, "b": model}, "tasks": "ruler:niah_multikey_2", "out": str(tmp_path / "out"),
        "ruler": {"lengths": [1024, 4096], "samples": 2, "min_shared_prefix": 16}, "device": "cpu",
        "threads": 1})  # one thread: on a loaded machine two spin against each other
    messages: list[str] = []
    report = evaluate(cfg, progress=False, say=messages.append)
    result = report["results"]["ruler"]["a"]
    assert result["lengths"] == [1024] and result["skipped_lengths"] == [4096]
    assert list(result["scores"]) == ["niah_multikey_2"] and result["n"]["niah_multikey_2"]["1024"] == 2
    assert result["average"]["1024"] == result["scores"]["niah_multikey_2"]["1024"]
    assert result["scores"] == report["results"]["ruler"]["b"]["scores"]  # same model, same prompts
    assert result["timing"]["prefill_tokens"] < result["timing"]["prompt_tokens"]  # the template start, once
    assert any("effective length" in m for m in messages)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions-ruler-a.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["task"] == "niah_multikey_2" and r["tokens"] <= 1024 for r in rows)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## RULER" in md and "effective length" in md and "ruler.png" in md
    assert (tmp_path / "out" / "ruler.png").stat().st_size > 0
