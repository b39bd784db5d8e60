"""The one family of errors a user can cause. Every command turns them into one `error: …` line and an exit code.

| class | exit code | when |
|---|---|---|
| `ConfigError` | 2 | a recipe, flag or path is wrong; reported before any heavy work, every problem at once |
| `UserError` (and subclasses) | 1 | bad data, a missing or unreadable file, an unreachable server, an unfit model |

Anything else that escapes a command is a bug and shows its traceback.
Never imports torch or transformers.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix: the message names the file, line or field and what to do. Exit code 1."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """Every problem of a configuration, reported at once, before any model or tokenizer loads. Exit code 2."""

    exit_code = 2


class DataError(UserError, ValueError):
    """Input data that cannot be used as asked (an empty split, samples that do not fit, a malformed file)."""


class ModelError(UserError, ValueError):
    """A model that lacks what the configuration asks for (LoRA target modules, a RoPE layout that can be scaled)."""
