"""Counts that prove nothing was lost, statistics of what was written, and the manifest that holds them."""
from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longqa.paths import resolve_path


class Tally:
    """Per source: records read, written per split, rejected per reason (and per stage: `longqa.stages`).
    `read == written + rejected` must hold."""

    def __init__(self):
        self.read: Counter[str] = Counter()
        self.written: dict[str, Counter[str]] = defaultdict(Counter)
        self.rejected: dict[str, Counter[str]] = defaultdict(Counter)
        self.dropped: dict[str, Counter[str]] = defaultdict(Counter)  # stage -> reason -> records it dropped
        self.kept: Counter[str] = Counter()  # stage -> records it passed on
        self.other_shards = 0

    def as_dict(self) -> dict:
        sources = sorted(set(self.read) | set(self.written) | set(self.rejected))
        by_source = {s: {"read": self.read[s], "written": dict(sorted(self.written[s].items())),
                         "rejected": dict(sorted(self.rejected[s].items()))} for s in sources}
        by_split: Counter[str] = sum((self.written[s] for s in sources), Counter())
        by_reason: Counter[str] = sum((self.rejected[s] for s in sources), Counter())
        read, written, rejected = sum(self.read.values()), sum(by_split.values()), sum(by_reason.values())
        return {"read": read, "written": written, "rejected": rejected, "balanced": read == written + rejected,
                "by_split": dict(sorted(by_split.items())), "by_reason": dict(sorted(by_reason.items())),
                "by_source": by_source, "other_shards": self.other_shards,
                "by_stage": self.stages()}

    def stages(self) -> dict:
        """Per stage, in pipeline order: records kept (passed on) and dropped per reason."""
        names = list(dict.fromkeys([*self.kept, *self.dropped]))
        return {name: {"kept": self.kept[name], "dropped": dict(sorted(self.dropped[name].items()))}
                for name in names}

    @classmethod
    def from_dicts(cls, parts: list[dict]) -> "Tally":
        tally = cls()
        for counts in parts:
            for source, c in counts["by_source"].items():
                tally.read[source] += c["read"]
                tally.written[source].update(c["written"])
                tally.rejected[source].update(c["rejected"])
            for stage, c in counts.get("by_stage", {}).items():
                tally.kept[stage] += c["kept"]
                tally.dropped[stage].update(c["dropped"])
        return tally


def length_stats(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"samples": 0, "tokens": 0}
    return {"samples": int(len(lengths)), "tokens": int(lengths.sum()), "min": int(lengths.min()),
            "median": float(np.median(lengths)), "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()), "mean": round(float(lengths.mean()), 1)}


#: the fingerprint's definition: 1 hashed every non-integer value as JSON; 2 hashes string columns' UTF-8 bytes and
#: lengths straight from their Arrow buffers (the same rows give the same digest, ~10x faster on long documents).
#: Digests of version 2 and later carry their version ("v2-..."); :func:`fingerprint_version` reads it back, so the
#: manifests of earlier builds still verify (``longqa.publish``).
FINGERPRINT_VERSION = 2


def fingerprint(table: pa.Table, version: int = FINGERPRINT_VERSION) -> str:
    """sha256 over the rows in order, column by column: independent of how rows were batched, sharded or stored.

    Each column feeds its own streaming hashes (integer lists and, from version 2, strings: lengths and values apart),
    so chunk boundaries do not change the result; ``string`` and ``large_string`` columns of the same rows agree.
    """
    h = hashlib.sha256()
    for name in table.column_names:
        lengths, values = hashlib.sha256(), hashlib.sha256()
        for chunk in table.column(name).chunks:
            if pa.types.is_list(chunk.type) and pa.types.is_integer(chunk.type.value_type):
                lengths.update(np.asarray(chunk.value_lengths().fill_null(0), dtype=np.int64).tobytes())
                values.update(np.asarray(chunk.flatten(), dtype=np.int64).tobytes())
            elif version >= 2 and (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
                lengths.update(np.asarray(pc.binary_length(chunk).fill_null(-1), dtype=np.int64).tobytes())
                values.update(utf8_bytes(chunk))
            else:
                for value in chunk.to_pylist():
                    values.update(
                        json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass"))
                    values.update(b"\n")
        h.update(name.encode() + b"\x00" + lengths.digest() + values.digest())
    return h.hexdigest() if version == 1 else f"v{version}-{h.hexdigest()}"


def fingerprint_version(digest: str) -> int:
    """The version a digest of :func:`fingerprint` was made with (1: a bare hex digest)."""
    head, sep, _ = digest.partition("-")
    return int(head[1:]) if sep and head[:1] == "v" and head[1:].isdigit() else 1


def utf8_bytes(chunk: pa.Array) -> memoryview:
    """The UTF-8 bytes of a string array's values, concatenated in order (nulls as no bytes), without copying."""
    if chunk.null_count:  # a null slot may own bytes in Arrow's layout: replace nulls (their lengths say -1)
        chunk = pc.fill_null(chunk, "")
    _, offsets, data = chunk.buffers()
    if data is None or len(chunk) == 0:
        return memoryview(b"")
    wide = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    bounds = np.frombuffer(offsets, dtype=wide)[chunk.offset:chunk.offset + len(chunk) + 1]
    return memoryview(data)[int(bounds[0]):int(bounds[-1])]


def file_sha256(path: Path, suffixes: tuple[str, ...] | None = None) -> str:
    """Hash of a file, or of every file below a folder (relative names included; only names ending in one of
    `suffixes` when given)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                 and (suffixes is None or p.name.endswith(suffixes)))
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def describe_inputs(inputs) -> list[dict]:
    out = []
    for spec in inputs:
        path = resolve_path(spec.path)
        entry = {"path": spec.path, "resolved": str(path), "format": spec.format, "sha256": file_sha256(path)}
        if spec.qa_file:
            entry["qa_file_sha256"] = file_sha256(resolve_path(spec.qa_file))
        out.append(entry)
    return out


BUILD_LIBRARIES = ("longqa", "datasets", "pyarrow", "tokenizers", "transformers", "numpy", "gguf")


def library_versions(dists: tuple[str, ...] = BUILD_LIBRARIES) -> dict:
    """Python's version and each installed distribution's (None where missing)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in dists:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions
