"""`rejects.jsonl`: one line a record that is not written, with its reason, field, origin and a clipped copy.

Shared by the builder (`longqa.pipeline`) and the question generator (`longqa.generate`), so both write the same
format. Kept free of heavy imports.
"""
from __future__ import annotations

import json
from pathlib import Path

from longqa.manifest import Tally
from longqa.validate import POLICY_REASONS
from schemas import Reject
from schemas.errors import DataError


class BuildError(DataError):
    """A record stopped a `--strict` build, or the build cannot go on; the message names file, line and field."""


class RejectLog:
    """Appends rejects to `rejects.jsonl`; in strict mode the first non-policy reject stops the build."""

    def __init__(self, path: Path, tally: Tally, strict: bool, resumable: bool = False):
        # resumable (longqa.generate): append to an existing file, each line flushed, so a killed run leaves whole lines
        self._file = open(path, "a" if resumable else "w", encoding="utf-8")
        self.tally, self.strict, self._flush = tally, strict, resumable

    def add(self, reject: Reject) -> None:
        self.tally.rejected[reject.source][reject.reason] += 1
        self._file.write(json.dumps({"reason": reject.reason, "field": reject.field, "message": reject.message,
                                     "origin": str(reject.origin), "source": reject.source, "seq": reject.seq,
                                     "record": reject.record}, ensure_ascii=False) + "\n")
        if self._flush:
            self._file.flush()
        if self.strict and reject.reason not in POLICY_REASONS:
            self._file.close()
            raise BuildError(f"--strict: {reject.describe()}")

    def close(self) -> None:
        self._file.close()
