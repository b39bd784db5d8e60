"""Task ``passkey``: passkey retrieval (LongLoRA, Chen et al. 2023, Sec. 4.2; after Mohtashami & Jaggi 2023): a key
line hidden in repeated filler text, asked for at the end. Two protocols (``passkey.protocol``):

- ``grid`` (default): accuracy by length x depth. Prompts of whole filler sentences fitted to each length in tokens
  of the model's tokenizer, the key at fixed depths, keys from Python's ``random`` (1..50000), the first number of a
  greedy answer compared. The generator is pure: :func:`passkey_prompt` builds the text, :func:`fit_filler` finds
  how much filler makes a prompt of a target token length, :func:`passkey_cases` draws the keys.
- ``longlora``: ``passkey_retrivial.py`` exactly (:func:`longlora_prompt`, :func:`evaluate_passkey_longlora`).

Both report accuracy with n and a 95 % Wilson interval, overall and per length.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.errors import DataError

if TYPE_CHECKING:  # annotations only: the GPU scripts import this module where pydantic is absent
    from schemas.eval import PasskeyConfig
from sft.evaluation.generate import GenerationStats, greedy_generate

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)  # the paper's random.randint(1, 50000)


def passkey_prompt(key: int, n_filler: int, depth: float, filler: Sequence[str] | None = None) -> str:
    """The prompt with `n_filler` copies of :data:`FILLER`, ``round(depth * n_filler)`` of them before the key line.

    As in the paper the parts are joined by newlines: task, filler before, key line, filler after, question (an
    empty filler part leaves an empty line). With `filler` (lines of real text, e.g. held-out documents) the filler
    is its first `n_filler` lines instead, joined by newlines.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if n_filler < 0:
        raise ValueError(f"n_filler must be >= 0, got {n_filler}")
    before = round(depth * n_filler)
    if filler is not None:
        if n_filler > len(filler):
            raise ValueError(f"n_filler {n_filler} exceeds the {len(filler)} filler lines")
        return "\n".join([TASK, "\n".join(filler[:before]), KEY_LINE.format(key=key),
                          "\n".join(filler[before:n_filler]), QUESTION])
    return "\n".join([TASK, " ".join([FILLER] * before), KEY_LINE.format(key=key),
                      " ".join([FILLER] * (n_filler - before)), QUESTION])


