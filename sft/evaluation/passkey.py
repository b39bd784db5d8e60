"""Task ``passkey``: passkey retrieval (LongLoRA, Chen et al. 2023, Sec. 4.2 and ``passkey_retrivial.py``; after Mohtashami & Jaggi
2023): a key line hidden at a depth of repeated filler text, asked for at the end. Accuracy by length x depth.

The generator is pure: :func:`passkey_prompt` builds the text, :func:`fit_filler` finds how much filler makes a prompt
of a target token length (given any token counter), :func:`passkey_cases` draws the keys from a seeded generator.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.eval import PasskeyConfig
from sft.evaluation.generate import GenerationStats, greedy_generate

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)  # the paper's random.randint(1, 50000)


def passkey_prompt(key: int, n_filler: int, depth: float) -> str:
    """The prompt with `n_filler` copies of :data:`FILLER`, ``round(depth * n_filler)`` of them before the key line.

    As in the paper the parts are joined by newlines: task, filler before, key line, filler after, question (an
    empty filler part leaves an empty line).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if n_filler < 0:
        raise ValueError(f"n_filler must be >= 0, got {n_filler}")
    before = round(depth * n_filler)
    return "\n".join([TASK, " ".join([FILLER] * before), KEY_LINE.format(key=key),
                      " ".join([FILLER] * (n_filler - before)), QUESTION])


def fit_filler(count_tokens: Callable[[str], int], key: int, depth: float, length: int) -> tuple[int, int]:
    """The largest filler count whose prompt has at most `length` tokens, and that prompt's token count.

    Token counts grow with the filler count, so a doubling search then a bisection find it in O(log length) counts.
    Raises ValueError when even the prompt without filler is longer than `length`.
    """
    def size(n: int) -> int:
        return count_tokens(passkey_prompt(key, n, depth))

    if size(0) > length:
        raise ValueError(f"passkey: the prompt without filler has {size(0)} tokens, more than the length {length}")
    lo, hi = 0, 1  # size(lo) <= length; find hi with size(hi) > length
    while size(hi) <= length:
        lo, hi = hi, hi * 2
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
                  seed: int) -> list[PasskeyCase]:
    """All trials, ordered by length, depth, trial; keys drawn in that order, so the same seed gives the same
    prompts (for a given token counter)."""
    keys = iter(draw_keys(seed, len(lengths) * len(depths) * trials))
    cases = []
    for length in lengths:
        for depth in depths:
            for trial in range(trials):
                key = next(keys)
                n_filler, n_tokens = fit_filler(count_tokens, key, depth, length)
                cases.append(PasskeyCase(length, depth, trial, key, n_filler, n_tokens,
                                         passkey_prompt(key, n_filler, depth)))
    return cases


def answer_key(generated: str) -> int | None:
    """The first integer in the generated text (the model's answer), or None."""
    match = re.search(r"\d+", generated)
    return int(match.group()) if match else None


def run(model, tokenizer, cfg: PasskeyConfig, ctx) -> dict[str, Any]:
    """The task on one model (:mod:`sft.evaluation.tasks`)."""
    return evaluate_passkey(model, tokenizer, cfg, window=ctx.window, too_long=ctx.too_long, progress=ctx.progress,
                            say=ctx.say)


def summary(result: dict[str, Any]) -> str:
    """Accuracy over all trials, time and throughput in one line."""
    timing = result["timing"]
    return (f"accuracy {result['accuracy']}% over {len(result['trials'])} trials  {timing['seconds']:.1f} s, "
            f"{timing['tokens_per_s']} tokens/s")


def evaluate_passkey(model, tokenizer, cfg: PasskeyConfig, *, window: int, too_long: str = "skip",
                     progress: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every trial that fits ``window - cfg.max_new_tokens`` tokens; lengths beyond it are skipped with a message
    (or raise ValueError when `too_long` is ``"error"``). Returns accuracy (percent) overall and per length x depth,
    the trials and timing."""
    lengths, depths, max_new_tokens = cfg.lengths, cfg.depths, cfg.max_new_tokens
    budget = window - max_new_tokens
    fitting = [n for n in lengths if n <= budget]
    skipped = [n for n in lengths if n > budget]
    if skipped:
        message = (f"passkey: length(s) {skipped} exceed the model window ({window} tokens minus {max_new_tokens} "
                   "new tokens)")
        if too_long == "error":
            raise ValueError(message)
        say(message + "; skipped")

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    cases = passkey_cases(count, fitting, depths, cfg.trials, cfg.seed) if fitting else []
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
    accuracy = round(100 * sum(r["correct"] for r in rows) / len(rows), 2) if rows else None
    return {"accuracy": accuracy, "grid": grid, "skipped_lengths": skipped, "window": window, "trials": rows,
            "timing": stats.as_dict()}
