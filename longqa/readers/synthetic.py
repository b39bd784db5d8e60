"""`format: synthetic`: long-context tasks hidden in real haystack text, seeded and reproducible.

Tasks (`InputSpec.synthetic.tasks`), each like a RULER task (`schemas.build.SYNTHETIC_TASKS`, shown on the card):
- `kv_single`: one key-value pair ("The special magic number for KEY is: 1234567.") at the sample's depth.
- `kv_multi`: `pairs` pairs at spread depths, one or two of them asked.
- `variable_tracking`: a chain "VAR A = 12345." "VAR B = VAR A." … over `hops` variables, from the sample's depth on;
  asked for every variable holding the value.
- `counting`: a sentence planted 1..`max_count` times at random depths; asked how many times.

Haystacks are real documents of the train side only, so no held-out document ever becomes training text: the input's
`path` is a long-text corpus folder (`python -m longqa.corpus`: its `train/*.jsonl`) or a docs folder of .txt/.md
(the documents the build's own splitter puts in train). A haystack is cut from one document (the next ones appended
when it is too short) to the sample's length in words, at a sentence end; needles go in at sentence boundaries.
Sample i uses its own generator seeded with (build seed, path, i); lengths and depths are cycled over the samples,
so every (length, depth) cell gets samples. Records are `train_only`.
"""
from __future__ import annotations

import json
import logging
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from longqa.readers._common import Source
from longqa.split import TRAIN, Splitter
from schemas.build import BuildConfig, InputSpec, SyntheticSpec
from schemas.records import Document, Record, Reject

log = logging.getLogger(__name__)

CORPUS_KIND = "longqa-long-text-corpus"
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_KEY_WORD = re.compile(r"^[a-z]{5,12}$")


@dataclass(frozen=True)
class Haystack:
    title: str
    text: str


