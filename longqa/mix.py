"""Mixing: the `sample` stage draws a count or a share of an input's records, seeded, and counts what it left out.

An input's `sample` is a count (integer) or a share (float) of its records; without `sample_replace` each record is
drawn at most once: the k records with the smallest seeded hash of their position, so the draw is the same for the same
seed and input whatever else the recipe holds. With `sample_replace`, k draws with repeats (upsampling); a repeat gets
the id `ID#r2` and `repeat` > 0 (exempt from deduplication). Drawn records keep input order. Readers' rejects
(malformed lines) always pass through, to be counted. Drawing a count needs the input's size first: a sampled input
is read twice.

Every input gets a `MixEntry` (available, drawn, not drawn); the manifest's `mix` holds them beside the written
counts of each source, so a recipe "all of LongQA plus 3k short samples" shows what it became.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from longqa.split import unit_hash
from schemas.build import InputSpec
from schemas.errors import DataError
from schemas.records import Record, Reject


@dataclass
class MixEntry:
    """One input's part of the mix."""

    path: str
    format: str
    role: str
    sample: int | float | None
    sample_replace: bool
    source: str | None = None  # the reader's source name (provenance of its records)
    available: int = 0  # records the input holds (readers' rejects aside)
    drawn: int = 0  # records passed on, repeats included
    not_drawn: int = 0  # records never drawn


class MixLog:
    """The `MixEntry` of every input read, in order."""

    def __init__(self):
        self.entries: list[MixEntry] = []

    def add(self, spec: InputSpec) -> MixEntry:
        entry = MixEntry(spec.path, spec.format, spec.role, spec.sample, spec.sample_replace)
        self.entries.append(entry)
        return entry

    def as_list(self) -> list[dict]:
        return [asdict(e) for e in self.entries]


def draw(n: int, spec: InputSpec, seed: int) -> Counter[int]:
    """Record position -> times drawn, for an input of `n` records."""
    k = spec.sample if isinstance(spec.sample, int) else round(spec.sample * n)
    if spec.sample_replace:
        rng = random.Random(f"{seed}\x00{spec.path}")
        return Counter(rng.choices(range(n), k=k)) if n else Counter()
    if k > n:
        raise DataError(f"input {spec.path}: sample {spec.sample} asks for {k} records but it holds {n}; ask for "
                        "fewer, or set sample_replace: true to repeat records")
    ranked = sorted(range(n), key=lambda i: unit_hash("sample", str(seed), spec.path, str(i)))
    return Counter(ranked[:k])


def sampled(spec: InputSpec, read: Callable[[], Iterable[Record | Reject]], seed: int,
            log: MixLog) -> Iterator[Record | Reject]:
    """The stage: the records of `read()` drawn as `spec.sample` asks, each marked with the input's role."""
    entry = log.add(spec)
    counts = None
    if spec.sample is not None:
        n = sum(1 for item in read() if isinstance(item, Record))
        counts = draw(n, spec, seed)
        entry.available, entry.not_drawn = n, n - len(counts)
    position = 0
    for item in read():
        if isinstance(item, Reject):
            yield item
            continue
        entry.source = item.source
        times = 1 if counts is None else counts.get(position, 0)
        position += 1
        for repeat in range(times):
            record = item if repeat == 0 else item.model_copy(update={"id": f"{item.id}#r{repeat + 1}",
                                                                      "repeat": repeat})
            record.role = spec.role
            record.train_only = record.train_only or spec.role == "short"
            entry.drawn += 1
            yield record
    if counts is None:
        entry.available = position
