"""LongLoRA fine-tuning with the transformers Trainer: setup → train → save.

:func:`run` is the whole recipe and reads top-down:

1. **setup** — load the data (``sft.data``; over-long samples are dropped and counted in ``data_stats.json``), then
   the base model with S2-Attn as its attention function (``sft.s2attn``; dense again in eval mode), RoPE positions
   interpolated to ``max_length``, wrapped with LoRA + trainable embeddings and norms (``sft.model``).
2. **train** — ``Trainer`` with :func:`training_arguments`; callbacks append every log line to
   ``output_dir/metrics.jsonl`` and stop at the first non-finite loss *before* the optimizer applies it, so the last
   checkpoint stays the last good state. ``resume`` continues from the last complete ``checkpoint-*`` of
   ``output_dir`` (one a killed run left half-written is skipped). The loss on a fixed handful of held-out samples
   (``eval_split``, dense attention) is measured before and after training and printed as "eval loss before → after".
3. **save** — ``sft.merge.save_adapter`` writes ``output_dir/adapter`` (LoRA, embeddings, norms, the RoPE-scaled
   config and the tokenizer), which ``peft.PeftModel.from_pretrained`` loads and ``python -m sft.merge`` merges.

Runs unchanged under ``torchrun``/``accelerate launch`` (the Trainer does DDP); only rank 0 writes files, and only its
log lines show (:func:`schemas.cli.setup_logging`).
With ``context_parallel: P`` every sample is cut into P slices trained by the P ranks of a group
(``sft.context_parallel``: S2-Attn needs only a half-group of keys/values from the left neighbour per layer).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from schemas.errors import UserError
from schemas.outdir import claim
from schemas.train import TrainConfig, s2_group_size
from sft import context_parallel
from sft.data import DataStats, PadCollator, load_extend_dataset, load_sft_dataset, pad_token_id
from sft.evaluation.in_training import add_long_context_eval
from sft.precision import Precision, choose_bf16, has_accelerator
from sft.trainer import LongLoRATrainer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.yaml"
DATA_STATS_FILE = "data_stats.json"
ADAPTER_DIR = "adapter"


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN or inf; training stopped before the optimizer step that would have applied it."""


@dataclass
class TrainResult:
    """What :func:`run` did."""

    output_dir: Path
    adapter_dir: Path
    global_step: int
    trainable_params: int
    total_params: int
    data: DataStats
    rope_scaling: dict | None = None
    metrics: dict = field(default_factory=dict)
    world_size: int = 1
    eval_before: float | None = None
    eval_after: float | None = None


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------------------


