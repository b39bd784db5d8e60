"""python benchmarks/eval_qa.py [--model REF] [--data out] [--documents 2] [--per-document 4] [--batch-size 4]
    [--out F.md]

Throughput of the qa task's generation (:func:`sft.evaluation.generate.greedy_generate`: prompts sharing a long start
prefilled once, the rest sorted by length, bucketed, padded, greedy with the KV cache) against a plain loop of one
``model.generate`` per prompt (no padding, no sharing), on the same rendered prompts in the same process: the qa task
with its defaults (batch 1, shared prefixes), with a batch size, and batched without sharing. Tokens/s counts all
prompt tokens (prefill, also those taken from a shared cache) and generated tokens (decode); all runs stop at the
end-of-sequence token. Also reports how many answers equal the plain loop's.

Default: SmolLM2-135M-Instruct (GGUF) on the held-out prompts of the default build ``out/``: the first
`--per-document` questions (by id) of each of the first `--documents` held-out articles, the shape of a full held-out
evaluation (the default build holds out 4 articles with 96-215 questions each). ``--tiny``: a random 2-layer Llama
and the tiny test tokenizer built in a temporary folder, with synthetic prompts (documents followed by questions).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from schemas.build import DEFAULT_TOKENIZER  # noqa: E402
from schemas.eval import QAConfig  # noqa: E402
from sft.eval import load_for_eval, pick_device  # noqa: E402
from sft.evaluation.provenance import device_name  # noqa: E402
from sft.evaluation.generate import GenerationStats, end_token_ids, greedy_generate  # noqa: E402
from sft.evaluation.qa import load_examples, render  # noqa: E402

MIN_SHARED_PREFIX = QAConfig().min_shared_prefix


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--model", default=DEFAULT_TOKENIZER, help="model reference (folder, adapter, .gguf, pkg:)")
    p.add_argument("--data", default="out", help="built dataset folder (its held-out split)")
    p.add_argument("--documents", type=int, default=2, help="held-out documents to take questions from")
    p.add_argument("--per-document", type=int, default=4, help="questions per document (the first by id)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size of the batched qa runs")
    p.add_argument("--max-pad-fraction", type=float, default=0.2, help="qa task bucketing")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-context", type=int, default=None, help="cut prompts to this window (middle truncation)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="random tiny Llama and synthetic prompts")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    return p.parse_args(argv)


def tiny_setup(documents: int, per_document: int, folder: Path):
    """A random tiny Llama (window 2048) saved with the tiny test tokenizer, and random-token prompts: `documents`
    documents of 300..1500 tokens, each followed by `per_document` questions of 8..40 tokens."""
    from tests.sft.conftest import make_tiny_llama

    ref = make_tiny_llama(folder, max_position_embeddings=2048)
    generator = torch.Generator().manual_seed(0)
    prompts = []
    for n in torch.randint(300, 1500, (documents,), generator=generator).tolist():
        document = torch.randint(3, 400, (n,), generator=generator).tolist()
        for q in torch.randint(8, 40, (per_document,), generator=generator).tolist():
            prompts.append(document + torch.randint(3, 400, (q,), generator=generator).tolist())
    return ref, prompts


def held_out_examples(data: str, documents: int, per_document: int):
    """The first `per_document` questions (by id) of each of the first `documents` held-out documents (documents in
    the order of their first question id)."""
    import datasets

    folder = Path(data)
    split = datasets.load_from_disk(str(folder / "text" if (folder / "text").is_dir() else folder))["test"]
    document_of = dict(zip(split["id"], split["doc_id"]))
    chosen: dict[str, list] = {}
    for example in load_examples(data):  # sorted by id
        questions = chosen.setdefault(document_of[example.id], [])
        if len(questions) < per_document:
            questions.append(example)
    return [e for questions in list(chosen.values())[:documents] for e in questions]


def plain_loop(model, tokenizer, prompts, max_new_tokens: int) -> tuple[list[str], GenerationStats]:
    """One unpadded ``generate`` call per prompt, in the given order."""
    stats = GenerationStats()
    eos_ids = end_token_ids(model, tokenizer)  # the qa task's end tokens
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
        stats.prefill_tokens += len(ids)
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
            ref, prompts = tiny_setup(args.documents, args.per_document, Path(tmp) / "tiny")
            model, tokenizer, _ = load_for_eval(ref, dtype=args.dtype, device=device)
        else:
            ref = args.model
            model, tokenizer, _ = load_for_eval(ref, dtype=args.dtype, device=device)
            from sft.model import context_length

            window = min(context_length(model.config), args.max_context or 1 << 30)
            examples = held_out_examples(args.data, args.documents, args.per_document)
            prompts = [render(e, tokenizer, window - args.max_new_tokens).ids for e in examples]
        plain_loop(model, tokenizer, [prompts[0][:64]], 4)  # warm-up
        runs = {"plain generate loop": plain_loop(model, tokenizer, prompts, args.max_new_tokens)}
        variants = {"qa task (defaults: batch 1, shared prefixes)": (1, MIN_SHARED_PREFIX),
                    f"qa task (batch {args.batch_size}, shared prefixes)": (args.batch_size, MIN_SHARED_PREFIX),
                    f"qa task (batch {args.batch_size}, no sharing)": (args.batch_size, 0)}
        for name, (batch_size, min_shared_prefix) in variants.items():
            stats = GenerationStats()
            answers = greedy_generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                      batch_size=batch_size, max_batch_tokens=1 << 30,
                                      max_pad_fraction=args.max_pad_fraction, min_shared_prefix=min_shared_prefix,
                                      stats=stats)
            runs[name] = (answers, stats)
    reference, plain = runs["plain generate loop"]
    lengths = sorted(len(p) for p in prompts)
    chip = device_name(device)
    lines = [f"# qa generation throughput: {'tiny random Llama' if args.tiny else ref}", "",
             f"device: {device} ({chip}, {torch.get_num_threads()} threads), dtype {args.dtype}, torch "
             f"{torch.__version__}, transformers {transformers.__version__}; {len(prompts)} prompts "
             f"({args.documents} documents x {args.per_document} questions) of {lengths[0]}-{lengths[-1]} tokens, "
             f"max {args.max_new_tokens} new tokens", "",
             "| run | generate calls | prompt tokens | computed prompt tokens | new tokens | seconds | tokens/s | "
             "vs plain | answers as plain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (answers, s) in runs.items():
        d = s.as_dict()
        same = sum(x == y for x, y in zip(answers, reference))
        lines.append(f"| {name} | {d['batches']} | {d['prompt_tokens']} | {d['prefill_tokens']} | {d['new_tokens']} "
                     f"| {d['seconds']:.2f} | {d['tokens_per_s']} | {plain.seconds / s.seconds:.2f}x | "
                     f"{same} of {len(answers)} |")
    lines += ["", "tokens/s = (prompt tokens + new tokens) / seconds of generation (model loading excluded); computed "
              "prompt tokens: those the model ran (a shared prefix once per group). An answer can differ from the "
              "plain loop's where float rounding differs (padding; a prefix computed apart from the rest)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
