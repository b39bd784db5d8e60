"""What the readers share: input paths, provenance (`Source`), JSON/JSONL streaming and generic field mappings."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from longqa.paths import resolve_path
from schemas.paths import input_problems
from longqa.validate import clip_record
from schemas.build import InputSpec
from schemas.records import Document, Origin, Record, Reject

UTF8_BOM = b"\xef\xbb\xbf"

#: Rows per batch for the columnar formats (parquet, hf-disk): a few long documents at a time.
BATCH_ROWS = 64

#: Generic formats (jsonl, csv, parquet, hf-disk): record field -> column name, before `InputSpec.fields` overrides.
DEFAULT_COLUMNS = {"document": "document", "question": "question", "answer": "answer", "id": "id", "title": "title",
                   "system": "system"}
REQUIRED_FIELDS = ("document", "question", "answer")

#: An item of a JSON stream: its origin, its 0-based position in the file and the parsed object.
JsonItem = tuple[Origin, int, dict[str, Any]]

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors='surrogateescape' makes of a byte that is not UTF-8


def input_path(spec: InputSpec) -> Path:
    """The resolved path of `spec`, checked once before its reader starts (`longqa.readers.read_input`) by the rule
    `longqa.build` checks its configuration with (`schemas.paths.input_problems`: it exists, is a folder where the
    format reads one, and a docs folder has its QA file); a problem is raised at once as FileNotFoundError."""
    problems = input_problems(spec, f"input '{spec.path}' (format {spec.format})")
    if problems:
        raise FileNotFoundError(problems[0])
    return resolve_path(spec.path)


def qa_path(spec: InputSpec, folder: Path) -> Path:
    """The QA file of a docs folder: `spec.qa_file`, by default FOLDER/qa.jsonl."""
    return resolve_path(spec.qa_file) if spec.qa_file else folder / "qa.jsonl"


@dataclass(frozen=True)
class Source:
    """Provenance shared by every record of one input file: builds its `Record`s, `Reject`s and `Origin`s."""

    name: str  # Record.source
    license: str | None
    file: str  # Origin.file
    id_prefix: str  # ids of records without their own: f"{id_prefix}-{index}"

    @classmethod
    def of(cls, spec: InputSpec, path: Path, *, file: str | None = None, id_prefix: str | None = None) -> Source:
        name = spec.source or path.name
        # Origins name the input as the user wrote it (e.g. `pkg:...`), not where it resolved on this machine, so
        # outputs (and their fingerprints) are the same on every machine.
        return cls(name=name, license=spec.license, file=file or spec.path, id_prefix=id_prefix or name)

    def origin(self, *, line: int | None = None, index: int | None = None, pointer: str | None = None) -> Origin:
        return Origin(file=self.file, line=line, index=index, pointer=pointer)

    def record_id(self, own: Any, index: int) -> str:
        """The source's own id when it has one, else f"{id_prefix}-{index}"."""
        if own is None or (isinstance(own, str) and not own.strip()):
            return f"{self.id_prefix}-{index}"
        return str(own)

    def reject(self, reason: str, origin: Origin, message: str, *, field: str | None = None, raw: Any = None) -> Reject:
        """A `Reject`; `raw` (the record as read) is kept with long strings clipped."""
        if raw is not None and not isinstance(raw, dict):
            raw = {"value": raw}
        return Reject(reason=reason, origin=origin, field=field, message=message, source=self.name,
                      record=None if raw is None else clip_record(raw))

    def record(self, origin: Origin, *, id: str, documents: list[Document], question: Any, answers: list[Any],
               system: str | None = None) -> Record:
        return Record(id=id, documents=documents, question=question, answers=answers, system=system,
                      source=self.name, license=self.license, origin=origin)


def has_escaped_byte(text: str) -> bool:
    """True when `text`, decoded with errors='surrogateescape', held bytes that are not UTF-8."""
    return not text.isascii() and _ESCAPED_BYTE.search(text) is not None


