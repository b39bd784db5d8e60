"""python -m sft.merge ADAPTER_DIR --out DIR [--base REF] [--dtype float32|bfloat16|float16]

Fold a LoRA+ adapter folder (written by :func:`save_adapter`) into its base model and write a plain transformers model
(safetensors, the RoPE-scaled config, tokenizer and chat template) that ``AutoModelForCausalLM.from_pretrained(DIR)``
loads without extra flags.

Adapter folder layout::

    adapter_config.json, adapter_model.safetensors   peft: LoRA factors, norms (modules_to_save) and the input
                                                     embedding as trainable tokens over the whole vocabulary (a head
                                                     tied to it is that tensor, saved once);
                                                     base_model_name_or_path = the model reference it was trained on
    tokenizer files, chat_template.jinja             the training tokenizer
    model_config/config.json                         the trained model's config: RoPE scaling, max_position_embeddings
                                                     (and the S2-Attn settings, unused at inference and not merged)
    model_config/generation_config.json

The config lives in a subfolder because a ``config.json`` next to ``adapter_config.json`` makes transformers take the
folder for a full model with an embedded adapter. Load the trained model with :func:`load_adapter`, or by hand::

    config = AutoConfig.from_pretrained(ADAPTER, subfolder="model_config")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, config=config), ADAPTER)
"""
from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from schemas.cli import Command, Options
from schemas.merge import AdapterMergeConfig
from schemas.paths import adapter_merge_problems
from sft.model import (AdapterSetupError, adapter_extras, context_length, embeddings_tied, load_model,
                       verify_lora_plus)

logger = logging.getLogger(__name__)

CONFIG_SUBDIR = "model_config"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _write_atomically(out_dir: str | Path, write: Callable[[Path], None], command: str | None = None) -> Path:
    """Run `write(tmp)` on a temporary sibling folder, then put it in the place of `out_dir` (the old one is removed
    only once the new one is in place: :func:`longqa.atomic.atomic_output`; with `command`, its marker)."""
    from longqa.atomic import atomic_output

    out = Path(out_dir)
    with atomic_output(out, command) as tmp:
        write(tmp)
    return out


def save_adapter(model, tokenizer, out_dir: str | Path) -> Path:
    """Save a peft LoRA+ model as one adapter folder (layout in the module docstring) and return its path.

    The adapter weights hold the LoRA factors and the full trained embeddings and norms; the model config (with its
    RoPE scaling) goes to ``model_config/`` so that :func:`load_adapter` and :func:`merge_adapter` rebuild the base
    exactly as it was trained.
    """
    base = model.get_base_model()

    def write(tmp: Path) -> None:
        # save_embedding_layers=False: the trained embedding is in the adapter already; "auto" would look the base up
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        tokenizer.save_pretrained(str(tmp))
        published_config(base.config, keep_s2_attn=True).save_pretrained(str(tmp / CONFIG_SUBDIR))
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(str(tmp / CONFIG_SUBDIR))

    out = _write_atomically(out_dir, write)
    logger.info("adapter saved to %s (base %s, context %d)", out, model.peft_config[model.active_adapter]
                .base_model_name_or_path, context_length(base.config))
    return out


def load_adapter(adapter_dir: str | Path, *, base: str | None = None, dtype: torch.dtype = torch.float32,
                 is_trainable: bool = False):
    """Rebuild the trained model: the base (`base`, else the adapter's ``base_model_name_or_path``) with the saved
    config, then the adapter. Returns ``(peft_model, tokenizer)``."""
    from peft import PeftConfig, PeftModel

    adapter_dir = Path(adapter_dir)
    ref = base or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not ref:
        raise AdapterSetupError(f"{adapter_dir}: adapter_config.json names no base model; give one with --base")
    config_dir = adapter_dir / CONFIG_SUBDIR
    if not (config_dir / "config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no {CONFIG_SUBDIR}/config.json (not saved by sft.merge.save_adapter)")
    config = AutoConfig.from_pretrained(str(config_dir))
    model, _ = load_model(ref, dtype=dtype, config=config)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    check_adapter_loaded(peft_model, adapter_dir)
    if is_trainable:
        lora = peft_model.peft_config[peft_model.active_adapter]
        verify_lora_plus(peft_model, target_modules=sorted(lora.target_modules), extras=adapter_extras(lora))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    return peft_model, tokenizer


