"""Helpers that WRITE small input files of every format into a test's tmp_path (no fixture data is committed).

Each `write_*` returns the path it wrote. Rows given as `str` or `bytes` to the line-based writers are written as
they are (one line each), so a test can plant a broken line at a known line number.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.build import BuildConfig, InputSpec
from schemas.records import Document, Origin, Record, Reject

Row = Mapping[str, Any] | str | bytes


def _line(row: Row) -> bytes:
    if isinstance(row, bytes):
        return row.rstrip(b"\n") + b"\n"
    if isinstance(row, str):
        return row.rstrip("\n").encode("utf-8") + b"\n"
    return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"


def write_jsonl(path: Path, rows: Iterable[Row]) -> Path:
    """One JSON object per line; `str`/`bytes` rows are written verbatim (blank lines, broken JSON, bad UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for row in rows:
            f.write(_line(row))
    return path


def write_json(path: Path, obj: Any) -> Path:
    """`obj` as one (indented) JSON document."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def longalpaca_instruction(material: str, question: str, noun: str = "paper") -> str:
    """The LongAlpaca prompt that holds both the material and the question (its `input` is empty)."""
    return (f"Below is a {noun}. Memorize the {noun} and answer my question after the {noun}.\n The {noun} begins. \n"
            f"{material}\n Now the {noun} ends. \n{question}")


def longalpaca_row(material: str, question: str, answer: str, noun: str = "paper") -> dict[str, str]:
    """A LongAlpaca item in the dataset's own shape: everything in `instruction`, `input` empty."""
    return {"instruction": longalpaca_instruction(material, question, noun), "input": "", "output": answer}


def write_longalpaca(path: Path, rows: Sequence[Row], as_list: bool = True) -> Path:
    """LongAlpaca items as a JSON list (the released LongAlpaca-12k.json) or as JSONL."""
    if as_list:
        return write_json(path, list(rows))
    return write_jsonl(path, rows)


def longbench_row(context: str, question: str, answers: Sequence[str], _id: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """A LongBench line (`length`, `dataset` and `language` filled like the real files)."""
    row = {"input": question, "context": context, "answers": list(answers), "length": len(context.split()),
           "dataset": "test", "language": "en", "all_classes": None}
    if _id is not None:
        row["_id"] = _id
    return {**row, **extra}


def write_longbench(path: Path, rows: Iterable[Row]) -> Path:
    """LongBench JSONL."""
    return write_jsonl(path, rows)


def squad_qa(qid: str | None, question: str, answers: Sequence[str] = (), impossible: bool | None = None,
             starts: Sequence[int] | None = None) -> dict[str, Any]:
    """A SQuAD question entry; `impossible` adds the v2 `is_impossible` flag."""
    qa: dict[str, Any] = {"question": question,
                          "answers": [{"text": a, "answer_start": (starts or [0] * len(answers))[i]}
                                      for i, a in enumerate(answers)]}
    if qid is not None:
        qa["id"] = qid
    if impossible is not None:
        qa["is_impossible"] = impossible
    return qa


def squad_article(title: str, paragraphs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """A SQuAD article from (context, [qa, …]) pairs."""
    return {"title": title, "paragraphs": [{"context": c, "qas": list(qas)} for c, qas in paragraphs]}


def write_squad(path: Path, articles: Sequence[Mapping[str, Any]], version: str = "v2.0") -> Path:
    """A SQuAD JSON file: {"version", "data": articles}."""
    return write_json(path, {"version": version, "data": list(articles)})


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], header: Sequence[str] | None = None,
              extra_lines: Sequence[bytes] = ()) -> Path:
    """CSV with a header row (default: the keys of the first row); `extra_lines` are appended verbatim as bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(header or rows[0])
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(text.getvalue().encode("utf-8") + b"".join(line.rstrip(b"\n") + b"\n" for line in extra_lines))
    return path


def write_parquet(path: Path, rows: Sequence[Mapping[str, Any]], row_group_size: int | None = None) -> Path:
    """Parquet of `rows` (columns from the rows' keys)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path, row_group_size=row_group_size)
    return path


def write_hf_disk(path: Path, splits: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]]) -> Path:
    """A `datasets` DatasetDict (a mapping split -> rows) or Dataset (a list of rows) saved with `save_to_disk`."""
    from datasets import Dataset, DatasetDict

    path = Path(path)
    if isinstance(splits, Mapping):
        dataset = DatasetDict({name: Dataset.from_list(list(rows)) for name, rows in splits.items()})
    else:
        dataset = Dataset.from_list(list(splits))
    dataset.save_to_disk(str(path))
    return path


