"""The run: documents → slots → two requests each → checks → `qa.jsonl` or `rejects.jsonl`; resumable, counted.

Every finished slot is appended (and flushed) as one line to `qa.jsonl` (kept) or `rejects.jsonl` (with its reason),
keyed by the slot id (`doc#q3`). A rerun reads both files, repairs a last line cut by a kill, and asks only the slots
that have no line: no pair is written twice and none is lost. Slots whose requests failed after their retries
(timeouts, 429/5xx) get no line and are asked again by the next run. `generate.json` holds the settings that decide
the plan (a rerun with other ones into the same folder is refused) and a summary of every run.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from longqa.generate.checks import QuestionIndex, supporting_quotes
from longqa.generate.client import ChatClient, MalformedReply, RequestFailed, Unreachable
from longqa.generate.plan import Slot, list_documents, plan_document
from longqa.generate.prompts import ANSWER_SCHEMA, QUESTION_SCHEMA, answer_messages, parse_reply, question_messages
from longqa.atomic import write_text
from longqa.manifest import Tally
from longqa.rejects import RejectLog
from longqa.validate import reject_record
from schemas.errors import ConfigError, DataError, UserError
from schemas.generate import GenerateConfig
from schemas.outdir import files_problems
from schemas.records import Document, Origin, Record

log = logging.getLogger(__name__)

QA_FILE, REJECTS_FILE, SUMMARY_FILE = "qa.jsonl", "rejects.jsonl", "generate.json"

#: Between the passages of an answer made from excerpts.
EXCERPT_SEPARATOR = "\n\n[…]\n\n"


@dataclass
class Loaded:
    """A document of the folder, read once for all its slots."""

    name: str
    text: str


@dataclass
class Outcome:
    """What the slots of this run came to."""

    written: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # not journaled: the next run asks again
    not_retried: int = 0  # of the failed: refused by a 4xx the client does not retry
    answered_from: Counter = field(default_factory=Counter)


def repair_last_line(path: Path) -> bool:
    """Cut a last line that a kill left without its newline; True when something was cut."""
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def _json_lines(path: Path):
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not a JSON line ({e.msg}); move the file away to start "
                                    "over") from e


class Journal:
    """`qa.jsonl` + `rejects.jsonl` of an output folder: what earlier runs finished, and appending to them."""

    def __init__(self, out: Path, source: str):
        self.qa_path, self.rejects_path = out / QA_FILE, out / REJECTS_FILE
        for path in (self.qa_path, self.rejects_path):
            if repair_last_line(path):
                log.warning("%s: removed a last line cut short by a killed run (its slot is asked again)", path)
        self.kept = [(row["doc"], row["id"], row["question"]) for row in _json_lines(self.qa_path)]
        rejected_ids = {row["record"]["id"] for row in _json_lines(self.rejects_path) if row.get("record")}
        self.done = {key for _, key, _ in self.kept} | rejected_ids
        self.source, self.tally = source, Tally()
        self._qa = self.qa_path.open("a", encoding="utf-8")
        self._rejects = RejectLog(self.rejects_path, self.tally, strict=False, resumable=True)

    def keep(self, row: dict) -> None:
        self._qa.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._qa.flush()

    def reject(self, slot: Slot, doc: Loaded | None, reason: str, field: str | None, message: str,
               question: str = "", answer: str | None = None) -> None:
        record = Record(id=slot.id, documents=[Document(text=doc.text if doc else "", title=slot.doc)],
                        question=question, answers=[] if answer is None else [answer], source=self.source,
                        origin=Origin(file=slot.doc, pointer=f"q{slot.index}"), seq=slot.index)
        self._rejects.add(reject_record(record, reason, field, message))

    def close(self) -> None:
        self._qa.close()
        self._rejects.close()


def check_plan(out: Path, cfg: GenerateConfig) -> dict:
    """The summary file of `out` (created when new); refuses a rerun whose plan settings differ from the first run's."""
    path = out / SUMMARY_FILE
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"plan": cfg.plan_fields(), "runs": []}
    if summary["plan"] != cfg.plan_fields():
        raise ConfigError(f"{path}: this folder holds a run with other plan settings {summary['plan']} (now "
                          f"{cfg.plan_fields()}); continue with those, or write to another --out")
    return summary


def write_summary(out: Path, summary: dict) -> None:
    write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def sentence(text: str) -> str:
    """`text` ending as a sentence does (one full stop added unless it ends in . ? or !)."""
    return text if text.endswith((".", "?", "!")) else text + "."


