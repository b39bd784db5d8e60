"""Model loading, RoPE position interpolation and LoRA+ adapters (LongLoRA, Chen et al. 2023, arXiv 2309.12307).

Typical use (docs/design.md, "LoRA+ and RoPE")::

    config = load_config(ref)
    apply_rope_scaling(config, target_length=16384)          # before the model is built: RoPE caches read the config
    model, tokenizer = load_model(ref, config=config, attn_implementation="s2_attn")
    model = add_lora_plus(model)                              # LoRA on attention + trainable embeddings and norms

A model reference (`ref`) is a local folder of safetensors, a Hub id, a ``.gguf`` file (dequantized on load), or
``pkg:MODULE/relative/path`` (see :func:`longqa.paths.resolve_path`).
"""
from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from longqa.paths import ModelSource, hub_errors, resolve_source  # noqa: F401 (ModelSource re-exported)
from longqa.paths import load_tokenizer  # noqa: F401 (re-exported: GGUF tokenizers cached)
from schemas.errors import ModelError

logger = logging.getLogger(__name__)

ROPE_KINDS = ("linear", "dynamic", "yarn")
# attention implementations of this package: the module that registers each is imported only when it is asked for
ATTENTION_MODULES = {"s2_attn": "sft.s2attn", "packed_causal": "sft.s2attn"}


class AdapterSetupError(ModelError):
    """The wrapped model's trainable parameters are not exactly LoRA plus the requested extras."""


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_config(ref: str) -> PretrainedConfig:
    """The transformers config of `ref` (for GGUF, the one transformers derives from the file's metadata)."""
    source = resolve_source(ref)
    with hub_errors(ref):
        return AutoConfig.from_pretrained(source.location, **source.kwargs())


