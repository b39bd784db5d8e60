"""QA by evidence position (`sft.evaluation.evidence`): buckets with n and intervals, the native window marked,
middle truncation of the evidence counted, paired differences; end to end on a tiny model over a distractor build."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas import BuildConfig
from schemas.eval import EvalConfig
from sft.eval import evaluate
from sft.evaluation.evidence import by_evidence, evidence_lost, evidence_position, native_window, paired
from tests.longqa.fixtures import longbench_row, write_longbench
from tests.sft.test_eval import WINDOW, tiny_models  # noqa: F401  (the module fixture)

EDGES = [256, 512, 768, 1024]


def rows(positions, f1s, cut=()):
    return [{"id": f"q{i}", "evidence_position": p, "f1": f, "rouge_l": f, "rouge_l_normalized": f,
             "exact_match": float(f == 1.0), "truncated": i in cut, "evidence_cut": i in cut}
            for i, (p, f) in enumerate(zip(positions, f1s))]


def test_evidence_lost_follows_the_middle_rule():
    # 2000 tokens cut to 1000: the first 500 and the last 500 stay
    assert [evidence_lost(p, 2000, 1000) for p in (0, 499, 500, 1499, 1500, 1999)] == \
        [False, False, True, True, False, False]
    assert evidence_lost(1500, 1000, 1000) is False  # it fits: nothing is cut
    assert evidence_lost(None, 2000, 1000) is None


def test_evidence_position_prefers_the_answer():
    assert evidence_position({"answer_position": 700, "evidence_start": 600}) == 700
    assert evidence_position({"answer_position": None, "evidence_start": 600}) == 600
    assert evidence_position({"id": "x"}) is None


def test_native_window_of_yarn_linear_and_plain_configs():
    from transformers import LlamaConfig

    plain = LlamaConfig(max_position_embeddings=8192)
    assert native_window(plain) == 8192
    yarn = LlamaConfig(max_position_embeddings=16384, rope_parameters={
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192, "rope_theta": 10000.0})
    assert native_window(yarn) == 8192
    linear = LlamaConfig(max_position_embeddings=16384,
                         rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert native_window(linear) == 8192


def test_buckets_have_n_intervals_cut_counts_and_the_native_window_marked():
    result = by_evidence(rows([10, 300, 310, 800, 900, 1100], [1.0, 0.0, 1.0, 0.5, 0.0, 1.0], cut={3, 4}),
                         EDGES, native=768)
    b = result["buckets"]
    assert list(b) == ["0-256", "256-512", "768-1k", "1k+"]
    assert [b[k]["n"] for k in b] == [1, 2, 2, 1] and result["n"] == 6
    assert b["256-512"]["f1"] == 50.0 and b["256-512"]["ci"]["f1"] == [0.0, 100.0]
    assert b["768-1k"]["evidence_cut"] == 2 and b["768-1k"]["truncated"] == 2 and b["0-256"]["evidence_cut"] == 0
    assert [b[k]["beyond_native"] for k in b] == [False, False, True, True]
    assert result["beyond_native"]["n"] == 3 and result["beyond_native"]["f1"] == 50.0
    assert by_evidence([{**r, "evidence_position": None} for r in rows([1], [1.0])], EDGES, 768) is None


def test_paired_difference_per_bucket_over_the_same_questions():
    a = by_evidence(rows([10, 20, 30, 800, 900, 950], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), EDGES, native=768)
    b = by_evidence(rows([10, 20, 30, 800, 900, 950], [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), EDGES, native=2048)
    d = paired(a, b)
    assert list(d) == ["0-256", "768-1k", "beyond 768"]  # beyond the first model's native window
    assert d["0-256"]["n"] == 3 and d["0-256"]["difference"] == pytest.approx(33.33, abs=0.01)
    assert d["0-256"]["higher"] == 1 and d["0-256"]["lower"] == 0
    assert d["768-1k"]["difference"] == 100.0 and d["768-1k"]["ci"] == [100.0, 100.0]
    assert d["beyond 768"]["n"] == 3


@pytest.fixture(scope="module")
def distract_built(tmp_path_factory, tiny_models):  # noqa: F811
    """12 documents, one question each whose answer is in its document, at 2000 tokens (past the 1024-token window)."""
    from longqa.pipeline import build

    root = tmp_path_factory.mktemp("evidence-data")
    docs = [f"Document {d}. " + " ".join(f"The Normans lived in region {d}-{k}." for k in range(40))
            for d in range(12)]
    source = write_longbench(root / "lb.jsonl", [
        longbench_row(docs[d], f"Where did the Normans live, {d}?", [f"region {d}-{d}"], _id=f"d{d:02d}")
        for d in range(12)])
    cfg = BuildConfig(inputs=[{"path": str(source), "format": "longbench", "distractors": {"length": 2000}}],
                      tokenizer=tiny_models["base"], out=str(tmp_path_factory.mktemp("evidence-out") / "out"),
                      max_length=2048, heldout_fraction=0.5)
    build(cfg, progress=False)
    return cfg.out


def test_eval_reports_qa_by_evidence_position_with_middle_cuts_counted(tmp_path, tiny_models,  # noqa: F811
                                                                       distract_built):
    import datasets

    cfg = EvalConfig.model_validate(dict(models=tiny_models, tasks=["qa"], out=str(tmp_path), threads=1,
                                         qa=dict(data=distract_built, limit=None, max_new_tokens=8,
                                                 evidence_buckets=EDGES)))
    report = evaluate(cfg, progress=False, say=lambda m: None)
    test = datasets.load_from_disk(str(Path(distract_built) / "text"))["test"]
    positions = {r["id"]: r["answer_position"] for r in test}
    assert None not in positions.values()
    for name in ("base", "tuned"):
        qa = report["results"]["qa"][name]
        ev = qa["evidence"]
        assert ev["native_window"] == WINDOW and ev["n"] == len(test) == qa["overall"]["n"]
        assert qa["truncated"] == len(test)  # every 2000-token prompt is cut to the 1024-token window
        assert sum(b["n"] for b in ev["buckets"].values()) == len(test)
        assert all("ci" in b and b["truncated"] == b["n"] for b in ev["buckets"].values())
        # the window keeps the first 508 and the last 508 tokens: evidence in between is lost, and counted
        lost = sum(508 <= p < 2000 - 508 for p in positions.values())
        assert 0 < lost < len(test) and sum(b["evidence_cut"] for b in ev["buckets"].values()) == lost
        assert ev["position_by_id"] == positions
        beyond = sum(p >= WINDOW for p in positions.values())
        assert beyond and ev["beyond_native"]["n"] == beyond and ev["buckets"]["1k+"]["beyond_native"]
        predictions = [json.loads(line) for line in (tmp_path / f"predictions-{name}.jsonl").read_text().splitlines()]
        assert {p["id"]: p["evidence_position"] for p in predictions} == positions
    md = (tmp_path / "report.md").read_text()
    assert "### Long QA by evidence position" in md and "evidence at or beyond 1024 tokens" in md
    assert "paired over" in md and "qa F1 by evidence beyond 1024, tuned − base" in md
