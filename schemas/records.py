"""Records flowing through the builder: an input `Record`, or a `Reject` with a reason and its origin.

A record read from any source ends up in exactly one place: a split of the output, or `rejects.jsonl`.
"""
from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Origin(BaseModel):
    """Where a record came from: the input file and the 1-based line (text formats) or 0-based index."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int | None = None
    index: int | None = None
    pointer: str | None = None  # inside a JSON document: e.g. "data[3].paragraphs[2].qas[5]"

    def __str__(self) -> str:
        if self.pointer is not None:
            return f"{self.file}:{self.pointer}"
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}[{self.index}]"
        return self.file


class Document(BaseModel):
    """One long text of a record's material."""

    text: Any  # validated as text by the `non_text` rule, so bad input is rejected with a reason, not a crash
    title: str | None = None
    source: str | None = None


class Record(BaseModel):
    """An input question-answer pair over one or more long documents, as a reader yields it."""

    id: str
    documents: list[Document]
    question: Any
    answers: list[Any]
    system: str | None = None
    source: str
    license: str | None = None
    origin: Origin
    seq: int = Field(0, description="global position in read order (input index, record index); merge sorts by it")
    role: str = Field("long", description="the input's role in a mix: long or short")
    train_only: bool = Field(False, description="always in the train split (short samples, synthetic tasks)")
    input: int = Field(0, description="index of the input (BuildConfig.inputs) it was read from")
    repeat: int = Field(0, description="k-th repeat of a record drawn with replacement (repeats skip deduplication)")

    def doc_id(self) -> str:
        """Content hash of the documents: the unit of splitting and deduplication (16 hex digits of sha256)."""
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(str(doc.text).encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()[:16]


class Reject(BaseModel):
    """A record that is not written, with a reason code, the field at fault and its origin."""

    reason: str
    origin: Origin
    field: str | None = None
    message: str = ""
    source: str = ""
    seq: int = 0
    record: dict[str, Any] | None = None

    def describe(self) -> str:
        field = f" field '{self.field}'" if self.field else ""
        return f"{self.origin}:{field} {self.reason}: {self.message}".rstrip(": ")
