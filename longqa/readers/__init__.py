"""The read stage: one module per input format, each exposing a generator `read(path, spec) -> Iterator[Record |
Reject]`.

Readers are pure generators: they stream their input (memory does not grow with its size), never raise on bad data
(a bad item becomes a `Reject` with a reason code, the field at fault and its origin) and leave `Record.seq` at 0 for
the pipeline to number. The input path is checked in one place, `read_input` (`_common.input_path`): a missing file or
folder is a configuration error, raised at once (before the first record is asked for).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from longqa.readers import csv, docs, hf_disk, jsonl, longalpaca, longbench, parquet, squad, synthetic
from longqa.readers._common import input_path
from schemas.build import BuildConfig, InputSpec
from schemas.records import Record, Reject

Reader = Callable[[Path, InputSpec], Iterator[Record | Reject]]

#: Input format (`InputSpec.format`) -> its reader.
READERS: dict[str, Reader] = {
    "longalpaca": longalpaca.read,
    "longbench": longbench.read,
    "squad": squad.read,
    "jsonl": jsonl.read,
    "csv": csv.read,
    "parquet": parquet.read,
    "hf-disk": hf_disk.read,
    "docs": docs.read,
    "synthetic": synthetic.read,  # also takes the build config: its seed and split (haystacks are train-side only)
}


def read_input(spec: InputSpec, cfg: BuildConfig | None = None) -> Iterator[Record | Reject]:
    """Records and rejects of one input, in file order. Raises FileNotFoundError now if the
    input does not exist (is not the folder its format reads)."""
    path = input_path(spec)
    if spec.format == "synthetic":
        return synthetic.read(path, spec, cfg)
    return READERS[spec.format](path, spec)
