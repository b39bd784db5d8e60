"""Resolve configurations: a YAML recipe (or an embedded default) updated with command-line overrides, validated with
every problem reported at once, before any heavy work. Shared by `longqa.build`, `sft.run` and `sft.eval`.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from schemas import BuildConfig

Config = TypeVar("Config", bound=BaseModel)


class ConfigError(ValueError):
    """Every problem of a configuration, reported at once."""


def default_recipe() -> dict[str, Any]:
    """The embedded default build recipe."""
    return yaml.safe_load(resources.files("longqa").joinpath("recipes/default.yaml").read_text(encoding="utf-8"))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of settings; a missing file, bad YAML or another shape is a ConfigError naming the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: {path} is not a file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
    return data


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with the overrides that were given (not None)."""
    return {**base, **{k: v for k, v in overrides.items() if v is not None}}


def validate_config(model: type[Config], data: dict[str, Any], origin: str = "config",
                    more_problems: Callable[[dict[str, Any]], list[str]] | None = None) -> Config:
    """`model` validated from `data`; field errors, cross-field checks and `more_problems(data)` (e.g. paths that
    do not exist) all in one ConfigError."""
    problems, cfg = [], None
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if where:  # a field: name it and show what it got
                problems.append(f"{where}: {message} (got {err['input']!r})")
            else:  # cross-field checks: one problem a line
                problems.extend(m for line in message.splitlines() for m in line.split("; ") if m)
    if more_problems is not None:
        problems.extend(more_problems(data))
    if problems:
        raise ConfigError(f"{origin}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return cfg


def config_or_exit(make: Callable[[], Config], print_config: bool = False) -> Config | int:
    """For a command's `main`: the configuration `make()` resolves, or the exit code to return — 2 after printing
    every problem, 0 after printing the resolved configuration (`--print-config`)."""
    import sys

    try:
        cfg = make()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if print_config:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
        return 0
    return cfg


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config") -> BuildConfig:
    """A build configuration: `base` updated with the given `overrides`, validated."""
    return validate_config(BuildConfig, merged(base, overrides), origin)
