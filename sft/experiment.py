"""python -m sft.experiment configs/experiments/EXPERIMENT.yaml [--out DIR] [--only arm1,arm2] [--print-config] [--plan]

Run an ablation (issue 10): every arm of the experiment is either trained (the experiment's train config plus the
arm's overrides: same data, seed and steps, so the same tokens) or untrained (the base model with only a RoPE change),
then evaluated by ``sft.eval`` with one evaluation config. After every arm the combined report is rewritten (so a cut
run still reports what finished): ``OUT/report/`` (report.md/json and plots, models as columns) and ``OUT/results.md``
/ ``results.json`` (one row per arm: training steps, tokens and time, passkey accuracy and perplexity by length).

A staged arm (``from: ARM``) trains from another trained arm's model: that arm's adapter merged once
(``sft.merge``) into ``OUT/merged/ARM``, reused by every arm that starts from it; the arms run in an order where each
comes after the arm it starts from (``--only`` trains, but does not evaluate, the arms an arm needs).

Reruns skip what is finished: a trained arm whose ``OUT/arms/ARM/adapter`` exists with the same train config (and, for
a staged arm, the same starting model), a merge whose ``OUT/merged/ARM/source.json`` names the adapter's current
weights (a cut merge leaves no such folder and is redone), an evaluation whose ``OUT/eval/ARM/report.json`` has the
same evaluation config. Every configuration problem (the experiment's, each arm's train config, the evaluation config)
is reported at once, before any model loads (exit 2). ``--plan`` prints the arms in the order they run, with what each
trains from, and exits.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import ConfigError
from schemas.eval import EvalConfig
from schemas.experiment import Arm, ExperimentConfig, ancestors, stage_order
from schemas.outdir import claim, out_problems
from schemas.resolve import load_recipe
from schemas.resolve import resolve as resolve_config
from schemas.train import TrainConfig

log = logging.getLogger(__name__)

BASE_DIR = "base-model"
MERGED_DIR = "merged"
SOURCE_FILE = "source.json"  # in a merged stage model: the adapter weights it was merged from
STARTED_FROM_FILE = "started_from.json"  # in a staged arm's training folder: the merged model it started from
RESULTS = "results"


# ----------------------------------------------------------------------------------------------------------------------
# Configuration: everything resolved and checked before any work
# ----------------------------------------------------------------------------------------------------------------------


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {**base, **overrides}


def arm_configs(cfg: ExperimentConfig, *, check_paths: bool = True) -> tuple[dict[str, TrainConfig], EvalConfig]:
    """Each trained arm's TrainConfig (the experiment's train config + train_overrides + the arm's overrides, output
    in OUT/arms/ARM) and the EvalConfig every arm is evaluated with; every problem of all of them in one
    :class:`ConfigError`."""
    from schemas.paths import eval_problems, train_problems

    problems: list[str] = []
    trains: dict[str, TrainConfig] = {}
    out = Path(cfg.out)
    recipe = load_recipe(cfg.train)
    # output_dir is the experiment's: an interrupted arm there is resumed and a finished one kept, not an error
    train_paths = (lambda c: [p for p in train_problems(c) if not p.startswith("output_dir:")]) if check_paths \
        else None
    for arm in cfg.arms:
        if not arm.train:
            continue
        data = merged(merged(recipe, cfg.train_overrides), arm.overrides)
        data.update(output_dir=str(out / "arms" / arm.name), resume=False)
        paths = train_paths
        if arm.from_ is not None:  # the merged model of the arm it starts from is made by the experiment
            data["model"] = str(stage_model_dir(out, arm.from_))
            paths = train_paths and (lambda c: [p for p in train_paths(c) if not p.startswith("model:")])
        try:
            trains[arm.name] = resolve_config(TrainConfig, data, {}, f"arm {arm.name}", paths)
        except ConfigError as e:
            problems.append(str(e))
    by_name = {a.name: a for a in cfg.arms}
    for name, train in trains.items():
        parent = trains.get(by_name[name].from_ or "")
        if parent is not None and train.rope_scaling != parent.rope_scaling:
            problems.append(f"arm {name}: rope_scaling {train.rope_scaling}: it starts from "
                            f"{by_name[name].from_}, whose merged model carries {parent.rope_scaling} RoPE scaling "
                            f"(to {parent.max_length} tokens); set rope_scaling: {parent.rope_scaling}")
    # the arms' models do not exist before the experiment makes them: only the data are checked (each arm's report
    # goes to OUT/eval/NAME, inside the experiment's own folder, whose rule is the experiment's)
    eval_paths = (lambda c: [p for p in eval_problems(c) if not p.startswith(("models.", "out:"))]) \
        if check_paths else None
    evaluation = None
    try:
        evaluation = resolve_config(EvalConfig, {**cfg.eval, "models": {a.name: a.name for a in cfg.arms},
                                                 "out": str(out / "eval")}, {}, "eval", eval_paths)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return trains, evaluation


def experiment_problems(cfg: ExperimentConfig) -> list[str]:
    """For the command line's checks: the train config file, and every problem of the arms and the evaluation."""
    if not Path(cfg.train).is_file():
        return [f"train: {cfg.train} is not a file (a train config, e.g. configs/train/extend_smollm2_16k.yaml)"]
    problems = out_problems("out", cfg.out, "sft.experiment", inputs=[cfg.train], overwrite=cfg.overwrite is True,
                            replaces=False)
    if problems:  # the arms' checks would judge a folder that is not the experiment's
        return problems
    try:
        arm_configs(cfg)
    except ConfigError as e:
        return [line.strip() for line in str(e).splitlines() if line.strip()]
    return []