def as_list(value: Any) -> list[Any]:
    """A column holding one value or a list of values, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ------------------------------------------------------------------------------------------------ JSON streaming
def skip_bom(f: BinaryIO) -> bytes:
    """Position `f` after a UTF-8 byte-order mark, if any; return the first non-whitespace byte (b"" if none)."""
    start = 3 if f.read(3) == UTF8_BOM else 0
    f.seek(start)
    first = b""
    while chunk := f.read(1 << 16):
        stripped = chunk.lstrip()
        if stripped:
            first = stripped[:1]
            break
    f.seek(start)
    return first


def json_error_reject(error: Exception, src: Source, origin: Origin) -> Reject:
    """The one Reject of a JSON document that cannot be parsed past `origin`: reading of the file ends there."""
    detail = error.args[0] if error.args else error
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    detail = str(detail).strip().splitlines()[0] if str(detail).strip() else type(error).__name__
    reason = "invalid_utf8" if "UTF8" in detail else "malformed_json"
    return src.reject(reason, origin, f"{detail}; the rest of the file is not read")


def iter_json_objects(path: Path, src: Source) -> Iterator[JsonItem | Reject]:
    """Stream the objects of a JSONL file, or of a JSON list (first non-whitespace byte '['), one at a time.

    JSONL: each non-blank line is decoded as strict UTF-8 and parsed; a bad line is rejected with its 1-based line
    number and reading goes on. JSON list: streamed with ijson; a parse error ends the file with one Reject at the
    index where it stopped. Items that are not objects are rejected ('malformed_json').
    """
    with path.open("rb") as f:
        if skip_bom(f) == b"[":
            yield from _iter_json_list(f, src)
        else:
            yield from _iter_jsonl(f, src)


def _iter_json_list(f: BinaryIO, src: Source) -> Iterator[JsonItem | Reject]:
    index = 0
    try:
        for obj in ijson.items(f, "item", use_float=True):
            origin = src.origin(index=index)
            if isinstance(obj, dict):
                yield origin, index, obj
            else:
                yield src.reject("malformed_json", origin, f"expected a JSON object, got {_json_type(obj)}", raw=obj)
            index += 1
    except ijson.JSONError as error:
        yield json_error_reject(error, src, src.origin(index=index))


def _iter_jsonl(f: BinaryIO, src: Source) -> Iterator[JsonItem | Reject]:
    index = -1  # 0-based position among the non-blank lines
    for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        origin, index = src.origin(line=line_no), index + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield src.reject("invalid_utf8", origin, f"line is not valid UTF-8 ({error.reason} at byte {error.start})",
                             raw={"line": raw.decode("utf-8", "replace")})
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as error:
            yield src.reject("malformed_json", origin, f"invalid JSON: {error.msg} (column {error.colno})",
                             raw={"line": text})
            continue
        if not isinstance(obj, dict):
            yield src.reject("malformed_json", origin, f"expected a JSON object, got {_json_type(obj)}", raw=obj)
            continue
        yield origin, index, obj


def _json_type(obj: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if obj is None else names.get(type(obj), type(obj).__name__)


# ---------------------------------------------------------------------------------------------- field mappings
def column_map(spec: InputSpec, defaults: Mapping[str, str] = DEFAULT_COLUMNS) -> dict[str, str]:
    """Record field -> column name: `defaults` overridden by the input's `fields`."""
    return {**defaults, **spec.fields}


def optional_value(row: Mapping[str, Any], column: str | None) -> Any:
    """The value of an optional column; absent, null and blank strings (e.g. an empty CSV cell) are None."""
    if column is None:
        return None
    value = row.get(column)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def missing_column(src: Source, origin: Origin, row: Mapping[str, Any], field: str, column: str,
                   present: Sequence[str] | None = None) -> Reject:
    """Reject 'missing_field' for a required column that is absent or null."""
    if column in row:
        message = f"column '{column}' (the record's {field}) is null"
    else:
        names = list(present if present is not None else row)
        shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
        message = f"column '{column}' (the record's {field}) is missing; columns present: {shown or 'none'}"
    return src.reject("missing_field", origin, message, field=column, raw=dict(row))


#: Turns the value of the `document` column into the record's documents, or (reason, message) saying why it cannot.
DocumentsOf = Callable[[Any], "list[Document] | tuple[str, str]"]


def texts_as_documents(value: Any, title: Any = None) -> list[Document]:
    """One text or a list of texts, one document each; `title` names the first."""
    return [Document(text=text, title=None if (i or title is None) else str(title))
            for i, text in enumerate(as_list(value))]


def mapped_record(row: Mapping[str, Any], origin: Origin, index: int, src: Source, columns: Mapping[str, str],
                  present: Sequence[str] | None = None, documents: DocumentsOf | None = None) -> Record | Reject:
    """A `Record` from a generic row through the field mapping `columns` (record field -> column name).

    `document` may hold one text or a list of texts (one document each; or, with `documents`, whatever that function
    makes of the value, e.g. the docs reader's file names); `answer` one answer or a list; `title` names the first
    document. Types of the texts are checked later by the validate stage (`non_text`). `present` lists the columns of
    the file when `row` holds only the mapped ones (for the message of a missing column).
    """
    for field in REQUIRED_FIELDS:
        column = columns[field]
        if row.get(column) is None:
            return missing_column(src, origin, row, field, column, present)
    value = row[columns["document"]]
    if documents is None:
        docs = texts_as_documents(value, optional_value(row, columns.get("title")))
    elif isinstance(docs := documents(value), tuple):
        reason, message = docs
        return src.reject(reason, origin, message, field=columns["document"], raw=dict(row))
    system = optional_value(row, columns.get("system"))
    if system is not None and not isinstance(system, str):
        return src.reject("non_text", origin, f"system is {type(system).__name__}, not text",
                          field=columns["system"], raw=dict(row))
    return src.record(origin, id=src.record_id(optional_value(row, columns.get("id")), index), documents=docs,
                      question=row[columns["question"]], answers=as_list(row[columns["answer"]]), system=system)


def mapped_records(items: Iterator[JsonItem | Reject], src: Source, columns: Mapping[str, str],
                   documents: DocumentsOf | None = None) -> Iterator[Record | Reject]:
    """`mapped_record` over a JSON stream, passing its rejects through."""
    for item in items:
        if isinstance(item, Reject):
            yield item
        else:
            origin, index, row = item
            yield mapped_record(row, origin, index, src, columns, documents=documents)
