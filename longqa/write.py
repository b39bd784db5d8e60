"""Write the output: Arrow shards in the `datasets` format, atomically.

Rows stream into one Arrow IPC file per (dataset, split) while the build runs; at the end each becomes a `datasets`
DatasetDict saved with `save_to_disk` (so `datasets.load_from_disk` opens it). The whole output is assembled in a
temporary folder beside the target and renamed into place only when complete: a killed build leaves no half output.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa

from schemas.arrow import TEXT_FEATURES, TOKENIZED_FEATURES

DATASETS = {"text": TEXT_FEATURES, "tokenized": TOKENIZED_FEATURES}


class StreamWriter:
    """Appends record batches of one (dataset, split) to an Arrow IPC stream file."""

    def __init__(self, path: Path, features: datasets.Features):
        self.path = path
        self.features = features
        self.schema = features.arrow_schema
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self.rows = 0

    def write(self, columns: dict[str, pa.Array | list]) -> None:
        batch = pa.RecordBatch.from_arrays([pa.array(columns[f.name], type=f.type) if not isinstance(
            columns[f.name], pa.Array) else columns[f.name] for f in self.schema], schema=self.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def list_array(arrays: list[np.ndarray]) -> pa.Array:
    """A list<int32> Arrow array from int32 numpy arrays, without Python lists in between."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars inside (the build shows its own)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def save_dict(dd: datasets.DatasetDict, path: Path, max_shard_size: str) -> None:
    """`save_to_disk` with at least one shard per split: `datasets` cannot load a split saved with zero shards."""
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = convert_file_size_to_int(max_shard_size)
    shards = {split: max(1, -(-ds.data.nbytes // limit)) for split, ds in dd.items()}
    with quiet_datasets():
        dd.save_to_disk(str(path), num_shards=shards)


def save_datasets(tmp: Path, streams: dict[str, dict[str, StreamWriter]], max_shard_size: str) -> None:
    """Turn the streamed Arrow files into `datasets` folders `tmp/{text,tokenized}/{split}/`."""
    for name, by_split in streams.items():
        for writer in by_split.values():
            writer.close()
        dd = datasets.DatasetDict({
            split: datasets.Dataset.from_file(str(writer.path)) if writer.rows else
            datasets.Dataset.from_dict({k: [] for k in writer.features}, features=writer.features)
            for split, writer in by_split.items()})
        save_dict(dd, tmp / name, max_shard_size)
        del dd
        for writer in by_split.values():
            writer.path.unlink()
