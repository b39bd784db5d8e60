"""The messages of the two requests behind a pair, the JSON each reply must hold, and reading that reply.

1. question request: the passage(s) and the kind's instruction -> `{"question": ...}`
2. answer request: the whole document (or the passages, when it does not fit) and the question ->
   `{"answer": ..., "quotes": [...]}`, the quotes copied word for word from the material (checked in `checks`).

The kinds follow the questions of LongAlpaca's LongQA and LongAlign's Self-Instruct data: summaries, details,
relations between parts, reasoning across parts, and characters or other entities.
"""
from __future__ import annotations

import json
import re
from typing import Any

SYSTEM = ("You write training data for reading comprehension of long documents. Reply with one JSON object and "
          "nothing else.")

#: Per kind: what the question request asks for.
KIND_INSTRUCTIONS = {
    "summary": "Write one request for a summary: ask the reader to summarise what the document says about the "
               "topic of this passage, or how this part fits into the whole document.",
    "detail": "Write one question about a specific fact, number, name, date or detail stated in this passage.",
    "relation": "Write one question about how the two passages relate: a cause and its effect, a contrast, a change "
                "over time, or a link between what each of them says.",
    "reasoning": "Write one question whose answer needs the information of both passages combined, with a short "
                 "chain of reasoning.",
    "entities": "Write one question about a person, group, place or other entity named in this passage: who or what "
                "it is, what it does, and how it connects to the rest of the document.",
}

QUESTION_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
ANSWER_SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string"},
    "quotes": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}},
    "required": ["answer", "quotes"]}


def question_messages(title: str, passages: list[str], kind: str) -> list[dict[str, str]]:
    if len(passages) == 1:
        material = f"Here is a passage of the document \"{title}\":\n<passage>\n{passages[0]}\n</passage>"
    else:
        material = f"Here are passages from two different parts of the document \"{title}\":\n" + "\n".join(
            f"<passage {chr(65 + i)}>\n{p}\n</passage {chr(65 + i)}>" for i, p in enumerate(passages))
    user = (f"{material}\n\n{KIND_INSTRUCTIONS[kind]} The question must make sense to a reader who has the whole "
            "document but not these excerpts: do not mention \"the passage\" or \"the excerpt\".\n"
            'Reply with JSON: {"question": "..."}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def answer_messages(title: str, material: str, question: str, whole: bool) -> list[dict[str, str]]:
    what = "document" if whole else "excerpts"
    user = (f"<{what} title=\"{title}\">\n{material}\n</{what}>\n\nQuestion: {question}\n\n"
            f"Answer the question from the {what} above. Then copy, word for word, one to three sentences of the "
            f"{what} that support your answer.\n"
            'Reply with JSON: {"answer": "...", "quotes": ["...", "..."]}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def response_format(mode: str, name: str, schema: dict) -> dict | None:
    """The `response_format` request field for `json_mode`."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")

#: Reasoning blocks that thinking models write before their answer (DeepSeek-R1, Qwen3, QwQ: `<think>`; others
#: `<thinking>`, `<reasoning>`), removed as vLLM's and SGLang's reasoning parsers do. A reply whose block was opened by
#: the chat template (only `</think>` in the text) keeps what follows the last closing tag.
_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_REASONING_END = re.compile(r"</(?:think|thinking|reasoning)>", re.I)


def strip_reasoning(text: str) -> str:
    """`text` without its reasoning blocks."""
    text = _REASONING.sub("", text)
    ends = list(_REASONING_END.finditer(text))
    return text[ends[-1].end():] if ends else text


def _objects(body: str):
    """Each JSON object that parses in `body`, in order, tried from every `{`."""
    decoder, start = json.JSONDecoder(), body.find("{")
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(body, start)
        except json.JSONDecodeError:
            start = body.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        start = body.find("{", end)


def parse_reply(text: str | None, required: dict[str, type]) -> dict[str, Any] | str:
    """The JSON object of a reply, or a message saying why it is unusable.

    Tolerates reasoning blocks, a code fence and text around the object (small models add them): the first object
    that parses and has the `required` keys with the given types is the reply.
    """
    if not text or not text.strip():
        return "empty reply"
    body = _FENCE.sub("", strip_reasoning(text).strip())
    objects = list(_objects(body))
    if not objects:
        return f"reply is not a JSON object: {text[:120]!r}"
    for obj in objects:
        if all(isinstance(obj.get(key), kind) for key, kind in required.items()):
            return obj
    obj = objects[0]
    for key, kind in required.items():
        if not isinstance(obj.get(key), kind):
            return f"reply has no {kind.__name__} '{key}': {text[:120]!r}"
    return obj
