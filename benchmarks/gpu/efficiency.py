"""python benchmarks/gpu/efficiency.py [--models llama2-7b smollm2-1.7b] [--lengths 8192 16384 32768 65536]
    [--out FILE.md]

LongLoRA's efficiency table (Chen et al. 2023, Table 4 / Fig. 2: 7B at 8k, full attention 17.5 h / 55.5 GB against
S2-Attn 8.2 h / 30.3 GB) measured per training step on one CUDA GPU: seconds per step and peak GPU memory of a LoRA+
step (LoRA r=8 on q/k/v/o, embeddings and norms trained, AdamW; bf16 base and autocast, float32 trainable weights;
gradient checkpointing; one sample of N tokens), S2-Attn against full attention (both PyTorch SDPA), on randomly
initialised models of real shapes — no weights needed, the step time does not depend on them. Every step is the
product's: ``sft.run``'s TrainConfig, model set-up (``sft.train.configure`` / ``with_lora_plus``), collator and
trainer (``sft.trainer.LongLoRATrainer``: its loss, gradient checkpointing, autocast, AdamW), timed by a callback:

- ``llama2-7b``: 32 layers, hidden 4096, 32 heads, MLP 11008, vocabulary 32000 (the paper's model);
- ``smollm2-1.7b``: 24 layers, hidden 2048, 32 heads, MLP 8192, vocabulary 49152.

Loss: ``chunked`` (``sft.loss``: the LM head over 2048 positions at a time, recomputed in backward, so the
N x vocabulary float32 logits never exist at once) and ``plain`` (transformers' loss over the full logits) at the
``--loss-lengths`` (default 16k; ``chunked`` everywhere else). Packing at the ``--packing-lengths`` (default 16k),
S2-Attn: four samples of N/2, N/4, N/8 and N/8 tokens trained one a step (packing off: each its own S2 group of 1/4 of
its length) against the same four packed into one row of N (``sft.packing.pack_samples``: positions restart per
sample, S2 segments restart at every sample start, group N/4, no N x N mask); tokens/s and peak memory of both.

Each configuration: one warm-up step, then the median of ``--repeats`` steps; out-of-memory is reported as OOM. The
configurations run in priority order (7B first, S2 and full attention interleaved per length) and a time guard skips
the rest when ``--budget-s`` (default 280 s of the 5 minutes, from the script's start) would be passed; skipped
ones are listed. Writes a markdown table naming the device to ``--out`` (default
``benchmarks/results/efficiency_<device>.md``), rewritten after every configuration.

Needs the product's packages (pydantic for its TrainConfig): on the GPU image, ``bash benchmarks/gpu/on_device.sh
efficiency`` runs it with the wheels of ``carry.py wheels``. ``--cpu-smoke`` runs the same code on
the CPU with 2-layer versions of both shapes at 256 tokens: ``python benchmarks/gpu/efficiency.py --cpu-smoke
--out /tmp/smoke.md``.
"""
from __future__ import annotations

import time

STARTED = time.monotonic()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step import guarded  # noqa: E402

SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      tie_word_embeddings=False),
    "smollm2-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                         tie_word_embeddings=True),
}
#: the paper's figures for the 7B model (Table 4: full fine-tuning budget on 8 A100s; per-step here, so compare
#: ratios): context -> (full h, full GB, S2 h, S2 GB)
PAPER_7B = {8192: (17.5, 55.5, 8.2, 30.3), 65536: (92.5, 71.1, 52.4, 69.8)}


def parse_args(argv=None) -> argparse.Namespace:
    # argparse, not the package's pydantic-generated flags: pydantic is absent on the GPU image
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    p.add_argument("--loss-lengths", type=int, nargs="+", default=[16384],
                   help="lengths where the plain (full-logits) loss is measured too")
    p.add_argument("--packing-lengths", type=int, nargs="+", default=[16384],
                   help="lengths where packing on/off is measured (S2-Attn; empty: not measured)")
    p.add_argument("--repeats", type=int, default=2, help="measured steps after one warm-up step")
    p.add_argument("--budget-s", type=float, default=280.0, help="wall seconds from the script's start")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cpu-smoke", action="store_true", help="2-layer versions of the shapes on the CPU, 256 tokens")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.lengths, args.loss_lengths, args.packing_lengths, args.repeats = [256], [256], [256], 1
        if "--budget-s" not in (argv if argv is not None else sys.argv[1:]):
            args.budget_s = 3600.0
    return args


