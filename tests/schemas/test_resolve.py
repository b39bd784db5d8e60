"""schemas.resolve: only the errors a user's input causes become problems; a checker's or validator's bug surfaces."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, model_validator

from schemas.errors import ConfigError, DataError
from schemas.resolve import check, resolve


class Section(BaseModel):
    size: int = Field(4, ge=1)


class Cfg(BaseModel):
    name: str
    steps: int = Field(10, ge=1)
    warmup: int = 0
    section: Section = Section()

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup > self.steps:  # a TypeError when `steps` holds no int: the lenient copy's raw value
            raise ValueError("warmup: more than steps")
        return self


class Buggy(BaseModel):
    steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _bug(self):
        if self.steps < 1:
            return self.missing_attribute  # a bug, reached only on the lenient copy (steps 0 fails its bound)
        return self


def test_a_path_checker_with_a_bug_is_a_traceback_not_no_problems():
    def checker(cfg):
        return [cfg.name.nope]  # AttributeError: a bug in the checker

    with pytest.raises(AttributeError):
        check(Cfg, {"name": "x"}, checker)
    with pytest.raises(TypeError):
        check(Cfg, {"name": "x"}, lambda cfg: [len(cfg.steps)])


def test_user_errors_from_a_path_checker_are_problems(tmp_path):
    def unreadable(cfg):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data"))

    _, problems = check(Cfg, {"name": "x"}, unreadable)
    assert problems == [f"{tmp_path / 'data'}: Permission denied"]

    def data(cfg):
        raise DataError("data: data.jsonl line 3 is not JSON")

    with pytest.raises(ConfigError, match="data.jsonl line 3"):
        resolve(Cfg, {"name": "x"}, path_problems=data)

    def section(cfg):
        Section.model_validate({"size": 0})

    _, problems = check(Cfg, {"name": "x"}, section)
    assert problems == ["size: Input should be greater than or equal to 1 (got 0)"]


def test_a_checker_that_cannot_read_a_value_of_the_wrong_type_leaves_the_field_error():
    _, problems = check(Cfg, {"steps": "many"}, lambda cfg: [len(cfg.name)])  # name missing: AttributeError
    assert any(p.startswith("name: required") for p in problems)
    assert any(p.startswith("steps:") for p in problems)


def test_cross_field_checks_skip_only_what_a_raw_value_breaks():
    _, problems = check(Cfg, {"name": "x", "steps": "many", "warmup": 3})  # steps raw: _warmup's TypeError skipped
    assert len(problems) == 1 and problems[0].startswith("steps:")
    _, problems = check(Cfg, {"name": "x", "steps": 0, "warmup": 3, "section": {"size": 0}})
    assert "warmup: more than steps" in problems and any(p.startswith("steps:") for p in problems)
    with pytest.raises(AttributeError, match="missing_attribute"):
        check(Buggy, {"steps": 0})
