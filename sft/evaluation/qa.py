"""Held-out long QA: prompts from a built dataset (its `test` split) or a LongBench JSONL, middle truncation of
over-long prompts (as LongBench ``pred.py``), batched greedy generation with the KV cache, LongBench scores.

Long-QA data asks many questions about each document, so its prompts share long leading token runs (template +
document). :func:`greedy_generate` prefills such a shared prefix once and lets every prompt of the group continue
from a copy of its KV cache (the prefix caching of vLLM/SGLang, with transformers' own ``generate``).

Pure helpers (:func:`middle_truncate`, :func:`make_batches`, :func:`prefix_groups`) are tested alone;
:func:`greedy_generate` is shared with the passkey task.
"""
from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.evaluation.metrics import bucket_label, bucket_labels, mean_scores, score


@dataclass
class QAExample:
    """One question: `messages` (chat turns without the answer) or a raw `prompt` string, and its references."""

    id: str
    answers: list[str]
    messages: list[dict] | None = None
    prompt: str | None = None
    question: str = ""


@dataclass
class Prompt:
    """A tokenized prompt: `ids` after truncation, `n_tokens` before it."""

    ids: list[int]
    n_tokens: int

    @property
    def truncated(self) -> bool:
        return len(self.ids) < self.n_tokens


