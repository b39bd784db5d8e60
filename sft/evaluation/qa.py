"""Task ``qa``: held-out long QA. Prompts from a built dataset (its `test` split) or a LongBench JSONL, middle
truncation of over-long prompts, greedy answers (:mod:`sft.evaluation.generate`: batched, shared document prefixes
computed once), LongBench scores (:mod:`sft.evaluation.metrics`).

Pure helpers (:func:`middle_truncate`, :func:`render`) are tested alone.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import DataError
from schemas.eval import QAConfig
from longqa.atomic import write_text
from longqa.truncation import middle_keep
from sft.evaluation.evidence import by_evidence, evidence_lost, evidence_position, native_window
from sft.evaluation.generate import GenerationStats, greedy_generate
from sft.evaluation.metrics import METRICS, bucket_label, bucket_labels, mean_scores, score


@dataclass
class QAExample:
    """One question: `messages` (chat turns without the answer) or a raw `prompt` string, and its references."""

    id: str
    answers: list[str]
    messages: list[dict] | None = None
    prompt: str | None = None
    question: str = ""
    evidence: int | None = None  # token position of the evidence (datasets built with distractors)


@dataclass
class Prompt:
    """A tokenized prompt: `ids` after truncation, `n_tokens` before it."""

    ids: list[int]
    n_tokens: int

    @property
    def truncated(self) -> bool:
        return len(self.ids) < self.n_tokens


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_examples(data: str, *, split: str = "test", prompt_template: str = "", chat: bool = True,
                  limit: int | None = None) -> list[QAExample]:
    """Questions of `data`, sorted by id (a stable order), the first `limit` of them.

    `data` is a built dataset folder (``DATA/text`` holds a DatasetDict; the `split`'s ``messages`` minus the
    assistant turn are the prompt) or a LongBench ``.jsonl`` (``context``, ``input``, ``answers``; the prompt is
    ``prompt_template.format(context=..., input=...)``, sent as one user turn when `chat`, else as raw text).
    """
    path = Path(data)
    if path.is_file():
        examples = _longbench_examples(path, prompt_template, chat)
    else:
        examples = _built_examples(path, split)
    if not examples:
        raise DataError(f"qa.data: {data}" + ("" if path.is_file() else f" split {split!r}") + " holds no question; "
                        "evaluate another --qa.data / --qa.split, or drop qa from --tasks")
    examples.sort(key=lambda e: e.id)
    return examples[:limit] if limit is not None else examples


def _built_examples(folder: Path, split: str) -> list[QAExample]:
    import datasets

    text = folder / "text" if (folder / "text").is_dir() else folder
    dd = datasets.load_from_disk(str(text))
    if split not in dd:
        raise DataError(f"{folder}: no split {split!r} (splits: {', '.join(dd)})")
    examples = []
    for row in dd[split]:
        messages = list(row["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        examples.append(QAExample(id=row["id"], answers=list(row["answers"]), messages=messages,
                                  question=row["question"], evidence=evidence_position(row)))
    return examples


def _longbench_examples(path: Path, template: str, chat: bool) -> list[QAExample]:
    examples = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = template.format(context=row["context"], input=row["input"])
                answers = [str(a) for a in row["answers"]]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{line_no}: not a LongBench record ({type(e).__name__}: {e})") from e
            example_id = str(row.get("_id", f"{line_no:08d}"))
            if chat:
                examples.append(QAExample(example_id, answers, messages=[{"role": "user", "content": prompt}],
                                          question=row["input"]))
            else:
                examples.append(QAExample(example_id, answers, prompt=prompt, question=row["input"]))
    return examples


def middle_truncate(ids: Sequence[int], budget: int) -> list[int]:
    """`ids` if they fit `budget`, else both ends (instructions and the question sit there) by the project's one
    middle rule (:func:`longqa.truncation.middle_keep`: the first ``ceil(budget / 2)``, the last
    ``floor(budget / 2)``)."""
    if budget < 2:
        raise ValueError(f"middle_truncate: a budget of {budget} tokens cannot hold a prompt")
    return middle_keep(ids, budget)


def longbench_v1_cut(tokenizer, text: str, max_length: int) -> str:
    """LongBench v1 ``pred.py``: `text` tokenized (special tokens included); when longer than `max_length`,
    ``half = int(max_length / 2)`` tokens from each end, each half decoded without special tokens, joined."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_length:
        return text
    half = int(max_length / 2)
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[-half:], skip_special_tokens=True))