def write_docs(folder: Path, documents: Mapping[str, str | bytes], qa_rows: Iterable[Row],
               qa_name: str | None = "qa.jsonl") -> Path:
    """A documents folder: `documents` (relative name -> text, or raw bytes) and its QA JSONL `qa_name`.

    Returns the folder. With `qa_name=None` no QA file is written (the test writes its own elsewhere).
    """
    folder = Path(folder)
    for name, text in documents.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    if qa_name is not None:
        write_jsonl(folder / qa_name, qa_rows)
    return folder


def spec(path: Path | str, format: str, **kw: Any) -> InputSpec:
    """An `InputSpec` for `path`."""
    return InputSpec(path=str(path), format=format, **kw)


def split_items(items: Iterable[Record | Reject]) -> tuple[list[Record], list[Reject]]:
    """(records, rejects) of a reader's output, each in order."""
    records, rejects = [], []
    for item in items:
        (rejects if isinstance(item, Reject) else records).append(item)
    return records, rejects


def corpus(path: Path, n_docs: int = 20, per_doc: int = 3, extra: list | None = None) -> Path:
    rows = [longbench_row(document(d), f"What is fact{d}-{q}?", [f"answer {d}-{q}"], _id=f"d{d}q{q}")
            for d in range(n_docs) for q in range(per_doc)]
    return write_longbench(path, rows + (extra or []))


def cfg_for(tmp_path: Path, tokenizer: str, inputs: list[Path], **kw) -> BuildConfig:
    return BuildConfig(inputs=[{"path": str(p), "format": "longbench"} for p in inputs], tokenizer=tokenizer,
                       out=str(tmp_path / kw.pop("out_name", "out")), max_length=kw.pop("max_length", 512), **kw)


def document(i: int, words: int = 120) -> str:
    return f"Document {i}. " + " ".join(f"fact{i}-{k} is about the Normans." for k in range(words // 5))


# --------------------------------------------------------------------- records, configs, rendered+encoded samples
DOC = " ".join(f"Sentence {i} of the long document about the Normans in France." for i in range(60))


def record(doc: str = DOC, question: str = "Who gave their name to Normandy?", answer: str = "The Normans",
           **kw: Any) -> Record:
    """One record of one document (origin f.jsonl line 1); `kw` sets other fields (id, seq, repeat, source…)."""
    fields = {"id": "r1", "source": "t", "origin": Origin(file="f.jsonl", line=1), **kw}
    return Record(documents=[Document(text=doc)], question=question, answers=[answer], **fields)


def config(tmp_path: Path, **kw: Any) -> BuildConfig:
    """A BuildConfig over a placeholder input (the stages and renderer never read it)."""
    return BuildConfig(inputs=[{"path": str(tmp_path), "format": "jsonl"}], tokenizer="unused", **kw)


def encode_one(tok: Any, cfg: BuildConfig, rec: Record | None = None):
    """(rendered, encoded) of one record."""
    from longqa.render import Renderer
    from longqa.tokenize import Encoder

    rendered = Renderer(cfg, tok).render(rec or record())
    return rendered, Encoder(tok, cfg.max_length, cfg.truncation).encode([rendered], ["d"])[0]


def labeled_text(tok: Any, enc: Any) -> str:
    """The text of the tokens trained on."""
    from schemas.labels import IGNORE_INDEX

    return tok.decode(enc.input_ids[enc.labels != IGNORE_INDEX])
