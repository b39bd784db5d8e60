"""python benchmarks/passkey_likelihood.py --models NAME=REF ... [--lengths N ...] [--trials T] [--out FILE.md]

Does a model that fails passkey retrieval not know the key, or not say it? ``sft.eval``'s passkey task scores the
greedy answer, so an answer that continues the text ("a key that is used to...") counts as a miss even if the model
would rank the key first. This scores the same prompts (``sft.evaluation.passkey.passkey_cases``: same seed, same
keys) by likelihood instead: after "... The pass key is", the true key and ``--distractors`` other keys of the same
number of digits, each as " KEY"; the trial counts as known when the true key has the highest log-likelihood (chance:
1 / (distractors + 1)). One forward of the prompt a trial, the candidates scored from its KV cache.

    python benchmarks/passkey_likelihood.py --models \\
        trained=runs/experiments/longlora_smollm2_16k_cpu_passkey/arms/longlora_yarn/adapter \\
        untrained=runs/experiments/longlora_smollm2_16k_cpu_passkey/arms/yarn_x2/model \\
        --lengths 4096 12288 16376 --trials 2 --out benchmarks/results/passkey_likelihood_cpu.md
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from sft.eval import load_for_eval
from sft.evaluation.generate import cache_argument, prefill
from sft.evaluation.passkey import passkey_cases


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="NAME=REF (model folder, adapter folder or .gguf)")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 12288, 16376])
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--trials", type=int, default=2, help="trials per length and depth, as in the passkey config "
                   "(keys are drawn for all of them, so the prompts match sft.eval's)")
    p.add_argument("--trial-subset", type=int, nargs="*", default=None, help="score only these trial indices")
    p.add_argument("--seed", type=int, default=0, help="passkey.seed of the eval config")
    p.add_argument("--distractors", type=int, default=9)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def candidates(key: int, n: int, rng: random.Random) -> list[int]:
    """The key first, then `n` other keys with as many digits."""
    digits = len(str(key))
    low, high = (1 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    others: set[int] = set()
    while len(others) < min(n, high - low):
        other = rng.randint(low, high)
        if other != key:
            others.add(other)
    return [key, *sorted(others)]


@torch.no_grad()
def score_trial(model, tokenizer, prompt: str, keys: list[int]) -> list[float]:
    """Log-likelihood of " KEY" after `prompt` for every key: the prompt but its last token prefilled once
    (``sft.evaluation.generate.prefill``), then for each key its last token and the key's tokens from that cache,
    cut back after each."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    cache = prefill(model, prompt_ids[:-1])
    scores = []
    for key in keys:
        ids = tokenizer(prompt + f" {key}")["input_ids"]
        if ids[:len(prompt_ids)] != prompt_ids:  # the key must not merge with the prompt's last token
            raise ValueError(f"the tokenizer merges ' {key}' into the prompt's end")
        key_ids = ids[len(prompt_ids):]
        step = torch.tensor([[prompt_ids[-1], *key_ids[:-1]]], device=model.device)
        logp = model(input_ids=step, **{cache_argument(model): cache}, use_cache=True).logits[0].float().log_softmax(-1)
        scores.append(float(logp[torch.arange(len(key_ids)), torch.tensor(key_ids)].sum()))
        cache.crop(-len(key_ids))  # back to the prefilled prompt
    return scores


def main(argv=None) -> int:
    args = parse_args(argv)
    models = dict(item.split("=", 1) for item in args.models)
    rows: dict[str, list[dict]] = {}
    for name, ref in models.items():
        started = time.perf_counter()
        model, tokenizer, kind = load_for_eval(ref, dtype=args.dtype)

        def count(text: str) -> int:
            return len(tokenizer(text)["input_ids"])

        cases = passkey_cases(count, args.lengths, args.depths, args.trials, args.seed)
        if args.trial_subset is not None:
            cases = [c for c in cases if c.trial in args.trial_subset]
        rng = random.Random(1234)
        rows[name] = []
        for case in cases:
            keys = candidates(case.key, args.distractors, rng)
            scores = score_trial(model, tokenizer, case.prompt, keys)
            rank = 1 + sum(s > scores[0] for s in scores[1:])
            rows[name].append({"length": case.length, "depth": case.depth, "trial": case.trial, "key": case.key,
                               "logp": round(scores[0], 3), "rank": rank})
            print(f"{name} {case.length} depth {case.depth} trial {case.trial}: key {case.key} log p "
                  f"{scores[0]:.2f}, rank {rank} of {len(keys)}", flush=True)
        print(f"{name} ({kind}): {len(cases)} trials in {time.perf_counter() - started:.0f} s", flush=True)
        del model
    report = render(rows, args)
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0


def render(rows: dict[str, list[dict]], args) -> str:
    lines = [f"Key ranked first among {args.distractors + 1} candidates (chance {100 / (args.distractors + 1):.0f} %), "
             "and the key's mean log-likelihood, by prompt length:", "",
             "| model | " + " | ".join(f"ranked first @{n}" for n in args.lengths) + " | "
             + " | ".join(f"mean log p @{n}" for n in args.lengths) + " |",
             "|---|" + "---:|" * (2 * len(args.lengths))]
    for name, model_rows in rows.items():
        firsts, logps = [], []
        for n in args.lengths:
            at = [r for r in model_rows if r["length"] == n]
            firsts.append(f"{sum(r['rank'] == 1 for r in at)}/{len(at)}")
            logps.append(f"{sum(r['logp'] for r in at) / max(len(at), 1):.2f}")
        lines.append(f"| {name} | " + " | ".join(firsts) + " | " + " | ".join(logps) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
