"""python benchmarks/context_parallel.py --length 16384 32768 --sizes 1 2 4 [--out benchmarks/results/context_parallel_cpu.md]

S2-Attn context parallelism (``sft.context_parallel``, issue 14) on CPU with gloo: one sample of N tokens trained by P
processes, each holding N/P tokens, on a small Llama built from a config (random weights). For every (N, P):

- peak memory per rank: the process's peak resident set (``ru_maxrss``) and its growth over the resident set just
  before the first step (what the step itself needs: activations, gradients, optimizer state; the model and the
  libraries are in the baseline and do not shrink with P);
- bytes sent per layer per rank, counted at the exchange (the tensors handed to ``isend``: the halo in the forward,
  its gradient in the backward), next to what ring attention would send for the same N: every rank passes on
  (P - 1)/P of the sequence's keys and values per layer in the forward alone (computed, same dtype and KV heads);
- step time: forward + chunked loss (``sft.loss``) + backward + AdamW step, median of ``--repeats`` after a warm-up;
  the P processes share the machine's cores (``--threads`` torch threads in all), so on a 2-core CPU the time does not
  fall with P: the point of P here is memory a rank, and the bytes on the wire.

The loss is the one ``sft.run`` uses with context parallelism: per-rank sums of the chunked cross-entropy over the
pre-shifted labels of the slice, divided by the supervised tokens of the whole sample (all-reduced).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, nargs="+", default=[16384, 32768], help="tokens of the one sample a step")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4], help="context-parallel sizes P")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=704)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--group-size-ratio", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads shared by the P processes of a run")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    return p.parse_args(argv)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build(args, n: int):
    """The LoRA+ model in train mode with S2-Attn (G = ratio x N), float32, and its AdamW optimizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import sft.s2attn  # noqa: F401  (registers "s2_attn")
    from sft.model import add_lora_plus

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=n, tie_word_embeddings=True,
                         use_cache=False)
    config.s2_attn = {"group_size_ratio": args.group_size_ratio}
    torch.manual_seed(0)
    model = add_lora_plus(AutoModelForCausalLM.from_config(config, attn_implementation="s2_attn")).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def step(model, optimizer, local: dict, world_group: bool) -> float:
    """Forward, chunked loss (sum over the slice / supervised tokens of the sample), backward, AdamW step."""
    import torch
    import torch.distributed as dist

    from sft.loss import loss_parts
    from sft.trainer import output_head

    out = model(input_ids=local["input_ids"], position_ids=local["position_ids"], use_cache=False,
                logits_to_keep=torch.empty(0, dtype=torch.long), output_hidden_states=True)
    parts = loss_parts(out.hidden_states[-1], output_head(model), shift_labels=local["shift_labels"],
                       position_ids=local["position_ids"])
    count = parts.tokens.clone()
    if world_group:
        dist.all_reduce(count)
    loss = parts.sums.sum() / count
    loss.backward()
    if world_group:  # the gradient of the sample: sum over the slices (DDP would average a loss scaled by P)
        for param in model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def worker(rank: int, size: int, n: int, args, init_file: str, out_file: str) -> None:
    import torch
    import torch.distributed as dist

    from sft import context_parallel as cp_mod

    torch.set_num_threads(max(1, args.threads // size))
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size,
                                timeout=timedelta(minutes=30))
    model, optimizer = build(args, n)
    cp = cp_mod.ContextParallel.for_rank(rank, size) if size > 1 else None
    if cp is not None:
        cp_mod.attach(model, cp)
    ids = torch.randint(3, args.vocab, (1, n), generator=torch.Generator().manual_seed(n))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(n)[None]}
    local = cp_mod.slice_batch(batch, rank, size)
    baseline = rss_bytes()
    times = []
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        if cp is not None:
            cp.stats.reset()
        if size > 1:
            dist.barrier()
        start = time.perf_counter()
        step(model, optimizer, local, size > 1)
        if size > 1:
            dist.barrier()
        times.append(time.perf_counter() - start)
    stats = cp.stats if cp is not None else cp_mod.ExchangeStats()
    result = {"rank": rank, "size": size, "n": n, "baseline": baseline,
              "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "times": times[1:],
              "bytes_forward": stats.bytes_forward, "bytes_backward": stats.bytes_backward}
    with open(out_file, "a") as out:
        out.write(json.dumps(result) + "\n")
    if size > 1:
        dist.destroy_process_group()


