"""A `datasets` Dataset or DatasetDict saved with `save_to_disk`, with a field mapping: one record per row.

Every split of a DatasetDict is read, in its saved order; origins are f"{path}#{split}" with the 0-based row index,
and ids of rows without their own are f"{source}-{split}-{index}". Rows are read in batches of `BATCH_ROWS` from the
memory-mapped Arrow files, only the mapped columns.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from longqa.readers._common import BATCH_ROWS, Source, column_map, mapped_record
from schemas.build import InputSpec
from schemas.records import Record, Reject


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of every split of a dataset saved on disk."""
    from datasets import DatasetDict, load_from_disk  # heavy import: only when this format is read

    dataset = load_from_disk(str(path))
    splits = list(dataset.items()) if isinstance(dataset, DatasetDict) else [(None, dataset)]
    columns = column_map(spec)
    for split, part in splits:
        src = Source.of(spec, path) if split is None else Source.of(
            spec, path, file=f"{spec.path}#{split}", id_prefix=f"{spec.source or path.name}-{split}")
        present = part.column_names
        wanted = [name for name in dict.fromkeys(columns.values()) if name in present]
        if wanted:
            part = part.select_columns(wanted)
        index = 0
        for batch in part.iter(batch_size=BATCH_ROWS):
            names = list(batch)
            for values in zip(*(batch[name] for name in names)):
                row = dict(zip(names, values))
                yield mapped_record(row, src.origin(index=index), index, src, columns, present)
                index += 1
