"""LongAlpaca / LongQA: a JSON list (or JSONL) of {`instruction`, `input`?, `output`}.

With a non-empty `input`, the input is the document and the instruction the question. LongAlpaca itself leaves `input`
empty and puts both in the instruction: "Below is a paper. Memorize the paper and answer my question after the paper.
The paper begins. {paper} Now the paper ends. {question}" (the noun varies: paper, material, book, story…). That
instruction is split at its last "Now the … ends." marker: the text before it is the document (preamble included), the
marker sentence and what follows are the question.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longqa.readers._common import Source, as_list, iter_json_objects
from schemas.build import InputSpec
from schemas.records import Document, Origin, Record, Reject

#: The sentence that ends the material inside a LongAlpaca instruction.
END_MARKER = re.compile(r"Now the \w+ ends\.?")


def split_instruction(instruction: str) -> tuple[str, str] | None:
    """(document, question) around the LAST "Now the … ends." marker, or None when there is no marker."""
    last = None
    for last in END_MARKER.finditer(instruction):
        pass
    if last is None:
        return None
    return instruction[: last.start()].strip(), instruction[last.start():].strip()


def read(path: Path, spec: InputSpec) -> Iterator[Record | Reject]:
    """Stream the records of a LongAlpaca JSON list or JSONL file."""
    src = Source.of(spec, path)
    for item in iter_json_objects(path, src):
        yield item if isinstance(item, Reject) else _record(*item, src)


def _record(origin: Origin, index: int, row: dict[str, Any], src: Source) -> Record | Reject:
    for field in ("instruction", "output"):
        if row.get(field) is None:
            state = "is null" if field in row else "is missing"
            return src.reject("missing_field", origin, f"'{field}' {state}", field=field, raw=row)
    instruction, material = row["instruction"], row.get("input")
    if material is not None and not (isinstance(material, str) and not material.strip()):
        document, question = material, instruction
    elif not isinstance(instruction, str):
        return src.reject("non_text", origin, f"instruction is {type(instruction).__name__}, not text",
                          field="instruction", raw=row)
    else:
        parts = split_instruction(instruction)
        if parts is None:
            return src.reject(
                "missing_field", origin,
                "'input' is empty and the instruction has no 'Now the … ends.' marker separating the material from "
                "the question; put the material in 'input' (or end it with 'Now the paper ends.')",
                field="input", raw=row)
        document, question = parts
    return src.record(origin, id=src.record_id(row.get("id"), index), documents=[Document(text=document)],
                      question=question, answers=as_list(row["output"]))
