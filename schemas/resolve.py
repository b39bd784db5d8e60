"""Resolve a command's configuration: recipe (a YAML file, or the command's embedded default) → flags → pydantic model,
with every problem reported at once, before any heavy work.

Problems come in three kinds and are all collected into one :class:`~schemas.errors.ConfigError`:

1. field problems (pydantic's own: a type, a bound, a choice);
2. cross-field problems (the models' ``mode="after"`` validators). Pydantic skips those when a field fails, so they are
   run again on a *lenient* copy of the configuration (each field coerced without its bounds, or left as given) —
   ``--max-steps 0 --warmup-steps 5`` reports both the bound and the warm-up;
3. path problems (files and folders that must exist), from the command's checker, on that same copy.

Only the errors a user's input causes become problems: a validator's ValueError, and from a path checker the
project's errors (:class:`~schemas.errors.UserError`), an OSError on a path the user named and pydantic's
ValidationError. A TypeError, AttributeError or ValueError from a check is let through as a bug, unless the lenient
copy holds a value that is not of its field's type (or a required field is missing) — that field's error is reported.

Never imports torch or transformers.
"""
from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.errors import ConfigError, UserError

Config = TypeVar("Config", bound=BaseModel)
PathCheck = Callable[[Any], list[str]]


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of settings; a missing file, bad YAML or another shape is a ConfigError naming the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: {path} is not a file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path} ({e.strerror})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
    return data


class Settings(dict):
    """``NAME=VALUE`` items of a free-form settings flag (a ``dict[str, Any]`` field): :func:`apply_overrides` merges
    them into the recipe's mapping instead of replacing it, a dotted NAME reaching into nested mappings."""


def merge_settings(base: Any, items: Settings) -> dict[str, Any]:
    """A copy of the mapping `base` (anything else: empty) with every item of `items` set, ``a.b`` as ``{a: {b}}``."""
    import copy

    merged = copy.deepcopy(base) if isinstance(base, dict) else {}
    for name, value in items.items():
        *heads, last = name.split(".")
        target = merged
        for head in heads:
            if not isinstance(target.get(head), dict):
                target[head] = {}
            target = target[head]
        target[last] = value
    return merged