def load_model(ref: str, *, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
               config: PretrainedConfig | None = None) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer from `ref`.

    `config` replaces the checkpoint's config (e.g. one passed through :func:`apply_rope_scaling`); it must be given
    here rather than edited afterwards because the rotary embedding computes its frequencies when it is built.
    GGUF weights are dequantized to `dtype` and the quantizer is detached so that ``save_pretrained`` writes a plain
    model. ``model.name_or_path`` is set to the source's `name`, which peft records as the adapter's base.
    """
    source = resolve_source(ref)
    kwargs = {"dtype": dtype, **source.kwargs()}
    if attn_implementation is not None:
        if attn_implementation in ATTENTION_MODULES:
            importlib.import_module(ATTENTION_MODULES[attn_implementation])
        kwargs["attn_implementation"] = attn_implementation
    if config is not None:
        kwargs["config"] = config
    with hub_errors(ref):
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if source.gguf_file and quantizer is not None:  # weights are dequantized already; only the bookkeeping is left
        quantizer.remove_quantization_config(model)
    model.name_or_path = source.name
    return model, load_tokenizer(ref)


# ----------------------------------------------------------------------------------------------------------------------
# RoPE: position interpolation (LongLoRA Sec. 3; Chen et al. 2023, "Extending context window ... via PI")
# ----------------------------------------------------------------------------------------------------------------------


#: RoPE of the layers that attend the whole context, for configs with ``rope_parameters`` per layer type (Gemma3: its
#: long-context checkpoints scale only these, e.g. gemma-3-4b's ``rope_scaling`` {"rope_type": "linear", "factor": 8}
#: lands in ``rope_parameters["full_attention"]``; the sliding-window layers keep their local RoPE)
GLOBAL_LAYER_TYPE = "full_attention"
#: model types whose config accepts only "default" and "longrope" RoPE (Phi3Config.validate_rope); linear position
#: interpolation is written as longrope with the one factor on every frequency (attention_factor 1), which is it exactly
LONGROPE_ONLY = ("phi3",)


def _flat_rope_parameters(config: PretrainedConfig) -> dict:
    """The ``rope_parameters`` that position interpolation scales: the global dict, or with one dict per layer type
    the ``full_attention`` one (see ``GLOBAL_LAYER_TYPE``)."""
    config.standardize_rope_params()  # old `rope_scaling` / `rope_theta` fields -> `rope_parameters`
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope and all(isinstance(v, dict) for v in rope.values()) and isinstance(rope.get(GLOBAL_LAYER_TYPE), dict):
        return dict(rope[GLOBAL_LAYER_TYPE])
    if not rope or any(isinstance(v, dict) for v in rope.values()):
        raise ModelError(f"{config.model_type}: RoPE scaling needs one global `rope_parameters` dict or one for "
                         f"{GLOBAL_LAYER_TYPE!r} layers, got {rope!r}; set rope_scaling: none and scale the config "
                         "yourself")
    return rope


def _set_rope_parameters(config: PretrainedConfig, new: dict) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    if all(isinstance(v, dict) for v in rope.values()) and isinstance(rope.get(GLOBAL_LAYER_TYPE), dict):
        config.rope_parameters = {**rope, GLOBAL_LAYER_TYPE: new}
    else:
        config.rope_parameters = new


def _as_longrope(config: PretrainedConfig, rope: dict, factor: float, original: int) -> dict:
    """Linear PI by ``factor`` in the longrope form: ``inv_freq / factor`` on every rotary frequency, short and long
    alike, no attention scaling."""
    rotary = int(config.hidden_size // config.num_attention_heads * rope.get("partial_rotary_factor", 1.0))
    return {**rope, "rope_type": "longrope", "factor": factor, "short_factor": [factor] * (rotary // 2),
            "long_factor": [factor] * (rotary // 2), "original_max_position_embeddings": original,
            "attention_factor": 1.0}


def validate_config(config: PretrainedConfig) -> None:
    """Raise :class:`ModelError` unless `config` passes its class's own checks and survives a to_dict/from_dict round
    trip: what saving the adapter does at the end of training."""
    try:
        config.validate()
        type(config).from_dict(config.to_dict())
    except (ValueError, TypeError) as e:  # StrictDataclassClassValidationError is a ValueError
        raise ModelError(f"{config.model_type}: the scaled config is not valid for {type(config).__name__}: "
                         f"{str(e).strip().splitlines()[-1].strip()}") from None


def context_length(config: PretrainedConfig) -> int:
    """The context the model's RoPE is set up for.

    That is ``max_position_embeddings``, which :func:`apply_rope_scaling` sets to the target for linear and YaRN
    scaling (YaRN keeps the pretraining length in ``original_max_position_embeddings``), except for dynamic NTK:
    transformers starts its dynamic rescaling *beyond* ``max_position_embeddings``, so that field stays at the
    unscaled length and the context is ``max_position_embeddings * factor``.
    """
    rope = _flat_rope_parameters(config)
    if rope.get("rope_type") == "dynamic":
        return int(round(config.max_position_embeddings * float(rope.get("factor") or 1.0)))
    return int(config.max_position_embeddings)


def apply_rope_scaling(config: PretrainedConfig, target_length: int, kind: str = "linear") -> dict:
    """Scale `config`'s RoPE so that the model covers `target_length` tokens; return the new ``rope_parameters``.

    Position interpolation: with factor ``f = target / context_length(config)`` position ``p`` is rotated as ``p / f``
    (linear), so the longer context falls into the trained range of angles. A factor the model already has (same
    `kind`) is multiplied: ``f_new = f_old * target / context``. ``"dynamic"`` (dynamic NTK) and ``"yarn"`` write the
    corresponding transformers ``rope_parameters`` instead. Nothing changes when the target fits the current context.
    Edits `config` in place (``rope_parameters``, ``max_position_embeddings``). Configs with RoPE per layer type
    (Gemma3) get their ``full_attention`` layers scaled, as Gemma3's own long-context checkpoints are; Phi3 gets
    linear scaling in its longrope form (``LONGROPE_ONLY``). The scaled config is validated as saving will check it.
    """
    if kind not in ROPE_KINDS:
        raise ValueError(f"RoPE scaling kind {kind!r}: expected one of {', '.join(ROPE_KINDS)}")
    if target_length < 1:
        raise ValueError(f"target_length must be positive, got {target_length}")
    rope = _flat_rope_parameters(config)
    current = context_length(config)
    if target_length <= current:
        return rope
    old_kind = rope.get("rope_type", "default")
    if old_kind not in ("default", kind):
        raise ModelError(f"the model already uses {old_kind!r} RoPE scaling; extending it with {kind!r} is not defined")
    longrope = config.model_type in LONGROPE_ONLY
    if longrope and kind != "linear":
        raise ModelError(f"{config.model_type}: its config accepts only 'default' and 'longrope' RoPE, so {kind!r} "
                         "scaling cannot be saved; use rope_scaling: linear (written as longrope with one factor)")
    old_factor = float(rope.get("factor") or 1.0) if old_kind == kind else 1.0
    new = {**rope, "rope_type": kind, "factor": old_factor * target_length / current}
    if kind == "yarn":  # YaRN's frequency ramp is defined against the pretraining length
        new.setdefault("original_max_position_embeddings", current)
    if longrope:
        new = _as_longrope(config, rope, new["factor"], current)
    before = (config.rope_parameters, config.max_position_embeddings)
    _set_rope_parameters(config, new)
    if kind != "dynamic":
        config.max_position_embeddings = target_length
    try:
        validate_config(config)  # now, not when the adapter is saved after training
    except ModelError:
        config.rope_parameters, config.max_position_embeddings = before
        raise
    logger.info("RoPE %s scaling: context %d -> %d (factor %.4g)", kind, current, target_length, new["factor"])
    return dict(new)


# ----------------------------------------------------------------------------------------------------------------------
# LoRA+ (LongLoRA Sec. 3.3): LoRA on attention, embeddings and normalization layers trained fully
# ----------------------------------------------------------------------------------------------------------------------


def _is_norm(module: nn.Module) -> bool:
    # Generic over architectures: LayerNorm, RMSNorm and every model-specific *Norm class (LlamaRMSNorm, ...).
    own_params = any(True for _ in module.parameters(recurse=False))
    return own_params and (isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower())


EXTRA_SELECTORS: dict[str, Callable[[PreTrainedModel, nn.Module], bool]] = {
    "embed": lambda model, module: module is model.get_input_embeddings(),
    "norm": lambda model, module: _is_norm(module),
    "head": lambda model, module: module is model.get_output_embeddings(),
}


def extra_trainable_modules(model: PreTrainedModel, trainable: Sequence[str] = ("embed", "norm")) -> list[str]:
    """Full names of the modules trained fully next to LoRA, chosen by category (keys of ``EXTRA_SELECTORS``)."""
    unknown = sorted(set(trainable) - EXTRA_SELECTORS.keys())
    if unknown:
        raise ValueError(f"unknown trainable categories {unknown}; expected some of {sorted(EXTRA_SELECTORS)}")
    names = [name for name, module in model.named_modules()
             if name and any(EXTRA_SELECTORS[c](model, module) for c in trainable)]
    for category in trainable:
        if not any(EXTRA_SELECTORS[category](model, model.get_submodule(n)) for n in names):
            raise AdapterSetupError(f"{type(model).__name__}: no module matches the trainable category {category!r}")
    return names


def _tied_embeddings(model: PreTrainedModel) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def check_target_modules(model: nn.Module, target_modules: Sequence[str]) -> None:
    """Raise :class:`AdapterSetupError` naming the targets no module of `model` matches (peft's rule: the full name,
    or its last dotted parts) and the linear layers it does have."""
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise AdapterSetupError(f"lora_target_modules: {type(model).__name__} has no module named {missing}; its "
                                f"linear layers are {linear} (set --lora-target-modules to some of them)")


def default_lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention projections of `model`, whatever the family calls them (LongLoRA trains all of them): the
    linear layers directly inside its attention modules (transformers' ``*Attention`` classes), e.g. ``q_proj,
    k_proj, v_proj, o_proj`` (Llama and most), ``query_key_value, dense`` (GPT-NeoX), ``qkv_proj, o_proj`` (Phi3).
    Without such modules, peft's own table (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``)."""
    names: dict[str, None] = {}
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            names.update((name, None) for name, child in module.named_children() if isinstance(child, nn.Linear))
    if names:
        return tuple(names)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise AdapterSetupError(f"lora_target_modules: no attention projections found in {type(model).__name__}; "
                                f"its linear layers are {linear} (set --lora-target-modules to some of them)")
    return tuple(targets)


