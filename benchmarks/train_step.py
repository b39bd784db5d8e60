"""python benchmarks/train_step.py --length 8192 --layers 2 --hidden 256 --heads 8 --repeats 3 [--out FILE.md]

End-to-end LongLoRA training step, S2-Attn against full causal attention (PyTorch SDPA), on a small Llama built from a
config (random weights: the time of a step does not depend on their values). A step is what the Trainer does per
optimizer step: forward, loss, backward, AdamW step, zero_grad, with LoRA on the attention projections and trainable
embeddings and norms (``sft.model.add_lora_plus``, the recipe's defaults). Both models are built from the same seed
in the same process, and their steps are interleaved, so load changes on a shared machine hit both alike.

S2-Attn uses G = group_size_ratio x N (default N/4): its attention FLOPs are 4x fewer (LongLoRA Sec. 3.2); the rest of
the step (projections, MLP, LM head, optimizer) is the same, so the end-to-end gain is smaller than the attention
gain and grows with N. Time: median (and min) over ``--repeats`` after one warm-up step each.

The helpers (:func:`build_model`, :func:`train_step`) are shared with ``benchmarks/gpu/train_steps.py``; they need only
torch, transformers and peft (``sft.model``/``sft.s2attn`` import nothing else of the package but ``longqa.paths``).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402

from sft.evaluation.provenance import command_line, device_name, emit_result  # noqa: E402

KINDS = ("full", "s2")  # full: attn_implementation "sdpa"; s2: "s2_attn" (sft/s2attn.py) over the same SDPA


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, nargs="+", default=[8192], help="tokens per sample (one sample a step)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 8/3 x hidden, rounded)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--group-size-ratio", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the CPU recipe's default); else float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    args.kv_heads = args.kv_heads or args.heads
    args.intermediate = args.intermediate or 64 * round(8 * args.hidden / 3 / 64)
    if args.heads % args.kv_heads or args.hidden % args.heads:
        p.error("--heads must divide --hidden and be a multiple of --kv-heads")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Shared with benchmarks/gpu/train_steps.py
# ----------------------------------------------------------------------------------------------------------------------


def build_model(config, kind: str, *, group_size_ratio: float = 0.25, s2_backend: str = "auto",
                full_impl: str = "sdpa", dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                ref: str | None = None):
    """A LoRA+ model (``sft.model.add_lora_plus`` defaults) in train mode, and its AdamW optimizer.

    ``kind`` "full" uses ``full_impl`` (``sdpa`` or ``flash_attention_2``), "s2" the ``s2_attn`` function with
    ``group_size_ratio`` and ``s2_backend``. ``ref``: load the weights with ``sft.model.load_model`` (a folder, a
    ``.gguf`` file or ``pkg:MODULE/path``) with ``config`` replacing its own; else random weights from ``config``.
    Trainable weights are float32 (as ``sft.train.upcast_trainable``), the frozen base in ``dtype``.
    """
    import copy

    import sft.s2attn  # noqa: F401  (registers "s2_attn")
    from sft.model import add_lora_plus, load_model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    attn = "s2_attn" if kind == "s2" else full_impl
    if kind == "s2":
        config.s2_attn = {"group_size_ratio": group_size_ratio, "backend": s2_backend}
    torch.manual_seed(seed)
    if ref:
        model, _ = load_model(ref, dtype=dtype, attn_implementation=attn, config=config)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model = add_lora_plus(model).to(device)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, input_ids: torch.Tensor, *, autocast_dtype: torch.dtype | None = None,
               chunked_loss: bool = False) -> float:
    """One optimizer step on ``input_ids`` (B, N) with labels = inputs; returns the loss. ``chunked_loss``: the
    training recipe's loss (``sft.loss``: no tokens x vocabulary logits); else the model's own (all logits)."""
    device_type = input_ids.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        if chunked_loss:
            from sft.loss import causal_lm_loss

            loss = causal_lm_loss(model, input_ids, input_ids)
        else:
            loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


# ----------------------------------------------------------------------------------------------------------------------
# CPU benchmark
# ----------------------------------------------------------------------------------------------------------------------


def guarded(measurement, device: str) -> dict:
    """``measurement()``, with running out of memory reported as ``{"error": "OOM"}``; the memory the measurement held
    is freed afterwards (its model and optimizer are its locals: gone once it returns or its error is handled)."""
    import gc

    try:
        result = measurement()
    except torch.OutOfMemoryError:
        result = {"error": "OOM"}
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def llama_config(args, n: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=n, tie_word_embeddings=True)


def bench_length(n: int, args) -> dict:
    config = llama_config(args, n)
    models = {kind: build_model(config, kind, group_size_ratio=args.group_size_ratio) for kind in KINDS}
    ids = torch.randint(3, args.vocab, (1, n), generator=torch.Generator().manual_seed(n))
    autocast = torch.bfloat16 if args.bf16 else None
    times = {kind: [] for kind in KINDS}
    for _ in range(args.repeats + 1):  # interleaved; the first round is a warm-up
        for kind, (model, optimizer) in models.items():
            start = time.perf_counter()
            train_step(model, optimizer, ids, autocast_dtype=autocast)
            times[kind].append(time.perf_counter() - start)
    row = {"n": n}
    for kind in KINDS:
        row[kind] = statistics.median(times[kind][1:])
        row[kind + "_min"] = min(times[kind][1:])
    return row


def report(rows: list[dict], args) -> str:
    cpu = device_name("cpu")
    lines = [
        "# Training step: S2-Attn vs full attention (CPU)",
        "",
        f"`{command_line()}`",
        "",
        f"- CPU: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}",
        f"- model: Llama, {args.layers} layers, hidden {args.hidden}, {args.heads} heads ({args.kv_heads} KV), MLP "
        f"{args.intermediate}, vocabulary {args.vocab}; LoRA r=8 on q/k/v/o + trainable embeddings and norms; "
        f"{'bf16 autocast' if args.bf16 else 'float32'}; batch 1",
        f"- step = forward + loss + backward + AdamW step; S2 group G = {args.group_size_ratio} x N; median (min) of "
        f"{args.repeats} after a warm-up, the two kinds interleaved in one process",
        "",
        "| N (tokens) | full SDPA step (s) | S2-Attn step (s) | full / S2 | S2 tokens/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['full']:.2f} ({r['full_min']:.2f}) | {r['s2']:.2f} ({r['s2_min']:.2f}) | "
                     f"{r['full'] / r['s2']:.2f}x | {r['n'] / r['s2']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for n in args.length:
        rows.append(bench_length(n, args))
        r = rows[-1]
        print(f"N={n}: full {r['full']:.2f} s, S2 {r['s2']:.2f} s a step -> full/S2 = {r['full'] / r['s2']:.2f}x",
              flush=True)
    text = report(rows, args)
    emit_result(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