def apply_overrides(model: type[BaseModel], base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `overrides` (dotted keys reach into sections: ``qa.limit``; :class:`Settings` values are
    merged into the base's mapping).

    For a list of sections (``inputs: list[InputSpec]``) the section's first field makes the items: ``inputs.path``
    with N values replaces the list with N items, and the other ``inputs.*`` values go into each item (into every
    item of the base list when no ``inputs.path`` is given)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot:
            sections.setdefault(head, {})[rest] = value
        elif isinstance(value, Settings):
            data[key] = merge_settings(data.get(key), value)
        else:
            data[key] = value
    for head, values in sections.items():
        field = model.model_fields.get(head)
        sub = _section_model(field.annotation) if field is not None else None
        if sub is not None and _is_list(field.annotation):
            first = next(iter(sub.model_fields))
            if first in values:  # (each item through apply_overrides: its own sections, `inputs.synthetic.samples`)
                rest = {k: v for k, v in values.items() if k != first}
                data[head] = [apply_overrides(sub, {first: item}, rest) for item in values[first]]
            elif isinstance(data.get(head), list):
                data[head] = [apply_overrides(sub, item, values) if isinstance(item, dict) else item
                              for item in data[head]]
        elif sub is not None:
            target = data.get(head)
            data[head] = apply_overrides(sub, target if isinstance(target, dict) else {}, values)
        else:  # not a section: let validation name the unknown key
            data.update({f"{head}.{k}": v for k, v in values.items()})
    return data


def resolve(model: type[Config], base: dict[str, Any], overrides: dict[str, Any] | None = None, origin: str = "config",
            path_problems: PathCheck | None = None, problems: list[str] | None = None) -> Config:
    """`model` validated from `base` updated with `overrides`; every problem (fields, cross-field checks, what
    ``path_problems(config)`` finds, and the given `problems`, e.g. from parsing flags) in one ConfigError."""
    cfg, found = check(model, apply_overrides(model, base, overrides or {}), path_problems)
    found = [*(problems or []), *found]
    if found:
        raise ConfigError(report(origin, found))
    return cfg


def report(origin: str, problems: list[str]) -> str:
    """The text of a ConfigError: one problem on one line; several as a count, then one a line."""
    if len(problems) == 1:
        return f"{origin}: {problems[0]}"
    return f"{origin}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems)


def check(model: type[Config], data: dict[str, Any], path_problems: PathCheck | None = None) -> tuple[Any, list[str]]:
    """``(config, problems)``: the validated model (or, when a field fails, the lenient copy) and every problem."""
    untyped: set[str] = set()
    try:
        cfg, problems = model.model_validate(data), []
    except ValidationError as e:
        problems = [p for err in e.errors() for p in _describe(err)]
        cfg, fell_back, untyped = lenient(model, data)
        for problem in cross_problems(cfg, untyped):
            # a check on a field that fell back to its default would judge the default, not what the user gave
            if problem not in problems and not any(name in problem for name in fell_back):
                problems.append(problem)
    if path_problems is not None:
        try:
            problems.extend(path_problems(cfg))
        except UserError as e:
            problems.extend(line for line in str(e).splitlines() if line.strip())
        except ValidationError as e:
            problems.extend(p for err in e.errors() for p in _describe(err))
        except OSError as e:  # a path the user named that cannot be read
            problems.append(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except (TypeError, AttributeError, ValueError):
            if not untyped:  # every value has its type: the checker has a bug
                raise
            # else a value of the wrong type (or a missing one) that the checker cannot read: its error is reported
    return cfg, problems


def _describe(err: dict) -> list[str]:
    """One pydantic error as problem lines: a field's names it and what it got; a cross-field check's lists its own."""
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return [f"{where}: unknown setting (check its spelling; `--help` lists them all)"]
    if err["type"] == "missing":
        return [f"{where}: required, and not given"]
    if where and err["type"] != "value_error":
        value = err["input"]
        got = "null" if value is None else value if isinstance(value, str) and value.strip() == value != "" \
            else repr(value)
        return [f"{where}: {message} (got {got})"]
    return [(f"{where}: " if where else "") + m for line in message.splitlines() for m in line.split("; ") if m]


def cross_problems(cfg: BaseModel, untyped: set[str] = frozenset(), prefix: str = "") -> list[str]:
    """What the ``mode="after"`` validators of `cfg` and of its sections say, one problem an item. `untyped` names
    (dotted, from `prefix`) the fields of the lenient copy that hold no value of their type: a TypeError or
    AttributeError of a validator whose model holds one is that value's (already reported); elsewhere it is a bug."""
    found: list[str] = []
    for name, value in cfg.__dict__.items():
        if isinstance(value, list):
            sections = [(f"{prefix}{name}.{i}.", item) for i, item in enumerate(value)]
        else:
            sections = [(f"{prefix}{name}.", value)]
        for inner, item in sections:
            if isinstance(item, BaseModel):
                found.extend(cross_problems(item, untyped, inner))
    holds_untyped = any(name.startswith(prefix) for name in untyped)
    for decorator in type(cfg).__pydantic_decorators__.model_validators.values():
        if decorator.info.mode != "after":
            continue
        try:
            decorator.func(cfg)
        except ValueError as e:
            found.extend(m for line in str(e).splitlines() for m in line.split("; ") if m)
        except (TypeError, AttributeError):
            if not holds_untyped:
                raise
    return found


def lenient(model: type[Config], data: Any, prefix: str = "") -> tuple[Config, set[str], set[str]]:
    """A copy of `model` built without bounds: each field coerced to its type (``"0"`` → 0, even below a minimum),
    else its default, else the raw value. Also returns the names of the fields that fell back to their default, and
    the dotted names (from `prefix`) of those holding no value of their type (the raw value, or missing)."""
    data = data if isinstance(data, dict) else {}
    values, fell_back, untyped = {}, set(), set()
    for name, field in model.model_fields.items():
        if name not in data:
            if field.is_required():
                untyped.add(prefix + name)
            else:
                values[name] = field.get_default(call_default_factory=True)
            continue
        raw, sub = data[name], _section_model(field.annotation)
        if sub is not None and _is_list(field.annotation) and isinstance(raw, list):
            values[name] = []
            for i, item in enumerate(raw):
                copy, _, inner = lenient(sub, item, f"{prefix}{name}.{i}.")
                values[name].append(copy)
                untyped |= inner
        elif sub is not None and isinstance(raw, dict):
            values[name], inner, inner_untyped = lenient(sub, raw, f"{prefix}{name}.")
            fell_back |= {f"{name}.{n}" for n in inner}
            untyped |= inner_untyped
        else:
            try:
                values[name] = TypeAdapter(field.annotation).validate_python(raw)
            except ValidationError:
                if field.is_required():
                    values[name] = raw
                    untyped.add(prefix + name)
                else:
                    values[name] = field.get_default(call_default_factory=True)
                    fell_back.add(name)
    return model.model_construct(**values), fell_back, untyped


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field (``QAConfig``, or the item of ``list[InputSpec]``), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list
