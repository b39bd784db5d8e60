"""python -m sft.publish RUN_OR_MODEL_DIR --repo-id ORG/NAME [--adapter | --merged] [--dry-run DIR] [--endpoint URL]

Stage a fine-tuned model as its Hub repo shows it and upload it in one commit: the adapter folder (LoRA + embeddings +
norms, the RoPE-scaled config, tokenizer) or the merged model, with a model card naming the base model, the dataset,
the training configuration (context length, RoPE scaling, S2-Attn, LoRA) and the evaluation report if there is one.
The staged folder is loaded back before anything is uploaded: `PeftModel.from_pretrained` for an adapter,
`AutoModelForCausalLM.from_pretrained` for a merged model. With --dry-run DIR it stops after staging and verifying.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from importlib import resources
from pathlib import Path

import jinja2
import yaml

from longqa.hub import PublishError, publish
from schemas.cli import Command, Options
from schemas.paths import model_publish_problems
from schemas.publish import ModelPublishConfig

log = logging.getLogger(__name__)

ADAPTER_DIR, MERGED_DIR, TRAIN_CONFIG, EVAL_REPORT = "adapter", "merged", "train_config.yaml", "eval/report.md"


def find_parts(source: Path) -> dict[str, Path | None]:
    """The adapter / merged model / training config / eval report of a run folder, or of one model folder."""
    if (source / "adapter_config.json").is_file():
        run = source.parent
        return {"adapter": source, "merged": None, "config": _existing(run / TRAIN_CONFIG),
                "eval": _existing(run / EVAL_REPORT)}
    if (source / "config.json").is_file():
        return {"adapter": None, "merged": source, "config": _existing(source / TRAIN_CONFIG),
                "eval": _existing(source / "report.md")}
    parts = {"adapter": _existing(source / ADAPTER_DIR / "adapter_config.json"),
             "merged": _existing(source / MERGED_DIR / "config.json"),
             "config": _existing(source / TRAIN_CONFIG), "eval": _existing(source / EVAL_REPORT)}
    parts["adapter"] = parts["adapter"] and parts["adapter"].parent
    parts["merged"] = parts["merged"] and parts["merged"].parent
    if not parts["adapter"] and not parts["merged"]:
        raise PublishError(f"{source}: neither a run folder (adapter/ or merged/), an adapter folder "
                           "(adapter_config.json) nor a model folder (config.json)")
    return parts


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def base_context_length(config: dict) -> int | None:
    """The context the base model had before position interpolation (from a saved config.json)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    positions = config.get("max_position_embeddings")
    if positions and rope.get("rope_type") == "linear":  # linear interpolation stretched the positions by `factor`
        return int(round(positions / rope.get("factor", 1.0)))
    return positions


def model_card(kind: str, repo_id: str, train: dict, rope: dict | None, base_ref: str, base_id: str | None,
               base_context: int | None, eval_report: str | None) -> str:
    meta = {"library_name": "peft" if kind == "adapter" else "transformers", "pipeline_tag": "text-generation",
            "tags": ["longlora", "long-context", "s2-attn", "lora"]}
    if base_id:
        meta["base_model"] = base_id
    data = train.get("data")
    dataset = f"`{data}`" if isinstance(data, str) else ", ".join(f"`{d}`" for d in data or [])
    manifest = Path(data) / "manifest.json" if isinstance(data, str) else None
    if manifest and manifest.is_file():
        m = json.loads(manifest.read_text())
        dataset = f"{m['name']} (`{data}`, {m['counts']['by_split'].get(train.get('split', 'train'), 0)} samples)"
    lora = {"r": train.get("lora_r"), "alpha": train.get("lora_alpha"), "dropout": train.get("lora_dropout"),
            "target_modules": train.get("lora_target_modules") or ["the family's attention projections"]}
    template = resources.files("data_cards").joinpath("model_card.md.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    return env.from_string(template).render(
        header=yaml.safe_dump(meta, sort_keys=False), kind=kind, repo_id=repo_id, train=train, rope=rope,
        lora=lora, base_ref=base_ref, base_id=base_id, base_context=base_context, dataset=dataset,
        eval_report=eval_report)


def stage(source: Path, out: Path, repo_id: str, kind: str | None, base_id: str | None) -> tuple[str, str]:
    """Write the repo tree into `out`; returns the kind staged ("adapter" or "merged") and the trained base."""
    parts = find_parts(source)
    kind = kind or ("merged" if parts["merged"] else "adapter")
    if kind == "adapter" and not parts["adapter"]:
        raise PublishError(f"{source}: no adapter folder to publish (it has a merged model: use --merged)")
    if kind == "merged" and parts["merged"]:  # `out`: a new or empty folder (the dry run's rule: issue 24)
        shutil.copytree(parts["merged"], out, dirs_exist_ok=True)
    elif kind == "merged":
        from sft.merge import merge_adapter

        merge_adapter(parts["adapter"], out)
    else:
        shutil.copytree(parts["adapter"], out, dirs_exist_ok=True)
    train = yaml.safe_load(parts["config"].read_text()) if parts["config"] else {}
    if not train.get("lora_target_modules") and parts["adapter"]:  # the family's default: what peft wrapped
        wrapped = json.loads((parts["adapter"] / "adapter_config.json").read_text()).get("target_modules")
        if wrapped:
            train = {**train, "lora_target_modules": sorted(wrapped) if not isinstance(wrapped, str) else [wrapped]}
    if parts["config"]:
        shutil.copy2(parts["config"], out / TRAIN_CONFIG)
    base_ref = train.get("model") or "unknown"
    if kind == "adapter":
        adapter_config = json.loads((out / "adapter_config.json").read_text())
        base_ref = adapter_config.get("base_model_name_or_path") or base_ref
        if base_id:  # the Hub id users load the base from, instead of this machine's path
            adapter_config["base_model_name_or_path"] = base_id
            (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    config_file = out / ("model_config/config.json" if kind == "adapter" else "config.json")
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    base_context = base_context_length(config)
    if base_id is None and "/" in base_ref and not Path(base_ref).exists() and not base_ref.startswith("pkg:"):
        base_id = base_ref
    eval_report = parts["eval"].read_text() if parts["eval"] else None
    (out / "README.md").write_text(model_card(kind, repo_id, train, rope, base_ref, base_id, base_context,
                                              eval_report), encoding="utf-8")
    return kind, base_ref


def verify(staged: Path, kind: str, base: str | None) -> None:
    """Load the staged folder with the standard loaders."""
    if kind == "adapter":
        from sft.merge import load_adapter

        load_adapter(staged, base=base)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(str(staged))
        AutoTokenizer.from_pretrained(str(staged))


def publish_model(cfg: ModelPublishConfig, options: Options) -> None:
    def prepare(staged: Path) -> str:
        kind, trained_base = stage(Path(cfg.source), staged, cfg.repo_id, cfg.kind, cfg.base_model_id)
        verify(staged, kind, cfg.base or trained_base)
        log.info("staged and verified the %s in %s/", kind, staged)
        return f"Upload {kind} with longqa"

    publish(cfg, "model", prepare)


COMMAND = Command("python -m sft.publish", __doc__, ModelPublishConfig, paths=model_publish_problems,
                  positional=("source",), consts={"--adapter": ("kind", "adapter"), "--merged": ("kind", "merged")})


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, publish_model)


if __name__ == "__main__":
    sys.exit(main())