def run(cfg: TrainConfig, *, callbacks: tuple[TrainerCallback, ...] = (), progress: bool = True) -> TrainResult:
    """Fine-tune ``cfg.model`` as ``cfg`` says and save the adapter. Raises :class:`NonFiniteLoss` on a NaN/inf loss.

    ``callbacks`` are added after the built-in ones (tests use them to inject faults); ``progress=False``
    (``--no-progress``/``--quiet``) hides the Trainer's progress bar (the log lines stay).
    """
    output_dir = Path(cfg.output_dir)
    cp = context_parallel.setup(cfg.context_parallel)  # issue 14; None unless context_parallel > 1
    checkpoint = resume_checkpoint(cfg)
    if is_main_process():  # a new or empty folder, or this command's earlier run (issue 24), before the data builds
        claim(output_dir, "sft.run", inputs=[cfg.model], overwrite=cfg.overwrite)
    cfg = build_on_the_fly(cfg)

    # 1. setup: the data first (a data problem should not wait for the model to load), then the model
    dataset, stats = load_data(cfg)
    log.info(f"data: {stats.summary()}")
    model, tokenizer, rope = setup_model(cfg)
    precision = choose_precision(cfg, model.config)  # before the Trainer: its arguments fix the precision
    trainable, total = count_parameters(model)
    targets = ",".join(sorted(model.peft_config[model.active_adapter].target_modules))
    log.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%): LoRA r={cfg.lora_r} "
             f"on {targets} + {','.join(cfg.trainable) or 'nothing else'}")
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (output_dir / DATA_STATS_FILE).write_text(json.dumps(asdict(stats), indent=1) + "\n")

    # 2. train
    eval_dataset = load_eval_data(cfg)
    data_collator, trainer_class, extra = collator(cfg, tokenizer), LongLoRATrainer, {}
    if cp is not None:  # each rank trains one slice of every sample of its group (sft.context_parallel)
        data_collator, trainer_class, extra = context_parallel.for_training(
            cp, model, data_collator, trainer_class, pad_id=pad_token_id(tokenizer),
            group_size=s2_group_size(cfg.max_length, cfg.group_size_ratio), max_length=cfg.max_length)
    trainer = trainer_class(
        loss_reduction=cfg.loss_reduction, chunked_loss=cfg.chunked_loss, loss_chunk_size=cfg.loss_chunk_size,
        model=model, args=training_arguments(cfg, progress, bf16=precision.bf16), train_dataset=dataset,
        eval_dataset=eval_dataset, processing_class=tokenizer, data_collator=data_collator,
        callbacks=[StopOnNonFiniteLoss(output_dir), MetricsJsonl(output_dir / METRICS_FILE),
                   *([StopAfterSeconds(cfg.max_train_seconds)] if cfg.max_train_seconds else []), *callbacks],
        **extra)
    add_long_context_eval(trainer, cfg)  # eval_every: the long-context curve in metrics.jsonl (issue 9)
    args = trainer.args
    ddp = f" (DDP, {args.ddp_backend or 'default'} backend)" if args.world_size > 1 else ""
    replicas = args.world_size // cfg.context_parallel
    split = (f"; context parallel: every sample cut into {cfg.context_parallel} slices, {replicas} data-parallel "
             "replica(s)" if cp is not None else "")
    loss = f"{'chunked' if cfg.chunked_loss else 'plain'}, {cfg.loss_reduction} mean"
    log.info(f"precision: {precision.describe()}; loss: {loss}")
    log.info(f"world size {args.world_size}{ddp}, global batch "
             f"{replicas * cfg.per_device_batch_size * cfg.gradient_accumulation_steps} samples{split}")
    if checkpoint is not None:
        log.info(f"resuming from {checkpoint}")
        if is_main_process():
            truncate_metrics(output_dir / METRICS_FILE, checkpoint_step(checkpoint))
    eval_before = None
    if eval_dataset is not None:  # resumed: the interrupted run measured it (kept in metrics.jsonl at step 0)
        eval_before = eval_loss(trainer) if checkpoint is None else logged_eval_before(output_dir / METRICS_FILE)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    eval_after = eval_loss(trainer) if eval_dataset is not None else None
    if eval_after is not None:
        before = f"before {eval_before:.4f} → " if eval_before is not None else ""
        log.info(f"eval loss {before}after {eval_after:.4f} ({len(eval_dataset)} held-out '{cfg.eval_split}' samples, "
            "dense attention)")

    # 3. save
    adapter_dir = output_dir / ADAPTER_DIR
    if trainer.is_world_process_zero():
        from sft.merge import save_adapter

        save_adapter(trainer.model, tokenizer, adapter_dir)
        log.info(f"saved the adapter to {adapter_dir} after {trainer.state.global_step} steps "
            f"(train loss {output.training_loss:.4f})")
    return TrainResult(output_dir=output_dir, adapter_dir=adapter_dir, global_step=trainer.state.global_step,
                       trainable_params=trainable, total_params=total, data=stats, rope_scaling=rope,
                       metrics=dict(output.metrics), world_size=args.world_size, eval_before=eval_before,
                       eval_after=eval_after)


# ----------------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------------


