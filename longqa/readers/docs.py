"""A folder of text/markdown documents plus a QA file: JSONL of {`doc`, `question`, `answer`}.

`doc` names a file in the folder by its relative path, or is a list of names (several documents for one question).
The QA file is `spec.qa_file`, by default PATH/qa.jsonl; its rows go through the generic field mapping
(`mapped_record`), which may rename its columns (the key 'document' renames `doc`). Each document is read once as UTF-8
(a small LRU cache serves the questions that follow) and titled with its relative path. A named document that does not
exist or lies outside the folder is rejected ('missing_document', field = the doc column); origins are lines of the QA
file.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from longqa.readers._common import Source, as_list, column_map, iter_json_objects, mapped_records, qa_path
from schemas.build import InputSpec
from schemas.records import Document, Record, Reject

#: Record field -> QA-file column, before `InputSpec.fields` overrides.
COLUMNS = {"document": "doc", "question": "question", "answer": "answer", "id": "id", "system": "system"}

#: Documents kept in memory: consecutive questions about the same document read it once.
CACHED_DOCUMENTS = 8


def read(folder: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of the QA file of a documents folder."""
    src, columns = Source.of(spec, folder, file=spec.qa_file or f"{spec.path}/qa.jsonl"), column_map(spec, COLUMNS)
    load = functools.lru_cache(maxsize=CACHED_DOCUMENTS)(functools.partial(_load_document, folder.resolve()))
    yield from mapped_records(iter_json_objects(qa_path(spec, folder), src), src, columns,
                              documents=functools.partial(_documents, load=load, column=columns["document"]))


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


def _documents(value: Any, load: Callable[[str], Document | tuple[str, str]],
               column: str) -> list[Document] | tuple[str, str]:
    """The documents named by the doc column (one name or a list), or (reason, message) for the first that fails."""
    names = as_list(value)
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        return "missing_document", f"'{column}' must name a document file (or a list of them)"
    documents = []
    for name in names:
        loaded = load(name)
        if not isinstance(loaded, Document):
            return loaded
        documents.append(loaded)
    return documents
