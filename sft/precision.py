"""Which precision a training run with ``bf16: null`` uses: decided by measurement on CPUs (issue 21).

The CPU feature flags do not predict the speed: on a 2-core Xeon with avx512_bf16 and no AMX the README demo's step
ran 1.4-1.6x slower in bf16 autocast than in float32, while on an EPYC with the same flag bf16 is about 2x faster.
So on a CPU :func:`choose_bf16` times one training step (forward, loss, backward) of a one-layer copy of the model
(its own hidden, MLP and head shapes and attention implementation, 256 tokens) in both precisions, interleaved, and
takes bf16 only when it is clearly faster (:data:`MARGIN`). The result is cached per machine, torch version, thread
count, oneDNN ISA cap and model shapes in ``precision.json`` under ``$LONGQA_CACHE`` or ``~/.cache/longqa``, so
the probe (well under a second) runs once; delete the file to measure again. A CUDA GPU takes bf16 where it supports
it, and a bfloat16 base needs autocast. The choice and its reason are logged at start-up.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longqa.atomic import write_text

MARGIN = 0.9  # bf16 only when its step takes under 90% of float32's: at a tie float32 is the exact one
PROBE_TOKENS = 256
PROBE_REPEATS = 3  # timed rounds after one warm-up; the minimum of each precision counts
PROBE_VOCAB = 4096  # the head's width in the probe: the real head's share of a 30-layer step, roughly


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str

    def describe(self) -> str:
        return f"{'bf16 autocast' if self.bf16 else 'float32'} ({self.reason})"


def choose_bf16(model_config, *, requested: bool | None, model_dtype: str = "float32",
                attn_implementation: str | None = None) -> Precision:
    """The precision of a run: `requested` (the config's ``bf16``) when set, else by hardware and measurement."""
    if requested is not None:
        return Precision(requested, f"bf16: {str(requested).lower()} in the config")
    if model_dtype == "bfloat16":
        return Precision(True, "bf16: null and a bfloat16 base, which needs autocast")
    if has_accelerator():
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Precision(ok, "bf16: null, " + ("the GPU supports bf16" if ok else "the accelerator lacks bf16"))
    key = probe_key(model_config, attn_implementation)
    cache = cache_file()
    entries = read_cache(cache)
    cached = key in entries
    if not cached:
        entries[key] = probe_seconds(model_config, attn_implementation)
        write_cache(cache, entries)
    seconds = entries[key]
    ratio = seconds["bf16"] / seconds["float32"]
    faster = ratio < MARGIN
    where = f"cached in {cache}" if cached else f"measured now, cached in {cache}"
    return Precision(faster, f"bf16: null, measured on this CPU: a bf16 step takes {ratio:.2f}x the float32 one "
                             f"({seconds['bf16'] * 1e3:.0f} vs {seconds['float32'] * 1e3:.0f} ms), {where}")


def has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    return probe.is_available() if probe is not None else torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------------------------
# The probe
# ----------------------------------------------------------------------------------------------------------------------


def probe_model(model_config, attn_implementation: str | None = None) -> torch.nn.Module:
    """A one-layer, small-vocabulary float32 copy of the model `model_config` describes (random weights)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(getattr(model_config, "text_config", None) or model_config)
    config.num_hidden_layers = 1
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:1])
    config.vocab_size = min(config.vocab_size, PROBE_VOCAB)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= config.vocab_size:
            setattr(config, name, None)
    config.tie_word_embeddings = False  # the head computes either way; untied keeps the config valid when cut
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, **kwargs)


def probe_seconds(model_config, attn_implementation: str | None = None, *, tokens: int = PROBE_TOKENS,
                  repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Seconds of one training step of :func:`probe_model` in float32 and in bf16 autocast (the minimum of
    `repeats` interleaved rounds after a warm-up, so a load change on a shared machine hits both alike)."""
    model = probe_model(model_config, attn_implementation)
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator)
    positions = torch.arange(tokens).unsqueeze(0)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    best = {"float32": float("inf"), "bf16": float("inf")}
    for round_ in range(repeats + 1):
        for name in best:
            seconds = step(name == "bf16")
            if round_:
                best[name] = min(best[name], seconds)
    return best


# ----------------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------------


def probe_key(model_config, attn_implementation: str | None) -> str:
    """What the measurement depends on: the CPU, torch, threads, the oneDNN ISA cap and the model's shapes."""
    config = getattr(model_config, "text_config", None) or model_config
    shapes = [getattr(config, name, None) for name in (
        "model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "default"
    parts = [cpu_model(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", f"isa {isa}",
             attn_implementation or "default attention", *map(str, shapes)]
    return " | ".join(parts)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its bf16-related flags (a machine with the same name may differ in them)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    lines = text.splitlines()
    name = next((x.partition(":")[2].strip() for x in lines if x.startswith("model name")), "unknown CPU")
    flags = next((x.partition(":")[2].split() for x in lines if x.startswith(("flags", "Features"))), [])
    units = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return f"{name} [{' '.join(units) or 'no bf16 flags'}]"


def cache_file() -> Path:
    """``$LONGQA_CACHE/precision.json``, else under ``$XDG_CACHE_HOME/longqa`` (``~/.cache/longqa``)."""
    from longqa.paths import cache_dir

    return cache_dir() / "precision.json"


def read_cache(path: Path) -> dict:
    """The cached measurements; an unreadable or foreign file counts as empty (it is only a cache)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def write_cache(path: Path, entries: dict) -> None:
    """Write the cache; a read-only home only costs the next run another probe."""
    try:
        write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
