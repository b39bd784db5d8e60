"""Resolve a build configuration: the embedded default or a YAML recipe, then command-line overrides."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas import BuildConfig


class ConfigError(ValueError):
    """Every problem of a configuration, reported at once."""


def default_recipe() -> dict[str, Any]:
    return yaml.safe_load(resources.files("longqa").joinpath("recipes/default.yaml").read_text(encoding="utf-8"))


def load_recipe(path: str | Path) -> dict[str, Any]:
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


def resolve(base: dict[str, Any], overrides: dict[str, Any], origin: str = "config") -> BuildConfig:
    """`base` updated with the non-None `overrides`, validated; all problems in one ConfigError."""
    data = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(recipe)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{origin}: {len(lines)} problem(s)\n" + "\n".join(lines)) from None
