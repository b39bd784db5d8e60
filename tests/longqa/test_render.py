"""The render stage: chat and named templates, the segments truncation may touch, system messages."""
from __future__ import annotations

import pytest

from longqa.render import Renderer, material_of
from schemas import Document, Origin, Record
from schemas.errors import ConfigError
from tests.longqa.fixtures import DOC, config, encode_one, labeled_text, record


def test_named_templates(tiny_tokenizer, tmp_path):
    rendered, enc = encode_one(tiny_tokenizer, config(tmp_path, template="llama2-inst"))
    assert rendered.text.startswith("<|im_start|>[INST]") is False  # the tiny tokenizer adds no BOS itself
    assert rendered.text.startswith("[INST]" + DOC) and rendered.text.endswith("[/INST]The Normans<|im_end|>")
    assert labeled_text(tiny_tokenizer, enc) == "The Normans<|im_end|>"
    rendered, _ = encode_one(tiny_tokenizer, config(tmp_path, template="alpaca", question_position="before"))
    assert rendered.text.startswith("Below is an instruction")
    assert "### Instruction:\nWho gave their name to Normandy?\n\n" + DOC[:20] in rendered.text
    assert rendered.text.endswith("### Response:\nThe Normans<|im_end|>")


def test_system_message_and_instruction(tiny_tokenizer, tmp_path):
    rendered, _ = encode_one(tiny_tokenizer, config(tmp_path, system="Be brief.", instruction="Answer briefly."))
    assert rendered.messages[0] == {"role": "system", "content": "Be brief."}
    assert rendered.messages[1]["content"].endswith("\n\nAnswer briefly.\nWho gave their name to Normandy?")
    assert rendered.text.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_segments_join_to_the_text_and_only_material_holds_the_documents(tiny_tokenizer, tmp_path):
    two = Record(id="r2", documents=[Document(text="  First document.  "), Document(text="Second one.")],
                 question=" Which? ", answers=[" Both "], source="t", origin=Origin(file="f.jsonl", line=1))
    rendered = Renderer(config(tmp_path), tiny_tokenizer).render(two)
    assert rendered.material == material_of(two) == "First document.\n\nSecond one."
    assert rendered.answer == "Both" and "Which?" in rendered.middle and "Which?" not in rendered.material
    assert rendered.prefix + rendered.material + rendered.middle + rendered.answer + rendered.end + rendered.tail \
        == rendered.text
    assert rendered.end == "<|im_end|>"


def test_question_before_the_material(tiny_tokenizer, tmp_path):
    rendered = Renderer(config(tmp_path, question_position="before"), tiny_tokenizer).render(record())
    assert "Who gave their name to Normandy?" in rendered.prefix and rendered.middle.endswith("assistant\n")


def test_chat_template_without_a_template_is_a_config_error(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)
    with pytest.raises(ConfigError, match="no chat template"):
        Renderer(config(tmp_path), tiny_tokenizer)