def setup_model(cfg: TrainConfig):
    """Base model with S2-Attn and scaled RoPE, wrapped with LoRA+: ``(peft_model, tokenizer, rope_parameters)``.

    RoPE scaling and the S2-Attn settings go into the config *before* the model is built (the rotary embedding reads
    it at construction); both are saved with the adapter.
    """
    from sft.model import load_config, load_model

    set_seed(cfg.seed)  # the LoRA initialisation is drawn before the Trainer seeds itself
    config = load_config(cfg.model)
    rope = configure(cfg, config)
    model, tokenizer = load_model(cfg.model, dtype=DTYPES[cfg.model_dtype], config=config,
                                  attn_implementation=attention_implementation(cfg))
    return with_lora_plus(cfg, model), tokenizer, rope


def configure(cfg: TrainConfig, config) -> dict | None:
    """RoPE scaling to ``cfg.max_length`` and the S2-Attn settings written into a model config before the model is
    built; returns the new ``rope_parameters`` (None: unchanged). ``benchmarks/gpu/efficiency.py`` builds random
    models of real shapes through this and :func:`with_lora_plus`."""
    from sft.model import apply_rope_scaling

    rope = apply_rope_scaling(config, cfg.max_length, kind=cfg.rope_scaling)
    if cfg.s2_attn:  # read by the attention function at every call (sft.s2attn.S2AttnSettings)
        # G from max_length in every layout (unpacked, packed, tree rows, context parallelism), never from a row's
        # padded width: a sample is attended alike however it is batched, padded or sliced
        config.s2_attn = {"group_size": s2_group_size(cfg.max_length, cfg.group_size_ratio), "wrap": cfg.wrap}
    return rope


def with_lora_plus(cfg: TrainConfig, model):
    """`model` wrapped with LoRA+ as ``cfg`` says, its trainable weights in float32."""
    from sft.model import add_lora_plus

    model = add_lora_plus(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules, trainable=tuple(cfg.trainable))
    upcast_trainable(model)
    return model


def attention_implementation(cfg: TrainConfig) -> str | None:
    """``s2_attn``; full attention: ``packed_causal`` (causal inside each packed sample, no tokens x tokens mask)
    with packing, else the model's default."""
    if cfg.s2_attn:
        return "s2_attn"
    return "packed_causal" if cfg.packing else None


def upcast_trainable(model: torch.nn.Module) -> None:
    """Trainable weights in float32, so optimizer states and updates are exact over a bfloat16 base (the config
    requires bf16 autocast then, which mixes the dtypes in the forward)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    from sft.model import trainable_parameters

    return trainable_parameters(model)


def is_build_recipe(ref: str) -> bool:
    return Path(ref).suffix in (".yaml", ".yml")


def build_on_the_fly(cfg: TrainConfig) -> TrainConfig:
    """sft with ``data: RECIPE.yaml``: build that recipe into ``output_dir/data`` (kept, and reused while the recipe
    is unchanged) and train on it. Other ranks of a launch wait for rank 0's build."""
    ref = cfg.data_paths[0]
    if cfg.mode != "sft" or not is_build_recipe(ref):
        return cfg
    import time

    from longqa.pipeline import build
    from schemas.build import BuildConfig
    from schemas.resolve import load_recipe, resolve

    out = Path(cfg.output_dir) / "data"
    build_cfg = resolve(BuildConfig, load_recipe(ref), {"out": str(out)}, ref)
    manifest = out / "manifest.json"

    def current() -> bool:
        return manifest.is_file() and json.loads(manifest.read_text())["config"] == build_cfg.recorded()

    if is_main_process() and not current():
        log.info(f"data: building {ref} into {out}")
        build(build_cfg, progress=False)
    while not current():  # another rank: the build is rank 0's
        time.sleep(2)
    return cfg.model_copy(update={"data": str(out)})


