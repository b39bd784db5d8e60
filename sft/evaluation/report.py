"""The evaluation report: ``report.json`` (everything), ``report.md`` (tables, one column per model) and PNG plots
(``qa.png`` F1 by length bucket, ``passkey.png`` accuracy heatmaps, ``ppl.png`` perplexity against length).

Input is the results dict :mod:`sft.eval` assembles::

    {"command": str, "config": dict, "models": {name: {...}}, "results": {task: {model: task result}}}
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longqa.atomic import atomic_file, write_text


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write the plots, ``report.md`` and then ``report.json`` (last: it marks the report complete) into `out`,
    each atomically. Returns the written paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = plot_all(report, out)
    report = {**report, "plots": {k: p.name for k, p in paths.items()}}
    write_text(out / "report.md", markdown(report))
    write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return {**paths, "markdown": out / "report.md", "json": out / "report.json"}


# ----------------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: models, then one table per task with the models as columns."""
    names = list(report["models"])
    results = report.get("results", {})
    parts = ["# Evaluation report", "", f"`{report.get('command', 'python -m sft.eval')}`", "",
             "## Models", "",
             _table(["model", "reference", "loaded as", "window (tokens)", "parameters", "load s"],
                    [[n, f"`{m['ref']}`", m.get("kind"), m.get("window"), m.get("parameters"), m.get("load_s")]
                     for n, m in report["models"].items()])]
    if "qa" in results:
        truncation = next(iter(results["qa"].values())).get("truncation", "template")
        parts += ["", f"## Long QA (LongBench scoring, percent; middle truncation: {truncation})", "",
                  _qa_table(results["qa"], names)]
        if all("evidence" in results["qa"][n] for n in names):
            parts += ["", "### Long QA by evidence position (F1, percent)", "", EVIDENCE_NOTE, "",
                      _evidence_table(results["qa"], names)]
    if "short_qa" in results:
        parts += ["", "## Short QA: the same questions with only their own paragraph (LongBench scoring, percent)",
                  "", _qa_table(results["short_qa"], names)]
    if "passkey" in results:
        protocol = next(iter(results["passkey"].values())).get("protocol", "grid")
        parts += ["", f"## Passkey retrieval (accuracy, percent; protocol: {protocol})", "",
                  _passkey_table(results["passkey"], names)]
    if "ppl" in results:
        protocol = next(iter(results["ppl"].values()))["protocol"]
        parts += ["", f"## Perplexity by context length ({protocol} windows)", "", _ppl_table(results["ppl"], names)]
    extra = [k for k in results if k not in BUILT_IN]
    for task in extra:  # tasks with their own section writer (sft.evaluation.tasks)
        from sft.evaluation.tasks import TASKS, get_task

        module = get_task(task) if task in TASKS else None
        if module is not None and hasattr(module, "markdown"):
            parts += ["", module.markdown(results[task], names)]
    if len(names) > 1:
        parts += ["", "## Model comparison (95 % intervals)", "", INTERVALS_NOTE, "", _comparison(results, names)]
    parts += ["", "## Time", "", _time_table(report, names)]
    if "environment" in report:
        parts += ["", "## Reproduce", "", _provenance(report)]
    plots = report.get("plots") or {}
    if plots:
        parts += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()]
    return "\n".join(parts) + "\n"


def _provenance(report: dict[str, Any]) -> str:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [f"- Environment: {versions}; {env['device']}, {env['threads']} threads, {env['dtype']}."]
    for name, m in report["models"].items():
        digest = f"sha256 `{m['sha256']}`" if m.get("sha256") else "not on disk (a Hub id: pin a revision)"
        base = f"; base `{m['base']}` sha256 `{m.get('base_sha256')}`" if m.get("base") else ""
        lines.append(f"- Model {name}: {digest}{base}.")
    for task, d in report.get("data", {}).items():
        digest = f"fingerprint `{d['fingerprint']}` ({d['built']}, split {d['split']})" if "fingerprint" in d \
            else f"sha256 `{d.get('sha256')}`"
        items = ", ".join(f"{k.replace('_', ' ')} `{d[k]}`" if k.endswith("sha256") else f"{k} {d[k]}"
                          for k in ("questions", "ids_sha256", "documents") if k in d)
        lines.append(f"- {task} data `{d['data']}`: {digest}" + (f"; {items}" if items else "") + ".")
    return "\n".join(lines)


BUILT_IN = ("qa", "short_qa", "passkey", "ppl")  # tasks whose sections this module writes
INTERVALS_NOTE = ("Scores are shown as `score [low, high]`: 95 % intervals, Wilson for accuracies (passkey, exact "
                  "match), the bootstrap over questions for F1 and ROUGE-L, over windows for perplexity. Overlapping "
                  "intervals mean the difference is not established at this n. Two models' perplexities on the same "
                  "windows are also compared window by window: their ratio with a paired bootstrap interval, which "
                  "can separate models whose own intervals overlap; likewise two models' F1 on the same questions: the "
                  "mean per-question difference with a paired bootstrap interval.")

#: (label, key) of the QA metrics in the report: ROUGE-L is LongBench's (the rouge package), see metrics.py
QA_METRICS = (("F1", "f1"), ("ROUGE-L (LongBench)", "rouge_l"), ("ROUGE-L on normalized tokens", "rouge_l_normalized"),
              ("exact match", "exact_match"))


def with_ci(value: Any, ci: Sequence[float] | None, digits: int = 2) -> str:
    """``value [low, high]`` (or the value alone without an interval)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _comparison(results: dict[str, Any], names: list[str]) -> str:
    """One row per headline score and model after the first: both values with intervals and whether they overlap."""
    from sft.evaluation.intervals import overlap
    from sft.evaluation.metrics import paired_difference, paired_verdict_zero
    from sft.evaluation.ppl import paired_ratio

    first, rows = names[0], []

    def add(label: str, a: tuple, b: tuple, other: str, digits: int = 2) -> None:
        verdict = overlap(a[1], b[1])
        rows.append([label, f"{first}: {with_ci(*a, digits)}", f"{other}: {with_ci(*b, digits)}",
                     "–" if verdict is None else ("overlap: not established" if verdict else "no overlap: differ")])

    for other in names[1:]:
        for task in ("qa", "short_qa"):
            if task not in results:
                continue
            for label, key in QA_METRICS:
                a, b = (results[task][n]["overall"] for n in (first, other))
                add(f"{task} {label} (n={a['n']})", (a[key], a.get("ci", {}).get(key)),
                    (b[key], b.get("ci", {}).get(key)), other)
            paired = paired_difference(results[task][first], results[task][other], "f1")
            if paired:
                rows.append([f"{task} F1, {other} − {first}, paired over the same {paired['n']} questions",
                             with_ci(paired["difference"], paired["ci"]),
                             f"{other} higher on {paired['higher']}, lower on {paired['lower']}",
                             paired_verdict_zero(paired["ci"], paired["n"])])
        if "qa" in results and all("evidence" in results["qa"][n] for n in (first, other)):
            from sft.evaluation.evidence import paired as paired_by_evidence

            for label, d in paired_by_evidence(results["qa"][first]["evidence"],
                                               results["qa"][other]["evidence"]).items():
                rows.append([f"qa F1 by evidence {label}, {other} − {first}, paired over {d['n']} questions",
                             with_ci(d["difference"], d["ci"]), f"{other} higher on {d['higher']}, lower on "
                             f"{d['lower']}", paired_verdict_zero(d["ci"], d["n"])])
        if "passkey" in results:
            a, b = (results["passkey"][n] for n in (first, other))
            add(f"passkey accuracy (n={a.get('n', len(a['trials']))})", (a["accuracy"], a.get("ci")),
                (b["accuracy"], b.get("ci")), other)
        if "ppl" in results:
            a, b = (results["ppl"][n]["by_length"] for n in (first, other))
            for length in a:
                if length in b:
                    add(f"perplexity at {length} tokens ({a[length]['windows']} windows)",
                        (a[length]["ppl"], a[length].get("ci")), (b[length]["ppl"], b[length].get("ci")), other, 3)
                    paired = paired_ratio(b[length], a[length]) \
                        if results["ppl"][first].get("protocol") != "longlora" else None
                    if paired:
                        rows.append([f"perplexity at {length} tokens, {other} / {first}, paired over the same "
                                     f"{paired['windows']} windows", with_ci(paired["ratio"], paired["ci"], 3),
                                     f"{other} lower in {paired['lower_windows']} of {paired['windows']}",
                                     paired_verdict(paired["ci"], paired["windows"])])
        for task, by_model in results.items():  # other tasks that report headline scores with intervals
            if task in BUILT_IN:
                continue
            for label, (a, b) in _headlines(by_model, first, other):
                add(f"{task} {label}", a, b, other)
    return _table(["score", "", "", "intervals"], rows)


def paired_verdict(ci: Sequence[float], windows: int | None = None) -> str:
    """Whether a paired ratio's interval excludes 1 (`windows`: the windows paired; too few give no verdict)."""
    from sft.evaluation.metrics import MIN_PAIRED

    if windows is not None and windows < MIN_PAIRED:
        return f"{windows} window(s): too few for an interval"
    return "paired interval excludes 1: differ" if ci[0] > 1 or ci[1] < 1 else "paired interval includes 1: " \
        "not established"


def _headlines(by_model: dict[str, Any], first: str, other: str):
    """``(label, ((value, ci), (value, ci)))`` of a task result's ``headline`` dict ({label: {score, ci}})."""
    a, b = by_model[first].get("headline", {}), by_model[other].get("headline", {})
    for label in a:
        if label in b:
            yield label, ((a[label]["score"], a[label].get("ci")), (b[label]["score"], b[label].get("ci")))


def _qa_table(qa: dict[str, Any], names: list[str]) -> str:
    rows = [[label] + [with_ci(qa[n]["overall"][key], qa[n]["overall"].get("ci", {}).get(key)) for n in names]
            for label, key in QA_METRICS]
    rows.append(["questions"] + [qa[n]["overall"]["n"] for n in names])
    rows.append(["prompts cut in the middle"] + [qa[n]["truncated"] for n in names])
    buckets = list(dict.fromkeys(b for n in names for b in qa[n]["buckets"]))
    for bucket in buckets:
        rows.append([f"F1, {bucket} tokens (n)"] + [_with_n(qa[n]["buckets"].get(bucket), "f1") for n in names])
    return _table(["metric", *names], rows)


EVIDENCE_NOTE = ("Questions bucketed by the token position of their evidence (the answer's first token in the gold "
                 "document, else the document's start; datasets built with `distractors`). Each cell: F1 [95 % "
                 "interval] (n; prompts cut in the middle / questions whose evidence was in the part cut). "
                 "**beyond** marks buckets at or past the first model's native window.")


def _evidence_table(qa: dict[str, Any], names: list[str]) -> str:
    first = qa[names[0]]["evidence"]
    native = first["native_window"]
    labels = list(dict.fromkeys(b for n in names for b in qa[n]["evidence"]["buckets"]))

    def cell(scores: dict | None) -> str:
        if not scores or not scores.get("n"):
            return "–"
        return (f"{with_ci(scores['f1'], scores.get('ci', {}).get('f1'))} ({scores['n']}; "
                f"{scores.get('truncated', 0)}/{scores['evidence_cut']})")

    rows = []
    for label in labels:
        beyond = first["buckets"].get(label, {}).get("beyond_native")
        rows.append([f"{label}" + (" **beyond**" if beyond else "")]
                    + [cell(qa[n]["evidence"]["buckets"].get(label)) for n in names])
    rows.append([f"evidence at or beyond {native} tokens"] + [cell(qa[n]["evidence"]["beyond_native"]) for n in names])
    windows = ", ".join(f"{n} {qa[n]['evidence']['native_window']}" for n in names)
    return _table(["evidence tokens", *names], rows) + f"\n\nNative windows: {windows}; evaluated windows: " + \
        ", ".join(f"{n} {qa[n].get('window')}" for n in names) + "."


def _with_n(scores: dict | None, key: str) -> str:
    return "–" if not scores else f"{scores[key]:.2f} ({scores['n']})"


def _passkey_table(passkey: dict[str, Any], names: list[str]) -> str:
    keys = list(dict.fromkeys((length, depth) for n in names for length, row in passkey[n].get("grid", {}).items()
                              for depth in row))
    rows = [[f"{length} tokens, depth {depth}"] + [passkey[n]["grid"].get(length, {}).get(depth) for n in names]
            for length, depth in keys]
    lengths = list(dict.fromkeys(length for n in names for length in passkey[n].get("by_length", {})))
    for length in lengths:
        cells = []
        for n in names:
            got = passkey[n].get("by_length", {}).get(length)
            if not got:
                cells.append("–")
                continue
            tokens = f", {got['mean_tokens']} tokens" if "mean_tokens" in got else ""
            cells.append(f"{with_ci(got['accuracy'], got['ci'], 0)} (n={got['n']}{tokens})")
        label = f"{length} tokens, all depths" if keys else f"length {length} (mean prompt tokens per model)"
        rows.append([label] + cells)
    rows.append(["all"] + [with_ci(passkey[n]["accuracy"], passkey[n].get("ci"), 1) for n in names])
    rows.append(["skipped lengths"] + [", ".join(map(str, passkey[n]["skipped_lengths"])) or "none" for n in names])
    return _table(["length x depth", *names], rows)


def _ppl_table(ppl: dict[str, Any], names: list[str]) -> str:
    lengths = sorted({int(k) for n in names for k in (*ppl[n]["by_length"], *ppl[n]["skipped"])})
    rows = []
    for length in lengths:
        cells = []
        for n in names:
            got = ppl[n]["by_length"].get(str(length))
            cells.append(with_ci(got["ppl"], got.get("ci"), 3) if got
                         else f"skipped ({ppl[n]['skipped'].get(str(length), '?')})")
        rows.append([str(length)] + cells)
    return _table(["context (tokens)", *names], rows)


