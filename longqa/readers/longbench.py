"""LongBench JSONL: `context` (the material), `input` (the question), `answers` (list of str), optional `_id`.

Other LongBench columns (`length`, `dataset`, `language`, `all_classes`) are ignored.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from longqa.readers._common import Source, iter_json_objects, mapped_records
from schemas.build import InputSpec
from schemas.records import Record, Reject

#: Record field -> LongBench column.
COLUMNS = {"document": "context", "question": "input", "answer": "answers", "id": "_id"}


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of a LongBench file (one JSON object per line)."""
    src = Source.of(spec, path)
    yield from mapped_records(iter_json_objects(path, src), src, COLUMNS)