def run(size: int, n: int, args) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "results.jsonl")
        mp.start_processes(worker, args=(size, n, args, str(Path(tmp) / "init"), out_file), nprocs=size,
                           join=True, start_method="spawn")
        return sorted((json.loads(line) for line in Path(out_file).read_text().splitlines()),
                      key=lambda r: r["rank"])


def ring_bytes(n: int, size: int, args) -> float:
    """Forward bytes a rank sends per layer under ring attention: (P - 1)/P of all keys and values (float32)."""
    head_dim = args.hidden // args.heads
    return (size - 1) / size * n * 2 * args.kv_heads * head_dim * 4


def report(rows: list[dict], args, command: str) -> str:
    import torch
    import transformers

    from sft.evaluation.provenance import device_name

    gib = 1024 ** 3
    lines = [
        "# S2-Attn context parallelism on CPU (gloo)",
        "",
        f"`{command}`",
        "",
        f"- CPU: {device_name('cpu')}; {args.threads} torch threads shared by the P processes of a run; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- model: Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads ({args.kv_heads} KV, head dim "
        f"{args.hidden // args.heads}), MLP {args.intermediate}, vocabulary {args.vocab}; LoRA r=8 on q/k/v/o + "
        "trainable embeddings and norms; float32; one sample a step, no activation checkpointing",
        f"- S2-Attn G = {args.group_size_ratio} x N; step = forward + chunked loss + backward + AdamW step, median of "
        f"{args.repeats} after a warm-up",
        "- memory: peak resident set of the rank (max over the ranks), and its growth over the resident set before the "
        "first step (the step's own memory); ratio = that growth against P = 1",
        "- bytes: per layer and rank, measured at the exchange (tensor bytes handed to isend): the forward halo, and "
        "forward halo + backward gradient of the rank that sends most (a middle rank sends both); ring attention's "
        "forward alone: (P-1)/P of the keys and values (computed, float32, same KV heads)",
        "",
        "| N | P | peak RSS / rank (GiB) | step memory / rank (GiB) | vs P=1 | halo sent fwd / layer / rank (KiB) "
        "| fwd + bwd, busiest rank (KiB) | ring attention fwd / layer / rank (KiB) | halo / ring (fwd) | step (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    single = {r["n"]: r for r in rows if r["size"] == 1}
    for r in rows:
        base = single.get(r["n"])
        versus = f"{r['step_mem'] / base['step_mem']:.2f}x" if base else "-"
        sent = r["bytes"] / args.layers
        ring = ring_bytes(r["n"], r["size"], args)
        ratio = f"1/{ring / (r['bytes_forward'] / args.layers):.0f}" if r["bytes_forward"] else "-"
        lines.append(f"| {r['n']} | {r['size']} | {r['peak'] / gib:.2f} | {r['step_mem'] / gib:.2f} | {versus} | "
                     f"{r['bytes_forward'] / args.layers / 1024:.0f} | {sent / 1024:.0f} | {ring / 1024:.0f} | {ratio} | "
                     f"{r['time']:.2f} |")
    return "\n".join(lines) + "\n"


def summarise(results: list[dict]) -> dict:
    """One row of a run: the worst rank's memory, the busiest rank's bytes (a middle rank sends both ways)."""
    return {"n": results[0]["n"], "size": results[0]["size"], "peak": max(r["peak"] for r in results),
            "step_mem": max(r["peak"] - r["baseline"] for r in results),
            "bytes": max(r["bytes_forward"] + r["bytes_backward"] for r in results),
            "bytes_forward": max(r["bytes_forward"] for r in results),
            "time": statistics.median(max(r["times"][i] for r in results) for i in range(len(results[0]["times"])))}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for n in args.length:
        for size in args.sizes:
            rows.append(summarise(run(size, n, args)))
            r = rows[-1]
            print(f"N={n} P={size}: peak {r['peak'] / 2**30:.2f} GiB, step memory {r['step_mem'] / 2**30:.2f} GiB, "
                  f"sent {r['bytes']} B, step {r['time']:.2f} s", flush=True)
    from sft.evaluation.provenance import command_line

    text = report(rows, args, command_line(argv))
    from sft.evaluation.provenance import emit_result

    emit_result(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
