"""Mixing: `sample` (count or share, with replacement only when asked), `role`, the manifest's and card's mix, and
SQuAD with each question on its own paragraph (`context: paragraph`)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from longqa.mix import MixLog, draw, sampled
from longqa.pipeline import build
from longqa.readers import read_input
from schemas import BuildConfig, InputSpec, Record
from schemas.errors import DataError
from tests.longqa.fixtures import longbench_row, squad_article, squad_qa, write_longbench, write_squad
from tests.longqa.test_synthetic import write_haystacks

ROOT = Path(__file__).resolve().parents[2]


def squad_file(path: Path, articles: int = 3, paragraphs: int = 4) -> Path:
    """Articles of `paragraphs` paragraphs, two questions each (one unanswerable v2 question per article)."""
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            context = f"Paragraph {p} of article {a}: the harbour of town {a}-{p} froze in winter {1700 + p}."
            qas = [squad_qa(f"{a}-{p}-0", f"When did the harbour of town {a}-{p} freeze?", [f"winter {1700 + p}"]),
                   squad_qa(f"{a}-{p}-1", f"Which town is paragraph {p} of article {a} about?", [f"town {a}-{p}"])]
            if p == 0:
                qas.append(squad_qa(f"{a}-{p}-x", "Who built the harbour?", [], impossible=True))
            paras.append((context, qas))
        data.append(squad_article(f"Article {a}", paras))
    return write_squad(path, data)


def long_file(path: Path, n: int = 12) -> Path:
    rows = [longbench_row(f"Long document {d}. " + " ".join(f"fact{d}-{k} is about the Normans." for k in range(30)),
                          f"What is fact{d}-3?", [f"answer {d}"], _id=f"long{d}") for d in range(n)]
    return write_longbench(path, rows)


def test_squad_paragraph_context_makes_each_question_a_short_sample(tmp_path):
    path = squad_file(tmp_path / "squad.json")
    records = [r for r in read_input(InputSpec(path=str(path), format="squad", context="paragraph"))
               if isinstance(r, Record)]
    assert len(records) == 24
    for r in records:
        a, p = r.id.split("-")[:2]
        assert r.documents[0].text.startswith(f"Paragraph {p} of article {a}:") and "\n\n" not in r.documents[0].text
        assert r.documents[0].title == f"Article {a}"
    whole = next(r for r in read_input(InputSpec(path=str(path), format="squad")) if isinstance(r, Record))
    assert whole.documents[0].text.count("\n\n") == 3  # the default: the whole article


def test_draws_are_seeded_counted_and_repeat_only_when_asked():
    spec = InputSpec(path="x", format="jsonl", sample=5)
    first = draw(20, spec, seed=0)
    assert sorted(first.values()) == [1] * 5 and first == draw(20, spec, seed=0) and first != draw(20, spec, seed=1)
    assert sum(draw(20, InputSpec(path="x", format="jsonl", sample=0.25), seed=0).values()) == 5
    with pytest.raises(DataError, match="holds 20"):
        draw(20, InputSpec(path="x", format="jsonl", sample=30), seed=0)
    up = draw(20, InputSpec(path="x", format="jsonl", sample=2.0, sample_replace=True), seed=0)
    assert sum(up.values()) == 40 and max(up.values()) > 1
    with pytest.raises(ValueError, match="sample_replace"):
        InputSpec(path="x", format="jsonl", sample=1.5)


def test_the_sample_stage_keeps_reader_rejects_and_marks_repeats(tmp_path):
    path = write_longbench(tmp_path / "lb.jsonl", ['{"broken', *[longbench_row(f"doc {i}", f"q{i}?", ["a"])
                                                                for i in range(6)]])
    spec = InputSpec(path=str(path), format="longbench", sample=9, sample_replace=True, role="short")
    log = MixLog()
    items = list(sampled(spec, lambda: read_input(spec), 0, log))
    records = [i for i in items if isinstance(i, Record)]
    assert len(items) - len(records) == 1  # the malformed line still comes through, to be counted
    assert len(records) == 9 and len({r.id for r in records}) == 9 and all(r.role == "short" for r in records)
    assert {r.repeat for r in records} >= {0, 1}
    entry, distinct = log.as_list()[0], {r.id.split("#")[0] for r in records}
    assert entry["available"] == 6 and entry["drawn"] == 9 and entry["not_drawn"] == 6 - len(distinct)


def test_a_mix_recipe_builds_long_plus_short_and_shows_the_mix(tmp_path, tiny_tokenizer_path):
    haystacks = write_haystacks(tmp_path / "haystacks", n=3, sentences=60)
    cfg = BuildConfig(inputs=[
        {"path": str(long_file(tmp_path / "long.jsonl")), "format": "longbench", "source": "long-qa"},
        {"path": str(squad_file(tmp_path / "squad.json")), "format": "squad", "context": "paragraph",
         "source": "squad-paragraphs", "role": "short", "sample": 6},
        {"path": str(haystacks), "format": "synthetic", "source": "synthetic",
         "synthetic": {"samples": 4, "lengths": [150]}},
    ], tokenizer=tiny_tokenizer_path, out=str(tmp_path / "out"), max_length=512, heldout_fraction=0.5, seed=3)
    m = build(cfg, progress=False)
    mix = m["mix"]
    assert mix["by_role"] == {"long": {"samples": 16, "share": 0.7273}, "short": {"samples": 6, "share": 0.2727}}
    short = mix["inputs"][1]
    assert (short["available"], short["drawn"], short["not_drawn"], short["written"]) == (24, 6, 18, 6)
    assert short["written_by_split"] == {"train": 6}  # short samples are never held out
    assert m["counts"]["balanced"] and m["counts"]["by_source"]["squad-paragraphs"]["rejected"] == {"unanswerable": 3}
    card = (Path(cfg.out) / "README.md").read_text()
    assert "## Mix" in card and "- short: 6 samples (27.3 %)" in card and "| short | 6 | 24 | 6 | 18 | 6 |" in card
    text = datasets.load_from_disk(str(Path(cfg.out) / "text"))
    assert set(text["test"]["source"]) == {"long-qa"}  # short and synthetic samples are training data only
    assert mix["inputs"][2]["written_by_split"] == {"train": 4}
    # the card says which evaluation tasks the synthetic part resembles
    assert "## Synthetic tasks" in card and "RULER vt" in card and "not zero-shot" in card


def test_the_longalpaca_mix_recipe_is_valid():
    recipe = yaml.safe_load((ROOT / "configs/build/longalpaca_mix.yaml").read_text())
    cfg = BuildConfig.model_validate(recipe)
    roles = {spec.role: spec for spec in cfg.inputs}
    assert roles["long"].sample == 9000 and roles["short"].sample == 3000
    assert roles["short"].format == "squad" and roles["short"].context == "paragraph"
    assert json.dumps(recipe)  # plain data
    documents = BuildConfig.model_validate(yaml.safe_load((ROOT / "configs/build/documents_mix.yaml").read_text()))
    assert [(s.format, s.role) for s in documents.inputs] == [("docs", "long"), ("synthetic", "long"),
                                                               ("squad", "short")]
