"""`EvalConfig`: everything `python -m sft.eval` needs. Every field is a flag of `sft.eval` (sections dotted:
`--qa.limit`); `configs/eval/default.yaml` resolves to the defaults (a test checks it).

The defaults *are* the embedded default run: SmolLM2-135M-Instruct (GGUF) against the model the default training
run writes (`python -m sft.run` saves `runs/smollm2-squad/adapter`), on the held-out articles of the default build
`out/`, bounded to minutes on 2 CPU cores. Field problems are collected by pydantic; cross-field problems are listed
together by `_cross_checks`. Nothing here opens a file or imports torch (path checks live in
`schemas.paths.eval_problems`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from schemas.outdir import OVERWRITE

from schemas.build import DEFAULT_TOKENIZER, split_commas

TASKS = ("qa", "passkey", "ppl")  # the default tasks; opt-in ones are listed in EvalConfig.tasks
SQUAD_V2_DEV = "pkg:long_context_eval/data/synthetic/json/squad.json"  # the default build's source
DEFAULT_TUNED = "runs/smollm2-squad/adapter"

LONGBENCH_QA_TEMPLATE = ("Answer the question based on the given passages. Only give me the answer and do not output "
                         "any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question "
                         "based on the given passages. Only give me the answer and do not output any other words."
                         "\n\nQuestion: {input}\nAnswer:")

SHARED_PREFIX_HELP = ("prompts whose first N or more tokens agree (the questions on one document) are prefilled "
                      "once: each continues from a copy of the shared prefix's KV cache, so only its own tail is "
                      "computed (answers as without sharing, up to float rounding). 0: off")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAConfig(_Section):
    """Held-out long QA, scored as LongBench."""

    data: str = Field("out", description="a built dataset folder (its text/ DatasetDict) or a LongBench .jsonl "
                      "(context, input, answers)")
    split: str = Field("test", description="split of a built dataset (the held-out documents)")
    prompt_template: str = Field(LONGBENCH_QA_TEMPLATE, description="LongBench .jsonl only: the prompt, with "
                                 "{context} and {input} (LongBench's hotpotqa/2wikimqa prompt by default)")
    chat: bool = Field(True, description="LongBench .jsonl only: send the prompt as a user turn through the "
                       "tokenizer's chat template (else as raw text). Built datasets always use their messages")
    limit: int | None = Field(16, ge=1, description="evaluate the first N questions (sorted by id); null: all. The "
                              "default build's held-out prompts have 5.7k-7k tokens; on 2 CPU cores each article "
                              "costs ~20 s (its shared prefix) and each question ~3 s more")
    max_new_tokens: int = Field(32, ge=1, description="greedy answer length limit (tokens)")
    batch_size: int = Field(1, ge=1, description="prompts per generate call (sorted and bucketed by length, "
                            "padding masked). 1 on CPUs, where computing is the cost and padding only adds to it "
                            "(benchmarks/eval_qa.py); 8-16 on GPUs")
    max_batch_tokens: int = Field(65536, ge=1, description="padded prompt tokens per batch at most")
    min_shared_prefix: int = Field(256, ge=0, description=SHARED_PREFIX_HELP)
    max_pad_fraction: float = Field(0.2, ge=0.0, le=1.0, description="a batch's shortest prompt is at least "
                                    "(1 - this) of its longest")
    length_buckets: list[int] = Field([2048, 4096, 8192], description="ascending bucket edges in prompt tokens: "
                                      "0-2k, 2k-4k, 4k-8k, 8k+")
    evidence_buckets: list[int] = Field([4096, 8192, 12288, 16384], description="ascending bucket edges of the "
                                        "evidence's token position (datasets built with distractors): 0-4k, 4k-8k, "
                                        "8k-12k, 12k-16k, 16k+; the buckets beyond the model's native window are "
                                        "marked")

    # --- truncation protocol (issue 9; docs/evaluation.md) ---
    truncation: Literal["template", "longbench_v1", "longbench_v2"] = Field(
        "template", description="how an over-long prompt is cut in the middle. 'template': the chat-templated "
        "token ids, the project's one middle rule (longqa.truncation: head rounded up) to window - max_new_tokens; "
        "'longbench_v1': LongBench pred.py, the raw prompt (the user turn) tokenized, int(max_length/2) tokens kept "
        "from each end, the halves decoded apart and joined, then the chat template; 'longbench_v2': LongBench v2 "
        "pred.py, ids[:max_length//2] + ids[-max_length//2:] decoded together, then the chat template")
    max_length: int | None = Field(
        None, ge=2, description="longbench_v1/v2: the raw prompt's token budget (LongBench's model2maxlen, e.g. 3500 "
        "for a 4k model); null: window - max_new_tokens - the tokens the chat template adds")

    @field_validator("length_buckets", "evidence_buckets")
    @classmethod
    def _ascending(cls, value: list[int]) -> list[int]:
        if not value or any(b <= a for a, b in zip(value, value[1:])) or value[0] <= 0:
            raise ValueError(f"must be positive and strictly ascending, got {value}")
        return value


class ShortQAConfig(QAConfig):
    """Short-context regression: the held-out questions of `data` with only their own SQuAD paragraph as the
    document (the rest of the prompt as in qa), LongBench scoring: what long fine-tuning costs on short inputs."""

    squad: str = Field(SQUAD_V2_DEV, description="the SQuAD v2 JSON the held-out questions were built from; each "
                       "question's own paragraph (matched by question id) replaces its article in the prompt")


class PasskeyConfig(_Section):
    """Passkey retrieval (LongLoRA Sec. 4.2): accuracy by prompt length (x key depth)."""

    # --- protocol (issue 9; docs/evaluation.md) ---
    protocol: Literal["grid", "longlora"] = Field(
        "grid", description="'grid': accuracy by length x depth (prompts of whole filler sentences fitted to each "
        "length in tokens, the key at each depth; the answer's first number compared); 'longlora': LongLoRA "
        "passkey_retrivial.py exactly (filler of int(3.75 * length // 1024 * 1024) characters, a random depth and "
        "key 1..49999 from numpy seeded with seed + trial, exactly the answer's token count generated and compared "
        "token by token; reported length: the mean actual prompt tokens). depths and max_new_tokens are unused")

    lengths: list[int] = Field([1024, 2048, 4096], description="prompt lengths in tokens (grid: each prompt is the "
                               "longest whole number of filler sentences that fits; longlora: the reference's "
                               "(i + 1) * interval, which sets the filler in characters)")
    depths: list[float] = Field([0.0, 0.5, 1.0], description="key positions as fractions of the filler (0: start)")
    trials: int = Field(1, ge=1, description="trials per length and depth, each with its own key (the default "
                        "keeps the CPU run short; use 5-10 for a real measurement; longlora: its --num_tests, 10)")
    seed: int = Field(0, description="grid: seed of the keys (random integers 1..50000); longlora: trial t uses "
                      "numpy seed seed + t (the reference: t); same seed, same prompts")
    max_new_tokens: int = Field(8, ge=1, description="tokens generated for the answer")
    batch_size: int = Field(1, ge=1, description="prompts per generate call (see qa.batch_size)")
    max_batch_tokens: int = Field(65536, ge=1, description="padded prompt tokens per batch at most")
    min_shared_prefix: int = Field(256, ge=0, description=SHARED_PREFIX_HELP + " (trials of one length share "
                                   "the filler before their keys)")
    # real-text filler (issue 10): held-out documents instead of the paper's repeated sentences
    filler: str | None = Field(
        None, description="grid protocol: null, the paper's repeated filler sentences; else a text file, .jsonl "
        "('text' per line) or folder of them whose lines (documents in order) are the filler, e.g. the held-out "
        "corpus data/long-text/heldout/paul_graham.jsonl (python -m longqa.corpus); it must hold at least the "
        "longest length")

    @field_validator("depths")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= d <= 1.0 for d in value):
            raise ValueError(f"depths must be fractions in [0, 1], got {value}")
        return value


class PPLConfig(_Section):
    """Perplexity by context length."""

    # --- protocol (issue 9; docs/evaluation.md) ---
    longlora_batch_size: int = Field(32, ge=1, description="longlora: eval.py's --batch_size. Its perplexity is "
                                     "2.71828 ** (the mean over batches of each batch's mean loss), so the last, "
                                     "smaller batch weighs more; windows are still computed one at a time")

    data: str = Field("out", description="a text file, a built dataset folder (its documents, one per doc_id), or "
                      "long-text corpus documents: a .jsonl ('text' per line) or a folder of .jsonl/.txt files, e.g. "
                      "data/long-text/heldout (python -m longqa.corpus)")
    split: str = Field("test", description="split of a built dataset")
    max_documents: int | None = Field(4, ge=1, description="first N documents (sorted by doc_id); null: all")
    lengths: list[int] = Field([1024, 2048, 4096], description="context lengths in tokens")
    protocol: Literal["sliding", "longlora", "strided"] = Field(
        "sliding", description="'sliding': LongLoRA eval.py's windows (L input tokens every `stride` tokens, the "
        "last start dropped) with all L next tokens scored (its y targets); 'longlora': eval.py exactly (labels = "
        "inputs: the L - 1 next tokens inside each window scored, mean per window, see longlora_batch_size); "
        "'strided': HF's fixed-length protocol (only the tokens new to a window scored)")
    stride: int = Field(256, ge=1, description="tokens between window starts (paper: 256)")
    max_windows: int | None = Field(2, ge=1, description="first N windows per length; null: all")


# --- RULER (issue 9; sft/evaluation/ruler.py) ------------------------------------------------------------------------
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")


class RulerConfig(_Section):
    """RULER (Hsieh et al. 2024): its 13 synthetic tasks at chosen lengths, prompts made offline by a port of the
    generators of the installed nvidia-long-context-eval package; `--tasks ruler` or `--tasks ruler:vt,cwe`."""

    tasks: list[str] = Field(list(RULER_TASKS), description="RULER tasks to run (default: all 13): "
                             + ", ".join(RULER_TASKS) + ". A comma-separated string is accepted")
    lengths: list[int] = Field([4096, 8192], description="total lengths in tokens of the evaluated model's "
                               "tokenizer (prompt + the task's tokens to generate, as RULER counts); RULER's "
                               "standard set is 4096 ... 131072. Lengths beyond a model's window follow too_long")
    samples: int = Field(10, ge=1, description="samples per task and length (RULER: 500); each costs a prefill of "
                         "its length, so 13 tasks x lengths prefills per sample")
    seed: int = Field(42, description="generators' random seed; 42 gives RULER's own prompts (its prepare.py always "
                      "seeds 42)")
    template: str = Field("auto", description="model template around each prompt, before RULER's answer prefix: "
                          "'base' (none, prepare.py's default), 'chat' (the tokenizer's chat template, one user "
                          "turn), 'auto' (chat when the tokenizer has one), a RULER template name ('instruction', "
                          "'meta-chat') or a string holding {task_template}")
    remove_newline_tab: bool = Field(False, description="RULER's --remove_newline_tab: prompts with newlines and "
                                     "tabs turned into single spaces")
    batch_size: int = Field(1, ge=1, description="prompts per generate call (see qa.batch_size)")
    max_batch_tokens: int = Field(65536, ge=1, description="padded prompt tokens per batch at most")
    min_shared_prefix: int = Field(256, ge=0, description=SHARED_PREFIX_HELP + " (samples of a task share their "
                                   "haystack up to the first needle)")

    _split_commas = field_validator("tasks", mode="before")(split_commas)

    @field_validator("tasks")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in RULER_TASKS]
        if unknown or not value or len(set(value)) != len(value):
            raise ValueError(f"must be distinct RULER tasks ({', '.join(RULER_TASKS)}), got {value}")
        return value

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if not value or any(n < 256 for n in value) or len(set(value)) != len(value):
            raise ValueError(f"must be distinct lengths of at least 256 tokens, got {value}")
        return sorted(value)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value not in ("auto", "base", "chat", "instruction", "meta-chat") and "{task_template}" not in value:
            raise ValueError("must be auto, base, chat, instruction, meta-chat or a string holding {task_template}")
        return value


def ruler_task_spec(data):
    """EvalConfig's `tasks` may name RULER's tasks inline: ``qa,ruler:niah_single_1,vt`` runs qa and RULER on
    niah_single_1 and vt (the names after ``ruler:`` up to the next non-RULER task), as ``tasks: [qa, ruler]`` with
    ``ruler.tasks: [niah_single_1, vt]``."""
    if not isinstance(data, dict) or "tasks" not in data:
        return data
    tasks = split_commas(data["tasks"])
    if not isinstance(tasks, list) or not any(isinstance(t, str) and t.startswith("ruler:") for t in tasks):
        return data
    out, picked, inside = [], [], False
    for task in tasks:
        if isinstance(task, str) and task.startswith("ruler:"):
            out.append("ruler")
            picked.append(task.removeprefix("ruler:"))
            inside = True
        elif inside and task in RULER_TASKS:
            picked.append(task)
        else:
            out.append(task)
            inside = False
    section = data.get("ruler") if isinstance(data.get("ruler"), dict) else {}
    return {**data, "tasks": out, "ruler": {**section, "tasks": [t for t in picked if t]}}


class EvalConfig(BaseModel):
    """Compare any number of models on long QA, passkey retrieval and perplexity; one report."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(
        {"base": DEFAULT_TOKENIZER, "tuned": DEFAULT_TUNED},
        description="name -> model: a (merged) model folder, an adapter folder (adapter_config.json; its base is "
        "loaded from base_model_name_or_path), a .gguf file, pkg:MODULE/path or a Hub id. Report columns follow "
        "this order")
    tasks: list[Literal["qa", "short_qa", "passkey", "ppl", "ruler"]] = Field(
        list(TASKS), description="tasks to run, in order (default qa, passkey, ppl; short_qa and ruler are opt-in; "
        "'ruler:vt,cwe' picks RULER tasks). A "
        "comma-separated string is accepted")
    out: str = Field("runs/eval", description="report folder: report.json, report.md, *.png, predictions/")
    overwrite: bool = Field(False, description=OVERWRITE)
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype at inference")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': the first CUDA device when there is "
                                                   "one, else the CPU")
    max_context: int | None = Field(None, ge=16, description="cap on the model window (tokens); default: each "
                                    "model's own context (max_position_embeddings, RoPE scaling included)")
    too_long: Literal["skip", "error"] = Field("skip", description="passkey/ppl lengths beyond a model's window: "
                                               "'skip' with a message, or 'error'")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    qa: QAConfig = Field(default_factory=QAConfig)
    short_qa: ShortQAConfig = Field(default_factory=ShortQAConfig)
    passkey: PasskeyConfig = Field(default_factory=PasskeyConfig)
    ppl: PPLConfig = Field(default_factory=PPLConfig)
    ruler: RulerConfig = Field(default_factory=RulerConfig)

    _ruler_spec = model_validator(mode="before")(ruler_task_spec)
    _split_commas = field_validator("tasks", mode="before")(split_commas)

    @model_validator(mode="after")
    def _cross_checks(self) -> "EvalConfig":
        problems = []
        if not self.models:
            problems.append("models: at least one model is required (--models NAME=PATH ...)")
        bad = [name for name in self.models if not name or not name.replace("-", "_").replace(".", "_").isidentifier()]
        if bad:
            problems.append(f"models: names must be words (letters, digits, - _ .), got {bad}")
        if not self.tasks:
            problems.append("tasks: at least one task is required")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks: listed twice in {self.tasks}")
        if "passkey" in self.tasks and self.passkey.protocol == "longlora":
            from_chars = [n for n in self.passkey.lengths if not 1 <= int(3.75 * n // 1024 * 1024) <= 449999]
            if from_chars:
                problems.append(f"passkey.lengths: longlora needs 274 <= length <= 120149 (its filler of int(3.75 * "
                                "length // 1024 * 1024) characters must be 1..449999, the reference's filler "
                                f"supply), got {from_chars}")
        if "ppl" in self.tasks and self.ppl.protocol == "strided":
            too_small = [n for n in self.ppl.lengths if n < self.ppl.stride]
            if too_small:
                problems.append(f"ppl.lengths: strided windows need length >= stride ({self.ppl.stride}), got "
                                f"{too_small}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
