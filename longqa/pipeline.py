"""The build: read → shard → validate → split → dedup → render (`longqa.stages`) → tokenize → write → describe.

`build(cfg)` streams records through the stages in batches; every record read is either written to a split or
appended to `rejects.jsonl` with a reason (counted per stage and reason), and the `Tally` proves it in the manifest.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from longqa.describe import describe
from longqa.distract import Distract, Located
from longqa.manifest import Tally
from longqa.mix import MixLog, sampled
from longqa.paths import load_tokenizer as cached_tokenizer
from longqa.readers import read_input
from longqa.rejects import BuildError, RejectLog  # noqa: F401  (BuildError: re-exported)
from longqa.render import Renderer
from longqa.split import SPLITS
from longqa.stages import Prepared, prepare
from longqa.tokenize import Encoded, OverBudget
from longqa.validate import reject_record
from longqa.atomic import atomic_output
from schemas.outdir import guard
from longqa.write import DATASETS, StreamWriter, list_array, save_datasets
from schemas import BuildConfig, Record, Reject
from schemas.errors import ConfigError

log = logging.getLogger(__name__)


def load_tokenizer(ref: str):
    """A fast tokenizer from a local folder, a .gguf file (or `pkg:` path to one), or a Hub id."""
    tokenizer = cached_tokenizer(ref)
    if not tokenizer.is_fast:
        raise ConfigError(f"tokenizer {ref}: a fast (Rust) tokenizer is required (tokenizer.json); "
                          "give another --tokenizer")
    return tokenizer


def numbered(cfg: BuildConfig, mix: MixLog | None = None) -> Iterator[Record | Reject]:
    """All inputs in order, drawn as their `sample` asks (`mix` counts it), each item numbered with its global read
    position `seq`."""
    seq, mix = 0, MixLog() if mix is None else mix
    for index, spec in enumerate(cfg.inputs):
        for item in sampled(spec, functools.partial(read_input, spec, cfg), cfg.seed, mix):
            item.seq = seq
            if isinstance(item, Record):
                item.input = index
            seq += 1
            yield item


#: a batch grows past its size to keep a document's consecutive samples together, up to this many times the size
MAX_BATCH_GROWTH = 8


def batched_by_document(items: Iterable, size: int) -> Iterator[list]:
    """Batches of at least `size` items (the last may be shorter) that never part the consecutive samples of one
    document (`doc_id`), so that they share one cut of it (:meth:`longqa.tokenize.Encoder.encode`); a run longer
    than ``MAX_BATCH_GROWTH x size`` is parted there (memory stays bounded)."""
    batch: list = []
    for item in items:
        if len(batch) >= size and (item.doc_id != batch[-1].doc_id or len(batch) >= MAX_BATCH_GROWTH * size):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def evidence_columns(batch: list[Prepared], located: list[Located | None]) -> dict[str, list]:
    """The evidence columns (schemas.arrow): null for a sample without distractors."""
    return {"evidence_start": [x.start if x else None for x in located],
            "evidence_end": [x.end if x else None for x in located],
            "answer_position": [x.answer if x else None for x in located],
            "depth": [p.evidence.depth if p.evidence else None for p in batch]}


def gold_doc_id(p: Prepared) -> str:
    """The sample's own document: with distractors, the gold one (`doc_id` keys the composed material)."""
    return p.evidence.gold_doc_id if p.evidence else p.doc_id


def text_columns(batch: list[Prepared], located: list[Located | None]) -> dict[str, list]:
    return {
        "id": [p.record.id for p in batch],
        "doc_id": [gold_doc_id(p) for p in batch],
        "messages": [p.rendered.messages for p in batch],
        "question": [p.record.question.strip() for p in batch],
        "answers": [[a.strip() for a in p.record.answers] for p in batch],
        "title": [" / ".join(d.title for d in p.record.documents if d.title) or None for p in batch],
        "source": [p.record.source for p in batch],
        "license": [p.record.license for p in batch],
        "origin": [str(p.record.origin) for p in batch],
        "seq": [p.record.seq for p in batch],
        "n_doc_chars": [len(p.rendered.material) for p in batch],
        "n_doc_words": [len(p.rendered.material.split()) for p in batch],
        **evidence_columns(batch, located),
    }


