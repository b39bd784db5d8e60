"""The preparation stages (shard → validate → split → dedup → render): what each keeps, drops and counts."""
from __future__ import annotations

import json

import pytest

from longqa.manifest import Tally
from longqa.rejects import BuildError, RejectLog
from longqa.render import Renderer
from longqa.split import shard_of
from longqa.stages import Dedup, Prepared, Shard, Split, Validate, prepare
from schemas import Origin, Reject
from tests.longqa.fixtures import config, document, record


def run(cfg, items, tmp_path, tokenizer):
    tally = Tally()
    rejects = RejectLog(tmp_path / "rejects.jsonl", tally, cfg.strict)
    kept = list(prepare(cfg, items, Renderer(cfg, tokenizer), tally, rejects))
    rejects.close()
    lines = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    return kept, tally, lines


def items_with_one_drop_per_stage(tmp_path):
    deny = tmp_path / "deny.txt"
    denied = record(doc=document(3), id="denied", seq=3)
    deny.write_text(denied.doc_id() + "\n", encoding="utf-8")
    broken = Reject(reason="malformed_json", origin=Origin(file="f.jsonl", line=9), message="bad", source="t", seq=0)
    items = [broken, record(doc=document(1), id="ok", seq=1), record(doc=document(2), question=" ", id="empty", seq=2),
             denied, record(doc=document(1), id="again", seq=4), record(doc=document(1), id="repeat", seq=5, repeat=1)]
    return items, str(deny)


def test_each_stage_drops_and_counts_its_own_reasons_in_read_order(tmp_path, tiny_tokenizer):
    items, deny = items_with_one_drop_per_stage(tmp_path)
    cfg = config(tmp_path, deny_docs=deny, heldout_fraction=0.0)
    kept, tally, lines = run(cfg, items, tmp_path, tiny_tokenizer)
    assert [p.record.id for p in kept] == ["ok", "repeat"]  # repeats of a draw with replacement skip dedup
    assert all(p.split == "train" and p.rendered.material == document(1) for p in kept)
    counts = tally.as_dict()
    assert counts["by_stage"] == {"read": {"kept": 5, "dropped": {"malformed_json": 1}},
                                  "validate": {"kept": 4, "dropped": {"empty_question": 1}},
                                  "split": {"kept": 3, "dropped": {"denied_document": 1}},
                                  "dedup": {"kept": 2, "dropped": {"duplicate_pair": 1}},
                                  "render": {"kept": 2, "dropped": {}}}
    assert [line["reason"] for line in lines] == ["malformed_json", "empty_question", "denied_document",
                                                  "duplicate_pair"]
    assert counts["read"] == len(items) == len(kept) + counts["rejected"]
    assert sum(sum(c["dropped"].values()) for c in counts["by_stage"].values()) == counts["rejected"]


def test_shard_keeps_whole_documents_and_counts_the_others(tmp_path, tiny_tokenizer):
    records = [record(doc=document(i), id=str(i), seq=i) for i in range(40)]
    kept_ids = []
    for index in range(2):
        cfg = config(tmp_path, num_shards=2, shard_index=index)
        kept, tally, _ = run(cfg, records, tmp_path, tiny_tokenizer)
        assert tally.other_shards == 40 - len(kept)
        assert all(shard_of(p.doc_id, 2) == index for p in kept)
        kept_ids += [p.record.id for p in kept]
    assert sorted(kept_ids, key=int) == [str(i) for i in range(40)]


def test_stages_are_lazy_one_record_at_a_time(tmp_path, tiny_tokenizer):
    pulled = []

    def source():
        for i in range(3):
            pulled.append(i)
            yield record(doc=document(i), id=str(i), seq=i)

    cfg = config(tmp_path, heldout_fraction=0.0)
    tally = Tally()
    stream = prepare(cfg, source(), Renderer(cfg, tiny_tokenizer), tally, RejectLog(tmp_path / "r.jsonl", tally, False))
    first = next(stream)
    assert first.record.id == "0" and pulled == [0]


def test_a_stage_alone(tmp_path):
    tally = Tally()
    rejects = RejectLog(tmp_path / "r.jsonl", tally, strict=False)
    items = [Prepared(record(id="a"), "d"), Prepared(record(id="b", question="who gave THEIR name to normandy?"), "d")]
    assert [p.record.id for p in Dedup(tally, rejects)(items)] == ["a"]
    assert tally.stages() == {"dedup": {"kept": 1, "dropped": {"duplicate_pair": 1}}}
    split = Split(config(tmp_path, heldout_docs=["d"]), tally, rejects)
    assert [p.split for p in split(items)] == ["test", "test"]
    rejects.close()


def test_strict_stops_at_the_first_invalid_record_naming_it(tmp_path, tiny_tokenizer):
    cfg = config(tmp_path, strict=True)
    tally = Tally()
    validate = Validate(cfg, tally, RejectLog(tmp_path / "r.jsonl", tally, strict=True))
    with pytest.raises(BuildError, match="empty_question.*f.jsonl:1|f.jsonl.*1"):
        list(validate([Prepared(record(question=""), "d")]))
    shard = Shard(cfg, Tally(), RejectLog(tmp_path / "s.jsonl", Tally(), strict=False))
    assert [p.doc_id for p in shard([record()])] == [record().doc_id()]
