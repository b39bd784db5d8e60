"""short_qa: the held-out questions of a SQuAD-built dataset with only their own paragraph, scored as qa."""
from __future__ import annotations

import json

import pytest

from schemas import BuildConfig
from schemas.errors import DataError
from schemas.eval import EvalConfig
from sft.eval import evaluate
from sft.evaluation.qa import QAExample
from sft.evaluation.short_qa import load_short_examples, squad_paragraphs, with_own_paragraph
from tests.longqa.fixtures import squad_article, squad_qa, write_squad


@pytest.fixture(scope="module")
def squad_built(tmp_path_factory, tiny_tokenizer_path):
    """A tiny SQuAD file (6 articles of 3 paragraphs, a question each) built with half the articles held out."""
    from longqa.pipeline import build

    root = tmp_path_factory.mktemp("short-qa")
    articles = [squad_article(f"Article {a}", [
        (f"Paragraph {a}.{p}: the Normans of region {a}-{p} lived by the river {a}{p}. " * 3,
         [squad_qa(f"q{a}{p}", f"Where did the Normans of {a}-{p} live?", [f"river {a}{p}"])])
        for p in range(3)]) for a in range(6)]
    squad = write_squad(root / "squad.json", articles)
    cfg = BuildConfig(inputs=[{"path": str(squad), "format": "squad"}], tokenizer=tiny_tokenizer_path,
                      out=str(root / "out"), max_length=4096, heldout_fraction=0.5)
    build(cfg, progress=False)
    return {"squad": str(squad), "out": cfg.out}


def test_each_question_gets_its_own_paragraph_in_the_qa_prompt(squad_built):
    from sft.evaluation.qa import load_examples

    cfg = EvalConfig.model_validate({"short_qa": {"data": squad_built["out"], "squad": squad_built["squad"],
                                                  "limit": None}}).short_qa
    long, short = load_examples(cfg.data, split="test"), load_short_examples(cfg)
    assert [e.id for e in short] == [e.id for e in long] and len(short) >= 3
    index = squad_paragraphs(cfg.squad)
    for a, b in zip(long, short):
        paragraph, article = index[a.id]
        text, long_text = b.messages[-1]["content"], a.messages[-1]["content"]
        assert paragraph.strip() in text and len(text) < len(long_text) and text.endswith(a.question)
        assert sum(p.strip() in text for p in article) == 1  # no other paragraph of the article
        assert long_text.replace("\n\n".join(article).strip(), paragraph.strip()) == text


def test_questions_missing_from_the_squad_file_are_a_data_error(squad_built, tmp_path):
    other = write_squad(tmp_path / "other.json", [squad_article("x", [("ctx", [squad_qa("zz", "q?", ["a"])])])])
    cfg = EvalConfig.model_validate({"short_qa": {"data": squad_built["out"], "squad": str(other)}}).short_qa
    with pytest.raises(DataError, match="not in .*other.json"):
        load_short_examples(cfg)
    example = QAExample("x", ["a"], messages=[{"role": "user", "content": "unrelated text"}])
    with pytest.raises(DataError, match="not in its prompt"):
        with_own_paragraph(example, "p", ["first", "last"])


def test_short_qa_runs_beside_qa_and_is_reported(squad_built, tmp_path, tiny_llama_dir):
    cfg = EvalConfig.model_validate(dict(
        models={"base": tiny_llama_dir}, tasks="qa,short_qa", out=str(tmp_path), threads=1,
        qa={"data": squad_built["out"], "limit": 3, "max_new_tokens": 4},
        short_qa={"data": squad_built["out"], "squad": squad_built["squad"], "limit": 3, "max_new_tokens": 4}))
    report = evaluate(cfg, progress=False, say=lambda m: None)
    long, short = (report["results"][t]["base"] for t in ("qa", "short_qa"))
    assert short["overall"]["n"] == long["overall"]["n"] == 3
    assert short["timing"]["prompt_tokens"] < long["timing"]["prompt_tokens"]
    assert (tmp_path / "predictions-short_qa-base.jsonl").is_file()
    assert report["data"]["short_qa"]["questions"] == 3 and len(report["data"]["short_qa"]["squad_sha256"]) == 64
    assert "## Short QA" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["config"]["short_qa"]["squad"] == squad_built["squad"]
