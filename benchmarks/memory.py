"""python benchmarks/memory.py --lengths 8192 16384 [--device cpu|cuda] [--no-bf16] [--out FILE.md]

Peak memory of one SmolLM2-135M LoRA+ training step (S2-Attn, gradient checkpointing, AdamW; the recipe's model and
adapter) with the plain loss (the model computes the tokens x vocabulary logits, then cross-entropy) against the
chunked loss (``sft.loss``: the LM head over 2048 positions at a time, recomputed in backward). Every position is
supervised (``extend`` mode, labels = inputs), the worst case for the logits; in ``sft`` mode only the answer tokens
reach the head and the chunked loss's share is smaller still.

One fresh process per (loss, length). CPU: glibc is told (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``) to give every
tensor buffer its own mapping and return it when freed, so the resident set follows the live tensors (the method of
``benchmarks/s2attn.py``); AdamW's states are allocated first (a step on zero gradients), then ``VmHWM`` is reset
and the peak of one training step is read: the "step" column is that peak minus the resident memory before the step,
"process" the whole peak resident set. CUDA: ``torch.cuda.max_memory_allocated`` over that step (above the allocation
before it) and in all. The logits' own size (tokens x vocabulary x 4 bytes, float32, as the loss computes them) is
stated beside it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

KINDS = ("plain", "chunked")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 (default: bf16 autocast)")
    p.add_argument("--model", default=None, help="model reference (default: the recipe's SmolLM2)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers (default: all); "
                   "the logits and the loss do not depend on the depth")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--probe", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe(kind: str, n: int, args) -> dict:
    """In this (fresh) process: the peak memory of one training step (AdamW's states allocated first), MiB."""
    if args.device == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: freed buffers go back to the system
    import torch

    from schemas.train import TrainConfig
    from sft.loss import logits_loss_parts, loss_parts, output_head, reduce_loss
    from sft.model import add_lora_plus, apply_rope_scaling, load_config, load_model
    from sft.train import upcast_trainable

    cfg = TrainConfig(max_length=n, gradient_checkpointing=True, **({"model": args.model} if args.model else {}))
    config = load_config(cfg.model)  # as sft.train.setup_model, with the depth optionally cut
    apply_rope_scaling(config, n)
    config.s2_attn = {"group_size_ratio": cfg.group_size_ratio, "wrap": cfg.wrap}
    if args.layers:
        config.num_hidden_layers = args.layers
    model, _ = load_model(cfg.model, config=config, attn_implementation="s2_attn")
    model = add_lora_plus(model, r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                          trainable=tuple(cfg.trainable))
    upcast_trainable(model)
    model.to(args.device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    vocab = output_head(model).weight.shape[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    ids = torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(0)).to(args.device)
    pos = torch.arange(n, device=args.device).unsqueeze(0)

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            if kind == "plain":
                out = model(input_ids=ids, position_ids=pos, use_cache=False)
                parts = logits_loss_parts(out.logits, labels=ids, position_ids=pos)
            else:
                out = model(input_ids=ids, position_ids=pos, output_hidden_states=True, use_cache=False,
                            logits_to_keep=torch.empty(0, dtype=torch.long, device=args.device))
                parts = loss_parts(out.hidden_states[-1], output_head(model), labels=ids, position_ids=pos)
            loss = reduce_loss(parts, "token")
        del out, parts
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for param in optimizer.param_groups[0]["params"]:  # AdamW's states exist before the measured step
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated()
        return {"step_mib": (peak - before) / 2**20, "process_mib": peak / 2**20, "seconds": seconds, "vocab": vocab}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"step_mib": (peak - before) / 1024, "process_mib": peak / 1024, "seconds": seconds, "vocab": vocab}


def run_probe(kind: str, n: int, args) -> dict | None:
    cmd = [sys.executable, __file__, "--probe", kind, str(n), "--device", args.device]
    if not args.bf16:
        cmd.append("--no-bf16")
    if args.model:
        cmd += ["--model", args.model]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"probe {kind} {n} failed: {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict], args) -> str:
    from sft.evaluation.provenance import command_line, device_name

    unit = "peak resident memory (VmHWM)" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    lines = ["# Peak memory of one SmolLM2 LoRA+ training step: plain vs chunked loss", "",
             f"Machine: {device_name(args.device)}. Command: `{command_line()}`. "
             f"SmolLM2-135M-Instruct{f' cut to its first {args.layers} of 30 layers' if args.layers else ''}, "
             "LoRA r=8 on q/k/v/o + embeddings and "
             f"norms, S2-Attn, gradient checkpointing, {'bf16 autocast' if args.bf16 else 'float32'}, AdamW, batch 1, "
             f"every position supervised (extend mode); {unit}, MiB, of one step after AdamW's states exist (one fresh "
             "process each). "
             "'step' = peak minus the memory before the step; 'process' = the whole peak. Logits = tokens x vocabulary "
             "x 4 bytes (float32).", "",
             "| tokens | logits (float32) | plain step | chunked step | chunked / plain | plain process | "
             "chunked process | plain s | chunked s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        p, c = row["plain"], row["chunked"]
        if not (p and c):
            lines.append(f"| {row['n']} | | probe failed | | | | | | |")
            continue
        logits = row["n"] * p["vocab"] * 4 / 2**20
        lines.append(f"| {row['n']} | {logits:,.0f} | {p['step_mib']:,.0f} | {c['step_mib']:,.0f} | "
                     f"{c['step_mib'] / p['step_mib']:.2f} | {p['process_mib']:,.0f} | {c['process_mib']:,.0f} | "
                     f"{p['seconds']:.1f} | {c['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe[0], int(args.probe[1]), args)), flush=True)
        return 0
    rows = []
    for n in args.lengths:
        row = {"n": n}
        for kind in KINDS:
            row[kind] = run_probe(kind, n, args)
            print(n, kind, row[kind], flush=True)
        rows.append(row)
    text = report(rows, args)
    from sft.evaluation.provenance import emit_result

    emit_result(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
