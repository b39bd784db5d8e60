"""`GenerateConfig`: everything `python -m longqa.generate` needs (questions and answers from your documents).

Field problems are collected by pydantic and cross-field problems listed together by `_cross_checks`, before any file
is opened or request sent. The API key itself is never a field: only the name of the environment variable that holds
it, so no configuration, summary or log line can carry it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from schemas.outdir import OVERWRITE

#: Question kinds, as LongAlpaca's LongQA and LongAlign's Self-Instruct data use them.
KINDS = ("summary", "detail", "relation", "reasoning", "entities")

#: Kinds whose question is drawn from two passages of different parts of the document.
TWO_PASSAGE_KINDS = ("relation", "reasoning")


class GenerateConfig(BaseModel):
    """Everything `python -m longqa.generate` needs. `--print-config` shows it resolved."""

    model_config = ConfigDict(extra="forbid")

    docs: str = Field(description="folder of .txt/.md documents (the builder's `docs` layout; subfolders included)")
    out: str | None = Field(None, description="folder for qa.jsonl, rejects.jsonl and generate.json; default: the "
                            "documents folder itself, where `--format docs` looks for qa.jsonl")
    overwrite: bool = Field(False, description=OVERWRITE)

    # the server
    endpoint: str = Field("http://127.0.0.1:8000/v1", description="base URL of an OpenAI-compatible server (vLLM, "
                          "llama.cpp server, SGLang, TGI, Ollama), up to and including /v1")
    model: str = Field("default", description="model name the server knows")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (the key "
                             "itself is never printed or written); unset: no key is sent")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    timeout: float = Field(300.0, gt=0, description="seconds one request may take before it is retried")
    max_retries: int = Field(5, ge=0, description="retries of a request after a timeout, a 429 or a 5xx reply, with "
                             "exponential backoff (0.5 s doubling up to 8 s, or the server's Retry-After)")
    json_mode: Literal["json_schema", "json_object", "off"] = Field(
        "json_schema", description="how replies are constrained to JSON: the server's structured output with a "
        "schema (vLLM, llama.cpp, SGLang, Ollama), any JSON object, or only by the prompt")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature of question requests "
                               "(answers are sampled at a third of it)")
    max_question_tokens: int = Field(160, ge=8, description="reply token limit of a question request")
    max_answer_tokens: int = Field(600, ge=16, description="reply token limit of an answer request")

    # what to ask
    questions_per_doc: int = Field(4, ge=1, description="questions asked of each document, from passages spread over "
                                   "its whole length (one region each)")
    kinds: dict[str, float] = Field(
        default_factory=lambda: {"summary": 1.0, "detail": 2.0, "relation": 1.0, "reasoning": 1.0, "entities": 1.0},
        description=f"question kind -> weight; kinds: {', '.join(KINDS)}")
    passage_chars: int = Field(1500, ge=100, description="characters of a passage a question is drawn from")
    context_window: int = Field(8192, ge=256, description="the generator's window in tokens: an answer is generated "
                                "from the whole document when prompt + document + answer fit, else from the passage(s)")
    chars_per_token: float = Field(3.0, gt=0, description="characters per token used to estimate whether a document "
                                   "fits the window (low = cautious)")
    seed: int = Field(0, description="seed of kinds and passage positions (the plan is the same for the same seed)")

    # checks
    min_quote_chars: int = Field(20, ge=1, description="a supporting quote shorter than this does not count")
    duplicate_similarity: float = Field(0.8, gt=0.0, le=1.0, description="a question whose word-set Jaccard "
                                        "similarity to an earlier question on the same document reaches this is "
                                        "rejected as duplicate_question")

    @model_validator(mode="after")
    def _cross_checks(self) -> "GenerateConfig":
        problems = []
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            problems.append(f"kinds: unknown kind(s) {unknown} (known: {', '.join(KINDS)})")
        if any(w < 0 for w in self.kinds.values()):
            problems.append("kinds: weights must be >= 0")
        if not any(w > 0 for w in self.kinds.values()):
            problems.append("kinds: at least one kind needs a positive weight")
        if not self.endpoint.startswith(("http://", "https://")):
            problems.append(f"endpoint: {self.endpoint!r} is not an http(s) URL")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def plan_fields(self) -> dict:
        """The settings that decide which questions are asked: a rerun into the same `out` must keep them."""
        return self.model_dump(include={"questions_per_doc", "kinds", "passage_chars", "seed"})
