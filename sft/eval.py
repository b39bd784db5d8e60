"""python -m sft.eval [--models base=REF tuned=REF ...] [--tasks qa,passkey,ppl] [--config FILE.yaml] [--out DIR]

Evaluate any number of named models with dense attention (SDPA, eval mode) on held-out long QA (LongBench scoring),
passkey retrieval and perplexity by context length, and write one report (report.json, report.md, PNG plots;
models as columns; library versions, device and fingerprints of the models and data) plus each model's QA
predictions (predictions-NAME.jsonl). With no --config, runs the embedded default (configs/eval/default.yaml spells
it out: SmolLM2-135M-Instruct vs the default training run's adapter on the default build out/, about 4 minutes for
both models on 2 CPU cores). Flags override the config; every configuration problem is reported at once, before any
model loads (exit code 2).
"""
from __future__ import annotations

import argparse
import gc
import logging
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from longqa.config import ConfigError, config_or_exit, load_recipe, validate_config
from schemas.eval import EvalConfig

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def parse_models(items: list[str]) -> dict[str, str]:
    """``NAME=REF`` items as an ordered mapping; a bare REF is named after its file or folder."""
    models: dict[str, str] = {}
    problems = []
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep:
            ref, name = item, Path(item.rstrip("/")).stem or item
        if not name or not ref:
            problems.append(f"--models: {item!r} is not NAME=PATH")
        elif name in models:
            problems.append(f"--models: the name {name!r} is given twice")
        else:
            models[name] = ref
    if problems:
        raise ConfigError("; ".join(problems))
    return models


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config", *,
            check_paths: bool = True) -> EvalConfig:
    """``base`` with the non-None ``overrides`` (dotted keys reach into sections: ``qa.limit``), validated; every
    problem (fields, cross-field checks, and with ``check_paths`` the models and data) in one :class:`ConfigError`."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        section, dot, field = key.partition(".")
        if dot:
            target = data.setdefault(section, {})
            if isinstance(target, dict):
                target[field] = value
        else:
            data[key] = value
    return validate_config(EvalConfig, data, origin, path_problems if check_paths else None)


def path_problems(data: dict[str, Any]) -> list[str]:
    """Filesystem checks of a (possibly invalid) configuration: the models and the data of the chosen tasks exist."""
    from longqa.paths import resolve_path

    fields = EvalConfig.model_fields
    models = data.get("models", fields["models"].get_default(call_default_factory=True))
    tasks = data.get("tasks", fields["tasks"].get_default(call_default_factory=True))
    tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else tasks
    problems = []
    for name, ref in (models.items() if isinstance(models, dict) else []):
        if not isinstance(ref, str):
            continue
        if ref.startswith("pkg:"):
            try:
                resolve_path(ref)
            except FileNotFoundError as e:
                problems.append(f"models.{name}: {e}")
            continue
        path = Path(ref).expanduser()
        looks_hub = HUB_ID.fullmatch(ref) and not Path(ref.split("/")[0]).exists()
        if not path.exists() and not looks_hub:
            hint = " (train it first: python -m sft.run)" if ref.startswith("runs/") else ""
            problems.append(f"models.{name}: {ref} does not exist{hint}")
        elif path.is_file() and path.suffix != ".gguf":
            problems.append(f"models.{name}: {ref} is a file but not .gguf; give the model's folder")
        elif path.is_dir() and not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
            problems.append(f"models.{name}: {ref} holds neither config.json (a model) nor adapter_config.json")
    for task in ("qa", "ppl"):
        if task not in (tasks or []):
            continue
        section = data.get(task) if isinstance(data.get(task), dict) else {}
        ref = section.get("data", fields[task].get_default(call_default_factory=True).data)
        if not isinstance(ref, str):
            continue
        path = Path(ref)
        if not path.exists():
            hint = f" (build it first: python -m longqa.build --out {ref})" if not path.suffix else ""
            problems.append(f"{task}.data: {ref} does not exist{hint}")
        elif path.is_dir() and not ((path / "text").is_dir() or (path / "dataset_dict.json").is_file()):
            problems.append(f"{task}.data: {ref} holds no built dataset (expected {ref}/text from python -m "
                            "longqa.build)")
        elif task == "qa" and path.is_file() and path.suffix != ".jsonl":
            problems.append(f"qa.data: {ref} must be a built dataset folder or a LongBench .jsonl")
    return problems


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is present, else 'cpu'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but torch sees no CUDA device")
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
    model.set_attn_implementation("sdpa")  # dense attention at inference, whatever the training config said
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
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model of `cfg` on its tasks, one model in memory at a time, and write the report to
    ``cfg.out``. Returns the report dict (as written to report.json)."""
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _evaluate(cfg, command=command, progress=progress, say=say)
    finally:
        torch.set_num_threads(threads)


def _evaluate(cfg: EvalConfig, *, command: str, progress: bool, say: Callable[[str], None]) -> dict[str, Any]:
    from sft.evaluation.provenance import environment, model_fingerprint
    from sft.evaluation.report import write_report
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
    report["data"] = {task: get_task(task).data_provenance(getattr(cfg, task), cache) for task in cfg.tasks
                      if hasattr(get_task(task), "data_provenance")}
    report["seconds"] = round(time.perf_counter() - started, 2)
    paths = write_report(report, out)
    say(f"report: {paths['markdown']} (and {paths['json'].name}, "
        f"{', '.join(p.name for k, p in paths.items() if k not in ('markdown', 'json')) or 'no plots'}) "
        f"in {report['seconds']:.0f} s")
    return report


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------

#: flag -> (config key, type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--tasks": ("tasks", str, "comma-separated tasks: qa,passkey,ppl"),
    "--out": ("out", str, "report folder"),
    "--limit": ("qa.limit", int, "qa: evaluate the first N questions (sorted by id)"),
    "--qa-data": ("qa.data", str, "qa: built dataset folder or LongBench .jsonl"),
    "--batch-size": ("qa.batch_size", int, "qa: prompts per generate call (8-16 on GPUs)"),
    "--ppl-data": ("ppl.data", str, "ppl: text file or built dataset folder"),
    "--ppl-protocol": ("ppl.protocol", str, "ppl: sliding (paper) or strided (HF)"),
    "--dtype": ("dtype", str, "float32 or bfloat16"),
    "--device": ("device", str, "auto, cpu or cuda"),
    "--max-context": ("max_context", int, "cap on each model's window (tokens)"),
    "--threads": ("threads", int, "torch CPU threads"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sft.eval", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/eval/)")
    p.add_argument("--models", nargs="+", metavar="NAME=REF",
                   help="models to compare: NAME=folder | adapter folder | .gguf | pkg:MODULE/path | Hub id")
    for flag, (key, kind, help_text) in FLAGS.items():
        p.add_argument(flag, type=kind, dest=key.replace(".", "__"), metavar=key.split(".")[-1].upper(),
                       help=help_text)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    def make() -> EvalConfig:
        base, origin = (load_recipe(args.config), args.config) if args.config else ({}, "default")
        overrides = {key: getattr(args, key.replace(".", "__")) for key, _, _ in FLAGS.values()}
        overrides["models"] = parse_models(args.models) if args.models else None
        return resolve(base, overrides, origin, check_paths=not args.print_config)

    cfg = config_or_exit(make, args.print_config)
    if isinstance(cfg, int):
        return cfg
    try:
        evaluate(cfg, command=shlex.join(["python", "-m", "sft.eval", *argv]), progress=not args.no_progress)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
