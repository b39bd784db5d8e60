"""Render a record into prompt segments: the tokenizer's chat template, or a named format of the paper.

A rendered sample is a sequence of text segments (`Rendered`); only `material` (the long documents) may later be
truncated, and only `answer` + `end` are trained on. Splitting the rendered text at the material and the answer is what
lets the tokenizer stage guarantee that truncation never touches the question, the answer or the template.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas import BuildConfig, Record
from schemas.errors import ConfigError

# Private-use code points: they never occur in real text and survive every chat template unchanged.
_MATERIAL = "\ue000longqa-material\ue000"
_ANSWER = "\ue001longqa-answer\ue001"

# Alpaca's instruction format (Taori et al., 2023), as LongAlpaca used it.
ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n### Instruction:\n")
ALPACA_RESPONSE = "\n\n### Response:\n"


@dataclass(frozen=True)
class Rendered:
    """One sample as text segments; their concatenation is the full training text.

    prefix + material + middle form the prompt; answer + end are the trained completion; tail is template text after
    the end of turn (e.g. a newline), kept but not trained.
    """

    messages: list[dict[str, str]]
    prefix: str
    material: str
    middle: str
    answer: str
    end: str
    tail: str

    @property
    def text(self) -> str:
        return self.prefix + self.material + self.middle + self.answer + self.end + self.tail


def material_of(record: Record) -> str:
    """The long material of a record: its documents, separated by blank lines."""
    return "\n\n".join(doc.text.strip() for doc in record.documents)


class Renderer:
    """Turns records into `Rendered` samples with the configured template."""

    def __init__(self, cfg: BuildConfig, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        if cfg.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"template 'chat': tokenizer {cfg.tokenizer} has no chat template; "
                             "choose --template llama2-inst or alpaca")
        # A named template starts with BOS only where the tokenizer itself would add it.
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token
        self.bos = bos if bos and probe and probe[0] == tokenizer.bos_token_id else ""
        self.eos = tokenizer.eos_token or ""

    def user_content(self, material: str, question: str) -> str:
        block = f"{self.cfg.instruction}\n{question}" if self.cfg.instruction else question
        return f"{material}\n\n{block}" if self.cfg.question_position == "after" else f"{block}\n\n{material}"

    def render(self, record: Record) -> Rendered:
        material = material_of(record)
        question = record.question.strip()
        answer = record.answers[0].strip()
        system = self.cfg.system if self.cfg.system is not None else record.system
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.user_content(material, question)},
            {"role": "assistant", "content": answer},
        ]
        if self.cfg.template == "chat":
            skeleton = self._chat_skeleton(system, question)
        else:
            skeleton = self._named_skeleton(system, question)
        prefix, rest = skeleton.split(_MATERIAL)
        middle, after = rest.split(_ANSWER)
        end = after.rstrip()
        return Rendered(messages=messages, prefix=prefix, material=material, middle=middle, answer=answer,
                        end=end, tail=after[len(end):])

    def _chat_skeleton(self, system: str | None, question: str) -> str:
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.user_content(_MATERIAL, question)},
            {"role": "assistant", "content": _ANSWER},
        ]
        text = self.tokenizer.apply_chat_template(turns, tokenize=False)
        if text.count(_MATERIAL) != 1 or text.count(_ANSWER) != 1:
            raise ConfigError(f"the chat template of {self.cfg.tokenizer} does not reproduce message contents "
                             "verbatim; use --template llama2-inst or alpaca")
        return text

    def _named_skeleton(self, system: str | None, question: str) -> str:
        user = self.user_content(_MATERIAL, question)
        if self.cfg.template == "llama2-inst":
            # LongLoRA supervised fine-tuning: "[INST]{prompt}[/INST]" then the answer and EOS.
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
            return f"{self.bos}[INST]{sys_block}{user}[/INST]{_ANSWER}{self.eos}"
        header = f"{system}\n\n" if system else ALPACA_HEADER
        return f"{self.bos}{header}{user}{ALPACA_RESPONSE}{_ANSWER}{self.eos}"
