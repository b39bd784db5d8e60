"""The command line of every command, generated from its pydantic model, and the one error path.

Flags (the litgpt habit: the typed config *is* the command line):

- every field is a flag named after it: ``max_length`` → ``--max-length``; a section's fields are dotted:
  ``--qa.limit 200``, ``--qa.max-new-tokens 16``; the help is the field's description, with its default;
- ``Literal`` fields list their choices; booleans are ``--x/--no-x`` (a boolean-or-choice field also ``--x CHOICE``);
  optional fields accept ``null``;
- lists are comma lists (``--tasks qa,passkey``; a repeated flag adds to the list), mappings are ``NAME=VALUE``
  items (``--models base=A tuned=B``: the flag's items replace the recipe's), ``str | list[str]`` fields take one
  value or a repeated flag;
- free-form settings (``dict[str, Any]``: ``sft.experiment``'s ``--train-overrides``, ``--eval``, ``--arms.overrides``)
  are ``NAME=VALUE`` items *merged into* the recipe's (``--train-overrides max_steps=2`` keeps its other overrides),
  a dotted name reaching into a section (``--eval qa.limit=2``), each value read as YAML (``passkey.lengths=[512]``);
- a list of sections (``inputs: list[InputSpec]``): ``--inputs.path P`` (repeatable) makes one item per path and the
  other ``--inputs.*`` flags go into each item;
- a command may declare, once, aliases (``--input`` for ``--inputs.path``) and positional fields.

Values are passed on as text and converted by pydantic, so a wrong value is one more problem in the one report
(:mod:`schemas.resolve`), never an early exit. Every command also takes ``--config FILE.yaml``, ``--print-config``,
``--quiet``, ``--verbose`` and ``--no-progress``.

Errors (:mod:`schemas.errors`): :meth:`Command.main` turns every error a user can cause into one ``error: …`` line
and an exit code — 2 for a configuration (:class:`ConfigError`, a bad flag), 1 for data and runtime
(:class:`UserError`, a file that cannot be read, an unreachable host). Anything else is a bug and shows its traceback.

Logging (:func:`setup_logging`): the packages' INFO lines go to stdout as plain text, warnings and errors to stderr;
under torchrun/accelerate only rank 0 speaks.

Never imports torch or transformers.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.errors import ConfigError, UserError
from schemas.resolve import PathCheck, Settings, apply_overrides, check, load_recipe, report

log = logging.getLogger(__name__)

#: the loggers :func:`setup_logging` sets to the command's level (libraries stay at WARNING); "__main__" is the
#: command's own module under `python -m`
PACKAGES = ("longqa", "sft", "schemas", "benchmarks", "__main__")
NULL = "null"


# ----------------------------------------------------------------------------------------------------------------------
# Field kinds
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Flag:
    """One generated flag: the dotted field it sets, how its values are read, and its option strings."""

    key: str
    # scalar | switch | switch_or_choice | list | one_or_many | mapping | items (the key field of a list of sections)
    kind: str
    options: list[str]
    nullable: bool = False


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """``(annotation without None, whether None is allowed)``."""
    args = typing.get_args(annotation)
    if (typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType"))
            and type(None) in args):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "switch"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")) and bool in args and all(
            a is bool or typing.get_origin(a) is Literal for a in args):
        return "switch_or_choice"  # e.g. packing: true/false/tree: --packing, --packing tree, --no-packing
    if origin is list:
        return "list"
    if origin is dict:
        return "settings" if len(args) == 2 and args[1] is Any else "mapping"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")) and any(
            typing.get_origin(a) is list for a in args):
        return "one_or_many"
    return "scalar"


def _metavar(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin is list:
        return _metavar(args[0]) + ",..."
    if origin is dict:
        return "NAME=VALUE"
    return {int: "N", float: "X", str: "TEXT"}.get(annotation, "VALUE")


def _help(info: FieldInfo, nullable: bool) -> str:
    text = (info.description or "").replace("%", "%%")
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if not isinstance(default, BaseModel):
            shown = NULL if default is None else ",".join(map(str, default)) if isinstance(default, list) else \
                " ".join(f"{k}={v}" for k, v in default.items()) if isinstance(default, dict) else default
            text += f" [default: {shown}]".replace("%", "%%")
    if nullable:
        text += " (accepts null)"
    return text.strip()


# ----------------------------------------------------------------------------------------------------------------------
# Argparse actions: values are collected as text; pydantic converts them
# ----------------------------------------------------------------------------------------------------------------------


class _Scalar(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, None if value == NULL else value)


class _List(argparse.Action):
    """Comma lists; a repeated flag adds to the list; ``null`` clears it (for optional lists)."""

    def __call__(self, parser, namespace, value, option_string=None):
        values = value if isinstance(value, list) else [value]
        if values == [NULL]:
            setattr(namespace, self.dest, None)
            return
        current = getattr(namespace, self.dest, None) or []
        setattr(namespace, self.dest, [*current, *(p.strip() for v in values for p in v.split(",") if p.strip())])


class _Append(argparse.Action):
    """One value a flag, repeatable (paths, which may hold commas)."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), value])


