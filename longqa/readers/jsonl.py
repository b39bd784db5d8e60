"""Generic JSONL (or a JSON list of objects) with a field mapping: one record per object."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from longqa.readers._common import Source, column_map, iter_json_objects, mapped_records
from schemas.build import InputSpec
from schemas.records import Record, Reject


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of `spec.path`; columns come from `spec.fields` (defaults: document, question, answer…)."""
    src = Source.of(spec, path)
    yield from mapped_records(iter_json_objects(path, src), src, column_map(spec))
