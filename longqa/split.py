"""Assign records to splits by document, deterministically; deduplicate; keep denied documents out; shard the input.

Everything keys on the document content hash (`Record.doc_id`), so a document can never land in two splits, and each
of n machines building `--shard-index i --num-shards n` gets whole documents.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from schemas import BuildConfig, Record

TRAIN, HELDOUT = "train", "test"
SPLITS = (TRAIN, HELDOUT)


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shard_of(key: str, num_shards: int) -> int:
    return int(unit_hash("shard", key) * num_shards)


def read_doc_list(path: str) -> set[str]:
    """Doc ids (16 hex digits) or titles, one per line; blank lines and '#' comments ignored."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"deny_docs: {path} is not a file")
    lines = (line.strip() for line in file.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def _names(record: Record, doc_id: str) -> set[str]:
    return {doc_id} | {doc.title for doc in record.documents if doc.title}


class Splitter:
    """`assign(record, doc_id)` returns the split name, or None when the document is denied."""

    def __init__(self, cfg: BuildConfig):
        self.fraction = cfg.heldout_fraction
        self.heldout = set(cfg.heldout_docs)
        self.denied = read_doc_list(cfg.deny_docs) if cfg.deny_docs else set()
        self.salt = cfg.split_salt

    def assign(self, record: Record, doc_id: str) -> str | None:
        names = _names(record, doc_id)
        if names & self.denied:
            return None
        if record.train_only:  # short samples and synthetic tasks: the held-out split stays real long QA
            return TRAIN
        if self.heldout:
            return HELDOUT if names & self.heldout else TRAIN
        return HELDOUT if unit_hash(self.salt, doc_id) < self.fraction else TRAIN


class Deduplicator:
    """Remembers (document, question) pairs; `first_seen` returns the seq of an earlier identical pair, if any."""

    def __init__(self):
        self._seen: dict[bytes, int] = {}

    def first_seen(self, doc_id: str, question: str, seq: int) -> int | None:
        norm = " ".join(question.split()).casefold()
        key = hashlib.blake2b(f"{doc_id}\x00{norm}".encode("utf-8", "surrogatepass"), digest_size=12).digest()
        earlier = self._seen.get(key)
        if earlier is None:
            self._seen[key] = seq
        return earlier
