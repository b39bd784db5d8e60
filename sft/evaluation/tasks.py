"""The evaluation tasks by name. ``python -m sft.eval --tasks a,b`` runs them in order on each loaded model.

A task is a module of :mod:`sft.evaluation` with

- ``run(model, tokenizer, cfg, ctx) -> dict``: the task on one loaded model (eval mode, dense attention); `cfg` is
  the task's own section of :class:`schemas.eval.EvalConfig` (``EvalConfig.<name>``), `ctx` a :class:`TaskContext`.
  Returns the task's JSON-able result, with a ``timing`` dict (``seconds``, ``tokens_per_s``).
- ``summary(result) -> str``: the headline scores in one line, for the log.
- ``data_provenance(cfg, cache) -> dict`` (optional): fingerprints of the data the task read.
- ``markdown(results_by_model, names) -> str`` (optional, tasks other than qa/passkey/ppl): the task's report.md
  section; ``plot(results_by_model, path) -> Path | None`` (optional, likewise): its PNG, ``<task>.png``. A result's
  ``headline`` dict (``{label: {"score": float, "ci": [low, high]}}``, percent) puts those scores into the report's
  model comparison (:func:`sft.evaluation.intervals` makes the intervals).

Adding a task: a module with these functions, its config section in ``schemas/eval.py``, one line in :data:`TASKS`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

#: task name -> module (imported when the task runs, so ``import sft.evaluation`` stays light)
TASKS: dict[str, str] = {
    "qa": "sft.evaluation.qa",
    "short_qa": "sft.evaluation.short_qa",
    "passkey": "sft.evaluation.passkey",
    "ppl": "sft.evaluation.ppl",
    "ruler": "sft.evaluation.ruler",  # opt-in (issue 9)
}


@dataclass
class TaskContext:
    """What a task needs besides the model and its config section.

    `model_name` names the model in the report; `window` is the context the model covers (tokens; capped by
    ``max_context``); `out` the report folder (a task may write files there, e.g. predictions); `cache` holds what a
    task reads once and shares across models (questions, documents), keyed by the task; `too_long` says what to do
    with lengths beyond the window ('skip' or 'error'); `say` prints a status line."""

    model_name: str
    window: int
    out: Path
    cache: dict[str, Any] = field(default_factory=dict)
    too_long: str = "skip"
    progress: bool = False
    say: Callable[[str], None] = print


def get_task(name: str) -> ModuleType:
    """The module of task `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return importlib.import_module(TASKS[name])