def configurations(args) -> list[tuple[str, int, str, str]]:
    """(model, length, attention, loss) in priority order: per model and length, S2 then full; plain loss after; then
    packing off/on ("packing" rows, S2-Attn, chunked loss)."""
    runs = []
    for model in args.models:
        for n in args.lengths:
            for kind in ("s2", "full"):
                runs.append((model, n, kind, "chunked"))
            if n in args.loss_lengths:
                for kind in ("s2", "full"):
                    runs.append((model, n, kind, "plain"))
        runs.extend((model, n, "s2", "packing") for n in args.packing_lengths)
    return runs


def train_config(n: int, kind: str, loss_kind: str, device: str, steps: int, out: str, packing: bool = False):
    """The product's TrainConfig of one measurement: LoRA+ (r=8, embeddings and norms), linear PI to `n`, S2-Attn
    (G = n/4) or full attention, chunked or plain loss, gradient checkpointing, bf16 base and autocast on a GPU
    (float32 on the CPU), batch 1, `steps` optimizer steps, nothing saved."""
    from schemas.train import TrainConfig

    cuda = device == "cuda"
    return TrainConfig(model="(random weights of a real shape)", data="(random tokens)", mode="extend", max_length=n,
                       rope_scaling="linear", s2_attn=kind == "s2", group_size_ratio=0.25, lora_r=8,
                       trainable=["embed", "norm"], chunked_loss=loss_kind == "chunked", gradient_checkpointing=True,
                       bf16=cuda, model_dtype="bfloat16" if cuda else "float32", packing=packing,
                       batching="grouped" if packing else "sorted",  # in order
                       per_device_batch_size=1, gradient_accumulation_steps=1, max_steps=steps,
                       learning_rate=1e-4, warmup_steps=0, save_steps=10**9, logging_steps=10**9, output_dir=out)