@dataclass
class GenerationStats:
    """Token counts and wall time of a generation run: `prompt_tokens` (all prompts), `prefill_tokens` (those the
    model computed: a shared prefix counts once), `new_tokens` (decoded, up to and with the end token)."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        total = self.prompt_tokens + self.new_tokens
        return {"prompt_tokens": self.prompt_tokens, "prefill_tokens": self.prefill_tokens,
                "new_tokens": self.new_tokens, "batches": self.batches,
                "seconds": round(self.seconds, 3),
                "tokens_per_s": round(total / self.seconds, 1) if self.seconds else None,
                "new_tokens_per_s": round(self.new_tokens / self.seconds, 2) if self.seconds else None}


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
    examples.sort(key=lambda e: e.id)
    return examples[:limit] if limit is not None else examples


def _built_examples(folder: Path, split: str) -> list[QAExample]:
    import datasets

    text = folder / "text" if (folder / "text").is_dir() else folder
    dd = datasets.load_from_disk(str(text))
    if split not in dd:
        raise ValueError(f"{folder}: no split {split!r} (splits: {', '.join(dd)})")
    examples = []
    for row in dd[split]:
        messages = list(row["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        examples.append(QAExample(id=row["id"], answers=list(row["answers"]), messages=messages,
                                  question=row["question"]))
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
                raise ValueError(f"{path}:{line_no}: not a LongBench record ({type(e).__name__}: {e})") from e
            example_id = str(row.get("_id", f"{line_no:08d}"))
            if chat:
                examples.append(QAExample(example_id, answers, messages=[{"role": "user", "content": prompt}],
                                          question=row["input"]))
            else:
                examples.append(QAExample(example_id, answers, prompt=prompt, question=row["input"]))
    return examples


def middle_truncate(ids: Sequence[int], budget: int) -> list[int]:
    """`ids` if they fit `budget`, else the first ``budget // 2`` and the last ``budget - budget // 2`` tokens
    (LongBench ``pred.py`` keeps both ends, where instructions and the question sit)."""
    if budget < 2:
        raise ValueError(f"middle_truncate: a budget of {budget} tokens cannot hold a prompt")
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    return list(ids[:head]) + list(ids[len(ids) - (budget - head):])


def render(example: QAExample, tokenizer, budget: int) -> Prompt:
    """Token ids of `example`'s prompt (chat template + generation prompt, or the raw prompt), cut to `budget`."""
    if example.messages is not None:
        text = tokenizer.apply_chat_template(example.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(example.prompt)["input_ids"]
    return Prompt(middle_truncate(ids, budget), len(ids))


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


def make_batches(lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int,
                 max_pad_fraction: float = 0.2) -> list[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by length (ties by index), a batch grows while it has fewer
    than `batch_size` members, its padded size ``members * longest`` stays within `max_batch_tokens`, and its
    shortest prompt is at least ``(1 - max_pad_fraction)`` of its longest (so little of a batch is padding).
    A prompt longer than `max_batch_tokens` forms a batch alone."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is not None:
            shortest, longest = lengths[current[0]], max(lengths[i], lengths[current[-1]])
            if (len(current) < batch_size and (len(current) + 1) * longest <= max_batch_tokens
                    and shortest >= (1 - max_pad_fraction) * longest):
                current.append(i)
                continue
        batches.append([i])
    return batches


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


def prefix_groups(prompts: Sequence[Sequence[int]], *, min_tokens: int,
                  max_members: int = 1024) -> list[tuple[int, list[int]]]:
    """Indices of `prompts` as ``(prefix_length, members)`` groups whose members share their first `prefix_length`
    tokens, ``min_tokens <= prefix_length < len(shortest member)`` (every member keeps a token of its own).

    Prompts are sorted lexicographically, so prompts with a common start are neighbours, and cut into runs that
    save the most prefill: a run of m prompts sharing s tokens computes ``(m - 1) * s`` fewer tokens (dynamic
    programming over the neighbours' shared lengths, runs of at most `max_members`). So one odd prompt that shares
    only a header does not shrink the group of a long shared document. Prompts left alone come last, as one group
    with ``prefix_length`` 0. ``min_tokens <= 0`` turns sharing off (one such group)."""
    if not prompts:
        return []
    if min_tokens <= 0:
        return [(0, list(range(len(prompts))))]
    order = sorted(range(len(prompts)), key=lambda i: (list(prompts[i]), i))
    ranked = [prompts[i] for i in order]
    # links[k]: tokens sorted prompts k and k + 1 can share, each keeping one of its own
    links = [min(common_prefix_length(a, b), len(a) - 1, len(b) - 1) for a, b in zip(ranked, ranked[1:])]
    n = len(order)
    saved = [0] * (n + 1)  # saved[j]: most prefill tokens saved on the first j sorted prompts
    start = list(range(-1, n))  # start[j]: first prompt of the run that ends with prompt j - 1
    for j in range(1, n + 1):
        saved[j], start[j] = saved[j - 1], j - 1  # prompt j - 1 alone
        shared = len(ranked[j - 1])
        for i in range(j - 2, max(-1, j - 1 - max_members), -1):  # the run i .. j - 1
            shared = min(shared, links[i])
            if shared < min_tokens:
                break
            if saved[i] + (j - 1 - i) * shared > saved[j]:
                saved[j], start[j] = saved[i] + (j - 1 - i) * shared, i
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    j = n
    while j > 0:
        i = start[j]
        if j - i > 1:
            groups.append((min(links[i:j - 1]), order[i:j]))
        else:
            alone.append(order[i])
        j = i
    groups.reverse()
    return groups + ([(0, sorted(alone))] if alone else [])


def pad_id(tokenizer) -> int:
    """The padding token id (the end-of-sequence token when the tokenizer has none)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a padding nor an end-of-sequence token")
    return tokenizer.eos_token_id


def end_token_ids(model, tokenizer) -> set[int]:
    """Tokens that end an answer: the generation config's end tokens and the tokenizer's (a chat model's
    end-of-turn token)."""
    eos = model.generation_config.eos_token_id
    return (set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}) - {None}


def cache_argument(model) -> str:
    """The name under which `model.forward` takes a KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier 5.x, e.g. 5.17)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model, ids: Sequence[int]):
    """A ``DynamicCache`` holding the keys and values of token ids `ids` (one row), computed in one forward pass
    that keeps only the last position's logits."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    kwargs: dict[str, Any] = {cache_argument(model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # not a (N, vocabulary) logits tensor for a document-long prefix
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=model.device), **kwargs)
    return cache


def pack_rows(prefix: Sequence[int], rests: Sequence[Sequence[int]], pad: int):
    """``(input_ids, attention_mask)``, both (B, N): row b is ``prefix + padding + rests[b]``, padding masked (0)."""
    import torch

    width = len(prefix) + max(len(r) for r in rests)
    input_ids = torch.full((len(rests), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rests), width), dtype=torch.long)
    input_ids[:, :len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
    attention_mask[:, :len(prefix)] = 1
    for row, rest in enumerate(rests):
        input_ids[row, width - len(rest):] = torch.tensor(list(rest), dtype=torch.long)
        attention_mask[row, width - len(rest):] = 1
    return input_ids, attention_mask


def greedy_generate(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int,
                    max_batch_tokens: int, max_pad_fraction: float = 0.2, min_shared_prefix: int = 0,
                    progress: bool = False, desc: str = "generate",
                    stats: GenerationStats | None = None) -> list[str]:
    """Greedy continuations (``do_sample=False``, KV cache) of token-id `prompts`, decoded without special tokens
    and stripped, in the order of `prompts`.

    Prompts sharing at least `min_shared_prefix` leading tokens (:func:`prefix_groups`; 0: never) are generated from
    one prefill of that prefix: each batch continues from a copy of its cache (repeated per row), so only the rest
    of each prompt is computed. Within a group, prompts are batched by :func:`make_batches` (on their full
    lengths); a row is ``prefix + padding + rest`` with the padding masked out, so positions and attention are those
    of the unpadded prompt (generate numbers positions from the attention mask)."""
    import torch
    from tqdm.auto import tqdm

    pad = pad_id(tokenizer)
    stats = stats if stats is not None else GenerationStats()
    outputs: list[str] = [""] * len(prompts)
    eos_ids = end_token_ids(model, tokenizer)
    cache_key = cache_argument(model)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for shared, members in prefix_groups(prompts, min_tokens=min_shared_prefix):
        started = time.perf_counter()
        prefix_cache = prefill(model, prompts[members[0]][:shared]) if shared else None
        stats.seconds += time.perf_counter() - started
        stats.prefill_tokens += shared
        batches = make_batches([len(prompts[i]) for i in members], batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, max_pad_fraction=max_pad_fraction)
        for batch in ([members[j] for j in b] for b in batches):
            rests = [list(prompts[i][shared:]) for i in batch]
            input_ids, attention_mask = pack_rows(prompts[batch[0]][:shared], rests, pad)
            width = input_ids.shape[1]
            started = time.perf_counter()
            kwargs: dict[str, Any] = {}
            if prefix_cache is not None:  # a copy per batch, one row per prompt
                cache = copy.deepcopy(prefix_cache)
                if len(batch) > 1:
                    cache.batch_repeat_interleave(len(batch))
                kwargs[cache_key] = cache
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(model.device),
                                     attention_mask=attention_mask.to(model.device), do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad,
                                     eos_token_id=list(eos_ids) or None, temperature=None, top_p=None, top_k=None,
                                     use_cache=True, **kwargs)
            new = out[:, width:].tolist()  # (B, T) on the host; also waits for an asynchronous device
            stats.seconds += time.perf_counter() - started
            stats.batches += 1
            for row, i in enumerate(batch):
                tokens = new[row]
                length = next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
                stats.prompt_tokens += len(prompts[i])
                stats.prefill_tokens += len(rests[row])
                stats.new_tokens += length
                outputs[i] = tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            bar.update(len(batch))
    bar.close()
    return outputs


# ----------------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------------


def evaluate_qa(model, tokenizer, examples: Sequence[QAExample], *, window: int, max_new_tokens: int,
                batch_size: int, max_batch_tokens: int, length_buckets: Sequence[int], max_pad_fraction: float = 0.2,
                min_shared_prefix: int = 0, predictions_path: Path | None = None,
                progress: bool = False) -> dict[str, Any]:
    """Answer `examples` greedily and score them. Prompts longer than ``window - max_new_tokens`` are cut in the
    middle and counted. Returns overall and per-bucket scores (percent), truncation count and timing; writes one
    JSON line per example (id, prediction, answers, scores, prompt tokens, truncated) to `predictions_path`."""
    budget = window - max_new_tokens
    if budget < 2:
        raise ValueError(f"qa: max_new_tokens {max_new_tokens} leaves no room for a prompt in the {window}-token "
                         "window")
    prompts = [render(e, tokenizer, budget) for e in examples]
    stats = GenerationStats()
    predictions = greedy_generate(model, tokenizer, [p.ids for p in prompts], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                  max_pad_fraction=max_pad_fraction, min_shared_prefix=min_shared_prefix,
                                  progress=progress, desc="qa", stats=stats)
    rows = []
    for example, prompt, prediction in zip(examples, prompts, predictions):
        rows.append({"id": example.id, "question": example.question, "prediction": prediction,
                     "answers": example.answers, **score(prediction, example.answers),
                     "prompt_tokens": prompt.n_tokens, "truncated": prompt.truncated,
                     "bucket": bucket_label(prompt.n_tokens, length_buckets)})
    if predictions_path is not None:
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = predictions_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(predictions_path)
    buckets = {label: mean_scores([r for r in rows if r["bucket"] == label]) for label in bucket_labels(length_buckets)}
    return {"overall": mean_scores(rows), "buckets": {k: v for k, v in buckets.items() if v["n"]},
            "truncated": sum(r["truncated"] for r in rows), "window": window, "timing": stats.as_dict(),
            "predictions": str(predictions_path) if predictions_path else None}
