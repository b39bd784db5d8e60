"""Generic CSV with a header row and a field mapping: one record per row.

Streamed with the `csv` module (quoted fields may hold newlines; a record's origin is the line where it starts).
The file is decoded as UTF-8 with errors='surrogateescape', so a cell holding bytes that are not UTF-8 is rejected
('invalid_utf8', naming the column) instead of stopping the read. A row whose number of cells differs from the header
is rejected ('malformed_csv'); a CSV syntax error ends the file with one 'malformed_csv'.
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from longqa.readers._common import Source, column_map, has_escaped_byte, mapped_record
from schemas.build import InputSpec
from schemas.records import Record, Reject


def _allow_long_fields() -> None:
    """Documents are long: lift the csv module's 128 KiB field limit."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of a CSV file; columns come from `spec.fields` (defaults: document, question, answer…)."""
    src, columns = Source.of(spec, path), column_map(spec)
    _allow_long_fields()
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as error:
            yield src.reject("malformed_csv", src.origin(line=1), f"header: {error}; the rest of the file is not read")
            return
        if header is None:
            return
        if any(has_escaped_byte(name) for name in header):
            yield src.reject("invalid_utf8", src.origin(line=1), "the header is not valid UTF-8; the file is not read",
                             raw={"header": header})
            return
        end, index = reader.line_num, 0
        while True:
            origin = src.origin(line=end + 1)
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield src.reject("malformed_csv", origin, f"{error}; the rest of the file is not read")
                return
            end = reader.line_num
            if not cells:  # blank line
                continue
            row = dict(zip(header, cells))
            bad = next((name for name, cell in row.items() if has_escaped_byte(cell)), None)
            if len(cells) != len(header):
                yield src.reject("malformed_csv", origin, f"the row has {len(cells)} cells, the header {len(header)}",
                                 raw=row)
            elif bad is not None:
                yield src.reject("invalid_utf8", origin, f"column '{bad}' is not valid UTF-8", field=bad, raw=row)
            else:
                yield mapped_record(row, origin, index, src, columns)
            index += 1