def build(name: str, cfg, smoke: bool, device: str):
    """A random model of `name`'s shape, configured and wrapped as ``sft.run`` does (``sft.train.configure``: RoPE
    scaling and S2-Attn settings; ``with_lora_plus``: LoRA+, trainable weights in float32), on `device`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sft.train import DTYPES, attention_implementation, configure, with_lora_plus

    shape = dict(SHAPES[name])
    if smoke:
        shape.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=512, max_position_embeddings=128)
    config = LlamaConfig(**shape)
    configure(cfg, config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[cfg.model_dtype],
                                                 attn_implementation=attention_implementation(cfg))
    return with_lora_plus(cfg, model)


def trainer_steps(name: str, cfg, rows: list[dict], args, device: str) -> tuple[list[float], float | None]:
    """``cfg.max_steps`` steps of the product's trainer (``sft.trainer.LongLoRATrainer`` with
    ``sft.train.training_arguments`` and ``sft.train.collator``: its data collation, loss, gradient checkpointing,
    autocast and AdamW) over `rows`; the seconds of every step and the peak GPU memory after the first (None on CPU)."""
    from types import SimpleNamespace

    from transformers import TrainerCallback

    from sft.train import collator, training_arguments
    from sft.trainer import LongLoRATrainer

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            if device == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.started)
            if len(self.seconds) == 1 and device == "cuda":  # the first step (warm-up) allocates the optimizer
                torch.cuda.reset_peak_memory_stats()

    model = build(name, cfg, args.cpu_smoke, device)
    timer = StepTimes()
    trainer = LongLoRATrainer(
        loss_reduction=cfg.loss_reduction, chunked_loss=cfg.chunked_loss, loss_chunk_size=cfg.loss_chunk_size,
        model=model, args=training_arguments(cfg, progress=False, bf16=cfg.bf16), train_dataset=rows,
        data_collator=collator(cfg, SimpleNamespace(pad_token_id=0, eos_token_id=0)), callbacks=[timer])
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del trainer, model
    return timer.seconds, peak


def measure(name: str, n: int, kind: str, loss_kind: str, args, device: str) -> dict:
    """Median step time (after one warm-up step), peak memory and tokens/s of one configuration."""
    import tempfile

    vocab = 512 if args.cpu_smoke else SHAPES[name]["vocab_size"]
    ids = torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    with tempfile.TemporaryDirectory() as out:
        cfg = train_config(n, kind, loss_kind, device, 1 + args.repeats, out)
        seconds, peak = trainer_steps(name, cfg, [{"input_ids": ids, "length": n}] * (1 + args.repeats), args,
                                      device)
    step_s = statistics.median(seconds[1:])
    return {"step_s": step_s, "peak_gb": peak, "tokens_per_s": n / step_s}


#: packing: four samples of N/2, N/4, N/8 and N/8 tokens, one row of N when packed
PACKED_FRACTIONS = (2, 4, 8, 8)


def measure_packing(name: str, n: int, args, device: str) -> dict:
    """S2-Attn, chunked loss: the same four samples trained one a step (packing off: each its own S2 group of
    max_length/4) and packed into one row of N (``sft.packing.pack_samples``, the product's ``packing: true``
    collator); tokens/s (median over ``--repeats`` rounds after a warm-up round) and the peak memory of each."""
    import tempfile

    from sft.packing import pack_samples

    vocab = 512 if args.cpu_smoke else SHAPES[name]["vocab_size"]
    gen = torch.Generator().manual_seed(n)
    samples = [{"input_ids": torch.randint(3, vocab, (n // k,), generator=gen).tolist()} for k in PACKED_FRACTIONS]
    samples = [dict(s, length=len(s["input_ids"])) for s in samples]
    rounds = 1 + args.repeats
    result = {}
    for label in ("off", "on"):
        with tempfile.TemporaryDirectory() as out:
            if label == "off":  # one sample a step: a round is four steps
                cfg = train_config(n, "s2", "chunked", device, rounds * len(samples), out)
                seconds, peak = trainer_steps(name, cfg, samples * rounds, args, device)
                per_round = [sum(seconds[i:i + len(samples)]) for i in range(0, len(seconds), len(samples))]
            else:
                cfg = train_config(n, "s2", "chunked", device, rounds, out, packing=True)
                per_round, peak = trainer_steps(name, cfg, [pack_samples(samples)] * rounds, args, device)
        result[f"{label}_tokens_per_s"] = n / statistics.median(per_round[1:])
        result[f"{label}_peak_gb"] = peak
    return result


TARGET_N = 32768  # issue 10: at 32k on the 7B shape, S2-Attn >= 1.5x faster per step, and not more memory


def target_verdict(results: dict) -> str:
    """Issue 10's efficiency target from the measured 7B rows at :data:`TARGET_N`: met, not met or not measured."""
    full, s2 = (results.get(("llama2-7b", TARGET_N, kind, "chunked"), {}) for kind in ("full", "s2"))
    if "step_s" not in full or "step_s" not in s2:
        why = full.get("error") or s2.get("error") or "not run (skipped by the time guard, or other lengths)"
        return f"not measured ({why})"
    speed = full["step_s"] / s2["step_s"]
    memory = (f"; peak {s2['peak_gb']:.1f} GB vs {full['peak_gb']:.1f} GB" if s2.get("peak_gb") is not None
              and full.get("peak_gb") is not None else "")
    ok = speed >= 1.5 and (s2.get("peak_gb") is None or full.get("peak_gb") is None or s2["peak_gb"] <= full["peak_gb"])
    return f"{'met' if ok else 'not met'}: S2-Attn {speed:.2f}x faster per step{memory}"