def target_length(cfg: ExperimentConfig, recipe: dict[str, Any]) -> int:
    return cfg.target_length or int(merged(recipe, cfg.train_overrides).get(
        "max_length", TrainConfig.model_fields["max_length"].default))


# ----------------------------------------------------------------------------------------------------------------------
# Untrained arms: the base model with a RoPE change, as a model folder sft.eval loads
# ----------------------------------------------------------------------------------------------------------------------


def base_model_folder(ref: str, out: Path) -> Path:
    """The base model as a safetensors folder (a GGUF is dequantized once, float32), shared by the untrained arms."""
    folder = out / BASE_DIR
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from sft.merge import _write_atomically
    from sft.model import load_model

    log.info("experiment: writing the base model %s as safetensors to %s", ref, folder)
    model, tokenizer = load_model(ref)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _write_atomically(folder, write)


def untrained_model(arm: Arm, base: Path, target: int, out: Path) -> Path:
    """``out/model``: the base folder's files (linked) with a config whose RoPE covers `target` tokens.

    ``rope_scaling: null`` opens the window to `target` with unchanged RoPE (positions beyond the pretraining context
    extrapolate: the "no scaling" baseline), or with ``window: native`` keeps the model's window; otherwise
    :func:`sft.model.apply_rope_scaling` with `arm.rope_scaling` (``factor``: target = context x factor)."""
    from sft.model import apply_rope_scaling, context_length, load_config

    folder = out / "model"
    config = load_config(str(base))
    context = context_length(config)
    if arm.rope_scaling is None:
        if arm.window == "target":
            config.max_position_embeddings = max(target, config.max_position_embeddings)
    else:
        apply_rope_scaling(config, round(context * arm.factor) if arm.factor else target, kind=arm.rope_scaling)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for file in base.iterdir():
        if file.is_file() and file.name != "config.json":
            os.symlink(os.path.relpath(file.resolve(), folder), folder / file.name)
    config.save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Trained arms
# ----------------------------------------------------------------------------------------------------------------------


def trained_already(train: TrainConfig, started_from: dict[str, str] | None = None) -> bool:
    """The arm's adapter exists and was trained with exactly this configuration (and, for a staged arm, from the
    model `started_from` identifies)."""
    from sft.train import ADAPTER_DIR, CONFIG_FILE

    out = Path(train.output_dir)
    if not (out / ADAPTER_DIR / "adapter_config.json").is_file() or not (out / CONFIG_FILE).is_file():
        return False
    if read_json(out / STARTED_FROM_FILE) != started_from:
        return False
    saved = yaml.safe_load((out / CONFIG_FILE).read_text(encoding="utf-8"))
    return {**saved, "resume": False} == {**train.model_dump(mode="json"), "resume": False}