def fit_filler(count_tokens: Callable[[str], int], key: int, depth: float, length: int,
               filler: Sequence[str] | None = None) -> tuple[int, int]:
    """The largest filler count whose prompt has at most `length` tokens, and that prompt's token count.

    Token counts grow with the filler count, so a doubling search then a bisection find it in O(log length) counts.
    Raises ValueError when even the prompt without filler is longer than `length`.
    """
    def size(n: int) -> int:
        return count_tokens(passkey_prompt(key, n, depth, filler))

    if size(0) > length:
        raise DataError(f"passkey: the prompt without filler has {size(0)} tokens, more than the length {length}")
    limit = len(filler) if filler is not None else None
    if limit is not None and size(limit) <= length:
        raise DataError(f"passkey: the filler text ({limit} lines, {size(limit)} tokens with the prompt) is "
                        f"shorter than the length {length}; give more filler documents")
    lo, hi = 0, 1  # size(lo) <= length; find hi with size(hi) > length
    while size(hi) <= length:
        lo, hi = hi, hi * 2 if limit is None else min(hi * 2, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= length else (lo, mid)
    return lo, size(lo)


@dataclass(frozen=True)
class PasskeyCase:
    """One trial: target `length` (tokens), `depth` (fraction), `key`, and the prompt with its actual size."""

    length: int
    depth: float
    trial: int
    key: int
    n_filler: int
    n_tokens: int
    prompt: str


def draw_keys(seed: int, n: int) -> list[int]:
    """`n` keys from ``random.Random(seed)``, each uniform in :data:`KEY_RANGE` (inclusive)."""
    rng = random.Random(seed)
    return [rng.randint(*KEY_RANGE) for _ in range(n)]


def passkey_cases(count_tokens: Callable[[str], int], lengths: Sequence[int], depths: Sequence[float], trials: int,
                  seed: int, filler: Sequence[str] | None = None) -> list[PasskeyCase]:
    """All trials, ordered by length, depth, trial; keys drawn in that order, so the same seed gives the same
    prompts (for a given token counter)."""
    keys = iter(draw_keys(seed, len(lengths) * len(depths) * trials))
    cases = []
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                key = next(keys)
                n_filler, n_tokens = fit_filler(count_tokens, key, depth, length, filler)
                cases.append(PasskeyCase(length, depth, trial, key, n_filler, n_tokens,
                                         passkey_prompt(key, n_filler, depth, filler)))
    return cases


def answer_key(generated: str) -> int | None:
    """The first integer in the generated text (the model's answer), or None."""
    match = re.search(r"\d+", generated)
    return int(match.group()) if match else None


def run(model, tokenizer, cfg: PasskeyConfig, ctx) -> dict[str, Any]:
    """The task on one model (:mod:`sft.evaluation.tasks`), by ``cfg.protocol``. ``cfg.filler`` (real-text filler,
    grid protocol) is read once into the shared cache."""
    if cfg.protocol == "longlora":
        return evaluate_passkey_longlora(model, tokenizer, cfg, window=ctx.window, too_long=ctx.too_long,
                                         progress=ctx.progress, say=ctx.say)
    if cfg.filler is not None and "passkey_filler" not in ctx.cache:
        from sft.evaluation.ppl import load_texts

        ctx.cache["passkey_filler"] = filler_lines(load_texts(cfg.filler))
    return evaluate_passkey(model, tokenizer, cfg, window=ctx.window, too_long=ctx.too_long, progress=ctx.progress,
                            say=ctx.say, filler=ctx.cache.get("passkey_filler"))


def data_provenance(cfg: PasskeyConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """The filler text's fingerprint and line count when real-text filler was used (else nothing)."""
    from sft.evaluation.provenance import data_fingerprint

    if cfg.filler is None or "passkey_filler" not in cache:
        return {}
    return {**data_fingerprint(cfg.filler), "lines": len(cache["passkey_filler"])}


def summary(result: dict[str, Any]) -> str:
    """Accuracy over all trials, time and throughput in one line."""
    timing = result["timing"]
    ci = result.get("ci")
    interval = f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else ""
    return (f"accuracy {result['accuracy']}%{interval} over {len(result['trials'])} trials ({result['protocol']})  "
            f"{timing['seconds']:.1f} s, {timing['tokens_per_s']} tokens/s")


def evaluate_passkey(model, tokenizer, cfg: PasskeyConfig, *, window: int, too_long: str = "skip",
                     progress: bool = False, say: Callable[[str], None] = print,
                     filler: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every trial that fits ``window - cfg.max_new_tokens`` tokens; lengths beyond it are skipped with a message
    (or raise ValueError when `too_long` is ``"error"``). Returns accuracy (percent) overall and per length x depth,
    the trials and timing. `filler`: lines of real text used as filler instead of the paper's sentences
    (:func:`filler_lines`)."""
    lengths, depths, max_new_tokens = cfg.lengths, cfg.depths, cfg.max_new_tokens
    budget = window - max_new_tokens
    fitting = [n for n in lengths if n <= budget]
    skipped = [n for n in lengths if n > budget]
    if skipped:
        message = (f"passkey: length(s) {skipped} exceed the model window ({window} tokens minus {max_new_tokens} "
                   "new tokens)")
        if too_long == "error":
            raise DataError(message)
        say(message + "; skipped")

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    cases = passkey_cases(count, fitting, depths, cfg.trials, cfg.seed, filler) if fitting else []
    stats = GenerationStats()
    answers = greedy_generate(model, tokenizer, [tokenizer(c.prompt)["input_ids"] for c in cases],
                              max_new_tokens=max_new_tokens, batch_size=cfg.batch_size,
                              max_batch_tokens=cfg.max_batch_tokens, min_shared_prefix=cfg.min_shared_prefix,
                              progress=progress, desc="passkey", stats=stats)
    rows = [{"length": c.length, "depth": c.depth, "trial": c.trial, "key": c.key, "tokens": c.n_tokens,
             "answer": a, "correct": answer_key(a) == c.key} for c, a in zip(cases, answers)]
    grid: dict[str, dict[str, float]] = {}
    for length in fitting:
        grid[str(length)] = {}
        for depth in depths:
            hits = [r["correct"] for r in rows if r["length"] == length and r["depth"] == depth]
            grid[str(length)][str(depth)] = round(100 * sum(hits) / len(hits), 2)
    return {"protocol": "grid", **accuracies(rows, fitting), "grid": grid, "skipped_lengths": skipped,
            "window": window, "trials": rows, "timing": stats.as_dict()}


def accuracies(rows: Sequence[dict[str, Any]], lengths: Sequence[int]) -> dict[str, Any]:
    """Accuracy (percent), n and 95 % Wilson interval (percent) over all `rows` and per length."""
    from sft.evaluation.intervals import percent, wilson

    def summary(hits: list[bool]) -> dict[str, Any]:
        return {"accuracy": round(100 * sum(hits) / len(hits), 2) if hits else None, "n": len(hits),
                "ci": percent(wilson(sum(hits), len(hits)))}

    by_length = {str(n): summary([r["correct"] for r in rows if r["length"] == n]) for n in lengths}
    return {**summary([r["correct"] for r in rows]), "by_length": by_length}


# ----------------------------------------------------------------------------------------------------------------------
# protocol: longlora (passkey_retrivial.py exactly)
# ----------------------------------------------------------------------------------------------------------------------

LONGLORA_FILLER_SUPPLY = " ".join([FILLER] * 5000)  # the reference's garbage_inf (449,999 characters)


def longlora_filler_chars(length: int) -> int:
    """The reference's filler size in characters for test point ``length = (i + 1) * interval``:
    ``int(3.75 * length // 1024 * 1024)`` ("a rough ratio to control the number of texts and tokens", for Llama)."""
    return int(3.75 * length // 1024 * 1024)


def longlora_prompt(n_garbage: int, seed: int) -> tuple[str, int, int]:
    """``generate_prompt_landmark(n_garbage, seed)`` of passkey_retrivial.py: ``(prompt, key, prefix characters)``.

    numpy's legacy generator seeded with `seed` draws the filler before the key (``randint(0, n_garbage)``
    characters, n_garbage excluded) and the key (``randint(1, 50000)``: 1..49999); the filler before and after the key
    are both cut from the start of the repeated filler, in characters (mid-word)."""
    import numpy as np

    rng = np.random.RandomState(seed)  # the same stream as the reference's numpy.random.seed(seed)
    n_prefix = int(rng.randint(0, n_garbage))
    key = int(rng.randint(1, 50000))
    if len(LONGLORA_FILLER_SUPPLY) < n_garbage:
        raise ValueError(f"passkey: {n_garbage} filler characters exceed the reference's supply")
    lines = [TASK, LONGLORA_FILLER_SUPPLY[:n_prefix], KEY_LINE.format(key=key),
             LONGLORA_FILLER_SUPPLY[:n_garbage - n_prefix], QUESTION]
    return "\n".join(lines), key, n_prefix


def answer_token_ids(tokenizer, prompt: str, key: int) -> list[int]:
    """The key's token ids as they follow the prompt: ``ids(prompt + " " + key)`` after ``ids(prompt)``.

    For Llama's sentencepiece tokenizer this equals the reference's ``tokenizer(answer).input_ids[:, 1:]`` (BOS
    dropped, the '▁' word-start token kept, which the model generates after "is"). The reference's rule taken
    literally drops a digit for tokenizers without BOS and misses the space token of byte-level BPE tokenizers
    (SmolLM2: ' ', '1', '2', ...), so no answer could ever match; this is its meaning for any tokenizer."""
    before = tokenizer(prompt)["input_ids"]
    after = tokenizer(f"{prompt} {key}")["input_ids"]
    if after[:len(before)] == before:
        return after[len(before):]
    return tokenizer(f" {key}", add_special_tokens=False)["input_ids"]


def evaluate_passkey_longlora(model, tokenizer, cfg: PasskeyConfig, *, window: int, too_long: str = "skip",
                              progress: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """passkey_retrivial.py: for each length, `cfg.trials` prompts (trial t: numpy seed ``cfg.seed + t``, the same at
    every length, as the reference) with a filler of :func:`longlora_filler_chars` characters; greedy generation of
    exactly the answer's token count; correct when those tokens equal :func:`answer_token_ids`. A length whose
    prompts (plus answer) exceed `window` is skipped (or raises when `too_long` is "error"). Reported per length: the
    mean actual prompt tokens (the reference's key, ``total // trials``), accuracy with n and Wilson interval."""
    from sft.evaluation.generate import generate_tokens

    cases, skipped = [], []
    for length in cfg.lengths:
        n_garbage = longlora_filler_chars(length)
        trials = []
        for t in range(cfg.trials):
            prompt, key, n_prefix = longlora_prompt(n_garbage, cfg.seed + t)
            ids, answer = tokenizer(prompt)["input_ids"], answer_token_ids(tokenizer, prompt, key)
            trials.append({"length": length, "trial": t, "seed": cfg.seed + t, "key": key, "filler_chars": n_garbage,
                           "depth": round(n_prefix / n_garbage, 4), "tokens": len(ids), "ids": ids,
                           "answer_ids": answer})
        if any(tr["tokens"] + len(tr["answer_ids"]) > window for tr in trials):
            message = f"passkey: length {length} ({n_garbage} filler characters) exceeds the model window ({window})"
            if too_long == "error":
                raise DataError(message)
            say(message + "; skipped")
            skipped.append(length)
            continue
        cases += trials
    stats = GenerationStats()
    for k in sorted({len(c["answer_ids"]) for c in cases}):  # one generate length per answer length
        group = [c for c in cases if len(c["answer_ids"]) == k]
        outputs = generate_tokens(model, tokenizer, [c["ids"] for c in group], max_new_tokens=k,
                                  batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens,
                                  min_shared_prefix=cfg.min_shared_prefix, progress=progress, desc="passkey",
                                  stats=stats)
        for c, out in zip(group, outputs):
            c["correct"] = out == c["answer_ids"]
            c["answer"] = tokenizer.decode(out, skip_special_tokens=True)
    rows = [{k: v for k, v in c.items() if k not in ("ids", "answer_ids")} for c in cases]
    fitting = [n for n in cfg.lengths if n not in skipped]
    result = {"protocol": "longlora", **accuracies(rows, fitting), "skipped_lengths": skipped, "window": window,
              "trials": rows, "timing": stats.as_dict()}
    for length in fitting:
        tokens = [r["tokens"] for r in rows if r["length"] == length]
        result["by_length"][str(length)].update(mean_tokens=sum(tokens) // len(tokens),
                                                filler_chars=longlora_filler_chars(length))
    return result


def filler_lines(texts: Sequence[str]) -> list[str]:
    """The non-empty lines of `texts` in order: real-text filler (held-out documents) for :func:`passkey_prompt`."""
    return [line for text in texts for line in text.splitlines() if line.strip()]
