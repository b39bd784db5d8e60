"""Generic Parquet with a field mapping: one record per row, read in batches of `BATCH_ROWS` (only mapped columns).

Origins are 0-based row indices. A file pyarrow cannot read yields one 'malformed_parquet' where it stopped.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from longqa.readers._common import BATCH_ROWS, Source, column_map, mapped_record
from schemas.build import InputSpec
from schemas.records import Record, Reject


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of a Parquet file; columns come from `spec.fields` (defaults: document, question, …)."""
    src, columns = Source.of(spec, path), column_map(spec)
    index = 0
    try:
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        wanted = [name for name in dict.fromkeys(columns.values()) if name in present]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted or None):
            for row in batch.to_pylist():
                yield mapped_record(row, src.origin(index=index), index, src, columns, present)
                index += 1
    except (pa.ArrowException, OSError) as error:
        yield src.reject("malformed_parquet", src.origin(index=index),
                         f"cannot read the Parquet file ({error}); the rest of the file is not read")