class _Mapping(argparse.Action):
    """``NAME=VALUE`` items; a repeated flag adds items."""

    def __call__(self, parser, namespace, value, option_string=None):
        values = value if isinstance(value, list) else [value]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *values])


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are ConfigErrors (one line, exit 2) with a spelling suggestion."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        if message.startswith("unrecognized arguments:"):
            known = [s for a in self._actions for s in a.option_strings]
            hints = []
            for arg in message.split(":", 1)[1].split():
                if arg.startswith("-"):
                    close = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{arg} -> {close[0]}?")
            message = f"{message} ({'; '.join(hints)})" if hints else message
        raise ConfigError(f"{message}; `{self.prog} --help` lists every option")


# ----------------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Options:
    """The settings of the command line itself (not of the configuration)."""

    config: str | None = None
    print_config: bool = False
    quiet: bool = False
    verbose: bool = False
    progress: bool = True
    argv: list[str] = field(default_factory=list)
    origin: str = "flags"  # where the settings before the flags came from: the --config file, a default, flags


Base = Callable[[dict[str, Any]], tuple[dict[str, Any], str]]


class Command:
    """One command line: flags generated from `model`, resolution, path checks, logging and the error path.

    - `doc`: the module docstring (its first line is the usage, its second paragraph the description);
    - `paths`: the path checker (:mod:`schemas.paths`), run before any heavy work, also with ``--print-config``;
    - `aliases`: extra option strings, ``{"--input": "inputs.path"}``, declared once by the command;
    - `positional`: fields given without a flag, in order (``("adapter_dir",)``);
    - `consts`: flags that set a field to one value, ``{"--merged": ("kind", "merged")}``;
    - `base`: the configuration before flags when no ``--config`` is given: ``base(overrides) -> (mapping, origin)``
      (default: the model's defaults).
    """

    def __init__(self, prog: str, doc: str, model: type[BaseModel], *, paths: PathCheck | None = None,
                 aliases: dict[str, str] | None = None, positional: tuple[str, ...] = (),
                 consts: dict[str, tuple[str, Any]] | None = None, base: Base | None = None):
        self.prog, self.doc, self.model, self.paths = prog, doc, model, paths
        self.aliases, self.positional, self.consts, self.base = aliases or {}, positional, consts or {}, base
        self.flags: dict[str, Flag] = {}
        self.parser = _Parser(prog=prog, description=doc.split("\n\n")[1] if "\n\n" in doc else doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              argument_default=argparse.SUPPRESS, allow_abbrev=False)  # a prefix is a typo, not a flag
        own = self.parser.add_argument_group("command")
        own.add_argument("--config", metavar="FILE.yaml", help="YAML settings; flags override them")
        own.add_argument("--print-config", action="store_true", help="print the resolved configuration and every "
                         "problem, then exit (0: no problem, 2: problems)")
        own.add_argument("--quiet", action="store_true", help="warnings and errors only; no progress bars")
        own.add_argument("--verbose", action="store_true", help="debug messages, with the logger's name")
        own.add_argument("--no-progress", action="store_true", help="no progress bars")
        self._add_model(model, "", self.parser.add_argument_group("settings (the fields of "
                                                                  f"{model.__name__}; --config FILE sets them too)"))
        unknown = (set(self.aliases.values()) | {key for key, _ in self.consts.values()}) - set(self.flags)
        if unknown:
            raise ValueError(f"{prog}: aliases for unknown fields {sorted(unknown)}")

    # -- generation ----------------------------------------------------------------------------------------------------

    def _add_model(self, model: type[BaseModel], prefix: str, group, list_section: bool = False) -> None:
        for i, (name, info) in enumerate(model.model_fields.items()):
            key = prefix + name
            annotation, nullable = _unwrap(info.annotation)
            item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
            if _is_model(annotation):
                self._add_model(annotation, key + ".", self.parser.add_argument_group(
                    f"{key} ({annotation.__doc__.strip().splitlines()[0] if annotation.__doc__ else key})"))
                continue
            if _is_model(item):
                self._add_model(item, key + ".", self.parser.add_argument_group(
                    f"{key}: one item per --{key}.{next(iter(item.model_fields))} (the other {key}.* flags apply "
                    "to every item)"), list_section=True)
                continue
            kind = "items" if list_section and i == 0 else _kind(annotation)
            self._add_flag(group, key, kind, annotation, info, nullable)

    def _add_flag(self, group, key: str, kind: str, annotation: Any, info: FieldInfo, nullable: bool) -> None:
        options = ["--" + key.replace("_", "-")] + [a for a, target in self.aliases.items() if target == key]
        flag = Flag(key, kind, list(options), nullable)
        self.flags[key] = flag
        help_text = _help(info, nullable)
        if key in self.positional:  # optional for argparse: --config may give it; pydantic says when it is missing
            nargs = "*" if kind in ("list", "one_or_many", "items") else "?"
            group.add_argument(key, metavar=key.upper(), nargs=nargs, help=help_text,
                               action=_List if kind == "list" else _Scalar)
            flag.options = []
            return
        if kind == "switch":
            group.add_argument(*options, dest=key, action=argparse.BooleanOptionalAction, help=help_text)
            flag.options += ["--no-" + o[2:] for o in options]
        elif kind == "switch_or_choice":
            choices = [c for a in typing.get_args(annotation) if a is not bool for c in typing.get_args(a)]
            group.add_argument(*options, dest=key, action=_Scalar, nargs="?", const=True,
                               metavar="{" + ",".join(map(str, choices)) + "}", help=help_text + " (alone: true)")
            negatives = ["--no-" + o[2:] for o in options if o.startswith("--")]
            group.add_argument(*negatives, dest=key, action="store_const", const=False, help=f"same as {options[0]} "
                               "false")
            flag.options += negatives
        elif kind == "list":
            group.add_argument(*options, dest=key, action=_List, metavar=_metavar(annotation), help=help_text)
        elif kind in ("one_or_many", "items"):
            group.add_argument(*options, dest=key, action=_Append, metavar="VALUE", help=help_text + " (repeatable)")
        elif kind in ("mapping", "settings"):
            if kind == "settings":
                help_text += " (merged into the recipe's; a dotted NAME reaches into a section; VALUE read as YAML)"
            group.add_argument(*options, dest=key, action=_Mapping, nargs="+", metavar="NAME=VALUE", help=help_text)
        else:
            group.add_argument(*options, dest=key, action=_Scalar, metavar=_metavar(annotation), help=help_text)
        for option, (target, value) in self.consts.items():
            if target == key:
                group.add_argument(option, dest=key, action="store_const", const=value,
                                   help=f"same as {options[0]} {value}")
                flag.options.append(option)

    # -- parsing -------------------------------------------------------------------------------------------------------

    def parse(self, argv: list[str]) -> tuple[dict[str, Any], list[str], Options]:
        """``(overrides, problems, options)``: the flags given, as dotted field keys; what cannot be read."""
        ns = vars(self.parser.parse_args(argv))
        options = Options(config=ns.pop("config", None), print_config=ns.pop("print_config", False),
                          quiet=ns.pop("quiet", False), verbose=ns.pop("verbose", False), argv=list(argv))
        options.progress = not (ns.pop("no_progress", False) or options.quiet)
        overrides, problems = {}, []
        for key, value in ns.items():
            flag = self.flags[key]
            if flag.kind == "one_or_many" and isinstance(value, list):
                value = None if value == [NULL] else value[0] if len(value) == 1 else value
            elif flag.kind in ("mapping", "settings") and isinstance(value, list):
                value, bad = _mapping(value, flag.options[0])
                problems.extend(bad)
                if flag.kind == "settings":
                    value, bad = _settings(value, flag.options[0])
                    problems.extend(bad)
            overrides[key] = value
        return overrides, problems, options

    def overrides(self, argv: list[str]) -> dict[str, Any]:
        """The flags of `argv` as dotted field keys (for tests and tools)."""
        return self.parse(argv)[0]

    def configure(self, argv: list[str]) -> tuple[Any, list[str], Options]:
        """Parse `argv` and resolve recipe → flags → model: ``(config, problems, options)``."""
        overrides, problems, options = self.parse(argv)
        if options.config:
            base, origin = load_recipe(options.config), options.config
        elif self.base is not None:
            base, origin = self.base(overrides)
        else:
            base, origin = {}, "command line"
        data = apply_overrides(self.model, base, overrides)
        cfg, found = check(self.model, data, self.paths)
        options.origin = origin
        return cfg, [*problems, *found], options

    def resolve(self, argv: list[str]) -> Any:
        """The valid configuration of `argv`, or a ConfigError with every problem."""
        cfg, problems, options = self.configure(argv)
        if problems:
            raise ConfigError(report(options.origin, problems))
        return cfg

    # -- running -------------------------------------------------------------------------------------------------------

    def main(self, argv: list[str] | None, body: Callable[[Any, Options], int | None]) -> int:
        """Parse, resolve and check `argv`, then ``body(config, options)``; an exit code, errors as one line."""
        argv = sys.argv[1:] if argv is None else list(argv)
        setup_logging(quiet="--quiet" in argv, verbose="--verbose" in argv)
        try:
            cfg, problems, options = self.configure(argv)
            if not options.progress:
                silence_progress_bars()
            if options.print_config:
                print(yaml.safe_dump(_dump(cfg), sort_keys=False, allow_unicode=True), end="", flush=True)
            if problems:
                raise ConfigError(report(options.origin, problems))
            if options.print_config:
                return 0
            return body(cfg, options) or 0
        except UserError as e:
            return fail(e, e.exit_code, trace="--verbose" in argv)
        except OSError as e:  # a file that cannot be read or written, a host that cannot be reached
            return fail(e, 1, trace="--verbose" in argv)
        except KeyboardInterrupt:
            return fail("interrupted", 130)


