"""python benchmarks/demo_step.py [--repeats 2] [--out benchmarks/results/demo_step_cpu.md]

Where the README demo's fine-tuning time goes (`python -m sft.run` with its defaults: SmolLM2-135M LoRA+, S2-Attn,
one sample of up to 4096 tokens a step, eval loss on 4 held-out samples before and after): one training step
(forward, chunked loss, backward, AdamW) and one held-out evaluation forward, in bfloat16 autocast and in float32,
with and without gradient checkpointing, on this CPU as it is and with oneDNN limited to AVX512_CORE
(``ONEDNN_MAX_CPU_ISA=AVX512_CORE``: no avx512_bf16/AMX units, as on the slower 2-core Xeon machines). Each ISA runs in
its own process (oneDNN reads the variable once); within a process the variants are interleaved, so load changes on a
shared machine hit them alike. Needs the default build in ``out/`` (``python -m longqa.build``).

Time: median over ``--repeats`` after one warm-up of each variant.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ISAS = {"native": None, "no bf16 units": "AVX512_CORE"}
VARIANTS = (("bf16", False), ("float32", False), ("float32", True))  # (dtype, gradient checkpointing)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out", help="the default build (python -m longqa.build)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokens", type=int, default=None, help="cut the train and eval samples to their first N tokens "
                   "(default: whole; the demo's are up to 4096)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args) -> dict:
    """In this process (one ISA): seconds per train step and per eval forward, by variant."""
    import torch

    from schemas.train import TrainConfig
    from sft.loss import loss_parts, output_head
    from sft.train import load_data, load_eval_data, setup_model

    cfg = TrainConfig(data=args.data)
    dataset, _ = load_data(cfg)
    sample = dataset[max(range(len(dataset)), key=lambda i: dataset[i]["length"])]  # the longest that fits
    held_out = load_eval_data(cfg)[0]
    model, _, _ = setup_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def tensors(s):
        cut = slice(0, args.tokens)
        ids, labels = torch.tensor([s["input_ids"][cut]]), torch.tensor([s["labels"][cut]])
        if args.tokens:  # the answer is at the end: supervise the last 16 kept tokens instead
            labels[:, :-16] = -100
            labels[:, -16:] = ids[:, -16:]
        return ids, labels, torch.arange(ids.shape[1]).unsqueeze(0)

    def train_step(dtype: str, checkpointing: bool) -> None:
        ids, labels, pos = tensors(sample)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = model(input_ids=ids, position_ids=pos, output_hidden_states=True,
                        logits_to_keep=torch.empty(0, dtype=torch.long), use_cache=False)
            parts = loss_parts(out.hidden_states[-1], output_head(model), labels=labels, position_ids=pos)
            loss = parts.sums.sum() / parts.tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_forward(dtype: str, _checkpointing: bool) -> None:
        ids, labels, pos = tensors(held_out)
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = model(input_ids=ids, position_ids=pos, output_hidden_states=True,
                        logits_to_keep=torch.empty(0, dtype=torch.long), use_cache=False)
            loss_parts(out.hidden_states[-1], output_head(model), labels=labels, position_ids=pos)

    jobs = [(kind, v) for v in VARIANTS for kind in ("train", "eval") if not (kind == "eval" and v[1])]
    times: dict[str, list[float]] = {f"{kind} {d}{' +ckpt' if c else ''}": [] for kind, (d, c) in jobs}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for kind, (dtype, ckpt) in jobs:
            start = time.perf_counter()
            (train_step if kind == "train" else eval_forward)(dtype, ckpt)
            if repeat:
                times[f"{kind} {dtype}{' +ckpt' if ckpt else ''}"].append(time.perf_counter() - start)
    return {"threads": torch.get_num_threads(), "train_tokens": tensors(sample)[0].shape[1],
            "eval_tokens": tensors(held_out)[0].shape[1], "median_s": {k: statistics.median(v) for k, v in times.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    from sft.evaluation.provenance import command_line, device_name

    results = {}
    for label, isa in ISAS.items():
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = [sys.executable, __file__, "--child", label, "--data", args.data, "--repeats", str(args.repeats)]
        if args.tokens:
            cmd += ["--tokens", str(args.tokens)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        results[label] = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print(label, results[label], flush=True)
    first = next(iter(results.values()))
    lines = ["# The README demo's step on CPU: dtype, gradient checkpointing, ISA", "",
             f"Machine: {device_name('cpu')}, {first['threads']} torch threads. Command: "
             f"`{command_line()}`. "
             f"Train step: {first['train_tokens']} tokens (of the longest default-build sample within max_length 4096), "
             f"SmolLM2-135M LoRA+, S2-Attn, chunked loss, AdamW; eval: one held-out sample of {first['eval_tokens']} "
             "tokens, dense attention, no gradient. Median seconds.", "",
             "| variant | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for key in first["median_s"]:
        lines.append(f"| {key} | " + " | ".join(f"{r['median_s'][key]:.2f}" for r in results.values()) + " |")
    report = "\n".join(lines) + "\n"
    from sft.evaluation.provenance import emit_result

    emit_result(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
