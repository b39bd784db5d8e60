"""Label masks, document-only truncation and the templates, on a tiny tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from longqa.render import Renderer
from longqa.tokenize import IGNORE_INDEX, Encoded, Encoder, OverBudget, keep_indices
from schemas import BuildConfig, Document, Origin, Record

DOC = " ".join(f"Sentence {i} of the long document about the Normans in France." for i in range(60))


def record(doc=DOC, question="Who gave their name to Normandy?", answer="The Normans"):
    return Record(id="r1", documents=[Document(text=doc)], question=question, answers=[answer], source="t",
                  origin=Origin(file="f.jsonl", line=1))


def config(tmp_path, **kw):
    return BuildConfig(inputs=[{"path": str(tmp_path), "format": "jsonl"}], tokenizer="unused", **kw)


def encode_one(tok, cfg, rec=None):
    rendered = Renderer(cfg, tok).render(rec or record())
    return rendered, Encoder(tok, cfg.max_length, cfg.truncation).encode([rendered], ["d"])[0]


def labeled_text(tok, enc: Encoded) -> str:
    return tok.decode(enc.input_ids[enc.labels != IGNORE_INDEX])


def test_labels_are_the_answer_and_end_of_turn(tiny_tokenizer, tmp_path):
    rendered, enc = encode_one(tiny_tokenizer, config(tmp_path))
    assert labeled_text(tiny_tokenizer, enc) == "The Normans<|im_end|>"
    assert np.array_equal(enc.labels[enc.labels != IGNORE_INDEX], enc.input_ids[enc.labels != IGNORE_INDEX])
    assert tiny_tokenizer.decode(enc.input_ids) == rendered.text
    assert rendered.text == tiny_tokenizer.apply_chat_template(rendered.messages, tokenize=False)
    assert enc.n_doc_tokens_dropped == 0


def test_segments_tokenize_like_the_whole_text(tiny_tokenizer, tmp_path):
    rendered, enc = encode_one(tiny_tokenizer, config(tmp_path))
    whole = tiny_tokenizer(rendered.text, add_special_tokens=False).input_ids
    assert enc.input_ids.tolist() == whole


@pytest.mark.parametrize("policy", ["middle", "head", "tail"])
def test_truncation_only_removes_document_tokens(tiny_tokenizer, tmp_path, policy):
    cfg = config(tmp_path, max_length=200, truncation=policy)
    rendered, enc = encode_one(tiny_tokenizer, cfg)
    full = len(tiny_tokenizer(rendered.material, add_special_tokens=False).input_ids)
    assert len(enc.input_ids) == 200
    n_fixed = sum(len(tiny_tokenizer(t, add_special_tokens=False).input_ids)
                  for t in (rendered.prefix, rendered.middle, rendered.answer, rendered.end, rendered.tail))
    assert enc.n_doc_tokens == full and enc.n_doc_tokens_dropped == full - (200 - n_fixed) > 0
    text = tiny_tokenizer.decode(enc.input_ids)
    assert text.startswith(rendered.prefix)
    assert text.endswith(rendered.middle + rendered.answer + rendered.end + rendered.tail)
    assert labeled_text(tiny_tokenizer, enc) == "The Normans<|im_end|>"
    first, last = "Sentence 0 of", "Sentence 59 of"
    assert (first in text) == (policy in ("middle", "tail"))
    assert (last in text) == (policy in ("middle", "head"))


def test_sample_whose_template_question_and_answer_exceed_budget_is_rejected(tiny_tokenizer, tmp_path):
    cfg = config(tmp_path, max_length=30)
    _, enc = encode_one(tiny_tokenizer, cfg, record(answer="a long answer " * 20))
    assert isinstance(enc, OverBudget) and enc.n_fixed_tokens > 30 and "max_length 30" in enc.message


def test_control_tokens_in_documents_stay_text(tiny_tokenizer, tmp_path):
    _, enc = encode_one(tiny_tokenizer, config(tmp_path), record(doc="The end <|im_end|> is text here."))
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    # one <|im_end|> closes the system turn, one the user turn, one the answer: none from the document
    assert int((enc.input_ids == im_end).sum()) == 3


def test_keep_indices_middle_keeps_both_ends():
    assert keep_indices(10, 4, "middle") == (slice(0, 2), slice(8, 10))
    assert keep_indices(10, 5, "middle") == (slice(0, 3), slice(8, 10))
    assert keep_indices(10, 4, "head") == slice(6, 10)
    assert keep_indices(10, 4, "tail") == slice(0, 4)
    assert keep_indices(3, 4, "middle") == slice(0, 3)


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


def test_shared_documents_are_tokenized_once(tiny_tokenizer, tmp_path):
    cfg = config(tmp_path)
    renderer, encoder = Renderer(cfg, tiny_tokenizer), Encoder(tiny_tokenizer, cfg.max_length, cfg.truncation)
    samples = [renderer.render(record(question=f"Question {i}?")) for i in range(3)]
    calls = []
    original = encoder._ids
    encoder._ids = lambda texts, content: calls.append(texts) or original(texts, content=content)
    out = encoder.encode(samples, ["same-doc"] * 3)
    assert sum(t.count(samples[0].material) for t in calls) == 1
    assert all(np.array_equal(o.input_ids[:50], out[0].input_ids[:50]) for o in out)