def train_arm(train: TrainConfig, progress: bool = True, started_from: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """Train one arm (continuing from its last checkpoint when an earlier run was cut, unless a staged arm's starting
    model changed since) unless it is finished; return what the results table shows about its training."""
    from sft.train import ADAPTER_DIR, last_complete_checkpoint, run

    out = Path(train.output_dir)
    if not trained_already(train, started_from):
        same_start = read_json(out / STARTED_FROM_FILE) == started_from
        if out.is_dir() and same_start and last_complete_checkpoint(out) is not None:
            train = train.model_copy(update={"resume": True})
        elif out.is_dir():
            shutil.rmtree(out)
        if started_from is not None:
            claim(out, "sft.run")  # the arm's training folder, marked before the run writes into it
            (out / STARTED_FROM_FILE).write_text(json.dumps(started_from, indent=1) + "\n", encoding="utf-8")
        run(train, progress=progress)
    return {"adapter": str(out / ADAPTER_DIR), **training_summary(out, train)}


def training_summary(out: Path, train: TrainConfig) -> dict[str, Any]:
    """Steps, tokens, seconds and losses of a finished arm, from its metrics.jsonl and data_stats.json."""
    from sft.train import DATA_STATS_FILE, METRICS_FILE

    lines = [json.loads(line) for line in (out / METRICS_FILE).read_text(encoding="utf-8").splitlines() if line]
    losses = [(m["step"], m["loss"]) for m in lines if "loss" in m]
    final = next((m for m in reversed(lines) if "train_runtime" in m), {})
    steps = max((m["step"] for m in lines), default=0)
    per_step = train.per_device_batch_size * train.gradient_accumulation_steps * train.max_length
    stats = json.loads((out / DATA_STATS_FILE).read_text(encoding="utf-8"))
    seconds = train_seconds(lines) or final.get("train_runtime")
    return {"steps": steps, "tokens": steps * per_step, "train_seconds": seconds,
            "first_loss": losses[0][1] if losses else None, "last_loss": losses[-1][1] if losses else None,
            "data_tokens": stats.get("tokens"), "max_train_seconds": train.max_train_seconds,
            "max_steps": train.max_steps}


def train_seconds(lines: list[dict]) -> float | None:
    """Wall seconds of the optimizer steps that made the adapter, from the log lines' ``window_seconds`` and
    ``window_steps``.

    A resumed run logs again the steps after its checkpoint: each step keeps the time of the last run that logged it,
    so the parts of an interrupted and resumed run add up (Trainer's ``train_runtime`` counts only the last part).
    None for logs written before these fields existed."""
    per_step: dict[int, float] = {}
    for line in lines:
        if "window_seconds" in line and line.get("window_steps"):
            share = line["window_seconds"] / line["window_steps"]
            per_step.update({step: share for step in range(line["step"] - line["window_steps"] + 1, line["step"] + 1)})
    return round(sum(per_step.values()), 1) if per_step else None


# ----------------------------------------------------------------------------------------------------------------------
# Staged arms: a trained arm's model, merged once, as the starting model of the arms with `from`
# ----------------------------------------------------------------------------------------------------------------------


def stage_model_dir(out: Path, name: str) -> Path:
    return Path(out) / MERGED_DIR / name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_source(train: TrainConfig) -> dict[str, str]:
    """What identifies a finished arm's trained model: its adapter folder and the hash of its weights."""
    from sft.merge import ADAPTER_WEIGHTS
    from sft.train import ADAPTER_DIR

    adapter = Path(train.output_dir) / ADAPTER_DIR
    return {"adapter": str(adapter), "sha256": file_sha256(adapter / ADAPTER_WEIGHTS)}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stage_model(name: str, train: TrainConfig, out: Path) -> Path:
    """``OUT/merged/NAME``: arm `name`'s adapter (trained already) merged into its base by
    :func:`sft.merge.merge_adapter`, once: kept while its ``source.json`` names the adapter's current weights. The merge
    writes to a temporary folder renamed into place when complete and ``source.json`` comes last, so a killed merge is
    redone."""
    from sft.merge import merge_adapter

    folder, source = stage_model_dir(out, name), adapter_source(train)
    if read_json(folder / SOURCE_FILE) == source and (folder / "config.json").is_file():
        log.info("experiment: %s's merged model in %s; kept", name, folder)
        return folder
    log.info("experiment: merging %s's adapter into %s", name, folder)
    merge_adapter(source["adapter"], folder)
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")
    return folder


def prepare_stages(cfg: ExperimentConfig, arm: Arm, trains: dict[str, TrainConfig], progress: bool
                   ) -> dict[str, str] | None:
    """Before a staged arm trains: every arm it starts from trained (kept when finished) and merged, nearest last.
    Returns what identifies its starting model (None for an arm without ``from``)."""
    started_from = None
    for name in reversed(ancestors(cfg.arms, arm.name)):  # the first stage first
        train_arm(trains[name], progress, started_from)
        started_from = read_json(stage_model(name, trains[name], Path(cfg.out)) / SOURCE_FILE)
    return started_from


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation and the combined report
# ----------------------------------------------------------------------------------------------------------------------


def evaluate_arm(name: str, ref: str, evaluation: EvalConfig, out: Path, *, fresh: bool) -> dict[str, Any]:
    """``sft.eval`` of one arm into ``out`` (its report.json), unless an identical evaluation is there and the model
    did not change (`fresh` False)."""
    from sft.eval import evaluate

    cfg = evaluation.model_copy(update={"models": {name: ref}, "out": str(out)})
    done = out / "report.json"
    if done.is_file() and not fresh:
        report = json.loads(done.read_text(encoding="utf-8"))
        if report.get("config") == cfg.model_dump(mode="json"):
            log.info("experiment: %s: evaluation already in %s; kept", name, out)
            return report
    return evaluate(cfg, command=f"python -m sft.experiment (arm {name})", progress=False,
                    say=lambda m: log.info("%s", m))


def combine(reports: dict[str, dict[str, Any]], title: str) -> dict[str, Any]:
    """One report with the arms as columns, from the arms' single-model reports (in arm order)."""
    first = next(iter(reports.values()))
    combined: dict[str, Any] = {"command": title, "config": {**first["config"], "models": {}},
                                "environment": first.get("environment"), "models": {}, "results": {}, "data": {}}
    for name, report in reports.items():
        combined["models"].update(report["models"])
        combined["config"]["models"].update(report["config"]["models"])
        for task, by_model in report["results"].items():
            combined["results"].setdefault(task, {}).update(by_model)
        combined["data"].update(report.get("data", {}))
    combined["seconds"] = round(sum(r.get("seconds", 0) for r in reports.values()), 2)
    return combined


def headline(task: str, result: dict[str, Any]) -> dict[str, Any]:
    """The per-length numbers of one task result for the results table: passkey accuracy (mean over depths),
    perplexity; other tasks (e.g. RULER) their overall accuracy/score."""
    if task == "passkey":
        return {f"passkey@{n}": round(sum(row.values()) / len(row), 1) for n, row in result["grid"].items() if row}
    if task == "ppl":
        return {f"ppl@{n}": v["ppl"] for n, v in result["by_length"].items()}
    if task == "ruler":
        return {f"ruler@{n}": v for n, v in result.get("average", {}).items()}
    for key in ("accuracy", "score"):
        if isinstance(result.get(key), (int, float)):
            return {task: result[key]}
    if isinstance(result.get("overall"), dict):
        return {f"{task} {k}": v for k, v in result["overall"].items() if isinstance(v, (int, float)) and k != "n"}
    return {}


def results_table(cfg: ExperimentConfig, rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per arm, training figures then the evaluation headline numbers."""
    columns = list(dict.fromkeys(k for r in rows.values() for k in r.get("scores", {})))
    header = ["arm", "kind", "steps", "tokens", "train s", "loss first → last", *columns]
    lines = [f"# {cfg.name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        t = r.get("training") or {}
        loss = (f"{t['first_loss']:.3f} → {t['last_loss']:.3f}" if t.get("first_loss") is not None else "–")
        cells = [name, r["kind"], t.get("steps", "–"), t.get("tokens", "–"),
                 round(t["train_seconds"]) if t.get("train_seconds") else "–", loss]
        cells += [r.get("scores", {}).get(c, "–") for c in columns]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "passkey@N: accuracy in percent at a prompt of N tokens (mean over depths); ppl@N: perplexity with "
              "N-token windows on the held-out documents; '–': not run or skipped (beyond the model's window). "
              "Full tables and plots: report/report.md."]
    return "\n".join(lines) + "\n"


def comparisons(cfg: ExperimentConfig, reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``cfg.compare``'s pairs that both have perplexity results: the ratio arm / reference at each length both
    scored on the same windows, with its paired 95 % interval (:func:`sft.evaluation.ppl.paired_ratio`)."""
    from sft.evaluation.ppl import paired_comparisons

    ppl = {name: result["by_length"] for name, report in reports.items()
           for result in [report["results"].get("ppl", {}).get(name)] if result and result["protocol"] != "longlora"}
    return paired_comparisons(cfg.compare, ppl)


def qa_comparisons(cfg: ExperimentConfig, reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``cfg.compare``'s pairs whose QA results both hold evidence positions (a distractor build): arm − reference F1
    per evidence bucket and beyond the reference's native window, paired over the same questions
    (:func:`sft.evaluation.evidence.paired`)."""
    from sft.evaluation.evidence import paired

    evidence = {name: result["evidence"] for name, report in reports.items()
                for result in [report["results"].get("qa", {}).get(name)] if result and result.get("evidence")}
    return [{"arm": arm, "reference": reference, "by_evidence": paired(evidence[reference], evidence[arm])}
            for arm, reference in cfg.compare if arm in evidence and reference in evidence]


def qa_comparisons_table(found: list[dict[str, Any]]) -> str:
    """Markdown: one row per pair and evidence bucket."""
    from sft.evaluation.metrics import paired_verdict_zero

    lines = ["## Paired QA F1 by evidence position", "", "| arm − reference | evidence at token | questions | arm F1 | "
             "reference F1 | arm / reference | difference [95 % paired interval] | arm higher / lower | verdict |",
             "|---|---|---:|---:|---:|---:|---|---|---|"]
    for pair in found:
        for label, d in pair["by_evidence"].items():
            ratio = f"{d['second_f1'] / d['first_f1']:.2f}x" if d["first_f1"] else "–"
            verdict = paired_verdict_zero(d["ci"], d["n"])
            lines.append(f"| {pair['arm']} − {pair['reference']} | {label} | {d['n']} | {d['second_f1']:.2f} | "
                         f"{d['first_f1']:.2f} | {ratio} | {d['difference']:+.2f} [{d['ci'][0]:+.2f}, "
                         f"{d['ci'][1]:+.2f}] | {d['higher']} / {d['lower']} | {verdict} |")
    lines += ["", "F1 in points on the held-out questions both arms answered, grouped by where the question's evidence "
              "lies (the reference answer's first token in the prompt); 'beyond N': every question whose evidence is "
              "at or past the reference's native window. The interval resamples questions with both arms' scores "
              "together (a paired bootstrap)."]
    return "\n".join(lines) + "\n"


def comparisons_table(found: list[dict[str, Any]]) -> str:
    """Markdown: one row per pair and length."""
    from sft.evaluation.report import paired_verdict

    lines = ["## Paired perplexity", "", "| arm / reference | length | ppl ratio [95 % paired interval] | arm lower "
             "in | verdict |", "|---|---:|---|---:|---|"]
    for pair in found:
        for length, r in pair["ppl_ratio"].items():
            lines.append(f"| {pair['arm']} / {pair['reference']} | {length} | {r['ratio']:.4f} [{r['ci'][0]:.4f}, "
                         f"{r['ci'][1]:.4f}] | {r['lower_windows']} of {r['windows']} windows | "
                         f"{paired_verdict(r['ci'], r['windows'])} |")
    lines += ["", "The two arms' perplexity on the same held-out windows: below 1 the arm is better. The interval "
              "resamples windows with both arms' scores together (a paired bootstrap)."]
    return "\n".join(lines) + "\n"


def write_results(cfg: ExperimentConfig, rows: dict[str, dict[str, Any]], reports: dict[str, dict[str, Any]]
                  ) -> Path:
    """Rewrite OUT/results.md, OUT/results.json and OUT/report/ from what has finished."""
    from longqa.atomic import write_text
    from sft.evaluation.report import write_report

    out = Path(cfg.out)
    if reports:
        write_report(combine(reports, f"python -m sft.experiment ({cfg.name})"), out / "report")
    found, qa = comparisons(cfg, reports), qa_comparisons(cfg, reports)
    write_text(out / f"{RESULTS}.json", json.dumps({"experiment": cfg.model_dump(mode="json"), "arms": rows,
                                                     "comparisons": found, "qa_comparisons": qa},
                                                    indent=1, ensure_ascii=False) + "\n")
    write_text(out / f"{RESULTS}.md", results_table(cfg, rows) + ("\n" + comparisons_table(found) if found else "")
               + ("\n" + qa_comparisons_table(qa) if qa else ""))
    return out / f"{RESULTS}.md"


# ----------------------------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------------------------


def run_experiment(cfg: ExperimentConfig, trains: dict[str, TrainConfig], evaluation: EvalConfig,
                   progress: bool = True) -> dict[str, Any]:
    """Every arm in order: prepare (untrained) or train, evaluate, rewrite the results. Returns the results rows.
    ``progress=False`` hides the training progress bars."""
    out = claim(cfg.out, "sft.experiment", inputs=[cfg.train], overwrite=cfg.overwrite)  # issue 24
    (out / "experiment.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    recipe = load_recipe(cfg.train)
    target = target_length(cfg, recipe)
    rows: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for arm in stage_order(cfg.arms):
        if cfg.only and arm.name not in cfg.only:
            done = out / "eval" / arm.name / "report.json"
            if done.is_file():  # finished by an earlier run: still a column of the report
                reports[arm.name] = json.loads(done.read_text(encoding="utf-8"))
                previous = json.loads((out / f"{RESULTS}.json").read_text()).get("arms", {}) \
                    if (out / f"{RESULTS}.json").is_file() else {}
                rows[arm.name] = previous.get(arm.name, {"kind": "trained" if arm.train else "untrained"})
            continue
        started = time.perf_counter()
        if arm.train:
            started_from = prepare_stages(cfg, arm, trains, progress)
            fresh = not trained_already(trains[arm.name], started_from)
            log.info("experiment: arm %s: %s", arm.name, "training" if fresh else "trained already; kept")
            training = train_arm(trains[arm.name], progress, started_from)
            ref, row = training["adapter"], {"kind": "trained" + (f" from {arm.from_}" if arm.from_ else ""),
                                             "training": training, "overrides": arm.overrides}
        else:
            base_ref = merged(recipe, cfg.train_overrides).get("model", TrainConfig.model_fields["model"].default)
            ref = str(untrained_model(arm, base_model_folder(base_ref, out), target, out / "arms" / arm.name))
            fresh = False
            row = {"kind": f"untrained, RoPE {arm.rope_scaling or 'unchanged'}"
                   + (f" x{arm.factor}" if arm.factor else "") + (", native window" if arm.window == "native" else ""),
                   "training": None}
        log.info("experiment: arm %s: evaluating %s", arm.name, ref)
        report = evaluate_arm(arm.name, ref, evaluation, out / "eval" / arm.name, fresh=fresh)
        reports[arm.name] = report
        row["scores"] = {k: v for task, by_model in report["results"].items()
                         for k, v in headline(task, by_model[arm.name]).items()}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows[arm.name] = row
        path = write_results(cfg, rows, reports)
        log.info("experiment: arm %s done in %.0f s; results so far: %s", arm.name, row["seconds"], path)
    if rows:  # finished arms read back after the last one run (``--only``) are reported too
        write_results(cfg, rows, reports)
    return rows


def plan(cfg: ExperimentConfig) -> str:
    """The arms in the order they run: what each starts from and trains on, or its RoPE change."""
    trains, _ = arm_configs(cfg, check_paths=False)
    lines = [f"{cfg.name}: {len(cfg.arms)} arm(s) in this order (out: {cfg.out})"]
    for i, arm in enumerate(stage_order(cfg.arms), 1):
        if not arm.train:
            lines.append(f"{i}. {arm.name}: untrained, RoPE {arm.rope_scaling or 'unchanged'}"
                         + (f" x{arm.factor}" if arm.factor else "")
                         + (", native window" if arm.window == "native" else ""))
            continue
        t = trains[arm.name]
        start = f"from {arm.from_} (merged into {t.model})" if arm.from_ else f"from {t.model}"
        budget = f"{t.max_steps} steps" + (f" or {t.max_train_seconds:g} s" if t.max_train_seconds else "")
        lines.append(f"{i}. {arm.name}: trained {start}; {t.mode} on {t.data}, {t.max_length} tokens, RoPE "
                     f"{t.rope_scaling}, {'S2-Attn' if t.s2_attn else 'full attention'}, {budget}")
    return "\n".join(lines)


def experiment(cfg: ExperimentConfig, options) -> None:
    rows = run_experiment(cfg, *arm_configs(cfg, check_paths=False), progress=options.progress)
    log.info("experiment: %d arm(s) finished; %s", len(rows), Path(cfg.out) / f"{RESULTS}.md")


def main(argv: list[str] | None = None) -> int:
    from schemas.cli import Command

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # python -m sft.experiment EXPERIMENT.yaml ... = --config EXPERIMENT.yaml
        argv = ["--config", *argv]
    command = Command("python -m sft.experiment", __doc__, ExperimentConfig, paths=experiment_problems)
    if "--plan" in argv:  # the command's own option, not a field of the configuration
        argv.remove("--plan")
        return command.main(argv, lambda cfg, options: print(plan(cfg), flush=True))
    return command.main(argv, experiment)


if __name__ == "__main__":
    sys.exit(main())