def fail(error: Exception | str, code: int, trace: bool = False) -> int:
    """Print one ``error: …`` line (a ConfigError's problems follow, one a line) and return `code`; with `trace`
    (``--verbose``) the traceback first."""
    if trace and isinstance(error, BaseException):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, OSError) and not isinstance(error, UserError):
        message = _os_message(error)
    else:
        message = str(error).strip() or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _os_message(error: OSError) -> str:
    if error.filename and error.strerror:
        what = {PermissionError: "cannot be read or written (permission denied); check its permissions",
                FileNotFoundError: "does not exist", IsADirectoryError: "is a folder where a file is expected",
                NotADirectoryError: "is a file where a folder is expected"}.get(type(error), error.strerror)
        return f"{error.filename}: {what}"
    first = str(error).strip().splitlines()
    return first[0] if first else type(error).__name__


def _mapping(items: list[str], flag: str) -> tuple[dict[str, str], list[str]]:
    mapping, problems = {}, []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            problems.append(f"{flag}: {item!r} is not NAME=VALUE")
        elif name in mapping:
            problems.append(f"{flag}: the name {name!r} is given twice")
        else:
            mapping[name] = value
    return mapping, problems


def _settings(mapping: dict[str, str], flag: str) -> tuple[Settings, list[str]]:
    """``NAME=VALUE`` items of a free-form settings flag: each VALUE read as YAML (``2``, ``[512]``, ``null``)."""
    values, problems = Settings(), []
    for name, text in mapping.items():
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            problems.append(f"{flag}: {name}={text!r}: the value is not valid YAML")
    return values, problems