def add_lora_plus(model: PreTrainedModel, *, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                  target_modules: Sequence[str] | None = None,
                  trainable: Sequence[str] = ("embed", "norm")):
    """Wrap `model` in a peft ``PeftModel``: LoRA (rank `r`, scale ``alpha / r``) on `target_modules`, and the modules
    of the `trainable` categories (embeddings, every normalization layer) trained fully.

    Norms (and an untied ``head``) are peft ``modules_to_save``. The input embedding is trained as peft trainable
    tokens over the whole vocabulary (``trainable_token_indices``): the same as training the full matrix, and with
    ``ensure_weight_tying`` an output embedding tied to it uses that one tensor and is saved once (issue 13: as a
    ``modules_to_save`` pair peft wrote it twice, SmolLM2's adapter was 224 MB for a 98 MB model). Everything lands in
    one adapter folder on ``save_pretrained`` that ``PeftModel.from_pretrained`` loads, with the tie intact. The
    trainable set is verified (:func:`verify_lora_plus`) and its size logged. `target_modules` ``None``: the
    family's attention projections (:func:`default_lora_targets`).
    """
    from peft import LoraConfig, get_peft_model

    target_modules = tuple(target_modules) if target_modules else default_lora_targets(model)

    extras = extra_trainable_modules(model, trainable)
    embedding = model.get_input_embeddings()
    token_trained = [n for n in extras if model.get_submodule(n) is embedding]
    tie = _tied_embeddings(model) and bool(token_trained)
    head = model.get_output_embeddings()
    full = [n for n in extras if n not in token_trained and not (tie and model.get_submodule(n) is head)]
    options = {}
    if token_trained:
        options["trainable_token_indices"] = {token_trained[0]: list(range(embedding.weight.shape[0]))}
    if tie:
        if "ensure_weight_tying" not in LoraConfig.__dataclass_fields__:
            raise AdapterSetupError("training tied embeddings needs a peft with LoraConfig(ensure_weight_tying=...)")
        options["ensure_weight_tying"] = True
    check_target_modules(model, target_modules)
    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                             modules_to_save=full or None, task_type="CAUSAL_LM", **options)
    with warnings.catch_warnings():  # peft looks for the tie in modules_to_save; here trainable tokens carry it
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*no tied modules")
        try:
            peft_model = get_peft_model(model, lora_config)
        except ValueError as e:  # peft's own checks of the LoRA config against the model
            raise AdapterSetupError(f"LoRA set-up of {type(model).__name__}: {e}") from None
    verify_lora_plus(peft_model, target_modules=target_modules, extras=[*token_trained, *full])
    trained, total = trainable_parameters(peft_model)
    logger.info("LoRA+: %d trainable parameters of %d (%.2f%%): LoRA r=%d on %s, full %s (%d modules)",
                trained, total, 100 * trained / total, r, ", ".join(target_modules), ", ".join(trainable), len(extras))
    return peft_model


