"""The task registry: every task the config accepts is a module with the task interface."""
from __future__ import annotations

import inspect
import typing

import pytest

from schemas.eval import EvalConfig
from sft.evaluation.tasks import TASKS, get_task


def test_every_configurable_task_is_registered_with_its_section():
    names = typing.get_args(typing.get_args(EvalConfig.model_fields["tasks"].annotation)[0])
    assert set(names) <= set(TASKS)
    for name in names:
        module = get_task(name)
        assert list(inspect.signature(module.run).parameters) == ["model", "tokenizer", "cfg", "ctx"]
        assert callable(module.summary) and name in EvalConfig.model_fields  # its own config section


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown task .nope. .known: qa, "):
        get_task("nope")
