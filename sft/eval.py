"""python -m sft.eval [--models base=REF tuned=REF ...] [--tasks qa,passkey,ppl] [--config FILE.yaml] [--out DIR]

Evaluate any number of named models with dense attention (SDPA, eval mode) on held-out long QA (LongBench scoring),
passkey retrieval and perplexity by context length, and write one report (report.json, report.md, PNG plots;
models as columns; library versions, device and fingerprints of the models and data) plus each model's QA
predictions (predictions-NAME.jsonl). With no --config, runs the embedded default (configs/eval/default.yaml resolves to
it: SmolLM2-135M-Instruct vs the default training run's adapter on the default build out/, about 4 minutes for
both models on 2 CPU cores). Every field of EvalConfig is a flag (`--help` lists them; sections are dotted:
`--qa.limit 200`, `--passkey.lengths 1024,2048`) and overrides the config; every configuration problem is reported at
once, before any model loads (exit code 2).
"""
from __future__ import annotations

import gc
import logging
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from schemas.cli import Command, Options
from schemas.errors import ConfigError, UserError  # noqa: F401 (ConfigError re-exported for callers of resolve)
from schemas.eval import EvalConfig
from schemas.paths import eval_problems
from schemas.resolve import resolve as resolve_config

logger = logging.getLogger(__name__)

#: the evaluator's short spellings (the README's), each the same flag as the generated one
ALIASES = {"--limit": "qa.limit", "--qa-data": "qa.data", "--batch-size": "qa.batch_size", "--ppl-data": "ppl.data",
           "--ppl-protocol": "ppl.protocol"}


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config", *,
            check_paths: bool = True) -> EvalConfig:
    """``base`` with ``overrides`` (dotted keys reach into sections: ``qa.limit``), validated; every problem (fields,
    cross-field checks, and with ``check_paths`` the models and data) in one :class:`ConfigError`."""
    return resolve_config(EvalConfig, base, overrides, origin, eval_problems if check_paths else None)


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is present, else 'cpu'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return device


def load_for_eval(ref: str, *, dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer, kind)`` ready for inference: eval mode, dense SDPA attention, adapters merged in memory.

    An adapter folder (``adapter_config.json``) is loaded onto its base (``base_model_name_or_path``) with the
    trained config (:func:`sft.merge.load_adapter`; a plain peft folder without it gets the base's config)."""
    import torch

    from longqa.paths import local_path
    from sft.model import load_model

    torch_dtype = getattr(torch, dtype)
    local = local_path(ref)
    if local is not None and local.is_dir() and (local / "adapter_config.json").is_file():
        from sft.merge import CONFIG_SUBDIR, load_adapter

        if (local / CONFIG_SUBDIR / "config.json").is_file():
            model, tokenizer = load_adapter(local, dtype=torch_dtype)
        else:
            from peft import PeftConfig, PeftModel
            from transformers import AutoTokenizer

            base, _ = load_model(PeftConfig.from_pretrained(str(local)).base_model_name_or_path, dtype=torch_dtype)
            model, tokenizer = PeftModel.from_pretrained(base, str(local)), AutoTokenizer.from_pretrained(str(local))
        model, kind = model.merge_and_unload(), "adapter, merged in memory"
    else:
        model, tokenizer = load_model(ref, dtype=torch_dtype, attn_implementation="sdpa")
        kind = "gguf, dequantized" if ref.endswith(".gguf") else "model"
    # dense attention at inference, whatever the training config said; SDPA cannot soft-cap (Gemma2): packed_causal
    # computes the eager formula then
    softcap = getattr(model.config.get_text_config(), "attn_logit_softcapping", None)
    if softcap is not None:
        import sft.s2attn  # noqa: F401 (registers packed_causal)
    model.set_attn_implementation("sdpa" if softcap is None else "packed_causal")
    model.to(device).eval()
    return model, tokenizer, kind


def model_window(model, max_context: int | None) -> int:
    """The context the model covers (:func:`sft.model.context_length`), capped by `max_context`."""
    from sft.model import context_length

    window = context_length(model.config)
    return min(window, max_context) if max_context else window


# ----------------------------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------------------------


def evaluate(cfg: EvalConfig, *, command: str = "python -m sft.eval", progress: bool = True,
             say: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Evaluate every model of `cfg` on its tasks, one model in memory at a time, and write the report to
    ``cfg.out`` (a new or empty folder, or an earlier report: :func:`schemas.outdir.claim`, before any model loads).
    Returns the report dict (as written to report.json)."""
    import torch

    from schemas.outdir import claim

    claim(cfg.out, "sft.eval", inputs=[*cfg.models.values()], overwrite=cfg.overwrite)

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _evaluate(cfg, command=command, progress=progress, say=say)
    finally:
        torch.set_num_threads(threads)


def _evaluate(cfg: EvalConfig, *, command: str, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    from sft.evaluation.provenance import environment, model_fingerprint
    from sft.evaluation.report import paired_lines, paired_qa, write_report
    from sft.evaluation.tasks import TaskContext, get_task

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    report: dict[str, Any] = {"command": command, "config": cfg.model_dump(mode="json"),
                              "environment": environment(device, cfg.dtype), "models": {},
                              "results": {task: {} for task in cfg.tasks}}
    cache: dict[str, Any] = {}  # what the tasks read once (questions, documents), shared across models
    started = time.perf_counter()
    for name, ref in cfg.models.items():
        t0 = time.perf_counter()
        model, tokenizer, kind = load_for_eval(ref, dtype=cfg.dtype, device=device)
        window = model_window(model, cfg.max_context)
        report["models"][name] = {"ref": ref, "kind": kind, "window": window, "device": device,
                                  "load_s": round(time.perf_counter() - t0, 2),
                                  "parameters": sum(p.numel() for p in model.parameters()), **model_fingerprint(ref)}
        say(f"{name}: {ref} ({kind}, window {window} tokens) loaded in {report['models'][name]['load_s']} s")
        ctx = TaskContext(model_name=name, window=window, out=out, cache=cache, too_long=cfg.too_long,
                          progress=progress, say=lambda m, n=name: say(f"{n}: {m}"))
        for task in cfg.tasks:
            module = get_task(task)
            result = module.run(model, tokenizer, getattr(cfg, task), ctx)
            report["results"][task][name] = result
            say(f"{name} {task}: {module.summary(result)}")
        del model, tokenizer
        gc.collect()
    report["data"] = {task: found for task in cfg.tasks if hasattr(get_task(task), "data_provenance")
                      and (found := get_task(task).data_provenance(getattr(cfg, task), cache))}
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["paired"] = paired_qa(report["results"], list(report["models"]))
    paths = write_report(report, out)
    for line in paired_lines(report):
        say(line)
    say(f"report: {paths['markdown']} (and {paths['json'].name}, "
        f"{', '.join(p.name for k, p in paths.items() if k not in ('markdown', 'json')) or 'no plots'}) "
        f"in {report['seconds']:.0f} s")
    return report


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------

COMMAND = Command("python -m sft.eval", __doc__, EvalConfig, paths=eval_problems, aliases=ALIASES)


def run_evaluation(cfg: EvalConfig, options: Options) -> None:
    evaluate(cfg, command=shlex.join(["python", "-m", "sft.eval", *options.argv]), progress=options.progress)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, run_evaluation)


if __name__ == "__main__":
    sys.exit(main())