def write(out: Path, results: dict, skipped: list, meta: dict) -> None:
    lines = [f"# LongLoRA efficiency on {meta['device']}: seconds per training step and peak memory", "",
             f"`{meta['command']}`", "",
             f"- torch {meta['torch']}, transformers {meta['transformers']}, peft {meta['peft']}; the product's "
             "training step (sft.trainer.LongLoRATrainer, sft.train's arguments and collator); random weights of "
             "the real shapes; LoRA r=8 on q/k/v/o + embeddings + norms trained (float32, AdamW), bf16 base and "
             "autocast, gradient checkpointing, batch 1; S2-Attn G = N/4; both attentions PyTorch SDPA",
             f"- median of {meta['repeats']} steps after a warm-up; elapsed {meta['elapsed_s']} s"
             f"{' (finished)' if meta.get('finished') else ' (partial)'}", "",
             "| model | N | loss | full s/step | S2 s/step | full / S2 | full peak GB | S2 peak GB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    keys = list(dict.fromkeys((m, n, loss) for (m, n, _, loss) in results if loss != "packing"))
    for m, n, loss in keys:
        full, s2 = results.get((m, n, "full", loss), {}), results.get((m, n, "s2", loss), {})

        def cell(r, key, fmt):
            if "error" in r:
                return r["error"]
            return fmt.format(r[key]) if r.get(key) is not None else "–"

        ratio = (f"{full['step_s'] / s2['step_s']:.2f}x" if "step_s" in full and "step_s" in s2 else "–")
        lines.append(f"| {m} | {n} | {loss} | {cell(full, 'step_s', '{:.2f}')} | {cell(s2, 'step_s', '{:.2f}')} | "
                     f"{ratio} | {cell(full, 'peak_gb', '{:.1f}')} | {cell(s2, 'peak_gb', '{:.1f}')} |")
    packing = {(m, n): r for (m, n, _, loss), r in results.items() if loss == "packing"}
    if packing:
        lines += ["", "Packing (S2-Attn, chunked loss): four samples of N/2, N/4, N/8, N/8 tokens trained one a step "
                  "(off) vs packed into one row of N (on)", "",
                  "| model | N | off tokens/s | on tokens/s | on / off | off peak GB | on peak GB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for (m, n), r in packing.items():
            if "error" in r:
                lines.append(f"| {m} | {n} | {r['error']} | | | | |")
                continue
            gb = [f"{r[k]:.1f}" if r[k] is not None else "–" for k in ("off_peak_gb", "on_peak_gb")]
            lines.append(f"| {m} | {n} | {r['off_tokens_per_s']:.0f} | {r['on_tokens_per_s']:.0f} | "
                         f"{r['on_tokens_per_s'] / r['off_tokens_per_s']:.2f}x | {gb[0]} | {gb[1]} |")
    if skipped:
        lines += ["", "Skipped by the time guard: " + ", ".join(f"{m} {n} {k} {loss}" for m, n, k, loss in skipped)]
    lines += ["", "The paper (7B, whole fine-tuning on 8 A100s, FlashAttention-2): 8k full 17.5 h / 55.5 GB vs S2 "
              "8.2 h / 30.3 GB (2.1x); 65k 92.5 h / 71.1 GB vs 52.4 h / 69.8 GB (1.8x). Target here: at 32k, S2 at "
              "least 1.5x faster per step than full attention with SDPA, and not more memory.", "",
              f"**Target (llama2-7b, {TARGET_N} tokens): {target_verdict(results)}**"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    import peft
    import transformers

    from sft.evaluation.provenance import device_name, script_device

    args = parse_args(argv)
    device = script_device(args.cpu_smoke)
    if device is None:
        return 2
    name = device_name(device)
    out = args.out or ROOT / "benchmarks/results" / f"efficiency_{name.split()[-1].lower()}.md"
    meta = {"device": name, "command": "python benchmarks/gpu/efficiency.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "repeats": args.repeats}
    results: dict = {}
    skipped: list = []
    last_cost: dict = {}
    for config in configurations(args):
        model, n = config[0], config[1]
        # a step costs about as much as the last one of this model at this length, x2 per doubling of N before that
        guess = last_cost.get((model, n)) or (2.5 * last_cost[(model, n // 2)] if (model, n // 2) in last_cost
                                              else 0.0)
        if time.monotonic() - STARTED + guess > args.budget_s:
            skipped.append(config)
            continue
        t0 = time.monotonic()
        if config[3] == "packing":
            results[config] = guarded(lambda: measure_packing(model, n, args, device), device)
        else:
            results[config] = guarded(lambda: measure(*config, args, device), device)
        last_cost[(model, n)] = time.monotonic() - t0
        print(f"[{time.monotonic() - STARTED:6.1f} s] {config}: {results[config]}", flush=True)
        meta["elapsed_s"] = round(time.monotonic() - STARTED, 1)
        write(out, results, skipped, meta)
    meta["finished"], meta["elapsed_s"] = True, round(time.monotonic() - STARTED, 1)
    write(out, results, skipped, meta)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
