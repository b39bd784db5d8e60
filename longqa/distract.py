"""The distract stage: long QA at a target token length from any QA set (an input's `distractors`, issue 23).

As RULER's qa tasks and LongAlign's data do, each sample's own (gold) material is placed at a seeded depth among
other documents, filled to `distractors.length` tokens of the build's tokenizer. The distractors come from the same
input and the same split only (the stage runs after `split`): a held-out sample never holds a train document, and no
document is in two splits. The stage buffers the input's samples until its last record is read (the pool is every
document of the split), then yields them in read order.

Per sample, with a `random.Random` seeded by (seed, record id, document): a depth from `depths` and an order of the
pool's other documents. The documents before the gold one take ``depth * (budget - gold)`` tokens, those after it the
rest, the last of each part cut where a word ends (so that it tokenizes as the tokens kept); a document is used at
most once per sample. Token counts add up (documents and the separator counted in context) for tokenizers that split
words at whitespace (byte-level BPE: SmolLM2, Llama 3, Qwen), so a sample has `length` tokens, or a few less where a
cut fell short of a word's end or the pool ran out (counted: `under_length`).

`locate` runs after the tokenize stage: it finds the gold material's tokens in the sample's `input_ids` (its token
span) and the reference answer's first occurrence in it (the answer's token position), independently of how the
tokenize stage splits the text.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from longqa.manifest import Tally
from longqa.rejects import RejectLog
from longqa.render import Renderer, material_of
from longqa.stages import Prepared, Stage
from longqa.validate import reject_record
from schemas import BuildConfig, Record
from schemas.records import Document

SEPARATOR = "\n\n"  # between documents (longqa.render.material_of)


@dataclass
class Evidence:
    """Where a sample's gold material is, in characters of the rendered material; `locate` turns it into tokens."""

    gold_doc_id: str
    gold_text: str
    gold_start: int  # character offset of the gold material in the composed material
    answer_offset: int | None  # character offset of the reference answer in the gold material, None if absent
    depth: float
    n_distractors: int


@dataclass
class Located:
    """The evidence in tokens of `input_ids`: the gold span [start, end) and the answer's first token (or None)."""

    start: int
    end: int
    answer: int | None


class DistractStats:
    """What the stage did, for the manifest's `distractors` entry."""

    def __init__(self):
        self.samples: dict[str, int] = defaultdict(int)
        self.under_length: dict[str, int] = defaultdict(int)
        self.answer_found: dict[str, int] = defaultdict(int)
        self.distractors: dict[str, int] = defaultdict(int)
        self.depths: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.pool: dict[str, int] = defaultdict(int)

    def as_dict(self) -> dict:
        return {split: {"samples": self.samples[split], "pool_documents": self.pool[split],
                        "distractor_documents_used": self.distractors[split],
                        "answer_in_gold": self.answer_found[split], "under_length": self.under_length[split],
                        "by_depth": dict(sorted(self.depths[split].items()))}
                for split in sorted(self.samples)}


def find_answer(text: str, answer: str) -> int | None:
    """Character offset of `answer`'s first occurrence in `text` (exact, then case-insensitive), or None."""
    answer = answer.strip()
    if not answer:
        return None
    at = text.find(answer)
    if at < 0 and len(text.lower()) == len(text):
        at = text.lower().find(answer.lower())
    return at if at >= 0 else None


def content_tokenizer(tokenizer):
    """A copy of the fast tokenizer's backend that reads control-token text as plain text (as `longqa.tokenize`
    tokenizes documents and answers)."""
    from tokenizers import Tokenizer

    content = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    content.encode_special_tokens = True
    return content


