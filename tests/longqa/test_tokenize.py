"""Label masks and document-only truncation, on a tiny tokenizer (the templates: test_render.py)."""
from __future__ import annotations

import numpy as np
import pytest

from longqa.render import Renderer
from longqa.tokenize import IGNORE_INDEX, Encoder, OverBudget, keep_indices
from tests.longqa.fixtures import config, encode_one, labeled_text, record

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


def test_shared_documents_are_tokenized_once(tiny_tokenizer, tmp_path):
    cfg = config(tmp_path)
    renderer, encoder = Renderer(cfg, tiny_tokenizer), Encoder(tiny_tokenizer, cfg.max_length, cfg.truncation)
    doc = " ".join(f"Sentence {i} of the shared article about the Normans." for i in range(80))
    samples = [renderer.render(record(doc=doc, question=f"Question {i}?")) for i in range(3)]
    calls = []
    original = encoder._tokens
    encoder._tokens = lambda texts, tokenizer=None: calls.append(texts) or original(texts, tokenizer)
    out = encoder.encode(samples, ["same-doc"] * 3)
    assert sum(t.count(samples[0].material) for texts in calls for t in texts) == 1  # the whole document once
    for sample, enc in zip(samples, out):  # and every sample's ids are its whole text's
        assert enc.input_ids.tolist() == tiny_tokenizer(sample.text, add_special_tokens=False).input_ids
