"""Output folders: the one rule of every command that writes a folder (issue 24).

A command writes into (or replaces) its output folder only when the folder is missing, empty, or that command's own
earlier output — recognised by the marker file :data:`MARKER` it leaves there (or, for outputs made before the marker
existed, by the files named in :data:`LEGACY`). Anything else is refused with one problem line naming the folder and
what it holds, before any heavy work and touching nothing. ``--overwrite`` forces it, but never for the current
directory (or a folder above it), the home folder, the filesystem root or a folder holding ``.git``. An output folder
inside an input folder, or an input inside the output folder, is always refused.

:func:`out_problems` is the check the commands' path checkers (:mod:`schemas.paths`) run; :func:`guard` raises it
as a ConfigError where a library function writes (so the rule holds however it is called); :func:`mark` and
:func:`claim` leave the marker. The atomic replacement itself is :func:`longqa.atomic.atomic_output`.

Never imports torch or transformers.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from schemas.errors import ConfigError

#: the marker file every command leaves in its output folder: ``{"command": "longqa.build"}``
MARKER = ".longqa-output.json"
#: commands whose outputs are interchangeable (a merged build is a build)
SAME_AS = {"longqa.merge": "longqa.build"}
#: outputs made before the marker existed: the files (all present) that identify a command's folder
LEGACY = {"longqa.build": ("manifest.json", "tokenized", "text"), "longqa.corpus": ("manifest.json", "train"),
          "sft.run": ("train_config.yaml",), "sft.eval": ("report.json",), "sft.experiment": ("experiment.yaml",),
          "longqa.generate": ("generate.json",)}
SHOWN = 3  # names listed in a refusal
#: the description of every command's ``overwrite`` field (its --overwrite flag)
OVERWRITE = ("write even when the output folder holds files that are not this command's earlier output (they are "
             "replaced or written over); never the current directory, a folder above it, the home folder, the root, "
             "a folder holding .git, or one that holds an input")


def _family(command: str) -> str:
    return SAME_AS.get(command, command)


def written_by(folder: Path) -> str | None:
    """The command whose output `folder` is (by its marker), else None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def is_own(folder: Path, command: str) -> bool:
    """`folder` is an earlier output of `command` (or of a command whose outputs are the same kind)."""
    folder = Path(folder)
    by = written_by(folder)
    if by is not None:
        return _family(by) == _family(command)
    legacy = LEGACY.get(_family(command))
    return bool(legacy) and all((folder / name).exists() for name in legacy)


def mark(folder: Path, command: str) -> None:
    """Leave the marker of `command` in `folder` (written whole: a temporary file, then a rename)."""
    path = Path(folder) / MARKER
    tmp = path.with_name(f"{MARKER}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"command": _family(command)}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def holds(folder: Path) -> str:
    """What `folder` holds, for a refusal: a few names and the count."""
    names = sorted(p.name for p in Path(folder).iterdir())
    shown = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
    return f"{shown} ({len(names)} entr{'y' if len(names) == 1 else 'ies'})"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def out_problems(field: str, out: str | Path | None, command: str, *, inputs: Iterable[str | Path | None] = (),
                 overwrite: bool = False, replaces: bool = True) -> list[str]:
    """Why `command` may not write its output folder `out` (empty when it may).

    `inputs`: the paths the command reads (files or folders); `replaces`: the command puts a new folder in the place
    of `out` (False: it writes its own files into it, e.g. checkpoints, reports)."""
    if not isinstance(out, (str, Path)) or str(out) == "":
        return []
    given, target = str(out), Path(out).expanduser().resolve()
    problems = []
    for ref in inputs:
        if not isinstance(ref, (str, Path)) or str(ref).startswith("pkg:") or not Path(ref).expanduser().exists():
            continue
        source = Path(ref).expanduser().resolve()
        if _inside(source, target):
            problems.append(f"{field}: {given} holds the input {ref}; write the output elsewhere")
        elif source.is_dir() and _inside(target, source):
            problems.append(f"{field}: {given} is inside the input folder {ref}; write the output elsewhere")
    if problems or not target.exists():
        return problems
    if not target.is_dir():
        return [f"{field}: {given} is a file, not a folder"]
    cwd = Path.cwd().resolve()
    if replaces and _inside(cwd, target):
        return [f"{field}: {given} is " + ("the current directory" if target == cwd else "a folder above the current "
                "directory") + "; replacing it would pull the working directory away; give a new folder"]
    # a marker half-written by another process of the same launch (rank 0 claims, the others check) counts as none
    if not any(not p.name.startswith(f"{MARKER}.tmp-") for p in target.iterdir()) or is_own(target, command):
        return []
    if not overwrite:
        return [f"{field}: {given} is not empty and not an earlier output of {command} (it holds {holds(target)}); "
                "give a new or empty folder, or pass --overwrite to " + ("replace it" if replaces else "write into it")]
    if _inside(cwd, target):
        return [f"{field}: {given} is the current directory or a folder above it; --overwrite never replaces it"]
    if target == Path.home().resolve() or target.parent == target:
        return [f"{field}: {given} is the home folder or the root; --overwrite never replaces it"]
    if (target / ".git").exists():
        return [f"{field}: {given} holds .git (a repository); --overwrite never replaces it"]
    return []


def guard(out: str | Path, command: str, *, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
          replaces: bool = True) -> None:
    """Raise :func:`out_problems` as one ConfigError (exit code 2), touching nothing."""
    problems = out_problems("out", out, command, inputs=inputs, overwrite=overwrite, replaces=replaces)
    if problems:
        raise ConfigError("; ".join(problems))


def claim(out: str | Path, command: str, *, inputs: Iterable[str | Path | None] = (),
          overwrite: bool = False) -> Path:
    """For a command that writes its files into `out`: :func:`guard`, then create `out` and leave the marker."""
    guard(out, command, inputs=inputs, overwrite=overwrite, replaces=False)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if written_by(folder) is None:
        mark(folder, command)
    return folder


def files_problems(field: str, out: str | Path | None, command: str, files: Iterable[str], journal: str, *,
                   overwrite: bool = False) -> list[str]:
    """For a command that keeps named `files` in a folder it shares with other data (longqa.generate writes qa.jsonl
    and rejects.jsonl beside the documents and appends to them on a rerun): those files are its own only when its
    `journal` file (generate.json) is beside them. Otherwise they are someone else's: refused unless `overwrite`."""
    if not isinstance(out, (str, Path)) or str(out) == "":
        return []
    folder = Path(out).expanduser()
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [f"{field}: {out} is a file, not a folder"]
    if (folder / journal).exists() or overwrite:
        return []
    foreign = [name for name in files if (folder / name).exists()]
    if not foreign:
        return []
    return [f"{field}: {out} holds {', '.join(foreign)} that no earlier {command} run wrote (no {journal} beside "
            f"{'it' if len(foreign) == 1 else 'them'}); move {'it' if len(foreign) == 1 else 'them'} away, give "
            "another --out, or pass --overwrite to replace " + ("it" if len(foreign) == 1 else "them")]