def adapter_extras(lora_config) -> list[str]:
    """The fully trained modules a saved ``LoraConfig`` names: ``modules_to_save`` and the trainable-token layers."""
    tokens = lora_config.trainable_token_indices
    token_layers = list(tokens) if isinstance(tokens, dict) else ["embed_tokens"] if tokens else []
    return [*token_layers, *(lora_config.modules_to_save or ())]


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    trained = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trained += param.numel()
    return trained, total


def verify_lora_plus(peft_model, *, target_modules: Sequence[str], extras: Sequence[str]) -> None:
    """Raise :class:`AdapterSetupError` unless the trainable parameters are exactly the active adapter's LoRA factors
    of every `target_modules` layer plus the trainable copies of the `extras` modules, and tied embeddings are tied."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from peft.utils.other import TrainableTokensWrapper

    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    expected: dict[int, str] = {}
    problems = []
    lora_layers = set()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            lora_layers.add(name.rsplit(".", 1)[-1])
            for sub in (module.lora_A[adapter], module.lora_B[adapter]):
                expected.update((id(p), f"{name}.{n}") for n, p in sub.named_parameters())
    wrapped = {name: module for name, module in base.named_modules()
               if isinstance(module, (ModulesToSaveWrapper, TrainableTokensWrapper))}
    for name in extras:
        module = wrapped.get(name) or next((m for n, m in wrapped.items() if n.endswith("." + name)), None)
        if module is None:
            problems.append(f"{name} is not trained (no modules_to_save copy or trainable tokens)")
        elif isinstance(module, TrainableTokensWrapper):  # the whole vocabulary, or it is not the full embedding
            tokens = module.token_adapter
            delta = tokens.trainable_tokens_delta[adapter]
            expected[id(delta)] = f"{name}.token_adapter.trainable_tokens_delta"
            if delta.shape[0] != tokens.base_layer.weight.shape[0]:
                problems.append(f"{name} trains {delta.shape[0]} of {tokens.base_layer.weight.shape[0]} tokens")
        else:
            expected.update((id(p), f"{name}.{n}") for n, p in module.modules_to_save[adapter].named_parameters())
    missing_targets = sorted(set(target_modules) - lora_layers)
    if missing_targets:
        problems.append(f"no LoRA layer for target modules {missing_targets}")
    actual = {id(p): n for n, p in peft_model.named_parameters() if p.requires_grad}
    unexpected = sorted(n for i, n in actual.items() if i not in expected)
    frozen = sorted(n for i, n in expected.items() if i not in actual)
    if unexpected:
        problems.append(f"unexpected trainable parameters {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if frozen:
        problems.append(f"frozen adapter parameters {frozen[:5]}{' ...' if len(frozen) > 5 else ''}")
    if _tied_embeddings(base) and not embeddings_tied(peft_model):
        problems.append("input and output embeddings are no longer tied")
    if problems:
        raise AdapterSetupError("LoRA+ set-up: " + "; ".join(problems))


def embeddings_tied(model: nn.Module) -> bool:
    """Do the (active) input and output embedding weights share one tensor?"""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    inp, out = base.get_input_embeddings(), base.get_output_embeddings()
    if inp is None or out is None:
        return False
    return _active_weight(inp) is _active_weight(out)


def _active_weight(module: nn.Module) -> torch.Tensor:
    from peft.utils import ModulesToSaveWrapper
    from peft.utils.other import TrainableTokensWrapper

    if isinstance(module, TrainableTokensWrapper):  # a tied head shares the embedding's trainable tokens
        tokens = module.token_adapter
        if tokens.disable_adapters or not tokens.active_adapters or tokens.merged:
            return tokens.base_layer.weight
        return tokens.trainable_tokens_delta[tokens.active_adapters[0]]
    if isinstance(module, ModulesToSaveWrapper):
        if module.disable_adapters or not module.active_adapters:
            module = module.original_module
        else:
            module = module.modules_to_save[module.active_adapters[0]]
    return module.weight


__all__ = ["AdapterSetupError", "ModelSource", "ROPE_KINDS", "adapter_extras", "add_lora_plus", "apply_rope_scaling",
           "context_length", "default_lora_targets", "embeddings_tied", "extra_trainable_modules", "load_config",
           "load_model", "load_tokenizer", "resolve_source", "trainable_parameters", "validate_config",
           "verify_lora_plus"]
