"""python -m sft.run [--config configs/train/RECIPE.yaml] [--max-steps N --output-dir DIR ...] [--print-config]

LongLoRA fine-tuning: S2-Attn while training, LoRA + embeddings + norms, RoPE position interpolation to --max-length.
With no --config, runs the embedded default (configs/train/smollm2_squad.yaml: SmolLM2-135M-Instruct on the default
built dataset out/, a few minutes on CPU cores). Flags override the recipe; every configuration problem is reported at
once, before any model loads (exit code 2). Under torchrun/accelerate launch it trains data-parallel.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


from longqa.config import ConfigError, config_or_exit, load_recipe, merged, validate_config
from longqa.config import resolve as resolve_build
from schemas.train import TrainConfig


# flag -> (type, help); the destination is the TrainConfig field of the same name.
FLAGS: dict[str, tuple[Any, str]] = {
    "model": (str, "base model: folder, Hub id, .gguf file or pkg:MODULE/path"),
    "mode": (str, "sft (built LongQA dataset) or extend (continued pre-training on plain text)"),
    "data": (str, "sft: built dataset folder; extend: text file or folder (repeat for several)"),
    "split": (str, "sft: split to train on"),
    "max_length": (int, "training context in tokens (RoPE is interpolated to it)"),
    "too_long": (str, "samples longer than max_length: drop (counted) or error"),
    "rope_scaling": (str, "linear, dynamic or yarn"),
    "group_size_ratio": (float, "S2-Attn group size / sequence length"),
    "wrap": (str, "S2-Attn shifted heads: none or roll"),
    "lora_r": (int, "LoRA rank"),
    "lora_alpha": (int, "LoRA alpha"),
    "lora_dropout": (float, "LoRA dropout"),
    "lora_target_modules": (str, "comma-separated module names that get LoRA"),
    "trainable": (str, "comma-separated extra trainable groups: embed,norm"),
    "learning_rate": (float, "peak learning rate"),
    "weight_decay": (float, "AdamW weight decay"),
    "lr_scheduler": (str, "constant_with_warmup, linear or cosine"),
    "warmup_steps": (int, "warm-up steps"),
    "max_steps": (int, "optimizer steps"),
    "per_device_batch_size": (int, "samples per device and micro-step"),
    "gradient_accumulation_steps": (int, "micro-steps per optimizer step"),
    "max_grad_norm": (float, "gradient clipping (0: off)"),
    "model_dtype": (str, "float32 or bfloat16 (frozen base weights)"),
    "seed": (int, "random seed"),
    "dataloader_num_workers": (int, "data loading workers"),
    "deepspeed": (str, "DeepSpeed JSON config (configs/deepspeed/zero2.json, zero3.json)"),
    "eval_split": (str, "held-out split whose loss is measured before and after training"),
    "eval_samples": (int, "held-out samples evaluated (0: none)"),
    "output_dir": (str, "checkpoints, metrics.jsonl and adapter/"),
    "logging_steps": (int, "steps between metric lines"),
    "save_steps": (int, "steps between checkpoints"),
    "save_total_limit": (int, "checkpoints kept"),
}
#: on/off settings: --s2-attn / --no-s2-attn etc.
SWITCHES = ("s2_attn", "gradient_checkpointing", "bf16", "group_by_length", "resume")


def default_recipe() -> dict[str, Any]:
    """The embedded default: the defaults of TrainConfig (configs/train/smollm2_squad.yaml spells them out)."""
    return {}


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config", *,
            check_paths: bool = True) -> TrainConfig:
    """``base`` updated with the non-None ``overrides``, validated; every problem (fields, cross-field checks, and with
    ``check_paths`` the data/output folders) in one :class:`ConfigError`."""
    return validate_config(TrainConfig, merged(base, overrides), origin, path_problems if check_paths else None)


def path_problems(data: dict[str, Any]) -> list[str]:
    """Filesystem checks of a (possibly invalid) configuration: the data exist, and resume finds a checkpoint."""
    fields = TrainConfig.model_fields

    def value(name):
        return data.get(name, fields[name].default)

    problems = []
    mode, refs = value("mode"), value("data")
    refs = [refs] if isinstance(refs, str) else refs if isinstance(refs, list) else []
    for ref in (r for r in refs if isinstance(r, str)):
        path = Path(ref)
        if mode == "sft" and path.suffix in (".yaml", ".yml") and path.is_file():  # a build recipe, built on the fly
            try:
                resolve_build(load_recipe(path), {}, ref)
            except ConfigError as e:
                problems.append(f"data: {e}")
            continue
        if not path.exists():
            build = "python -m longqa.build" + ("" if ref == "out" else f" --out {ref}")  # the default writes out/
            hint = f" (build it first: {build})" if mode == "sft" else ""
            problems.append(f"data: {ref} does not exist{hint}")
        elif mode == "sft" and not ((path / "tokenized").is_dir() or (path / "dataset_dict.json").is_file()
                                    or (path / "dataset_info.json").is_file()):
            problems.append(f"data: {ref} holds no tokenized dataset (expected {ref}/tokenized from "
                            f"python -m longqa.build --out {ref}, or a save_to_disk folder)")
    deepspeed = value("deepspeed")
    if isinstance(deepspeed, str) and not Path(deepspeed).is_file():
        problems.append(f"deepspeed: {deepspeed} is not a file (shipped: configs/deepspeed/zero2.json, zero3.json)")
    output_dir = value("output_dir")
    if isinstance(output_dir, str):
        checkpoints = sorted(Path(output_dir).glob("checkpoint-*")) if Path(output_dir).is_dir() else []
        if value("resume") is True and not checkpoints:
            problems.append(f"resume: no checkpoint-* folder in {output_dir} to continue from")
        if value("resume") is False and checkpoints:
            problems.append(f"output_dir: {output_dir} already holds {checkpoints[-1].name}; pass --resume to "
                            "continue from it or choose another --output-dir")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sft.run", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (see configs/train/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    for name, (kind, help_text) in FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if name == "data":
            p.add_argument(flag, action="append", help=help_text)
        else:
            p.add_argument(flag, type=kind, help=help_text)
    for name in SWITCHES:
        p.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                       help=TrainConfig.model_fields[name].description)
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that were given, as configuration fields."""
    over = {name: getattr(args, name) for name in (*FLAGS, *SWITCHES)}
    if args.data is not None:
        over["data"] = args.data[0] if len(args.data) == 1 else args.data
    if args.lora_target_modules is not None:
        over["lora_target_modules"] = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
    return over


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    def make() -> TrainConfig:
        base, origin = (load_recipe(args.config), args.config) if args.config else (default_recipe(), "default")
        return resolve(base, overrides_from(args), origin, check_paths=not args.print_config)

    cfg = config_or_exit(make, args.print_config)
    if isinstance(cfg, int):
        return cfg
    from sft.data import DataError
    from sft.train import NonFiniteLoss, run

    try:
        run(cfg)
    except (DataError, NonFiniteLoss, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
