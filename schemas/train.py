"""`TrainConfig`: everything `python -m sft.run` needs (LongLoRA fine-tuning). Every field is a flag of `sft.run`
(generated: `schemas.cli`); example recipes in `configs/train/` set some fields, the rest keep these defaults.

The defaults *are* the embedded default run (`configs/train/smollm2_squad.yaml` resolves to the same values, a test
checks it): SmolLM2-135M-Instruct fine-tuned on the default built dataset `out/` for a few steps, sized for a few
minutes on 2 CPU cores. The paper's settings (Chen et al. 2023, Sec. 4.1) are named in the field descriptions.

Field problems are collected by pydantic; cross-field problems are listed together by `_cross_checks` (run even when a
field fails: `schemas.resolve`). Nothing here opens a file or imports torch (the path checks live in
`schemas.paths.train_problems`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from schemas.outdir import OVERWRITE

from schemas.build import DEFAULT_TOKENIZER, split_commas

#: Names `trainable` accepts: the non-LoRA parameter groups LongLoRA trains (its "LoRA+", Sec. 3.3).
TRAINABLE_GROUPS = ("embed", "norm", "head")


class TrainConfig(BaseModel):
    """LongLoRA fine-tuning: S2-Attn while training, LoRA + embeddings + norms, position interpolation."""

    model_config = ConfigDict(extra="forbid")

    # model and data
    model: str = Field(DEFAULT_TOKENIZER, description="base model: folder, Hub id, .gguf file or pkg:MODULE/path")
    mode: Literal["sft", "extend"] = Field(
        "sft", description="'sft': supervised fine-tuning on a built LongQA dataset (labels mask all but the answer); "
        "'extend': continued pre-training on long plain text (the paper's first stage; labels = inputs)")
    data: str | list[str] = Field(
        "out", min_length=1, description="sft: the builder's output folder (holding tokenized/), a tokenized "
        "DatasetDict folder, or a build recipe (.yaml) built on the fly into output_dir/data; extend: text files "
        "(.txt, .md, or .jsonl with a 'text' field) or folders of them")
    split: str = Field("train", description="sft: the split of the built dataset to train on")
    max_length: int = Field(
        4096, ge=16, description="training context in tokens; also the target of RoPE position interpolation. The "
        "default 4096 keeps ~18% of the default build (3.1k-8.2k tokens) for a CPU run; the paper trains 8k-100k")
    too_long: Literal["drop", "error"] = Field(
        "drop", description="sft samples longer than max_length: 'drop' (counted and printed) or 'error'. Never "
        "truncated (that could cut the answer); to keep them, build with `python -m longqa.build --max-length N`")

    # context extension (position interpolation, Sec. 3 / Chen et al. 2023b)
    rope_scaling: Literal["linear", "dynamic", "yarn"] = Field(
        "linear", description="RoPE scaling to max_length: 'linear' (position interpolation, the paper), 'dynamic' "
        "(NTK) or 'yarn'; written into the saved model config")

    # S2-Attn (Sec. 3.2)
    s2_attn: bool = Field(True, description="shifted sparse attention while training (dense attention in eval)")
    group_size_ratio: float = Field(0.25, gt=0.0, le=1.0, description="S2-Attn group size as a fraction of the "
                                    "batch's padded length (paper: 1/4)")
    wrap: Literal["none", "roll"] = Field("none", description="S2-Attn shifted heads: 'none' (default, as the "
                                          "reference flash-attention code) or 'roll' (the paper's Algorithm 1)")

    # LoRA+ (Sec. 3.3)
    lora_r: int = Field(8, ge=1, description="LoRA rank (paper: 8)")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (paper: 16)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    lora_target_modules: list[str] | None = Field(None, min_length=1, description="module names that get LoRA; "
                                                  "default: the model's attention projections, whatever the family "
                                                  "calls them (paper: q, k, v, o)")
    trainable: list[str] = Field(["embed", "norm"], description="non-LoRA modules trained fully as well: 'embed', "
                                 "'norm' (the paper's LoRA+; without them long-context quality collapses), 'head' "
                                 "(the output layer, when untied). A comma-separated string is accepted")

    # optimisation
    learning_rate: float = Field(2e-4, gt=0.0, description="peak learning rate. The default 2e-4 (LoRA's usual "
                                 "1e-4..3e-4) makes the loss of the 8-step CPU demo visibly fall; the paper uses 2e-5 "
                                 "for 7B/13B over 1000 steps")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (paper: 0)")
    lr_scheduler: Literal["constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="learning-rate schedule after warm-up (paper: constant)")
    warmup_steps: int = Field(2, ge=0, description="linear warm-up steps (paper: 20)")
    max_steps: int = Field(8, ge=1, description="optimizer steps (paper: 1000 for extension, 5 epochs for SFT)")
    per_device_batch_size: int = Field(1, ge=1, description="samples per device and micro-step (paper: 1)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-steps per optimizer step (paper: 8 on 8 "
                                             "GPUs, global batch 64)")
    max_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping (0 disables)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: needed for long contexts on GPUs; off in the CPU "
        "default (4k tokens fit in memory, 1.8x faster)")
    bf16: bool | None = Field(
        None, description="bfloat16 mixed precision (autocast; trainable weights and optimizer stay float32). null "
        "(default): on a CUDA GPU that supports it; on a CPU where a probe of the model's own step measures bf16 "
        "faster than float32 (cached per machine, sft/precision.py: the CPU flags do not predict it), float32 "
        "elsewhere")
    model_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype the frozen base weights are loaded in; trainable ones are always float32")
    seed: int = Field(42, description="seed of the data order, LoRA initialisation and dropout")

    # packing and batching (issue 13; sft.packing). `group_by_length: true/false` of older recipes is read as
    # `batching: grouped/random` (_legacy_group_by_length)
    packing: bool | Literal["tree"] = Field(
        False, description="pack several samples into each row of at most max_length tokens (first-fit-decreasing, "
        "rows in a seeded shuffled order); position_ids restart at every sample and attention never crosses one "
        "(S2-Attn segments restart per sample; with s2_attn: false, full attention inside each sample). "
        "per_device_batch_size then counts rows. sft: a sample is never split across rows; extend: each document is "
        "a sample, cut into max_length pieces. 'tree' (sft, issue 22; sft.tree): the samples of one doc_id share "
        "their longest common token prefix once, each sample's rest is a branch that attends to the prefix and to "
        "itself (same loss and gradients as alone); trees and other samples are packed as with true")
    tree_min_prefix: int = Field(
        256, ge=1, description="packing: tree: samples of a doc_id whose shared prefix (before the first supervised "
        "token) is shorter than this stay separate samples")
    tree_max_branches: int = Field(
        64, ge=1, description="packing: tree: at most this many samples (branches) a tree; a document with more "
        "questions, or more than fit max_length, becomes several trees, each holding the prefix again")
    batching: Literal["random", "grouped", "sorted"] = Field(
        "grouped", description="how unpacked samples form batches: 'random'; 'grouped' (the Trainer's length-grouped "
        "sampler: similar lengths in random mega-batches); 'sorted' (LongAlign's sorted batching: all samples sorted "
        "by length, cut into batches, the batch order shuffled; for samples near max_length, where packing gains "
        "little)")
    dataloader_num_workers: int = Field(0, ge=0, description="data loading worker processes")

    # loss (issue 13): chunked cross-entropy, reduction over the global batch
    chunked_loss: bool = Field(
        True, description="never build the tokens x vocabulary logits: only supervised positions go through the LM "
        "head, loss_chunk_size tokens at a time, recomputed in backward (same loss and gradients); false: the model "
        "computes all logits (the plain path)")
    loss_chunk_size: int = Field(2048, ge=1, description="tokens per LM-head call of the chunked loss (2048 x a 49k "
                                 "vocabulary = 0.4 GB of float32 logits)")
    loss_reduction: Literal["token", "sample"] = Field(
        "token", description="'token': mean over all supervised tokens of the global batch (every accumulation step "
        "and rank); 'sample': each sample's mean token loss, averaged over the samples of the global batch "
        "(LongAlign's loss weighting: a short answer weighs as much as a long one)")

    # context parallelism (issue 14; sft.context_parallel): one sample split across the ranks of a group
    context_parallel: int = Field(
        1, ge=1, description="P: every sample is cut into P contiguous slices of max_length/P-ish tokens, one per rank "
        "of a group of P consecutive ranks (S2-Attn context parallelism: per layer a rank receives only the last "
        "half-group of the shifted heads' keys and values from its left neighbour). Launch P x (data-parallel "
        "replicas) processes with torchrun or accelerate launch. Needs s2_attn with wrap 'none', max_length/P a "
        "multiple of the S2-Attn group size, unpacked rows and loss_reduction 'token'; 1: off")

    deepspeed: str | None = Field(
        None, description="DeepSpeed JSON config passed to the Trainer (configs/deepspeed/zero2.json, zero3.json; "
        "needs `pip install deepspeed` and a launch with `deepspeed`/`torchrun`/`accelerate launch`); null: none")

    # held-out evaluation (loss with dense attention, before and after training)
    eval_split: str | None = Field(
        "test", description="sft: split of the built dataset whose loss is measured before and after training (model "
        "in eval mode: dense attention), written to metrics.jsonl and printed; null, a missing split or no sample "
        "within max_length: no evaluation")
    eval_samples: int = Field(4, ge=0, description="held-out samples evaluated: the first ones of eval_split that fit "
                              "max_length (a fixed set, so before and after compare); 0: no evaluation")

    # --- long-context evaluation during training (issue 9; sft/evaluation/in_training.py) ---
    eval_every: int | None = Field(
        None, ge=1, description="every N optimizer steps (and before the first), run eval_tasks with dense attention "
        "on rank 0 and log them to metrics.jsonl and report_to (longctx_passkey_<L>, longctx_ppl_<L>, longctx_qa_f1), "
        "so a run shows its long-context curve; resumed runs keep the curve logged up to their checkpoint. null: off")
    eval_tasks: list[Literal["passkey", "ppl", "qa"]] = Field(
        ["passkey", "ppl"], description="tasks run every eval_every steps: 'passkey' (eval_passkey_lengths, key at "
        "depth 0.5), 'ppl' (eval_ppl_lengths, one sliding window each, on eval_split's documents), 'qa' "
        "(eval_qa_questions held-out questions of eval_split, LongBench F1). A comma-separated string is accepted")
    eval_passkey_lengths: list[int] = Field([1024, 2048], description="passkey prompt lengths (tokens)")
    eval_passkey_trials: int = Field(2, ge=1, description="passkey prompts per length (each its own key)")
    eval_ppl_lengths: list[int] = Field([1024, 2048], description="perplexity context lengths (tokens)")
    eval_qa_questions: int = Field(4, ge=1, description="held-out questions answered (the first of eval_split)")
    # wall-time budget (issue 10: the CPU proof run trains for a fixed time)
    max_train_seconds: float | None = Field(
        None, gt=0, description="stop training after this many seconds of wall time (checked after every optimizer "
        "step; the adapter is saved as usual), whichever of this and max_steps comes first; null: no limit")

    # outputs
    output_dir: str = Field("runs/smollm2-squad", description="checkpoints, metrics.jsonl, train_config.yaml and the "
                            "final adapter/ (LoRA + embeddings + norms, loadable with peft)")
    overwrite: bool = Field(False, description=OVERWRITE)
    logging_steps: int = Field(1, ge=1, description="optimizer steps between metric lines in metrics.jsonl")
    save_steps: int = Field(4, ge=1, description="optimizer steps between checkpoints")
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (oldest deleted); null keeps all")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field(
        "none", description="experiment tracker the Trainer logs to as well as metrics.jsonl (needs that package "
        "installed: tensorboard, wandb or trackio)")
    resume: bool = Field(False, description="continue from the last checkpoint in output_dir (model, optimizer, "
                         "scheduler, data order)")

    _split_commas = field_validator("trainable", "eval_tasks", mode="before")(split_commas)

    @model_validator(mode="before")
    @classmethod
    def _legacy_group_by_length(cls, data):
        """``group_by_length`` (the field ``batching`` replaced): true -> ``grouped``, false -> ``random``."""
        if not isinstance(data, dict) or "group_by_length" not in data:
            return data
        data = dict(data)
        legacy = data.pop("group_by_length")
        if legacy is None:
            return data
        if not isinstance(legacy, bool):
            raise ValueError(f"group_by_length: expected true or false, got {legacy!r} (better: batching: grouped, "
                             "random or sorted)")
        implied = "grouped" if legacy else "random"
        if data.get("batching", implied) != implied:
            raise ValueError(f"group_by_length: {str(legacy).lower()} contradicts batching: {data['batching']} "
                             "(group_by_length is the old name of batching; keep only batching)")
        data["batching"] = implied
        return data

    @field_validator("trainable")
    @classmethod
    def _known_groups(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(TRAINABLE_GROUPS))
        if unknown:
            raise ValueError(f"unknown group(s) {unknown}, known: {list(TRAINABLE_GROUPS)}")
        return value

    @property
    def data_paths(self) -> list[str]:
        """`data` as a list."""
        return [self.data] if isinstance(self.data, str) else list(self.data)

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        problems = []
        if self.mode == "sft" and len(self.data_paths) > 1:
            problems.append(f"data: sft trains on one built dataset folder, got {len(self.data_paths)} paths")
        if self.s2_attn and self.group_size_ratio * self.max_length < 2:
            problems.append(f"group_size_ratio: {self.group_size_ratio} x max_length {self.max_length} gives an "
                            "S2-Attn group of fewer than 2 tokens")
        if self.model_dtype == "bfloat16" and self.bf16 is False:
            problems.append("model_dtype: bfloat16 base weights need bf16: true (autocast, with float32 trainable "
                            "weights)")
        if self.packing == "tree" and self.mode != "sft":
            problems.append("packing: tree groups the samples of a built dataset by doc_id (mode: sft); in extend mode "
                            "use packing: true")
        if self.packing == "tree" and self.s2_attn and self.wrap != "none":
            problems.append("packing: tree needs wrap: none (with roll the first tokens of a sample see its last "
                            "ones, so no prefix is shared)")
        if self.packing and self.batching == "sorted":
            problems.append("batching: sorted is the alternative to packing (rows are packed, then shuffled); set "
                            "packing: false or batching: grouped")
        if self.eval_every is not None and self.mode == "extend" and set(self.eval_tasks) & {"ppl", "qa"}:
            problems.append(f"eval_tasks: {sorted(set(self.eval_tasks) & {'ppl', 'qa'})} read a built dataset's "
                            "eval_split; in extend mode use eval_tasks: passkey")
        if self.eval_every is not None and set(self.eval_tasks) & {"ppl", "qa"} and self.eval_split is None:
            problems.append("eval_tasks: ppl and qa read eval_split, which is null")
        if self.eval_every is not None:
            lengths = ((self.eval_passkey_lengths if "passkey" in self.eval_tasks else [])
                       + (self.eval_ppl_lengths if "ppl" in self.eval_tasks else []))
            too_long = [n for n in lengths if n > self.max_length]
            if too_long:
                problems.append(f"eval_passkey_lengths/eval_ppl_lengths: {too_long} exceed max_length "
                                f"({self.max_length}), the context the model is trained for")
        problems += context_parallel_problems(self)
        if self.warmup_steps > self.max_steps:
            problems.append(f"warmup_steps: {self.warmup_steps} exceeds max_steps ({self.max_steps})")
        if problems:
            raise ValueError("\n".join(problems))
        return self


# ----------------------------------------------------------------------------------------------------------------------
# context parallelism: which lengths work (pure; sft.context_parallel uses the same rule)
# ----------------------------------------------------------------------------------------------------------------------


def s2_group_size(length: int, group_size_ratio: float) -> int:
    """S2-Attn group size G of a row of ``length`` tokens (as ``sft.s2attn.S2AttnSettings.group_size_for``)."""
    return max(1, round(group_size_ratio * length))


def cp_length_works(length: int, size: int, group_size_ratio: float) -> bool:
    """Can a row of ``length`` tokens be cut into ``size`` slices that are whole S2-Attn groups of G >= 2?"""
    group = s2_group_size(length, group_size_ratio)
    return length % size == 0 and group >= 2 and (length // size) % group == 0


def cp_working_lengths(around: int, size: int, group_size_ratio: float, count: int = 2) -> list[int]:
    """Up to ``count`` row lengths that work below and above ``around`` (for error messages)."""
    below = [n for n in range(around - 1, max(around - 4096, 0), -1) if cp_length_works(n, size, group_size_ratio)]
    above = [n for n in range(around + 1, around + 4096) if cp_length_works(n, size, group_size_ratio)]
    return sorted(below[:count] + above[:count])


def context_parallel_problems(cfg: TrainConfig) -> list[str]:
    """What ``context_parallel: P > 1`` needs of the rest of the configuration (the world size is checked at launch,
    by ``sft.context_parallel.setup``)."""
    size = cfg.context_parallel
    if size == 1:
        return []
    problems = []
    if not cfg.s2_attn:
        problems.append(f"context_parallel: {size} needs s2_attn: true; full attention would need ring attention "
                        "(every rank receiving (P-1)/P of all keys and values per layer), which this trainer does not "
                        "implement: set s2_attn: true or context_parallel: 1")
        return problems
    if cfg.wrap != "none":
        problems.append(f"context_parallel: {size} needs wrap: none (wrap: roll lets the first half-group see the "
                        "last one, across every rank)")
    group = s2_group_size(cfg.max_length, cfg.group_size_ratio)
    if size * cfg.group_size_ratio > 1:
        problems.append(f"context_parallel: {size} slices of max_length {cfg.max_length} are shorter than one S2-Attn "
                        f"group (G = {group_size_text(cfg)} = {group}); lower group_size_ratio to 1/{size} or less "
                        "or use fewer slices")
    elif not cp_length_works(cfg.max_length, size, cfg.group_size_ratio):
        lengths = ", ".join(map(str, cp_working_lengths(cfg.max_length, size, cfg.group_size_ratio))) or "none nearby"
        problems.append(f"context_parallel: max_length {cfg.max_length} / {size} is not a whole number of S2-Attn "
                        f"groups (G = {group_size_text(cfg)} = {group}); max_length values that work: {lengths}")
    if cfg.packing == "tree":
        problems.append(f"context_parallel: {size} does not support packing: tree (a tree's branches would have to "
                        "live on the rank of its prefix's end); set packing: true or false, or context_parallel: 1")
    elif cfg.packing:
        problems.append(f"context_parallel: {size} needs unpacked rows (packing: false): a packed sample may start "
                        "anywhere in a slice, so its S2-Attn segments would not line up with the slice boundaries")
    if cfg.loss_reduction != "token":
        problems.append(f"context_parallel: {size} supports loss_reduction: token only (a sample's tokens are spread "
                        "over the ranks of its group; the per-sample mean is not implemented for slices)")
    if cfg.deepspeed is not None:
        problems.append(f"context_parallel: {size} is not supported with deepspeed yet (only DDP, the default "
                        "multi-process launch, is tested); remove deepspeed or set context_parallel: 1")
    return problems


def group_size_text(cfg: TrainConfig) -> str:
    return f"group_size_ratio {cfg.group_size_ratio} x {cfg.max_length}"


def context_parallel_launch_problems(size: int, world_size: int) -> list[str]:
    """``context_parallel: size`` under a launch of ``world_size`` processes: groups of P consecutive ranks."""
    if size == 1 or world_size % size == 0:
        return []
    return [f"context_parallel: {size} needs a launch of a multiple of {size} processes (P x data-parallel replicas), "
            f"got a world size of {world_size}; e.g. torchrun --nproc-per-node {size} -m sft.run ... "
            f"--context-parallel {size}"]

