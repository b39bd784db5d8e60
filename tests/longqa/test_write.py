"""The write stage: Arrow streams become `datasets` folders; outputs replace what was there atomically."""
from __future__ import annotations

import datasets
import numpy as np
import pytest

from longqa.atomic import atomic_file, atomic_output, write_text
from longqa.write import DATASETS, StreamWriter, list_array, save_datasets


def tokenized_rows(n, start=0):
    arrays = [np.arange(i + 1, dtype=np.int32) for i in range(start, start + n)]
    return {"id": [f"r{i}" for i in range(start, start + n)], "doc_id": ["d"] * n, "input_ids": list_array(arrays),
            "labels": list_array([-100 * np.ones_like(a) for a in arrays]), "length": [len(a) for a in arrays],
            "n_doc_tokens": [0] * n, "n_doc_tokens_dropped": [0] * n, "seq": list(range(start, start + n)),
            **{name: [None] * n for name in ("evidence_start", "evidence_end", "answer_position", "depth")}}


def test_streamed_batches_load_as_one_dataset_per_split(tmp_path):
    streams = {"tokenized": {split: StreamWriter(tmp_path / f"tokenized-{split}.arrow", DATASETS["tokenized"])
                             for split in ("train", "test")}}
    streams["tokenized"]["train"].write(tokenized_rows(2))
    streams["tokenized"]["train"].write(tokenized_rows(3, start=2))
    assert streams["tokenized"]["train"].rows == 5
    save_datasets(tmp_path, streams, "1MB")
    loaded = datasets.load_from_disk(str(tmp_path / "tokenized"))
    assert loaded["train"]["seq"] == [0, 1, 2, 3, 4] and len(loaded["test"]) == 0
    assert [len(x) for x in loaded["train"]["input_ids"]] == [1, 2, 3, 4, 5]
    assert not list(tmp_path.glob("*.arrow"))  # the stream files are gone


def test_list_array_keeps_the_rows_apart():
    array = list_array([np.array([1, 2], dtype=np.int32), np.array([], dtype=np.int32), np.array([3], dtype=np.int32)])
    assert array.to_pylist() == [[1, 2], [], [3]]


def test_atomic_output_replaces_the_old_folder_only_when_done(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("killed half way")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # a failed write leaves the old output whole
    with atomic_output(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_atomic_file_and_write_text(tmp_path):
    path = tmp_path / "report.md"
    write_text(path, "one")
    with pytest.raises(ValueError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert path.read_text() == "one"
    write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_fingerprint_v2_hashes_string_buffers_whatever_the_chunks_and_string_width():
    """Version 2 reads string columns from their Arrow buffers: the same rows give one digest however they are chunked
    or sliced and for string and large_string; a changed value, a null for an empty string or a moved byte between
    neighbours changes it; version 1 (JSON per value) gives another digest, bare hex."""
    import pyarrow as pa

    from longqa.manifest import fingerprint, fingerprint_version

    texts = ["héllo wörld", None, "", "x" * 70, "<|im_end|>"]
    ids = [[1, 2], [3], [], [4, 5, 6], [7]]
    table = pa.table({"text": texts, "input_ids": ids})
    digest = fingerprint(table)
    assert fingerprint_version(digest) == 2 and digest.startswith("v2-")
    sliced = pa.concat_tables([table.slice(0, 2), table.slice(2, 1), table.slice(3)])
    assert sliced.column("text").num_chunks == 3 and fingerprint(sliced) == digest
    wide = pa.table({"text": pa.array(texts, pa.large_string()), "input_ids": ids})
    assert fingerprint(wide) == digest
    for changed in (["héllo wörld", "", "", "x" * 70, "<|im_end|>"],      # a null is not an empty string
                    ["héllo wörl", None, "d", "x" * 70, "<|im_end|>"],      # the same bytes, one moved over
                    ["héllo wörld", None, "", "x" * 69 + "y", "<|im_end|>"]):
        assert fingerprint(pa.table({"text": changed, "input_ids": ids})) != digest
    old = fingerprint(table, 1)
    assert fingerprint_version(old) == 1 and len(old) == 64 and old != digest.removeprefix("v2-")
    assert fingerprint(sliced, 1) == old