class Generator:
    """The per-slot work: ask, check, journal. One instance per run; its state lives on one event loop."""

    def __init__(self, cfg: GenerateConfig, client: ChatClient, journal: Journal, record=lambda: None):
        self.cfg, self.client, self.journal, self.record = cfg, client, journal, record
        self.outcome = Outcome()
        self.questions = QuestionIndex(cfg.duplicate_similarity)
        for doc, key, question in journal.kept:
            self.questions.add(doc, key, question)

    def reject(self, slot: Slot, doc: Loaded | None, reason: str, field: str | None, message: str, **kw) -> None:
        self.journal.reject(slot, doc, reason, field, message, **kw)
        self.outcome.rejected[reason] += 1

    def fits(self, doc: Loaded, question: str) -> bool:
        """Prompt + whole document + answer within the generator's window (estimated from characters)."""
        prompt_chars = sum(len(m["content"]) for m in answer_messages(doc.name, doc.text, question, True))
        return prompt_chars / self.cfg.chars_per_token + self.cfg.max_answer_tokens <= self.cfg.context_window

    async def process(self, slot: Slot, doc: Loaded) -> None:
        cfg, seed = self.cfg, self.cfg.seed * 1_000_003 + slot.index
        passages = [doc.text[a:b] for a, b in slot.passages]
        try:
            reply = await self.client.chat(question_messages(doc.name, passages, slot.kind),
                                           max_tokens=cfg.max_question_tokens, temperature=cfg.temperature,
                                           schema=("question", QUESTION_SCHEMA),
                                           seed=seed)
        except MalformedReply as e:
            return self.reject(slot, doc, "malformed_reply", "question", str(e))
        parsed = parse_reply(reply.text, {"question": str})
        if isinstance(parsed, str):
            return self.reject(slot, doc, "malformed_reply", "question", _cut(parsed, reply))
        question = parsed["question"].strip()
        if not question:
            return self.reject(slot, doc, "empty_question", "question", "the generated question is empty")
        if (earlier := self.questions.similar(slot.doc, question)) is not None:
            return self.reject(slot, doc, "duplicate_question", "question",
                                f"near-duplicate of question {earlier}", question=question)
        self.questions.add(slot.doc, slot.id, question)  # pending questions count, so concurrent ones are compared
        try:
            await self._answer(slot, doc, passages, question)
        finally:
            if slot.id not in self.journal.done:
                self.questions.discard(slot.doc, slot.id)

    async def _answer(self, slot: Slot, doc: Loaded, passages: list[str], question: str) -> None:
        cfg, whole = self.cfg, self.fits(doc, question)
        material = doc.text if whole else EXCERPT_SEPARATOR.join(passages)
        try:
            reply = await self.client.chat(answer_messages(doc.name, material, question, whole),
                                           max_tokens=cfg.max_answer_tokens, temperature=cfg.temperature / 3,
                                           schema=("answer", ANSWER_SCHEMA),
                                           seed=cfg.seed * 1_000_003 + slot.index)
        except MalformedReply as e:
            return self.reject(slot, doc, "malformed_reply", "answer", str(e), question=question)
        parsed = parse_reply(reply.text, {"answer": str, "quotes": list})
        if isinstance(parsed, str):
            return self.reject(slot, doc, "malformed_reply", "answer", _cut(parsed, reply), question=question)
        answer = parsed["answer"].strip()
        if not answer:
            return self.reject(slot, doc, "empty_answer", "answer", "the generated answer is empty",
                                question=question)
        quotes = supporting_quotes(parsed["quotes"], doc.text, cfg.min_quote_chars)
        if isinstance(quotes, str):
            return self.reject(slot, doc, "unsupported", "quotes", quotes, question=question, answer=answer)
        context = "document" if whole else "passages"
        self.journal.keep({"id": slot.id, "doc": slot.doc, "question": question, "answer": answer,
                           "kind": slot.kind, "quotes": quotes,
                           "answer_context": context, "passages": [list(p) for p in slot.passages],
                           "model": cfg.model})
        self.journal.done.add(slot.id)
        self.outcome.written += 1
        self.outcome.answered_from[context] += 1


def _cut(problem: str, reply) -> str:
    return problem + (" (the reply hit max_tokens)" if reply.finish_reason == "length" else "")


def load_document(folder: Path, name: str) -> Loaded | tuple[str, str]:
    """The document, or (reason, message) when it cannot be used."""
    try:
        text = (folder / name).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return "invalid_utf8", f"document '{name}' is not valid UTF-8 ({e.reason} at byte {e.start})"
    if not text.strip():
        return "empty_document", f"document '{name}' is empty or whitespace-only"
    return Loaded(name, text)