def _time_table(report: dict[str, Any], names: list[str]) -> str:
    rows = []
    for task, by_model in report.get("results", {}).items():
        rows.append([f"{task}: seconds"] + [by_model[n]["timing"]["seconds"] for n in names])
        rows.append([f"{task}: tokens/s"] + [by_model[n]["timing"]["tokens_per_s"] for n in names])
        if all("prefill_tokens" in by_model[n]["timing"] for n in names):  # generation tasks
            rows.append([f"{task}: prompt tokens computed / all (shared prefixes once)"] +
                        [f"{by_model[n]['timing']['prefill_tokens']} / {by_model[n]['timing']['prompt_tokens']}"
                         for n in names])
    return _table(["", *names], rows)


# ----------------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------------


def plot_all(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Every plot the results allow, as PNG files in `out` (matplotlib's Agg backend; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    results = report.get("results", {})
    paths = {}
    if "qa" in results:
        paths["qa"] = _plot_qa(results["qa"], out / "qa.png")
    if "passkey" in results and all(r.get("grid") for r in results["passkey"].values()):
        paths["passkey"] = _plot_passkey(results["passkey"], out / "passkey.png")
    if "ppl" in results and any(r["by_length"] for r in results["ppl"].values()):
        paths["ppl"] = _plot_ppl(results["ppl"], out / "ppl.png")
    for task in [k for k in results if k not in ("qa", "passkey", "ppl")]:  # tasks with their own plot
        from sft.evaluation.tasks import TASKS, get_task

        module = get_task(task) if task in TASKS else None
        path = module.plot(results[task], out / f"{task}.png") if hasattr(module, "plot") else None
        if path is not None:
            paths[task] = path
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _plot_qa(qa: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(qa)
    groups = ["all"] + list(dict.fromkeys(b for n in names for b in qa[n]["buckets"]))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(groups), 3.6), layout="constrained")
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [qa[name]["overall"]["f1"]] + [qa[name]["buckets"].get(g, {}).get("f1", 0.0) for g in groups[1:]]
        ax.bar([g + k * width - 0.4 + width / 2 for g in range(len(groups))], values, width, label=name)
    ax.set_xticks(range(len(groups)), [g if g == "all" else f"{g} tokens" for g in groups])
    ax.set_ylabel("token F1 (%)")
    ax.set_title("Long QA: F1 by prompt length")
    ax.legend()
    return _save(fig, path)


def _plot_passkey(passkey: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = [n for n in passkey if passkey[n]["grid"]]
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.4), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        grid = passkey[name]["grid"]
        lengths = list(grid)
        depths = list(next(iter(grid.values())))
        values = [[grid[length][depth] for depth in depths] for length in lengths]
        image = ax.imshow(values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(depths)), depths)
        ax.set_yticks(range(len(lengths)), lengths)
        ax.set_xlabel("key depth")
        ax.set_ylabel("prompt tokens")
        ax.set_title(f"{name}: passkey accuracy (%)")
    fig.colorbar(image, ax=axes[0].tolist())
    return _save(fig, path)


def _plot_ppl(ppl: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    lengths = sorted({int(k) for result in ppl.values() for k in result["by_length"]})
    for name, result in ppl.items():
        points = sorted((int(k), v["ppl"]) for k, v in result["by_length"].items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"Perplexity ({next(iter(ppl.values()))['protocol']} windows)")
    ax.legend()
    return _save(fig, path)


def paired_qa(results: dict[str, Any], names: list[str]) -> dict[str, dict[str, dict]]:
    """``{task: {model: paired}}``: each model after the first against the first on the same questions
    (:func:`sft.evaluation.metrics.paired_difference` of F1), for the QA tasks; report.json's ``paired``."""
    from sft.evaluation.metrics import paired_difference

    out: dict[str, dict[str, dict]] = {}
    for task in ("qa", "short_qa"):
        for other in names[1:] if task in results else ():
            paired = paired_difference(results[task][names[0]], results[task][other], "f1")
            if paired:
                out.setdefault(task, {})[other] = paired
    return out


def paired_lines(report: dict[str, Any]) -> list[str]:
    """One line per entry of ``report["paired"]``: a model's F1 minus the first model's, paired over the same
    questions (what ``sft.eval`` prints last: did training change the answers?)."""
    from sft.evaluation.metrics import paired_verdict_zero

    first, lines = next(iter(report["models"]), ""), []
    for task, by_model in report.get("paired", {}).items():
        for other, paired in by_model.items():
            ci = paired["ci"]
            lines.append(f"{task} F1 {other} − {first}: {paired['difference']:+.2f} points "
                         f"[{ci[0]:+.2f}, {ci[1]:+.2f}] paired over {paired['n']} questions ({other} higher on "
                         f"{paired['higher']}, lower on {paired['lower']}): {paired_verdict_zero(ci, paired['n'])}")
    return lines