def load_data(cfg: TrainConfig):
    """The training set in the order and rows it is trained in (``sft.packing.arrange``: packed rows, sorted batches
    or the samples as loaded), and what was kept, dropped and how it is laid out."""
    from sft.packing import arrange

    if cfg.mode == "extend":
        from sft.model import load_tokenizer

        dataset, stats = load_extend_dataset(cfg.data_paths, load_tokenizer(cfg.model), cfg.max_length, cfg.packing)
    else:
        dataset, stats = load_sft_dataset(cfg.data_paths[0], cfg.split, cfg.max_length, cfg.too_long,
                                          extra_columns=("doc_id",) if cfg.packing == "tree" else ())
    dataset, stats.layout = arrange(dataset, list(dataset["length"]), packing=cfg.packing, batching=cfg.batching,
                                    max_length=cfg.max_length, batch_size=cfg.per_device_batch_size, seed=cfg.seed,
                                    tree_max_branches=cfg.tree_max_branches, tree_min_prefix=cfg.tree_min_prefix)
    return dataset, stats


def collator(cfg: TrainConfig, tokenizer):
    """Packed rows (``sft.packing.PackedCollator``, which passes held-out samples to PadCollator) or padded samples."""
    if cfg.packing:
        from sft.packing import PackedCollator

        return PackedCollator(pad_token_id(tokenizer), cfg.max_length)
    return PadCollator(pad_token_id(tokenizer), cfg.max_length)


def load_eval_data(cfg: TrainConfig):
    """The first ``eval_samples`` samples of ``eval_split`` that fit ``max_length`` (a fixed set), or None."""
    if cfg.mode != "sft" or not cfg.eval_split or cfg.eval_samples == 0:
        return None
    from sft.data import DataError

    try:
        dataset, _ = load_sft_dataset(cfg.data_paths[0], cfg.eval_split, cfg.max_length, "drop")
    except DataError as e:
        log.info(f"no held-out evaluation: {e}")
        return None
    return dataset.select(range(min(cfg.eval_samples, len(dataset))))


def eval_loss(trainer: Trainer) -> float:
    """Mean loss on the eval set (the Trainer puts the model in eval mode: dense attention); logged to metrics.jsonl."""
    return float(trainer.evaluate()["eval_loss"])