def longbench_v2_cut(tokenizer, text: str, max_length: int) -> str:
    """LongBench v2 ``pred.py`` (``query_llm``): ``ids[:max_length//2] + ids[-max_length//2:]`` (Python's floor
    division makes the tail ``ceil(max_length / 2)``), decoded together without special tokens."""
    ids = tokenizer.encode(text)
    if len(ids) <= max_length:
        return text
    return tokenizer.decode(ids[:max_length // 2] + ids[-max_length // 2:], skip_special_tokens=True)


LONGBENCH_CUTS = {"longbench_v1": longbench_v1_cut, "longbench_v2": longbench_v2_cut}


def _template_ids(example: QAExample, tokenizer, messages: list[dict] | None = None, prompt: str | None = None):
    messages = example.messages if messages is None else messages
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(example.prompt if prompt is None else prompt)["input_ids"]


def render(example: QAExample, tokenizer, budget: int, *, truncation: str = "template",
           max_length: int | None = None) -> Prompt:
    """Token ids of `example`'s prompt (chat template + generation prompt, or the raw prompt), at most `budget`.

    ``truncation="template"`` cuts the templated ids (:func:`middle_truncate`). ``"longbench_v1"`` /
    ``"longbench_v2"`` cut the raw prompt (the last user turn, or the raw prompt) to `max_length` tokens as LongBench
    does (:func:`longbench_v1_cut`, :func:`longbench_v2_cut`; default: `budget` minus the tokens the template adds)
    and then apply the template; should re-tokenizing still exceed `budget` (by a few tokens), the template rule
    cuts the rest."""
    ids = _template_ids(example, tokenizer)
    if truncation == "template" or len(ids) <= budget and max_length is None:
        return Prompt(middle_truncate(ids, budget), len(ids))
    cut = LONGBENCH_CUTS[truncation]
    if example.messages is not None:
        turn = max(i for i, m in enumerate(example.messages) if m["role"] == "user")
        raw = example.messages[turn]["content"]
    else:
        turn, raw = None, example.prompt
    if max_length is None:
        max_length = budget - max(0, len(ids) - len(tokenizer(raw)["input_ids"]))
        if max_length < 2:
            raise DataError(f"qa: the chat template leaves no room for a prompt in {budget} tokens")
    text = cut(tokenizer, raw, max_length)
    if turn is not None:
        messages = [dict(m) for m in example.messages]
        messages[turn]["content"] = text
        new = _template_ids(example, tokenizer, messages=messages)
    else:
        new = _template_ids(example, tokenizer, prompt=text)
    return Prompt(middle_truncate(new, budget), len(ids))


# ----------------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------------


def run(model, tokenizer, cfg: QAConfig, ctx) -> dict[str, Any]:
    """The task on one model (:mod:`sft.evaluation.tasks`): the questions of ``cfg.data`` (read once for all models),
    predictions written to ``ctx.out/predictions-<model>.jsonl``."""
    if "qa" not in ctx.cache:
        ctx.cache["qa"] = load_examples(cfg.data, split=cfg.split, prompt_template=cfg.prompt_template, chat=cfg.chat,
                                        limit=cfg.limit)
    return evaluate_qa(model, tokenizer, ctx.cache["qa"], cfg, window=ctx.window,
                       predictions_path=ctx.out / f"predictions-{ctx.model_name}.jsonl", progress=ctx.progress,
                       native=native_window(model.config))


def summary(result: dict[str, Any]) -> str:
    """Headline scores, truncation count, time and throughput in one line."""
    o, timing = result["overall"], result["timing"]
    ci = o.get("ci", {}).get("f1")
    interval = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    return (f"F1 {o['f1']:.2f}{interval}  ROUGE-L {o['rouge_l']:.2f}  EM {o['exact_match']:.2f}  ({o['n']} questions, "
            f"{result['truncated']} cut in the middle)  {timing['seconds']:.1f} s, {timing['tokens_per_s']} tokens/s")


def data_provenance(cfg: QAConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """The data's fingerprint and the evaluated questions (count, sha256 of their ids in order)."""
    from sft.evaluation.provenance import data_fingerprint, ids_sha256

    ids = [e.id for e in cache["qa"]]
    return {**data_fingerprint(cfg.data, cfg.split), "questions": len(ids), "ids_sha256": ids_sha256(ids)}


def evaluate_qa(model, tokenizer, examples: Sequence[QAExample], cfg: QAConfig, *, window: int,
                predictions_path: Path | None = None, progress: bool = False,
                native: int | None = None) -> dict[str, Any]:
    """Answer `examples` greedily and score them. Prompts longer than ``window - cfg.max_new_tokens`` are cut in the
    middle and counted. Returns overall and per-bucket scores (percent), truncation count and timing; writes one
    JSON line per example (id, prediction, answers, scores, prompt tokens, truncated) to `predictions_path`.
    Examples with an evidence position also get ``evidence``: scores by that position
    (:func:`sft.evaluation.evidence.by_evidence`; `native`, the model's native window, default `window`)."""
    budget = window - cfg.max_new_tokens
    if budget < 2:
        raise DataError(f"qa: max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the {window}-token "
                         "window")
    prompts = [render(e, tokenizer, budget, truncation=cfg.truncation, max_length=cfg.max_length) for e in examples]
    stats = GenerationStats()
    predictions = greedy_generate(model, tokenizer, [p.ids for p in prompts], max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens,
                                  max_pad_fraction=cfg.max_pad_fraction, min_shared_prefix=cfg.min_shared_prefix,
                                  progress=progress, desc="qa", stats=stats)
    length_buckets = cfg.length_buckets
    rows = []
    for example, prompt, prediction in zip(examples, prompts, predictions):
        rows.append({"id": example.id, "question": example.question, "prediction": prediction,
                     "answers": example.answers, **score(prediction, example.answers),
                     "prompt_tokens": prompt.n_tokens, "truncated": prompt.truncated,
                     "bucket": bucket_label(prompt.n_tokens, length_buckets),
                     "evidence_position": example.evidence,
                     "evidence_cut": evidence_lost(example.evidence, prompt.n_tokens, budget)})
    if predictions_path is not None:
        write_text(predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    buckets = {label: mean_scores([r for r in rows if r["bucket"] == label]) for label in bucket_labels(length_buckets)}
    evidence = by_evidence(rows, cfg.evidence_buckets, window if native is None else native)
    return {"overall": mean_scores(rows), "buckets": {k: v for k, v in buckets.items() if v["n"]},
            **({"evidence": evidence} if evidence else {}),
            "truncated": sum(r["truncated"] for r in rows), "truncation": cfg.truncation, "window": window,
            "timing": stats.as_dict(),
            "per_question": per_question(rows),
            "predictions": str(predictions_path) if predictions_path else None}


def per_question(rows: Sequence[dict]) -> dict[str, list]:
    """Each question's id and scores (fractions), in order: what a paired comparison of two models needs
    (:func:`sft.evaluation.metrics.paired_difference`)."""
    return {"id": [r["id"] for r in rows], **{name: [r[name] for r in rows] for name in METRICS}}
