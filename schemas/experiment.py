"""`ExperimentConfig`: an ablation run by `python -m sft.experiment` (issue 10). Mirrored in `configs/experiments/`.

An experiment is a list of arms. A *trained* arm is a set of overrides of one train config (`train`), so every
trained arm sees the same data in the same order (same seed, same steps: the same tokens) unless it overrides that; an
*untrained* arm is the base model with only a RoPE change (or none). A *staged* arm (`from: ARM`) is trained from
another trained arm's model, merged once (the paper's two stages: extension on long plain text, then SFT on long QA,
`from: extend`); arms run in an order where every arm comes after the arm it starts from. All arms are evaluated by
`sft.eval` with one evaluation config (`eval`) into one report, models as columns. Nothing here opens a file or imports
torch.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from schemas.outdir import OVERWRITE


class Arm(BaseModel):
    """One column of the experiment."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="column name in the report (letters, digits, - _ .)")
    train: bool = Field(True, description="true: fine-tune with the experiment's train config plus `overrides`; "
                        "false: evaluate the base model untrained, with `rope_scaling` applied (or none)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="trained arms: TrainConfig fields that "
                                      "differ from the experiment's train config (e.g. {s2_attn: false})")
    rope_scaling: Literal["linear", "dynamic", "yarn"] | None = Field(
        None, description="untrained arms: RoPE scaling to the experiment's target length (null: the base as it is)")
    factor: float | None = Field(None, gt=1.0, description="untrained arms: the scaling factor (default: target "
                                 "length / the model's context)")
    window: Literal["target", "native"] = Field(
        "target", description="untrained arms without rope_scaling: 'target' opens the window to the experiment's "
        "target length (positions beyond the pretraining context extrapolate); 'native' keeps the model's own window "
        "(the evaluation cuts longer QA prompts in the middle and skips longer passkey/perplexity lengths)")
    from_: str | None = Field(None, alias="from", description="trained arms: start from this trained arm's model "
                              "(its adapter merged once into OUT/merged/ARM, shared by every arm that starts from it) "
                              "instead of the train config's model; null: the train config's model")

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
        if self.window == "native" and (self.train or self.rope_scaling):
            problems.append(f"arm {self.name}: window native is for untrained arms without rope_scaling")
        if self.from_ is not None and not self.train:
            problems.append(f"arm {self.name}: from is for trained arms (an untrained arm is the base model)")
        if self.from_ is not None and "model" in self.overrides:
            problems.append(f"arm {self.name}: from {self.from_} and overrides.model both name the starting model")
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
                            "is cheapest: their results arrive before any training), except that an arm with `from` "
                            "comes after the arm it starts from")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig fields (tasks, passkey, ppl, ...) "
                                 "for every arm; `models` and `out` are set by the experiment")
    compare: list[tuple[str, str]] = Field(default_factory=list, description="pairs [arm, reference]: results.md "
                                           "adds each pair's perplexity ratio arm / reference at every length, with "
                                           "a 95 % paired interval over the same windows (e.g. [longlora, full_attn]), "
                                           "and on QA built with distractors the F1 difference arm − reference by "
                                           "evidence position, paired over the same questions")
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
        problems += stage_problems(self.arms)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def stage_problems(arms: list[Arm]) -> list[str]:
    """What is wrong with the arms' ``from``: an unknown arm, an untrained one, an arm starting from itself, a cycle."""
    by_name = {a.name: a for a in arms}
    problems = []
    for arm in arms:
        if arm.from_ is None:
            continue
        if arm.from_ == arm.name:
            problems.append(f"arm {arm.name}: from {arm.from_}: an arm cannot start from itself")
        elif arm.from_ not in by_name:
            problems.append(f"arm {arm.name}: from {arm.from_}: unknown arm (arms: {', '.join(by_name)})")
        elif not by_name[arm.from_].train:
            problems.append(f"arm {arm.name}: from {arm.from_}: an untrained arm has no trained model to start from "
                            "(start from a trained arm, or give the RoPE change in overrides)")
    if problems:
        return problems
    cycles: list[list[str]] = []
    for arm in arms:  # follow the chain of `from`: a cycle comes back to the arm it started at
        seen, name = [arm.name], arm.from_
        while name is not None and name not in seen:
            seen.append(name)
            name = by_name[name].from_
        if name == arm.name and not any(set(seen) == set(c) for c in cycles):
            cycles.append(seen)
            problems.append(f"arms: from cycle: {' -> '.join([*seen, arm.name])} (no arm of it can be trained first)")
    return problems


def stage_order(arms: list[Arm]) -> list[Arm]:
    """The arms in their listed order, except that an arm comes after the arm it starts from (``from``); the arms
    must be free of :func:`stage_problems`."""
    by_name, placed, order = {a.name: a for a in arms}, set(), []

    def place(arm: Arm) -> None:
        if arm.name in placed:
            return
        if arm.from_ is not None:
            place(by_name[arm.from_])
        placed.add(arm.name)
        order.append(arm)

    for arm in arms:
        place(arm)
    return order


def ancestors(arms: list[Arm], name: str) -> list[str]:
    """The arms `name` starts from, nearest first (``from``, its ``from``, ...)."""
    by_name, chain = {a.name: a for a in arms}, []
    while by_name[name].from_ is not None:
        name = by_name[name].from_
        chain.append(name)
    return chain
