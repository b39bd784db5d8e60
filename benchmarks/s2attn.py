"""python benchmarks/s2attn.py --lengths 4096 8192 16384 --repeats 3 --dtype float32 [--out benchmarks/results/s2attn_cpu.md]

CPU benchmark of S2-Attn (sft/s2attn.py) against full causal attention: one attention call, forward + backward,
same backend (PyTorch SDPA through transformers' ``sdpa_attention_forward``), same inputs, same process, runs
interleaved. S2 uses G = group_size_ratio * N (default N/4), so its attention FLOPs are 4x fewer (LongLoRA Sec. 3.2).

Time: median (and min) wall time over ``--repeats`` after one warm-up. Peak memory: the largest amount of memory
torch allocated on top of what was live before the call (inputs), from the allocation and free events of
``torch.profiler.profile(profile_memory=True)``, replayed in order. tracemalloc does not see torch's allocations, and
RSS deltas are blurred by the C allocator keeping freed blocks for reuse.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from sft.s2attn import S2AttnSettings, s2_attention_forward  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--group-size-ratio", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    problems = [f"--{name} must be >= 1" for name in ("repeats", "batch", "heads", "head_dim")
                if getattr(args, name) < 1]
    if args.heads % args.kv_heads:
        problems.append("--heads must be a multiple of --kv-heads")
    if problems:
        parser.error("; ".join(problems))
    return args


def attention_module(heads: int, kv_heads: int, group_size_ratio: float) -> torch.nn.Module:
    """A stand-in for a decoder attention layer in train mode: what the attention functions read."""
    module = torch.nn.Module()
    module.config = SimpleNamespace(s2_attn={"group_size_ratio": group_size_ratio})
    module.is_causal = True
    module.num_key_value_groups = heads // kv_heads
    return module.train()


def step(attention, module, q, k, v, grad) -> None:
    """One forward + backward of an attention function; q (B, H, N, D), k/v (B, Hkv, N, D), grad (B, N, H, D)."""
    out, _ = attention(module, q, k, v, None)
    out.backward(grad)


def peak_memory_mib(fn) -> float:
    """Peak of torch's CPU allocations during ``fn()`` above those live before it, in MiB."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.name == "[memory]"), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def bench_length(n: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(args.batch, args.heads, n, args.head_dim, generator=gen, dtype=dtype).requires_grad_()
    k, v = (torch.randn(args.batch, args.kv_heads, n, args.head_dim, generator=gen, dtype=dtype).requires_grad_()
            for _ in range(2))
    grad = torch.randn(args.batch, n, args.heads, args.head_dim, generator=gen, dtype=dtype)
    module = attention_module(args.heads, args.kv_heads, args.group_size_ratio)
    kinds = {"full": sdpa_attention_forward, "s2": s2_attention_forward}
    times = {kind: [] for kind in kinds}
    def clear_grads():
        for x in (q, k, v):
            x.grad = None

    for kind, attention in kinds.items():  # warm-up
        step(attention, module, q, k, v, grad)
        clear_grads()
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        for kind, attention in kinds.items():
            clear_grads()
            start = time.perf_counter()
            step(attention, module, q, k, v, grad)
            times[kind].append(time.perf_counter() - start)
    memory = {}
    for kind, attention in kinds.items():
        clear_grads()
        memory[kind] = peak_memory_mib(lambda a=attention: step(a, module, q, k, v, grad))
    return {
        "n": n,
        "group_size": S2AttnSettings.from_dict({"group_size_ratio": args.group_size_ratio}).group_size_for(n),
        **{f"{kind}_median": statistics.median(t) for kind, t in times.items()},
        **{f"{kind}_min": min(t) for kind, t in times.items()},
        **{f"{kind}_mem": mem for kind, mem in memory.items()},
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(rows: list[dict], args) -> str:
    lines = [
        "# S2-Attn vs full causal attention, CPU",
        "",
        "Command: `python benchmarks/s2attn.py " + " ".join(args.argv) + "`",
        "",
        f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        f"Shapes: B={args.batch}, H={args.heads}, H_kv={args.kv_heads}, D={args.head_dim}, {args.dtype}; "
        f"G = {args.group_size_ratio} * N; forward + backward of one attention call; "
        f"{args.repeats} interleaved repeats after a warm-up; peak memory = torch CPU allocations above the inputs "
        "(torch.profiler memory events); speed-up = full median / S2 median.",
        "",
        "| N | G | full causal s (median / min) | S2 s (median / min) | speed-up (median) | full peak MiB "
        "| S2 peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['group_size']} | {r['full_median']:.3f} / {r['full_min']:.3f} "
            f"| {r['s2_median']:.3f} / {r['s2_min']:.3f} | {r['full_median'] / r['s2_median']:.2f}x "
            f"| {r['full_mem']:.0f} | {r['s2_mem']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    rows = []
    for n in args.lengths:
        rows.append(bench_length(n, args))
        r = rows[-1]
        print(f"N={n}: full {r['full_median']:.3f}s, s2 {r['s2_median']:.3f}s, "
              f"speed-up {r['full_median'] / r['s2_median']:.2f}x", file=sys.stderr)
    text = report(rows, args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