def _dump(cfg: BaseModel) -> dict[str, Any]:
    """The configuration as YAML data (also a lenient, invalid copy: its raw values are shown as given)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns when serialising the raw values of a lenient copy
        try:
            return cfg.model_dump(mode="json")
        except Exception:  # noqa: BLE001 - a value pydantic cannot serialise: show it as text
            return yaml.safe_load(yaml.safe_dump({k: str(v) for k, v in cfg.__dict__.items()}))


# ----------------------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    """``warning: …`` / ``error: …`` (lower-case level names, like the command's own ``error:`` line)."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: A003 - logging's API
        return super().format(logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()}))


class _StdHandler(logging.Handler):
    """Writes to the *current* ``sys.stdout`` / ``sys.stderr`` (so redirections made later, e.g. by pytest, apply)."""

    def __init__(self, to_stderr: bool, level: int, fmt: str):
        super().__init__(level)
        self.to_stderr = to_stderr
        self.setFormatter(_Formatter(fmt))
        if not to_stderr:
            self.addFilter(lambda record: record.levelno < logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if self.to_stderr else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


def rank() -> int:
    """This process's rank under torchrun/accelerate launch (0 when not launched)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def silence_progress_bars() -> None:
    """No library progress bar in this process or its children: the Hub's and datasets' read their variables, plain
    tqdm (transformers' GGUF conversion bar) reads TQDM_DISABLE only when imported, so its default is set here too."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # child processes (torchrun ranks)
    import tqdm.std

    if not getattr(tqdm.std.tqdm.__init__, "_longqa_silenced", False):
        silenced = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        silenced._longqa_silenced = True
        tqdm.std.tqdm.__init__ = silenced


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """The one logging set-up of every command: this project's INFO lines (DEBUG with `verbose`, none with `quiet`) as
    plain lines on stdout, warnings and errors (of libraries too) on stderr. On ranks other than 0 only errors show.
    Calling it again replaces what it set up before."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if rank() != 0:
        level = logging.ERROR
    name = "%(name)s: " if verbose else ""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdHandler)]:
        root.removeHandler(handler)
    root.addHandler(_StdHandler(False, logging.DEBUG, f"{name}%(message)s"))
    root.addHandler(_StdHandler(True, logging.WARNING, f"%(levelname)s: {name}%(message)s"))
    root.setLevel(logging.WARNING if rank() == 0 else logging.ERROR)
    for package in PACKAGES:
        logging.getLogger(package).setLevel(level)
