"""A folder of text/markdown documents plus a QA file: JSONL of {`doc`, `question`, `answer`}.

`doc` names a file in the folder by its relative path, or is a list of names (several documents for one question).
The QA file is `spec.qa_file`, by default PATH/qa.jsonl; the field mapping may rename its columns (the key 'document'
renames `doc`). Each document is read once as UTF-8 (a small LRU cache serves the questions that follow) and titled
with its relative path. A named document that does not exist or lies outside the folder is rejected
('missing_document', field = the doc column); origins are lines of the QA file.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from longqa.paths import resolve_path
from longqa.readers._common import (Source, as_list, column_map, input_path, iter_json_objects, missing_column,
                                    optional_value)
from schemas.build import InputSpec
from schemas.records import Document, Origin, Record, Reject

#: Record field -> QA-file column, before `InputSpec.fields` overrides.
COLUMNS = {"document": "doc", "question": "question", "answer": "answer", "id": "id", "system": "system"}

#: Documents kept in memory: consecutive questions about the same document read it once.
CACHED_DOCUMENTS = 8


def read(spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of the QA file of a documents folder."""
    folder = input_path(spec)
    if not folder.is_dir():
        raise NotADirectoryError(f"input '{spec.path}' (format docs): {folder} is not a folder of documents")
    qa_path = resolve_path(spec.qa_file) if spec.qa_file else folder / "qa.jsonl"
    if not qa_path.is_file():
        raise FileNotFoundError(f"input '{spec.path}' (format docs): QA file {qa_path} does not exist")
    return _read(folder, qa_path, spec)


def _read(folder: Path, qa_path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    src, columns = Source.of(spec, folder, file=spec.qa_file or f"{spec.path}/qa.jsonl"), column_map(spec, COLUMNS)
    load = functools.lru_cache(maxsize=CACHED_DOCUMENTS)(functools.partial(_load_document, folder.resolve()))
    for item in iter_json_objects(qa_path, src):
        yield item if isinstance(item, Reject) else _record(*item, src, columns, load)


def _load_document(root: Path, name: str) -> Document | tuple[str, str]:
    """The document `name` inside `root`, or (reason, message) saying why it cannot be read."""
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        return "missing_document", f"document '{name}' lies outside the documents folder"
    if not path.is_file():
        return "missing_document", f"document '{name}' does not exist in the documents folder"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return "invalid_utf8", f"document '{name}' is not valid UTF-8 ({error.reason} at byte {error.start})"
    return Document(text=text, title=path.relative_to(root).as_posix())


def _record(origin: Origin, index: int, row: dict[str, Any], src: Source, columns: Mapping[str, str],
            load: Callable[[str], Document | tuple[str, str]]) -> Record | Reject:
    for field in ("document", "question", "answer"):
        if row.get(columns[field]) is None:
            return missing_column(src, origin, row, field, columns[field])
    doc_column = columns["document"]
    names = as_list(row[doc_column])
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        return src.reject("missing_document", origin, f"'{doc_column}' must name a document file (or a list of them)",
                          field=doc_column, raw=row)
    documents = []
    for name in names:
        loaded = load(name)
        if not isinstance(loaded, Document):
            reason, message = loaded
            return src.reject(reason, origin, message, field=doc_column, raw=row)
        documents.append(loaded)
    system = optional_value(row, columns.get("system"))
    if system is not None and not isinstance(system, str):
        return src.reject("non_text", origin, f"system is {type(system).__name__}, not text",
                          field=columns["system"], raw=row)
    return src.record(origin, id=src.record_id(optional_value(row, columns.get("id")), index), documents=documents,
                      question=row[columns["question"]], answers=as_list(row[columns["answer"]]), system=system)
