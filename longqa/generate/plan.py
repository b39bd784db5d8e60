"""Plan the questions: which documents, and per document one slot a question with its kind and passage(s).

A document of length L asked `n` questions is cut into `n` equal regions; slot `i` draws its passage from region `i`,
so the questions cover the whole document, not its first pages. Two-passage kinds (`relation`, `reasoning`) add a
passage from another region (second, after the slot's own). Kinds are drawn by weight. Every draw uses a generator
seeded with (seed, document, slot), so the plan of one document does not depend on the others or on the order in which
answers come back.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from schemas.generate import TWO_PASSAGE_KINDS, GenerateConfig

#: File names the generator reads as documents (the `docs` format's layout).
DOCUMENT_SUFFIXES = (".txt", ".md")

#: How far (characters) a passage edge may move to land on a sentence or paragraph boundary.
SNAP_CHARS = 200

_BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass(frozen=True)
class Slot:
    """One planned question: `id` is unique in the folder (`doc#q3`) and keys the journal."""

    doc: str
    index: int
    kind: str
    passages: tuple[tuple[int, int], ...]  # character spans [start, end) in the document

    @property
    def id(self) -> str:
        return f"{self.doc}#q{self.index}"


def list_documents(folder: Path) -> list[str]:
    """Relative POSIX paths of the .txt/.md files below `folder` (hidden ones skipped), sorted."""
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES and not any(
                part.startswith(".") for part in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def _snap(text: str, pos: int, forward: bool, lo: int, hi: int) -> int:
    """`pos` moved to the nearest sentence/paragraph boundary (the start of the next sentence) within SNAP_CHARS and
    inside [lo, hi]: preferably ahead (`forward`) or behind, else the other way; unchanged when there is none."""
    cuts = [m.end() for m in _BOUNDARY.finditer(text, max(lo, pos - SNAP_CHARS), min(hi, pos + SNAP_CHARS))]
    ahead, behind = [c for c in cuts if c >= pos], [c for c in cuts if c <= pos]
    if forward:
        return ahead[0] if ahead else (behind[-1] if behind else pos)
    return behind[-1] if behind else (ahead[0] if ahead else pos)


def passage_in(text: str, start: int, end: int, size: int, rng: random.Random) -> tuple[int, int]:
    """A span of about `size` characters starting inside [start, end) at a random offset, its edges on sentence
    boundaries; passages of different regions never start at the same place."""
    if len(text) <= size:
        return 0, len(text)
    latest = max(start, min(end, len(text)) - size)
    begin = rng.randint(start, latest) if latest > start else start
    begin = _snap(text, begin, True, start, max(start, end - 1))
    stop = _snap(text, min(len(text), begin + size), False, begin + size // 2, len(text))
    return begin, stop


def plan_document(doc: str, text: str, cfg: GenerateConfig) -> list[Slot]:
    """The `questions_per_doc` slots of one document."""
    n = cfg.questions_per_doc
    kinds = [k for k, w in cfg.kinds.items() if w > 0]
    weights = [cfg.kinds[k] for k in kinds]
    slots = []
    for i in range(n):
        rng = random.Random(f"{cfg.seed}\x00{doc}\x00{i}")
        kind = rng.choices(kinds, weights)[0]
        regions = max(n, 2)
        width = len(text) / regions
        region = i * regions // n
        spans = [passage_in(text, int(region * width), int((region + 1) * width), cfg.passage_chars, rng)]
        if kind in TWO_PASSAGE_KINDS:
            other = (region + rng.randint(1, regions - 1)) % regions
            second = passage_in(text, int(other * width), int((other + 1) * width), cfg.passage_chars, rng)
            spans.append(second)  # the slot's own passage stays first
        slots.append(Slot(doc, i, kind, tuple(spans)))
    return slots
