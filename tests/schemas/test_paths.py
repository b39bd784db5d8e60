"""schemas.paths: the path rules every command checks before heavy work (one rule each, shared with the readers)."""
from __future__ import annotations

import json

import pytest

from schemas.build import InputSpec
from schemas.paths import file_problem, input_problems, model_problem, resolve_path


def test_file_problem_names_the_field_and_what_is_wrong(tmp_path):
    present = tmp_path / "a.jsonl"
    present.write_text("{}\n")
    assert file_problem("qa.data", str(present)) is None
    assert file_problem("qa.data", str(tmp_path / "b.jsonl")) == f"qa.data: {tmp_path / 'b.jsonl'} does not exist"
    assert file_problem("deny_docs", str(tmp_path), "list") == f"deny_docs: {tmp_path} is a folder; give the list"
    assert file_problem("x", None) is None  # a field of the wrong type is reported by its own check, not here


def test_pkg_references_resolve_without_importing_the_package():
    assert resolve_path("pkg:json/__init__.py") == resolve_path(json.__file__)
    with pytest.raises(FileNotFoundError, match="package module 'no_such_module' is not installed"):
        resolve_path("pkg:no_such_module/x")


def test_model_problem_tells_a_model_an_adapter_a_gguf_and_a_hub_id_apart(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert model_problem("model", str(tmp_path / "model")) is None
    assert model_problem("model", str(tmp_path / "m.gguf")) is None
    assert model_problem("model", "org/some-model") is None  # a Hub id: checked when it loads
    assert "no config.json" in model_problem("model", str(tmp_path / "adapter"))
    assert model_problem("models.tuned", str(tmp_path / "adapter"), adapters=True) is None
    assert model_problem("model", str(tmp_path / "none"), hint=" (train it)").endswith("does not exist (train it)")


@pytest.mark.parametrize("fmt,make,expected", [
    ("jsonl", None, "does not exist"),
    ("jsonl", "file", None),
    ("docs", "file", "is not a folder (format docs reads"),
    ("docs", "folder", "inputs.0.qa_file: "),
    ("docs", "folder+qa", None),
    ("synthetic", "file", "is not a folder (format synthetic reads"),
    ("hf-disk", "folder", None),
])
def test_input_problems_one_rule_per_format(tmp_path, fmt, make, expected):
    path = tmp_path / "input"
    if make == "file":
        path.write_text("{}\n")
    elif make and make.startswith("folder"):
        path.mkdir()
        if make == "folder+qa":
            (path / "qa.jsonl").write_text("")
    problems = input_problems(InputSpec(path=str(path), format=fmt), "inputs.0.path")
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0]


def test_the_readers_raise_what_the_build_check_reports(tmp_path):
    from longqa.readers import read_input

    spec = InputSpec(path=str(tmp_path / "missing"), format="squad")
    [problem] = input_problems(spec, "inputs.0.path")
    with pytest.raises(FileNotFoundError) as raised:
        read_input(spec)
    assert problem.partition(": ")[2] in str(raised.value)
