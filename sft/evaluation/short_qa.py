"""Task ``short_qa``: the held-out questions of a dataset built from SQuAD, each with only its own paragraph as the
document, scored as the qa task (LongBench F1, ROUGE-L, exact match, 95 % intervals). Beside ``qa`` (the same
questions on whole articles) it shows what long-context fine-tuning costs on short inputs.

Each question's paragraph is found by its id (the builder keeps SQuAD's question ids) in the SQuAD v2 JSON
(``short_qa.squad``); in the question's user turn, the article (from its first paragraph's start to its last
paragraph's end) is replaced by that paragraph, so template, instruction and question are those of ``qa``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from schemas.errors import DataError
from schemas.eval import ShortQAConfig
from sft.evaluation.qa import QAExample, evaluate_qa, load_examples
from sft.evaluation.qa import summary as qa_summary


def squad_paragraphs(squad: str) -> dict[str, tuple[str, list[str]]]:
    """question id -> (its paragraph, all paragraphs of its article in order), from a SQuAD JSON file or ``pkg:``."""
    from longqa.paths import resolve_path

    data = json.loads(resolve_path(squad).read_text(encoding="utf-8"))
    index: dict[str, tuple[str, list[str]]] = {}
    for article in data.get("data", []):
        paragraphs = [p.get("context", "") for p in article.get("paragraphs", [])]
        for p in article.get("paragraphs", []):
            for qa in p.get("qas", []):
                if "id" in qa:
                    index[str(qa["id"])] = (p.get("context", ""), paragraphs)
    return index


def with_own_paragraph(example: QAExample, paragraph: str, article: list[str]) -> QAExample:
    """`example` whose last user turn has its article (first paragraph's start .. last paragraph's end) replaced by
    `paragraph`. Raises :class:`DataError` when the article is not in the turn."""
    if example.messages is None:
        raise DataError(f"short_qa: question {example.id} has no chat messages (short_qa needs a built dataset)")
    turn = max(i for i, m in enumerate(example.messages) if m["role"] == "user")
    content = example.messages[turn]["content"]
    first, final = (article[0].strip(), article[-1].strip()) if article else ("", "")  # the material is stripped
    start = content.find(first) if first else -1
    last = content.find(final, start) if start >= 0 else -1
    if start < 0 or last < 0:
        raise DataError(f"short_qa: the article of question {example.id} is not in its prompt (was the dataset "
                        "built from this short_qa.squad file, with whole articles as documents?)")
    messages = [dict(m) for m in example.messages]
    messages[turn]["content"] = content[:start] + paragraph.strip() + content[last + len(final):]
    return replace(example, messages=messages)


def load_short_examples(cfg: ShortQAConfig) -> list[QAExample]:
    """The first ``cfg.limit`` held-out questions (as the qa task takes them), each with its own paragraph."""
    index = squad_paragraphs(cfg.squad)
    examples = load_examples(cfg.data, split=cfg.split, limit=cfg.limit)
    missing = [e.id for e in examples if e.id not in index]
    if missing:
        raise DataError(f"short_qa: {len(missing)} of {len(examples)} questions (e.g. {missing[0]}) are not in "
                        f"{cfg.squad}; short_qa needs a dataset built from that SQuAD file")
    return [with_own_paragraph(e, *index[e.id]) for e in examples]


def run(model, tokenizer, cfg: ShortQAConfig, ctx) -> dict[str, Any]:
    """The task on one model (:mod:`sft.evaluation.tasks`); predictions in ``predictions-short_qa-<model>.jsonl``."""
    if "short_qa" not in ctx.cache:
        ctx.cache["short_qa"] = load_short_examples(cfg)
    return evaluate_qa(model, tokenizer, ctx.cache["short_qa"], cfg, window=ctx.window,
                       predictions_path=ctx.out / f"predictions-short_qa-{ctx.model_name}.jsonl",
                       progress=ctx.progress)


def summary(result: dict[str, Any]) -> str:
    """As the qa task's line."""
    return qa_summary(result)


def data_provenance(cfg: ShortQAConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """The held-out data's fingerprint, the questions, and the SQuAD file's sha256."""
    from longqa.manifest import file_sha256
    from longqa.paths import resolve_path
    from sft.evaluation.provenance import data_fingerprint, ids_sha256

    ids = [e.id for e in cache["short_qa"]]
    return {**data_fingerprint(cfg.data, cfg.split), "questions": len(ids), "ids_sha256": ids_sha256(ids),
            "squad": cfg.squad, "squad_sha256": file_sha256(resolve_path(cfg.squad))}
