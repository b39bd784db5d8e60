"""`ExperimentConfig`: an ablation run by `python -m sft.experiment` (issue 10). Mirrored in `configs/experiments/`.

An experiment is a list of arms. A *trained* arm is a set of overrides of one train config (`train`), so every
trained arm sees the same data in the same order (same seed, same steps: the same tokens) unless it overrides that; an
*untrained* arm is the base model with only a RoPE change (or none). All arms are evaluated by `sft.eval` with one
evaluation config (`eval`) into one report, models as columns. Nothing here opens a file or imports torch.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from schemas.outdir import OVERWRITE


class Arm(BaseModel):
    """One column of the experiment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="column name in the report (letters, digits, - _ .)")
    train: bool = Field(True, description="true: fine-tune with the experiment's train config plus `overrides`; "
                        "false: evaluate the base model untrained, with `rope_scaling` applied (or none)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="trained arms: TrainConfig fields that "
                                      "differ from the experiment's train config (e.g. {s2_attn: false})")
    rope_scaling: Literal["linear", "dynamic", "yarn"] | None = Field(
        None, description="untrained arms: RoPE scaling to the experiment's target length (null: the base as it is)")
    factor: float | None = Field(None, gt=1.0, description="untrained arms: the scaling factor (default: target "
                                 "length / the model's context)")

    @model_validator(mode="after")
    def _kind(self) -> "Arm":
        problems = []
        if not self.name or not self.name.replace("-", "_").replace(".", "_").isidentifier():
            problems.append(f"arm name {self.name!r}: use letters, digits, - _ .")
        if self.train and (self.rope_scaling or self.factor):
            problems.append(f"arm {self.name}: rope_scaling/factor are for untrained arms; a trained arm sets "
                            "overrides.rope_scaling")
        if not self.train and self.overrides:
            problems.append(f"arm {self.name}: overrides are for trained arms")
        if self.factor and not self.rope_scaling:
            problems.append(f"arm {self.name}: factor needs rope_scaling")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ExperimentConfig(BaseModel):
    """Arms trained on the same tokens and evaluated side by side."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("experiment", description="experiment name (report title)")
    out: str = Field("runs/experiment", description="folder of the experiment: arms/NAME (training runs, untrained "
                     "model folders), eval/NAME (each arm's report), report/ (all arms: report.md/json, plots), "
                     "results.md and results.json (rewritten after every arm)")
    overwrite: bool = Field(False, description=OVERWRITE)
    train: str = Field(description="the train config (YAML) every trained arm starts from")
    train_overrides: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields set for every "
                                            "trained arm (before the arm's own overrides)")
    target_length: int | None = Field(None, ge=16, description="context the untrained arms' RoPE is scaled to "
                                      "(default: the train config's max_length)")
    arms: list[Arm] = Field(min_length=1, description="the arms, evaluated in this order (untrained ones first "
                            "is cheapest: their results arrive before any training)")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig fields (tasks, passkey, ppl, ...) "
                                 "for every arm; `models` and `out` are set by the experiment")
    compare: list[tuple[str, str]] = Field(default_factory=list, description="pairs [arm, reference]: results.md "
                                           "adds each pair's perplexity ratio arm / reference at every length, with "
                                           "a 95 % paired interval over the same windows (e.g. [longlora, full_attn])")
    only: list[str] | None = Field(None, description="run only these arms (others already finished are still "
                                   "reported); null: all")

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        problems = []
        names = [a.name for a in self.arms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"arms: names given twice: {twice}")
        if self.only and set(self.only) - set(names):
            problems.append(f"only: unknown arm(s) {sorted(set(self.only) - set(names))}")
        for arm, reference in self.compare:
            unknown = sorted({arm, reference} - set(names))
            if unknown:
                problems.append(f"compare [{arm}, {reference}]: unknown arm(s) {unknown}")
            elif arm == reference:
                problems.append(f"compare [{arm}, {reference}]: an arm compared with itself")
        for key in ("models", "out"):
            if key in self.eval:
                problems.append(f"eval.{key}: set by the experiment (each arm is a model; out is OUT/eval/ARM)")
        for key in ("output_dir", "resume"):
            if key in self.train_overrides or any(key in a.overrides for a in self.arms):
                problems.append(f"{key}: set by the experiment (OUT/arms/ARM)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