class Distract(Stage):
    """Composes each sample of an input with `distractors` (see the module docstring); other inputs pass through.
    Drops a sample whose own material alone does not fit the length (reason `gold_over_length`)."""

    name = "distract"

    def __init__(self, cfg: BuildConfig, renderer: Renderer, tokenizer, tally: Tally, rejects: RejectLog):
        super().__init__(tally, rejects)
        self.cfg, self.renderer = cfg, renderer
        self.content = content_tokenizer(tokenizer)
        self.template = content_tokenizer(tokenizer)
        self.template.encode_special_tokens = False
        # The separator's tokens between two words (alone it may be one token, between text two)
        count = lambda text: len(self.content.encode(text, add_special_tokens=False).ids)  # noqa: E731
        self.sep = count(f"a{SEPARATOR}b") - count("a") - count("b")
        self.stats = DistractStats()
        self._encodings: dict[str, object] = {}  # doc id -> its encoding (ids, offsets), for `locate`

    def __call__(self, items: Iterable[Prepared]) -> Iterator[Prepared]:
        groups: dict[tuple[int, str], list[Prepared]] = defaultdict(list)
        for item in items:
            if self.cfg.inputs[item.record.input].distractors is None:
                self.tally.kept[self.name] += 1
                yield item
            else:
                groups[(item.record.input, item.split)].append(item)
        for (index, split), group in sorted(groups.items()):
            yield from self._compose_group(self.cfg.inputs[index].distractors, split, group)

    def locate(self, item: Prepared, encoded) -> Located | None:
        """`locate` of a tokenized sample."""
        return locate(encoded.input_ids, item.evidence, self._encodings[item.evidence.gold_doc_id])

    def _compose_group(self, spec, split: str, group: list[Prepared]) -> Iterator[Prepared]:
        texts = {}
        for item in group:
            texts.setdefault(item.doc_id, material_of(item.record))
        pool = sorted(texts)
        encodings = dict(zip(pool, self.content.encode_batch([texts[d] for d in pool], add_special_tokens=False)))
        self._encodings.update(encodings)
        self.stats.pool[split] += len(pool)
        seed = self.cfg.seed if spec.seed is None else spec.seed
        for item in group:
            composed = self._compose(item, spec, seed, pool, texts, encodings, split)
            if isinstance(composed, Prepared):
                self.tally.kept[self.name] += 1
                yield composed
            else:
                self.drop(composed)

    def _fixed_tokens(self, record: Record) -> int:
        r = self.renderer.render(record)
        template = sum(len(e.ids) for e in self.template.encode_batch_fast(
            [t for t in (r.prefix, r.middle, r.end, r.tail) if t], add_special_tokens=False))
        return template + len(self.content.encode(r.answer, add_special_tokens=False).ids)

    def _compose(self, item: Prepared, spec, seed: int, pool: list[str], texts: dict, encodings: dict, split: str):
        record = item.record
        gold_text, n_gold = texts[item.doc_id], len(encodings[item.doc_id].ids)
        fixed = self._fixed_tokens(record)
        budget = spec.length - fixed
        if n_gold > budget:
            return reject_record(record, "gold_over_length", "documents",
                                 f"the document has {n_gold} tokens; with the template, question and answer "
                                 f"({fixed}) it exceeds distractors.length {spec.length}")
        rng = random.Random(f"{seed}\x00{record.id}\x00{item.doc_id}")
        depth = rng.choice(spec.depths)
        order = [d for d in pool if d != item.doc_id]
        rng.shuffle(order)
        free = budget - n_gold
        before, used, left, _ = self._fill(order, round(depth * free), texts, encodings)
        after, _, _, ran_out = self._fill(order[used:], free - round(depth * free) + left, texts, encodings)
        gold_start = sum(len(t) + len(SEPARATOR) for t, _ in before)
        documents = [Document(text=t) for t, _ in before] + list(record.documents) + [Document(text=t) for t, _ in after]
        new = record.model_copy(update={"documents": documents})
        answer = find_answer(gold_text, str(record.answers[0]))
        n_used = len(before) + len(after)
        self.stats.samples[split] += 1
        self.stats.distractors[split] += n_used
        self.stats.answer_found[split] += answer is not None
        self.stats.depths[split][str(depth)] += 1
        self.stats.under_length[split] += ran_out  # the pool ran out before the length was met
        out = Prepared(new, new.doc_id(), split=item.split)
        out.evidence = Evidence(item.doc_id, gold_text, gold_start, answer, depth, n_used)
        return out

    def _fill(self, order: list[str], need: int, texts: dict,
              encodings: dict) -> tuple[list[tuple[str, int]], int, int, bool]:
        """Documents of `order` (in order) taking `need` tokens, a separator each included, the last one cut where a
        word ends; returns ``[(text, tokens)]``, how many of `order` it used, the tokens left unfilled and whether
        `order` ran out before `need` was met."""
        out, used = [], 0
        for doc in order:
            room = need - self.sep
            if room < 1:
                break
            used += 1
            enc = encodings[doc]
            if len(enc.ids) <= room:
                out.append((texts[doc], len(enc.ids)))
                need -= len(enc.ids) + self.sep
                continue
            text, k = texts[doc], room
            # cut where a word ends and whitespace follows: the piece then tokenizes as the first k tokens
            while k > 0 and not (text[enc.offsets[k][0]].isspace() and not text[enc.offsets[k][0] - 1].isspace()):
                k -= 1
            if k:
                out.append((text[:enc.offsets[k][0]], k))
                need -= k + self.sep
            break
        else:
            return out, used, max(need, 0), need - self.sep >= 1
        return out, used, max(need, 0), False


def locate(input_ids: np.ndarray, evidence: Evidence, enc) -> Located | None:
    """The gold material's token span in `input_ids` and the answer's first token, from the material's own encoding
    `enc` (ids, offsets); None when its tokens do not occur there as one run (a tokenizer that merges across the
    document boundary)."""
    gold = np.asarray(enc.ids, dtype=np.int64)
    ids = np.asarray(input_ids, dtype=np.int64)
    n = len(gold)
    if n == 0 or n > len(ids):
        return None
    starts = np.flatnonzero(ids[:len(ids) - n + 1] == gold[0])
    for start in starts:
        if np.array_equal(ids[start:start + n], gold):
            break
    else:
        return None
    start = int(start)
    answer = None
    if evidence.answer_offset is not None:
        answer = next((start + k for k, (_, end) in enumerate(enc.offsets) if end > evidence.answer_offset), None)
    return Located(start, start + n, answer)