def train_documents(folder: Path, cfg: BuildConfig) -> list[Haystack]:
    """The train-side documents under `folder`: a corpus's train/*.jsonl, or the train-split .txt/.md files."""
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("kind") == CORPUS_KIND:
        docs = []
        for path in sorted((folder / "train").glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                docs.extend(Haystack(str(row.get("title") or row.get("id")), row["text"])
                            for row in map(json.loads, f) if row.get("text", "").strip())
        return docs
    splitter, docs, seen = Splitter(cfg), [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        seen += 1
        title = path.relative_to(folder).as_posix()
        probe = Record(id=title, documents=[Document(text=text, title=title)], question="", answers=[],
                       source="haystack", origin={"file": title})
        if splitter.assign(probe, probe.doc_id()) == TRAIN:
            docs.append(Haystack(title, text))
    log.info("synthetic: %d of the %d documents of %s are on the train side (haystacks); the others are held out or "
             "denied", len(docs), seen, folder)
    return docs


def cut(docs: list[Haystack], start: int, words: int) -> tuple[str, list[str]]:
    """About `words` words of text from docs[start] on (next documents appended), ending at a sentence end."""
    parts, titles, have = [], [], 0
    i = start
    while have < words and len(titles) < len(docs):
        doc = docs[i % len(docs)]
        parts.append(doc.text.strip())
        titles.append(doc.title)
        have += len(doc.text.split())
        i += 1
    text = "\n\n".join(parts)
    for n, m in enumerate(_WORD.finditer(text)):
        if n == words:
            end = m.start()
            ends = [e.start() for e in _SENTENCE_END.finditer(text, max(0, end - 2000), end)]
            text = text[:ends[-1] if ends and ends[-1] > end // 2 else end].rstrip()
            break
    return text, titles


def insert(text: str, needles: list[tuple[float, str]]) -> str:
    """`text` with each (depth, sentence) put at the sentence boundary nearest below depth x length."""
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    at: dict[int, list[str]] = {}
    for depth, sentence in needles:
        target = depth * len(text)
        pos = min(bounds, key=lambda b: (abs(b - target), b))
        at.setdefault(pos, []).append(sentence)
    out, last = [], 0
    for pos in sorted(at):
        out.append(text[last:pos])
        joined = " ".join(at[pos])
        out.append((joined + " ") if pos < len(text) else (" " + joined))
        last = pos
    out.append(text[last:])
    return "".join(out)


def _keys(text: str, rng: random.Random, n: int) -> list[str]:
    """`n` distinct keys made of two words of the haystack ("harbour-council"); random letters once its words run
    out of pairs."""
    pool = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if _KEY_WORD.match(w)})
    keys: list[str] = []
    while len(keys) < n:
        if len(pool) >= 2 and len(keys) < len(pool) * (len(pool) - 1) // 2:
            key = "-".join(rng.sample(pool, 2))
        else:
            key = "".join(rng.choices(string.ascii_lowercase, k=10))
        if key not in keys:
            keys.append(key)
    return keys


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def make_task(task: str, text: str, depth: float, syn: SyntheticSpec,
              rng: random.Random) -> tuple[list[tuple[float, str]], str, str]:
    """(needles, question, answer) of one sample."""
    if task == "kv_single":
        key, value = _keys(text, rng, 1)[0], _number(rng)
        return ([(depth, f"The special magic number for {key} is: {value}.")],
                f"What is the special magic number for {key} mentioned in the provided text?", value)
    if task == "kv_multi":
        keys = _keys(text, rng, syn.pairs)
        values = [_number(rng) for _ in keys]
        depths = [depth] + [rng.random() for _ in keys[1:]]
        asked = [0] if rng.random() < 0.5 else [0, rng.randrange(1, len(keys))]
        needles = [(d, f"The special magic number for {k} is: {v}.") for d, k, v in zip(depths, keys, values)]
        names = " and ".join(keys[i] for i in asked)
        return (needles, f"What are the special magic numbers for {names} mentioned in the provided text?",
                ", ".join(f"{keys[i]}: {values[i]}" for i in asked))
    if task == "variable_tracking":
        names = []
        while len(names) < syn.hops:
            name = "".join(rng.choices(string.ascii_uppercase, k=5))
            if name not in names:
                names.append(name)
        value = str(rng.randint(10_000, 99_999))
        depths = sorted([depth] + [depth + rng.random() * (1 - depth) for _ in names[1:]])
        chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        return (list(zip(depths, chain)),
                f"Find all variables that are assigned the value {value} in the text above, directly or through "
                "other variables.", ", ".join(names))
    word = _keys(text, rng, 1)[0]
    count = rng.randint(1, syn.max_count)
    depths = [depth] + [rng.random() for _ in range(count - 1)]
    return ([(d, f"Remember the word {word}.") for d in depths],
            f"How many times does the text above ask the reader to remember the word {word}?", str(count))


def read(folder: Path, spec: InputSpec, cfg: BuildConfig | None = None) -> Iterator[Record | Reject]:
    """`spec.synthetic.samples` records over the train-side documents of `folder` (the build's seed and split)."""
    cfg = cfg or BuildConfig(inputs=[spec])
    syn, src = spec.synthetic or SyntheticSpec(), Source.of(spec, folder, id_prefix="synthetic")
    docs = train_documents(folder, cfg)
    if not docs:
        yield src.reject("missing_document", src.origin(), f"{folder} has no train-side document to use as a "
                         "haystack", field="path")
        return
    tasks = [t for t, w in syn.tasks.items() if w > 0]
    weights = [syn.tasks[t] for t in tasks]
    for i in range(syn.samples):
        rng = random.Random(f"{cfg.seed}\x00{spec.path}\x00{i}")
        task = rng.choices(tasks, weights)[0]
        length, depth = syn.lengths[i % len(syn.lengths)], syn.depths[(i // len(syn.lengths)) % len(syn.depths)]
        text, titles = cut(docs, rng.randrange(len(docs)), length)
        needles, question, answer = make_task(task, text, depth, syn, rng)
        record = src.record(src.origin(index=i), id=f"synthetic-{task}-{i}",
                            documents=[Document(text=insert(text, needles), title=f"{task} in {titles[0]}")],
                            question=question, answers=[answer])
        record.train_only = True
        yield record