def check_adapter_loaded(peft_model, adapter_dir: str | Path) -> None:
    """Raise :class:`AdapterSetupError` unless every saved adapter tensor is in the model, with its saved value, and
    the model has no adapter tensor that the folder lacks (peft only warns about missing or unexpected keys)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    loaded = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    missing, unexpected = sorted(saved.keys() - loaded.keys()), sorted(loaded.keys() - saved.keys())
    changed = sorted(k for k in saved.keys() & loaded.keys()
                     if not torch.equal(saved[k].to(loaded[k].dtype), loaded[k].detach().cpu()))
    if missing or unexpected or changed:
        raise AdapterSetupError(f"{adapter_dir}: adapter does not match the model: not loaded {missing[:5]}, "
                                f"absent from the folder {unexpected[:5]}, different values {changed[:5]}")


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None,
                  dtype: torch.dtype = torch.float32, command: str | None = None, overwrite: bool = False) -> Path:
    """Merge the adapter in `adapter_dir` into its base and save a plain model + tokenizer to `out_dir`.

    The merge runs in float32 (``W + B @ A * alpha / r``); the merged weights are then cast to `dtype`. With
    `command`, `out_dir` follows that command's output-folder rule (:mod:`schemas.outdir`), checked before loading."""
    if Path(out_dir).resolve() == Path(adapter_dir).resolve():
        raise ValueError(f"{out_dir}: the merged model must not replace its adapter folder")
    if command is not None:
        from schemas.outdir import guard

        guard(out_dir, command, inputs=[adapter_dir, base], overwrite=overwrite)
    peft_model, tokenizer = load_adapter(adapter_dir, base=base, dtype=torch.float32)
    tied = embeddings_tied(peft_model)
    merged = peft_model.merge_and_unload().to(dtype)
    if tied and not embeddings_tied(merged):
        raise RuntimeError("merging untied the input and output embeddings")
    merged.eval()
    merged.config = published_config(merged.config)

    def write(tmp: Path) -> None:
        merged.save_pretrained(str(tmp))  # safetensors, config (RoPE scaling), generation config
        tokenizer.save_pretrained(str(tmp))  # tokenizer + chat template

    out = _write_atomically(out_dir, write, command)
    logger.info("merged model written to %s (context %d, RoPE %s)", out, context_length(merged.config),
                merged.config.rope_parameters)
    return out


def published_config(config, *, keep_s2_attn: bool = False):
    """A copy of `config` for inference: the KV cache on again (training turns it off for gradient checkpointing) and,
    unless `keep_s2_attn` (the adapter folder keeps them as a record), the S2-Attn options dropped. RoPE scaling and
    everything else are kept."""
    from sft.s2attn import CONFIG_ATTR

    config = copy.deepcopy(config)
    if not keep_s2_attn and hasattr(config, CONFIG_ATTR):
        delattr(config, CONFIG_ATTR)
    config.use_cache = True
    return config


def merge_command(cfg: AdapterMergeConfig, options: Options) -> None:
    merge_adapter(cfg.adapter_dir, cfg.out, base=cfg.base, dtype=DTYPES[cfg.dtype], command="sft.merge",
                  overwrite=cfg.overwrite)


COMMAND = Command("python -m sft.merge", __doc__, AdapterMergeConfig, paths=adapter_merge_problems,
                  positional=("adapter_dir",))


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv, merge_command)


if __name__ == "__main__":
    sys.exit(main())