def token_columns(batch: list[Prepared], encoded: list[Encoded], located: list[Located | None]) -> dict[str, list]:
    return {
        "id": [p.record.id for p in batch],
        "doc_id": [gold_doc_id(p) for p in batch],
        "input_ids": list_array([e.input_ids for e in encoded]),
        "labels": list_array([e.labels for e in encoded]),
        "length": [len(e.input_ids) for e in encoded],
        "n_doc_tokens": [e.n_doc_tokens for e in encoded],
        "n_doc_tokens_dropped": [e.n_doc_tokens_dropped for e in encoded],
        "seq": [p.record.seq for p in batch],
        **evidence_columns(batch, located),
    }


def build(cfg: BuildConfig, progress: bool = True) -> dict:
    """Build the dataset described by `cfg` into `cfg.out`; returns the manifest."""
    from longqa.encode_pool import encode_batches  # tokenizer machinery loads only when a build runs

    # before the tokenizer loads (issue 24)
    guard(cfg.out, "longqa.build", inputs=[spec.path for spec in cfg.inputs], overwrite=cfg.overwrite)
    started = time.time()
    tokenizer = load_tokenizer(cfg.tokenizer)
    renderer = Renderer(cfg, tokenizer)
    tally = Tally()
    with atomic_output(Path(cfg.out), "longqa.build") as tmp:
        rejects = RejectLog(tmp / "rejects.jsonl", tally, cfg.strict)
        streams = {name: {split: StreamWriter(tmp / f"{name}-{split}.arrow", features) for split in SPLITS}
                   for name, features in DATASETS.items()}
        mix = MixLog()
        reading = tqdm(numbered(cfg, mix), desc="read", unit=" rec", disable=not progress)
        distract = Distract(cfg, renderer, tokenizer, tally, rejects) \
            if any(spec.distractors for spec in cfg.inputs) else None
        batches = batched_by_document(prepare(cfg, reading, renderer, tally, rejects, distract), cfg.batch_size)
        tokenizing = tqdm(desc="tokenize", unit=" sample", disable=not progress)
        for batch, encoded in encode_batches(batches, tokenizer, cfg):
            tokenizing.update(len(batch))
            located = [distract.locate(p, e) if distract and p.evidence and isinstance(e, Encoded) else None
                       for p, e in zip(batch, encoded)]
            for split in SPLITS:
                kept = [(p, e, x) for p, e, x in zip(batch, encoded, located)
                        if p.split == split and isinstance(e, Encoded) and (x is not None or p.evidence is None)]
                if kept:
                    ps, es, xs = map(list, zip(*kept))
                    streams["text"][split].write(text_columns(ps, xs))
                    streams["tokenized"][split].write(token_columns(ps, es, xs))
                    for p in ps:
                        tally.written[p.record.source][split] += 1
                    tally.kept["tokenize"] += len(kept)
            for p, e, x in zip(batch, encoded, located):
                if isinstance(e, OverBudget):
                    tally.dropped["tokenize"]["over_budget"] += 1
                    rejects.add(reject_record(p.record, "over_budget", "question", e.message))
                elif p.evidence is not None and x is None:  # a tokenizer that merges across the document boundary
                    tally.dropped["tokenize"]["evidence_not_located"] += 1
                    rejects.add(reject_record(p.record, "evidence_not_located", "documents", "the gold document's "
                                              "tokens do not occur as one run in the sample's tokens"))
        reading.close()
        tokenizing.close()
        rejects.close()
        save_datasets(tmp, streams, cfg.max_shard_size)
        manifest = describe(tmp, cfg, tally, tokenizer=tokenizer, seconds=time.time() - started, mix=mix.as_list(),
                            distractors=distract.stats.as_dict() if distract else None)
    log.info("built %s in %.1fs", cfg.out, time.time() - started)
    return manifest
