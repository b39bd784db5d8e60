"""python benchmarks/eval_qa.py [--model REF] [--data out] [--limit 8] [--batch-size 4] [--tiny] [--out FILE.md]

Throughput of the qa task's generation (:func:`sft.evaluation.qa.greedy_generate`: prompts sorted by length,
bucketed, left padded, greedy with the KV cache) against a plain loop of one ``model.generate`` per prompt (no
padding, no attention mask), on the same rendered prompts in the same process. Tokens/s counts prompt (prefill) and
generated (decode) tokens; both stop at the end-of-sequence token. Also reports how many answers agree.

Default: SmolLM2-135M-Instruct (GGUF) on the held-out prompts of the default build ``out/``. ``--tiny``: a random
2-layer Llama and tiny tokenizer built in a temporary folder, with synthetic prompts (no data needed).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from schemas.config import DEFAULT_TOKENIZER  # noqa: E402
from sft.eval import load_for_eval, pick_device  # noqa: E402
from sft.evaluation.qa import GenerationStats, greedy_generate, load_examples, render  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_TOKENIZER, help="model reference (folder, adapter, .gguf, pkg:)")
    p.add_argument("--data", default="out", help="built dataset folder or LongBench .jsonl")
    p.add_argument("--limit", type=int, default=8, help="first N questions")
    p.add_argument("--batch-size", type=int, default=4, help="qa task batch size")
    p.add_argument("--max-pad-fraction", type=float, default=0.2, help="qa task bucketing")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-context", type=int, default=None, help="cut prompts to this window (middle truncation)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="random tiny Llama and synthetic prompts")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    return p.parse_args(argv)


def tiny_setup(limit: int, folder: Path):
    """A random tiny Llama (window 2048) saved with the tiny test tokenizer, and `limit` random-token prompts of
    300..1500 tokens."""
    from tests.sft.conftest import make_tiny_llama

    ref = make_tiny_llama(folder, max_position_embeddings=2048)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(300, 1500, (limit,), generator=generator).tolist()
    return ref, [torch.randint(3, 400, (n,), generator=generator).tolist() for n in lengths]


def plain_loop(model, tokenizer, prompts, max_new_tokens: int) -> tuple[list[str], GenerationStats]:
    """One unpadded ``generate`` call per prompt, in the given order."""
    stats = GenerationStats()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None} or {tokenizer.eos_token_id}
    answers = []
    for ids in prompts:
        input_ids = torch.tensor([ids], device=model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                                 eos_token_id=list(eos_ids))
        new = out[0, len(ids):].tolist()
        stats.seconds += time.perf_counter() - started
        length = next((k + 1 for k, t in enumerate(new) if t in eos_ids), len(new))
        stats.prompt_tokens += len(ids)
        stats.new_tokens += length
        stats.batches += 1
        answers.append(tokenizer.decode(new[:length], skip_special_tokens=True).strip())
    return answers, stats


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            ref, prompts = tiny_setup(args.limit, Path(tmp) / "tiny")
            model, tokenizer, _ = load_for_eval(ref, dtype=args.dtype, device=device)
        else:
            ref = args.model
            model, tokenizer, _ = load_for_eval(ref, dtype=args.dtype, device=device)
            from sft.model import context_length

            window = min(context_length(model.config), args.max_context or 1 << 30)
            examples = load_examples(args.data, limit=args.limit)
            prompts = [render(e, tokenizer, window - args.max_new_tokens).ids for e in examples]
        plain_loop(model, tokenizer, [prompts[0][:64]], 4)  # warm-up
        runs = {}
        stats = GenerationStats()
        answers = greedy_generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, max_batch_tokens=1 << 30,
                                  max_pad_fraction=args.max_pad_fraction, stats=stats)
        runs[f"qa task (batch {args.batch_size})"] = (answers, stats)
        runs["plain generate loop"] = plain_loop(model, tokenizer, prompts, args.max_new_tokens)
    (a, _), (b, _) = runs.values()
    lengths = sorted(len(p) for p in prompts)
    chip = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    lines = [f"# qa generation throughput: {'tiny random Llama' if args.tiny else ref}", "",
             f"device: {device} ({chip}, {torch.get_num_threads()} threads), dtype {args.dtype}, torch "
             f"{torch.__version__}; {len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens, max "
             f"{args.max_new_tokens} new tokens", "",
             "| run | calls | prompt tokens | new tokens | seconds | tokens/s | new tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for name, (_, s) in runs.items():
        d = s.as_dict()
        lines.append(f"| {name} | {d['batches']} | {d['prompt_tokens']} | {d['new_tokens']} | {d['seconds']:.2f} | "
                     f"{d['tokens_per_s']} | {d['new_tokens_per_s']} |")
    lines += ["", f"identical answers: {sum(x == y for x, y in zip(a, b))} of {len(a)} (padding changes floating-point "
              "sums, so greedy answers may differ slightly)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
