"""python benchmarks/s2attn.py --lengths 4096 8192 16384 --repeats 3 --dtype float32 [--out FILE.md]

CPU benchmark of S2-Attn (sft/s2attn.py) against full causal attention: one attention call, forward + backward,
same backend (PyTorch SDPA through transformers' ``sdpa_attention_forward``), same inputs, same process, runs
interleaved. S2 uses G = group_size_ratio * N (default N/4), so its attention FLOPs are 4x fewer (LongLoRA Sec. 3.2).

Time: median (and min) wall time over ``--repeats`` after one warm-up. Peak memory: measured in a fresh subprocess
per (kind, N) in which glibc is told (``mallopt(M_MMAP_THRESHOLD, 64 KiB)``) to give every tensor buffer its own
mapping and return it when freed, so the resident set follows the live tensors; the peak is ``VmHWM`` (reset by
writing 5 to /proc/self/clear_refs just before the call) minus ``VmRSS`` before it: outputs, saved activations,
gradients and temporaries of one forward + backward. (tracemalloc does not see torch's allocations, and plain RSS
deltas are blurred by the C allocator keeping freed blocks.) Linux/glibc only; elsewhere the column reads n/a.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from sft.evaluation.provenance import command_line, device_name  # noqa: E402
from sft.s2attn import S2AttnSettings, s2_attention_forward  # noqa: E402

ATTENTION = {"full": sdpa_attention_forward, "s2": s2_attention_forward}


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--memory-probe", choices=sorted(ATTENTION), help=argparse.SUPPRESS)
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


def step(attention, module, leaves, grad) -> None:
    """One forward + backward of an attention function. ``leaves`` are q (B, N, H, D), k/v (B, N, Hkv, D), token-major
    as a decoder layer's projections produce them; the attention gets the (B, H, N, D) transposed views, as there."""
    q, k, v = (x.transpose(1, 2) for x in leaves)
    out, _ = attention(module, q, k, v, None)
    out.backward(grad)


def clear_grads(leaves) -> None:
    for x in leaves:
        x.grad = None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(kind: str, args) -> float:
    """In a fresh process: peak resident memory of one forward + backward above the resident memory before, MiB."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so freed buffers are unmapped
    module, leaves, grad = make_inputs(args.lengths[0], args)
    step(ATTENTION[kind], module, leaves, grad)  # warm-up: one-time allocations
    clear_grads(leaves)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    before = _status_kib("VmRSS")
    step(ATTENTION[kind], module, leaves, grad)
    return (_status_kib("VmHWM") - before) / 1024


def peak_memory_mib(kind: str, n: int, args) -> float | None:
    """Runs :func:`memory_probe` in a subprocess; None where it cannot (not Linux/glibc)."""
    cmd = [sys.executable, __file__, "--memory-probe", kind, "--lengths", str(n), "--dtype", args.dtype,
           "--batch", str(args.batch), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
           "--head-dim", str(args.head_dim), "--group-size-ratio", str(args.group_size_ratio)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"memory probe failed ({kind}, N={n}): {result.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(result.stdout.strip().splitlines()[-1])


def make_inputs(n: int, args):
    """The attention module stand-in, the token-major q (B, N, H, D), k/v (B, N, Hkv, D) leaves, and the upstream
    gradient (B, N, H, D)."""
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(n)
    leaves = [torch.randn(args.batch, n, heads, args.head_dim, generator=gen, dtype=dtype).requires_grad_()
              for heads in (args.heads, args.kv_heads, args.kv_heads)]
    grad = torch.randn(args.batch, n, args.heads, args.head_dim, generator=gen, dtype=dtype)
    return attention_module(args.heads, args.kv_heads, args.group_size_ratio), leaves, grad


def bench_length(n: int, args) -> dict:
    module, leaves, grad = make_inputs(n, args)
    times = {kind: [] for kind in ATTENTION}
    for _ in range(args.repeats + 1):  # interleaved, so that load changes hit both alike; the first is a warm-up
        for kind, attention in ATTENTION.items():
            clear_grads(leaves)
            start = time.perf_counter()
            step(attention, module, leaves, grad)
            times[kind].append(time.perf_counter() - start)
    del module, leaves, grad
    return {
        "n": n,
        "group_size": S2AttnSettings.from_dict({"group_size_ratio": args.group_size_ratio}).group_size_for(n),
        **{f"{kind}_median": statistics.median(t[1:]) for kind, t in times.items()},
        **{f"{kind}_min": min(t[1:]) for kind, t in times.items()},
        **{f"{kind}_mem": peak_memory_mib(kind, n, args) for kind in ATTENTION},
    }


def report(rows: list[dict], args) -> str:
    """The markdown report: how it was run, on what, and the table."""
    lines = [
        "# S2-Attn vs full causal attention, CPU",
        "",
        f"Command: `{command_line(args.argv)}`",
        "",
        f"- CPU: {device_name('cpu')}; torch threads: {torch.get_num_threads()}; load average (1 min) at start / end: "
        f"{args.load[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- B={args.batch}, H={args.heads}, H_kv={args.kv_heads}, D={args.head_dim}, {args.dtype}, "
        f"G = {args.group_size_ratio} * N; q/k/v token-major as a decoder layer makes them",
        f"- forward + backward of one attention call, both through SDPA; {args.repeats} interleaved repeats after a "
        "warm-up; speed-up = full / S2 (median / median and min / min)",
        "- peak memory: resident memory of one forward + backward above the inputs (VmHWM, fresh process, every "
        "tensor buffer its own mapping)",
        "",
        "| N | G | full causal s (median / min) | S2 s (median / min) | speed-up (median / min) | full peak MiB "
        "| S2 peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['group_size']} | {r['full_median']:.3f} / {r['full_min']:.3f} "
            f"| {r['s2_median']:.3f} / {r['s2_min']:.3f} "
            f"| {r['full_median'] / r['s2_median']:.2f}x / {r['full_min'] / r['s2_min']:.2f}x "
            f"| {_mib(r['full_mem'])} | {_mib(r['s2_mem'])} |")
    return "\n".join(lines) + "\n"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(memory_probe(args.memory_probe, args))
        return
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.load = os.getloadavg()
    rows = []
    for n in args.lengths:
        rows.append(bench_length(n, args))
        r = rows[-1]
        print(f"N={n}: full {r['full_median']:.3f}s, s2 {r['s2_median']:.3f}s, "
              f"speed-up {r['full_median'] / r['s2_median']:.2f}x", file=sys.stderr)
    text = report(rows, args)
    print(text)
    if args.out is not None:
        from longqa.atomic import write_text

        write_text(args.out, text)


if __name__ == "__main__":
    main()
