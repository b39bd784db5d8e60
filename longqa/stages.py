"""The builder's preparation stages, in order: shard → validate → split → dedup → render.

Each stage is a small generator over the items the one before it yields (in the manner of datatrove's pipeline steps
and filters): it passes on what it keeps and drops the rest with a `Reject`, which goes to `rejects.jsonl` and is
counted under the stage's name and the reason; what it passes on is counted as kept (`Tally.kept`/`Tally.dropped`, the
manifest's `counts.by_stage`). Chained, the stages
stay lazy: one record goes through all of them before the next is read, so rejects keep the read order.

`shard` is the entry: it keeps this machine's share of the input (`--shard-index i --num-shards n`: whole documents),
counts what was read and passes the readers' own rejects (stage "read") to the log; the later stages see only
`Prepared` items.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from longqa.manifest import Tally
from longqa.rejects import RejectLog
from longqa.render import Rendered, Renderer
from longqa.split import Deduplicator, Splitter, shard_of
from longqa.validate import reject_record, validate
from schemas import BuildConfig, Record, Reject


@dataclass
class Prepared:
    """A record on its way through the stages: its document hash, then its split, then its rendered text."""

    record: Record
    doc_id: str
    split: str | None = None
    rendered: Rendered | None = None
    evidence: Any = None  # longqa.distract.Evidence: where the gold document is, for a sample with distractors


class Stage:
    """One step over `Prepared` items: `keep(item)` returns None (pass it on) or the `Reject` that drops it."""

    name = "stage"

    def __init__(self, tally: Tally, rejects: RejectLog):
        self.tally, self.rejects = tally, rejects

    def drop(self, reject: Reject) -> None:
        self.tally.dropped[self.name][reject.reason] += 1
        self.rejects.add(reject)

    def keep(self, item: Prepared) -> Reject | None:
        raise NotImplementedError

    def __call__(self, items: Iterable[Prepared]) -> Iterator[Prepared]:
        for item in items:
            reject = self.keep(item)
            if reject is None:
                self.tally.kept[self.name] += 1
                yield item
            else:
                self.drop(reject)


class Shard(Stage):
    """This machine's share: records whose document hashes to `shard_index` (rejects: by their origin). Counts every
    item of the share as read; the readers' rejects are dropped here under the stage name "read"."""

    name = "read"

    def __init__(self, cfg: BuildConfig, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.index, self.count = cfg.shard_index, cfg.num_shards

    def __call__(self, items: Iterable[Record | Reject]) -> Iterator[Prepared]:
        for item in items:
            key = str(item.origin) if isinstance(item, Reject) else item.doc_id()
            if shard_of(key, self.count) != self.index:
                self.tally.other_shards += 1
                continue
            self.tally.read[item.source] += 1
            if isinstance(item, Reject):
                self.drop(item)
            else:
                self.tally.kept[self.name] += 1
                yield Prepared(item, key)


class Validate(Stage):
    """The typed rules of `longqa.validate` (the first failing rule's reason)."""

    name = "validate"

    def __init__(self, cfg: BuildConfig, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.cfg = cfg

    def keep(self, item: Prepared) -> Reject | None:
        return validate(item.record, self.cfg)


class Split(Stage):
    """Assigns the split by document (`longqa.split.Splitter`); a document in `deny_docs` is dropped."""

    name = "split"

    def __init__(self, cfg: BuildConfig, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.splitter, self.deny_docs = Splitter(cfg), cfg.deny_docs

    def keep(self, item: Prepared) -> Reject | None:
        item.split = self.splitter.assign(item.record, item.doc_id)
        if item.split is None:
            return reject_record(item.record, "denied_document", "documents",
                                 f"document {item.doc_id} is in deny_docs {self.deny_docs}")
        return None


class Dedup(Stage):
    """Drops a (document, question) pair seen before; repeats of a record drawn with replacement pass."""

    name = "dedup"

    def __init__(self, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.seen = Deduplicator()

    def keep(self, item: Prepared) -> Reject | None:
        record = item.record
        if record.repeat:
            return None
        earlier = self.seen.first_seen(item.doc_id, record.question, record.seq)
        if earlier is None:
            return None
        return reject_record(record, "duplicate_pair", "question", f"same document and question as record #{earlier}")


class Render(Stage):
    """The prompt segments of the template (`longqa.render`); drops nothing."""

    name = "render"

    def __init__(self, renderer: Renderer, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.renderer = renderer

    def keep(self, item: Prepared) -> Reject | None:
        item.rendered = self.renderer.render(item.record)
        return None


def prepare(cfg: BuildConfig, items: Iterable[Record | Reject], renderer: Renderer, tally: Tally,
            rejects: RejectLog, distract: Stage | None = None) -> Iterator[Prepared]:
    """The stages chained: shard → validate → split → dedup → [distract] → render (`distract`:
    `longqa.distract.Distract`, when an input has `distractors`)."""
    stages = (Validate(cfg, tally, rejects), Split(cfg, tally, rejects), Dedup(tally, rejects),
              *([distract] if distract is not None else []), Render(renderer, tally, rejects))
    prepared = Shard(cfg, tally, rejects)(items)
    for stage in stages:
        prepared = stage(prepared)
    return prepared
