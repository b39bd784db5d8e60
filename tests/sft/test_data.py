"""sft.data: the collator, sft loading (drop-and-count, never truncate) and extend-mode chunking."""
from __future__ import annotations

import json

import pytest
import torch

from sft.data import (TRAIN_COLUMNS, DataError, PadCollator, chunk_token_streams, load_extend_dataset,
                      load_sft_dataset, pad_token_id)
from tests.sft.conftest import write_tokenized


# ----------------------------------------------------------------------------------------------------------------------
# Collator
# ----------------------------------------------------------------------------------------------------------------------


def test_collator_right_pads_masks_labels_and_numbers_positions():
    batch = PadCollator(pad_id=0, max_length=8)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "length": 3},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, -100, -100, 11, 12], "length": 5},
    ])
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids"}
    assert all(t.dtype == torch.long and t.shape == (2, 5) for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, -100, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


def test_collator_copies_inputs_as_labels_in_extend_mode_and_refuses_to_truncate():
    collate = PadCollator(pad_id=2, max_length=4)
    batch = collate([{"input_ids": [5, 6]}, {"input_ids": [7, 8, 9]}])
    assert batch["labels"].tolist() == [[5, 6, -100], [7, 8, 9]]
    with pytest.raises(ValueError, match="5 tokens exceeds max_length 4"):
        collate([{"input_ids": [1, 2, 3, 4, 5]}])
    with pytest.raises(ValueError, match="differ in length"):
        collate([{"input_ids": [1, 2], "labels": [1]}])


def test_pad_id_falls_back_to_eos(tiny_tokenizer):
    assert pad_token_id(tiny_tokenizer) == tiny_tokenizer.pad_token_id
    no_pad = type("Tok", (), {"pad_token_id": None, "eos_token_id": 7})()
    assert pad_token_id(no_pad) == 7


# ----------------------------------------------------------------------------------------------------------------------
# sft: the built dataset
# ----------------------------------------------------------------------------------------------------------------------


def test_sft_loading_drops_and_counts_over_long_samples_without_touching_the_build(tmp_path):
    out = write_tokenized(tmp_path / "out", [10, 40, 20, 33, 32])
    before = sorted(p.name for p in (tmp_path / "out/tokenized/train").iterdir())
    dataset, stats = load_sft_dataset(out, "train", max_length=32)
    assert dataset.column_names == list(TRAIN_COLUMNS)
    assert dataset["length"] == [10, 20, 32] and stats.samples == 3 and stats.tokens == 62
    assert stats.dropped_too_long == 2 and "2 longer than max_length dropped" in stats.summary()
    assert all(len(ids) == n for ids, n in zip(dataset["input_ids"], dataset["length"]))  # nothing truncated
    assert sorted(p.name for p in (tmp_path / "out/tokenized/train").iterdir()) == before  # no cache files written
    same, _ = load_sft_dataset(tmp_path / "out/tokenized", "train", max_length=32)  # the tokenized folder itself
    assert same["length"] == dataset["length"]


def test_sft_loading_errors_say_what_to_do(tmp_path):
    out = write_tokenized(tmp_path / "out", [10, 40])
    with pytest.raises(DataError, match="1 of 2 samples are longer than max_length 32.*--max-length 32"):
        load_sft_dataset(out, "train", max_length=32, too_long="error")
    with pytest.raises(DataError, match="none of the 2 samples fits max_length 8"):
        load_sft_dataset(out, "train", max_length=8)
    with pytest.raises(DataError, match="no split 'validation'"):
        load_sft_dataset(out, "validation", max_length=64)


# ----------------------------------------------------------------------------------------------------------------------
# extend: chunking long text
# ----------------------------------------------------------------------------------------------------------------------


def test_chunking_keeps_every_token_with_eos_between_documents():
    docs = [[1, 2, 3, 4, 5], [6, 7, 8], list(range(10, 20))]
    chunks = list(chunk_token_streams(docs, max_length=4, eos_id=0))
    stream = [1, 2, 3, 4, 5, 0, 6, 7, 8, 0, *range(10, 20), 0]  # 21 tokens: 5 chunks of 4 and 1 of 1
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 1]
    assert sum(chunks, []) == stream
    assert list(chunk_token_streams([[1, 2, 3]], max_length=4, eos_id=0)) == [[1, 2, 3, 0]]  # exactly one chunk
    assert list(chunk_token_streams([], max_length=4, eos_id=0)) == []


def test_extend_dataset_from_text_and_jsonl_files(tmp_path, tiny_tokenizer):
    texts = ["The Normans gave their name to Normandy. " * 5, "Shifted sparse attention. " * 3, "Long documents."]
    (tmp_path / "corpus/sub").mkdir(parents=True)
    (tmp_path / "corpus/a.txt").write_text(texts[0])
    (tmp_path / "corpus/sub/b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[1:]) + "\n")
    (tmp_path / "corpus/ignored.bin").write_bytes(b"\x00")
    dataset, stats = load_extend_dataset([tmp_path / "corpus"], tiny_tokenizer, max_length=16)
    expected = sum(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert stats.documents == 3 and stats.tokens == expected and stats.samples == -(-expected // 16)
    assert dataset["length"] == [16] * (expected // 16) + ([expected % 16] if expected % 16 else [])
    assert sum(ids.count(tiny_tokenizer.eos_token_id) for ids in dataset["input_ids"]) == 3
    assert "labels" not in dataset.column_names  # the collator copies input_ids


def test_extend_reports_bad_inputs(tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        load_extend_dataset([tmp_path / "missing"], tiny_tokenizer, max_length=16)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        load_extend_dataset([tmp_path / "bad.jsonl"], tiny_tokenizer, max_length=16)
