"""The README's main command on the real data and the real tokenizer (slow: about a minute on 2 cores)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_default_recipe_end_to_end(default_build):
    out, stdout = default_build
    assert "read 11873 = written" in stdout
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["read"] == 11873 and c["balanced"] and c["by_reason"]["unanswerable"] > 5000
    assert c["by_split"]["train"] > 4000 and c["by_split"]["test"] > 100
    assert m["tokens"]["train"]["max"] <= 8192
    text = datasets.load_from_disk(str(out / "text"))
    tok = datasets.load_from_disk(str(out / "tokenized"))
    assert not set(text["train"]["doc_id"]) & set(text["test"]["doc_id"])
    assert len(set(text["train"]["title"]) | set(text["test"]["title"])) == 35
    from longqa.pipeline import load_tokenizer

    tokenizer = load_tokenizer(m["config"]["tokenizer"])
    for split in ("train", "test"):
        for i in range(0, len(tok[split]), max(1, len(tok[split]) // 25)):
            ids, labels = np.array(tok[split][i]["input_ids"]), np.array(tok[split][i]["labels"])
            assert tokenizer.decode(ids[labels != -100]) == text[split][i]["answers"][0] + "<|im_end|>"
            question = text[split][i]["question"]
            assert question in tokenizer.decode(ids)  # never truncated away
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == c["rejected"]
    assert json.loads(rejects[0])["origin"].startswith("pkg:long_context_eval/")