def logged_eval_before(path: Path) -> float | None:
    """The held-out loss before training, from the ``metrics.jsonl`` of the run being resumed (None if absent)."""
    if not path.is_file():
        return None
    lines = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return next((line["eval_loss"] for line in lines if line.get("step") == 0 and "eval_loss" in line), None)


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` exists: the Trainer writes that file last, so a folder
    without it was cut short (e.g. the run was killed while saving) and cannot be resumed from."""
    steps = {}
    for folder in Path(output_dir).glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and suffix.isdigit() and (folder / "trainer_state.json").is_file():
            steps[int(suffix)] = folder
    return steps[max(steps)] if steps else None


def resume_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint ``resume`` continues from; refuses to silently restart over existing checkpoints."""
    output_dir = Path(cfg.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if cfg.resume and last is None:
        raise FileNotFoundError(f"resume: no checkpoint-* folder in {output_dir}")
    if not cfg.resume and last is not None:
        raise FileExistsError(f"output_dir: {output_dir} already holds {Path(last).name}; pass --resume to continue "
                              "from it or choose another --output-dir")
    if not cfg.resume:
        return None
    complete = last_complete_checkpoint(output_dir)
    if complete is None:
        raise FileNotFoundError(f"resume: no complete checkpoint in {output_dir} (none holds trainer_state.json)")
    if complete != Path(last):
        log.info(f"{Path(last).name} is incomplete (no trainer_state.json: the run stopped while saving it); skipped")
    return complete


def training_arguments(cfg: TrainConfig, progress: bool = True, *, bf16: bool | None = None) -> TrainingArguments:
    """The Trainer's arguments, all from ``cfg`` (nothing else is set here but plumbing, the progress bar and `bf16`,
    the precision :func:`choose_precision` picked; None: ``cfg.bf16``, float32 when that is null)."""
    return TrainingArguments(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bool(cfg.bf16 or cfg.model_dtype == "bfloat16") if bf16 is None else bf16,
        use_cpu=not has_accelerator(),  # also lets bf16 autocast run on CPUs
        ddp_backend=ddp_backend(),
        deepspeed=cfg.deepspeed,
        **checkpointing_arguments(cfg.gradient_checkpointing),
        seed=cfg.seed,
        **sampling_arguments("sequential" if cfg.packing or cfg.batching == "sorted" else cfg.batching),
        dataloader_num_workers=cfg.dataloader_num_workers,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the logs and StopOnNonFiniteLoss, not be averaged away
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        prediction_loss_only=True,  # the eval set is only for its loss: never gather (N, vocab) logits
        remove_unused_columns=False,  # the data already holds only input_ids/labels/length; the collator drops length
        ddp_find_unused_parameters=False,
        report_to=cfg.report_to,
        disable_tqdm=not progress,
    )


def ddp_backend() -> str | None:
    """``gloo`` for a multi-process launch on CPUs (never a GPU-only backend); else the Trainer's choice. Set only
    under a launcher: a backend named in a single process makes the Trainer look for a process group."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return "gloo" if launched and not has_accelerator() else None


def choose_precision(cfg: TrainConfig, model_config) -> Precision:
    """bf16 autocast or float32 for this run: ``cfg.bf16`` when set, else by hardware and, on a CPU, by a cached
    measurement of the model's own step in both precisions (:mod:`sft.precision`)."""
    return choose_bf16(model_config, requested=cfg.bf16, model_dtype=cfg.model_dtype,
                       attn_implementation=attention_implementation(cfg))


def sampling_arguments(order: str) -> dict:
    """The Trainer's sampler: ``grouped`` (``LengthGroupedSampler`` reading the ``length`` column), ``random``, or
    ``sequential`` (the dataset is already in training order: packed rows or sorted batches, ``sft.packing``)."""
    strategy = {"grouped": "group_by_length", "random": "random", "sequential": "sequential"}[order]
    return {"train_sampling_strategy": strategy, "length_column_name": "length"}


def checkpointing_arguments(enabled: bool) -> dict:
    """Activation checkpointing under its current name (transformers renamed ``gradient_checkpointing``)."""
    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


# ----------------------------------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------------------------------


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop with a clear message when the loss becomes NaN/inf, before that step changes any weight.

    Checked on the synchronised gradients just before the optimizer step (a non-finite loss makes them non-finite; all
    DDP ranks see the same reduced gradients, so they stop together) and, as a second line, on every logged loss
    (logging comes before saving, so a bad state is never written as a checkpoint).
    """

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise NonFiniteLoss(self._message(state.global_step + 1, "the loss (and its gradients) became NaN/inf",
                                              "the step was not applied"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(self._message(state.global_step, f"the logged loss is {loss}", "nothing was saved"))

    def _message(self, step: int, what: str, done: str) -> str:
        last = last_complete_checkpoint(self.output_dir) if self.output_dir.is_dir() else None
        kept = (f"the last good checkpoint is {last} (continue from it with --resume)" if last
                else "no checkpoint had been written yet")
        return (f"stopped at step {step}: {what}; {done} and {kept}. Lower learning_rate, add warmup_steps, or check "
                "the data")


class StopAfterSeconds(TrainerCallback):
    """End training after the optimizer step that passes a wall-time budget (``max_train_seconds``), counted from
    the start of training; the run then saves its adapter as after ``max_steps``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        import time

        if self.started is not None and time.monotonic() - self.started >= self.seconds:
            log.info("wall-time budget of %.0f s reached after step %d; stopping", self.seconds, state.global_step)
            control.should_training_stop = True


class MetricsJsonl(TrainerCallback):
    """Append every log of the Trainer (loss, learning rate, grad norm, final speed) to a JSONL file, rank 0 only."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a ``checkpoint-N`` folder was saved at (from its ``trainer_state.json``)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (they belong to the interrupted run that resuming replaces)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