async def _run(cfg: GenerateConfig, folder: Path, names: list[str], generator: Generator, bar: tqdm) -> None:
    """Feed the slots of each document, in order, to `concurrency` workers (documents are read as they are due)."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.concurrency)
    journal = generator.journal

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            slot, doc = item
            try:
                await generator.process(slot, doc)
            except RequestFailed as e:
                generator.outcome.failed[e.reason] += 1
                generator.outcome.not_retried += not e.retried
                log.warning("%s: request failed (%s), %s", slot.id, e.reason, e)
                bar.set_postfix(failed=sum(generator.outcome.failed.values()))  # open, not done: not counted
            else:
                bar.update(1)
            generator.record()

    async def feed() -> None:
        for name in names:
            loaded = load_document(folder, name)
            if isinstance(loaded, tuple):
                for i in range(cfg.questions_per_doc):
                    slot = Slot(name, i, "", ())
                    if slot.id not in journal.done:
                        generator.reject(slot, None, loaded[0], "documents", loaded[1])
                        bar.update(1)
                continue
            for slot in plan_document(name, loaded.text, cfg):
                if slot.id not in journal.done:
                    await queue.put((slot, loaded))
        for _ in range(cfg.concurrency):
            await queue.put(None)

    workers = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
    try:
        await asyncio.gather(feed(), *workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def out_files_problems(cfg) -> list[str]:
    """qa.jsonl / rejects.jsonl in the output folder are appended to only when an earlier run wrote them (issue 24)."""
    out = cfg.out if isinstance(cfg.out, str) else cfg.docs
    field = "out" if isinstance(cfg.out, str) else "docs"
    return files_problems(field, out, "longqa.generate", (QA_FILE, REJECTS_FILE), SUMMARY_FILE,
                          overwrite=cfg.overwrite is True)


def generate(cfg: GenerateConfig, progress: bool = True) -> dict:
    """Run the generation described by `cfg`; returns this run's summary (also appended to generate.json)."""
    folder = Path(cfg.docs)
    if not folder.is_dir():
        raise ConfigError(f"docs: {cfg.docs} is not a folder of documents")
    names = list_documents(folder)
    if not names:
        raise ConfigError(f"docs: {cfg.docs} holds no .txt or .md document")
    out = Path(cfg.out) if cfg.out else folder
    problems = out_files_problems(cfg)  # another tool's qa.jsonl is never appended to or cut (issue 24)
    if problems:
        raise ConfigError("; ".join(problems))
    if cfg.overwrite and not (out / SUMMARY_FILE).exists():
        for name in (QA_FILE, REJECTS_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    summary = check_plan(out, cfg)
    write_summary(out, summary)  # first: it marks qa.jsonl / rejects.jsonl here as this command's own
    journal = Journal(out, source=folder.name)
    slots = len(names) * cfg.questions_per_doc
    started, began = time.time(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    log.info("%d documents, %d questions planned, %d already done in %s", len(names), slots, len(journal.done), out)
    summary["runs"].append({"started": began, "finished": False})
    client = ChatClient(cfg)
    generator = Generator(cfg, client, journal)

    def record(finished: bool = False) -> None:
        """This run's entry of generate.json as it stands: written after every request and slot, so a killed run's
        requests are there too (`finished` false)."""
        outcome = generator.outcome
        summary["runs"][-1] = {
            "started": began, "finished": finished, "seconds": round(time.time() - started, 2),
            "endpoint": cfg.endpoint, "model": cfg.model, "json_mode": client.json_mode, "documents": len(names),
            "slots": slots, "written": outcome.written, "rejected": dict(sorted(outcome.rejected.items())),
            "failed": dict(sorted(outcome.failed.items())), "not_retried": outcome.not_retried,
            "answered_from": dict(outcome.answered_from), "requests": client.stats.as_dict()}
        write_summary(out, summary)

    client.on_change = generator.record = record
    record()

    async def main() -> None:
        with tqdm(total=slots, initial=len(journal.done), desc="generate", unit=" pair",
                  disable=not progress) as bar:
            try:
                await _run(cfg, folder, names, generator, bar)
            finally:
                await client.close()

    try:
        asyncio.run(main())
    except Unreachable as e:
        raise UserError(f"generate: {sentence(str(e))} Finished pairs are kept in {out}; rerun to continue") from e
    finally:
        journal.close()
        record()
    kept = sum(1 for _ in _json_lines(out / QA_FILE))  # the files as they are now, over every run
    rejected = Counter(row["reason"] for row in _json_lines(out / REJECTS_FILE))
    summary["totals"] = {"slots": slots, "pairs": kept, "rejected": dict(sorted(rejected.items())),
                         "open": slots - kept - sum(rejected.values())}
    record(finished=True)
    return {**summary["runs"][-1], "totals": summary["totals"], "out": str(out)}
