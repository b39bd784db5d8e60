"""Write the output: Arrow shards in the `datasets` format, atomically.

Rows stream into one Arrow IPC file per (dataset, split) while the build runs; at the end each becomes a `datasets`
DatasetDict saved with `save_to_disk` (so `datasets.load_from_disk` opens it). The whole output is assembled in a
temporary folder beside the target and renamed into place only when complete: a killed build leaves no half output.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa

from schemas.arrow import TEXT_FEATURES, TOKENIZED_FEATURES

DATASETS = {"text": TEXT_FEATURES, "tokenized": TOKENIZED_FEATURES}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on failure it is removed.

    Leftovers of killed builds (their process gone) are removed first, so a rerun succeeds.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(new: Path, out: Path) -> None:
    """Put the folder `new` in the place of `out`, never leaving a moment without `out`: when `out` exists the two are
    swapped in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), then the old copy (now at `new`) is removed.
    Where that call is missing, the old one is renamed aside first (two renames, microseconds apart)."""
    if not out.exists():
        new.rename(out)
        return
    if _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class RowHasher:
    """Fingerprint of a split's rows, independent of batching and sharding (rows hashed one by one, in order)."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update_text(self, row: dict) -> None:
        self._h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))

    def update_tokens(self, row_id: str, input_ids: np.ndarray, labels: np.ndarray) -> None:
        self._h.update(row_id.encode())
        self._h.update(np.ascontiguousarray(input_ids, dtype=np.int32).tobytes())
        self._h.update(np.ascontiguousarray(labels, dtype=np.int32).tobytes())
        self._h.update(b"\x00")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


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
            datasets.Dataset.from_dict({k: [] for k in writer.features}, features=writer.features) for split, writer in by_split.items()})
        save_dict(dd, tmp / name, max_shard_size)
        del dd
        for writer in by_split.values():
            writer.path.unlink()
