"""The Arrow schema of built datasets (`datasets` features): the contract between the builder and the trainer.

The evidence columns (null unless the input has `distractors`, `longqa.distract`): the gold document's token span
[evidence_start, evidence_end) in `input_ids`, the reference answer's first token there (null when the answer does
not occur in the document) and the depth drawn.

Kept apart from the pydantic models so that importing `schemas` stays light; importing this module loads `datasets`.
"""
from __future__ import annotations

import datasets

TEXT_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "doc_id": datasets.Value("string"),
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "title": datasets.Value("string"),
    "source": datasets.Value("string"),
    "license": datasets.Value("string"),
    "origin": datasets.Value("string"),
    "seq": datasets.Value("int64"),
    "n_doc_chars": datasets.Value("int64"),
    "n_doc_words": datasets.Value("int64"),
    "evidence_start": datasets.Value("int32"),
    "evidence_end": datasets.Value("int32"),
    "answer_position": datasets.Value("int32"),
    "depth": datasets.Value("float32"),
})

TOKENIZED_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "doc_id": datasets.Value("string"),
    "input_ids": datasets.List(datasets.Value("int32")),
    "labels": datasets.List(datasets.Value("int32")),
    "length": datasets.Value("int32"),
    "n_doc_tokens": datasets.Value("int32"),
    "n_doc_tokens_dropped": datasets.Value("int32"),
    "evidence_start": datasets.Value("int32"),
    "evidence_end": datasets.Value("int32"),
    "answer_position": datasets.Value("int32"),
    "depth": datasets.Value("float32"),
    "seq": datasets.Value("int64"),
})
