"""`python -m longqa.generate` against a local fake OpenAI-compatible server (tests/openai_server.py).

Nothing here waits on the clock: the kill test waits for the server's `held` event and for lines in qa.jsonl, with
generous outer limits only.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from longqa.generate.checks import QuestionIndex, supporting_quotes
from longqa.generate.plan import list_documents, plan_document
from longqa.generate.prompts import parse_reply
from longqa.generate.run import generate, repair_last_line
from longqa.readers import read_input
from schemas import InputSpec, Record
from schemas.errors import ConfigError, UserError
from schemas.generate import GenerateConfig
from tests.openai_server import FakeOpenAI, default_content

ROOT = Path(__file__).resolve().parents[2]
SYLLABLES = "ka lo mi ne ru sa ti vo we ya zu bre dan fel gor hil".split()
WORDS = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:4]})  # 1024 distinct words
KEY = "sk-test-secret-0123456789"


def write_docs(folder: Path, n: int = 3, paragraphs: int = 12) -> Path:
    """`n` documents of distinct sentences (every 8-word run is unique), plus a file the generator must skip."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n):
        paras = [" ".join(" ".join(rng.choice(WORDS) for _ in range(9)).capitalize() + f" item {d}-{p}-{s}."
                          for s in range(5)) for p in range(paragraphs)]
        (folder / f"doc{d}.{'md' if d % 2 else 'txt'}").write_text("\n\n".join(paras), encoding="utf-8")
    (folder / "notes.json").write_text("{}", encoding="utf-8")
    return folder


def config(docs: Path, out: Path, url: str, **kw) -> GenerateConfig:
    base = dict(docs=str(docs), out=str(out), endpoint=url, model="fake", questions_per_doc=4, passage_chars=300,
                concurrency=3, timeout=30, max_retries=2, api_key_env="LONGQA_TEST_KEY")
    return GenerateConfig(**{**base, **kw})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture
def docs(tmp_path):
    return write_docs(tmp_path / "docs")


# ------------------------------------------------------------------------------------------------ plan and checks
def test_plan_spreads_passages_over_the_document_and_is_seeded(tmp_path):
    text = ". ".join(f"Sentence number {i} of the text" for i in range(2000)) + "."
    cfg = GenerateConfig(docs=".", questions_per_doc=5, passage_chars=400, kinds={"detail": 1, "summary": 0})
    slots = plan_document("a.txt", text, cfg)
    assert [s.id for s in slots] == [f"a.txt#q{i}" for i in range(5)]
    assert {s.kind for s in slots} == {"detail"}  # a zero weight is never drawn
    starts = [s.passages[0][0] for s in slots]
    for i, start in enumerate(starts):  # slot i draws from the i-th fifth of the document
        assert i * len(text) / 5 - 200 <= start < (i + 1) * len(text) / 5
    assert all(text[a - 2:a] == ". " for a, _ in (s.passages[0] for s in slots))  # starts on a sentence
    assert plan_document("a.txt", text, cfg) == slots
    assert plan_document("a.txt", text, cfg.model_copy(update={"seed": 1})) != slots
    two = plan_document("a.txt", text, cfg.model_copy(update={"kinds": {"relation": 1}}))
    assert all(len(s.passages) == 2 for s in two)


def test_list_documents_takes_txt_and_md_below_the_folder(tmp_path):
    write_docs(tmp_path, n=2)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("x")
    (tmp_path / ".hidden.md").write_text("x")
    assert list_documents(tmp_path) == ["doc0.txt", "doc1.md", "sub/c.md"]


def test_quotes_must_occur_in_the_document_after_whitespace_normalisation():
    doc = "The harbour froze in the winter\nof 1740. Ships stayed in port."
    assert isinstance(supporting_quotes(["the harbour froze"], doc, 5), str)  # case matters
    assert supporting_quotes(["The  harbour froze in the winter of"], doc, 5) == ["The harbour froze in the winter\nof"]
    # stored as the document writes it: no typographic quotation marks, no ellipsis, a literal substring
    assert supporting_quotes(["“The harbour froze in the winter…”"], doc, 5) == ["The harbour froze in the winter"]
    assert supporting_quotes(["‘Ships stayed in port.’"], doc, 5) == ["Ships stayed in port"]
    assert "no supporting quote" in supporting_quotes([], doc, 5)
    assert "no supporting quote" in supporting_quotes(["Ships"], doc, 10)  # found, but too short to count alone
    assert "not in the document" in supporting_quotes(["The harbour froze", "Ships sailed away"], doc, 5)


def test_a_short_quote_not_in_the_document_rejects_the_pair_too():
    doc = "The harbour froze in the winter of 1740. Ships stayed in port."
    # before: quotes under min_chars were skipped unchecked, so an invented short one was kept
    assert "not in the document" in supporting_quotes(["The harbour froze in the winter", "as never stated"], doc,
                                                       20)
    assert supporting_quotes(["The harbour froze in the winter", "Ships"], doc, 20) == [
        "The harbour froze in the winter", "Ships"]


def test_near_duplicate_questions_are_found_per_document():
    index = QuestionIndex(0.8)
    index.add("a", "a#q0", "Who signed the treaty of the river towns?")
    assert index.similar("a", "who signed the treaty of the river towns") == "a#q0"
    assert index.similar("a", "Why did the harbour freeze in 1740?") is None
    assert index.similar("b", "Who signed the treaty of the river towns?") is None


def test_parse_reply_tolerates_fences_and_reports_the_rest():
    assert parse_reply('```json\n{"question": "Why?"}\n```', {"question": str}) == {"question": "Why?"}
    assert parse_reply('Sure! {"question": "Why?"} Hope this helps', {"question": str}) == {"question": "Why?"}
    assert "not a JSON object" in parse_reply("Why did it happen?", {"question": str})
    assert "no list 'quotes'" in parse_reply('{"answer": "x", "quotes": "y"}', {"answer": str, "quotes": list})
    assert parse_reply("", {"question": str}) == "empty reply"


@pytest.mark.parametrize("reply", [
    '<think>The user wants {"question": ...} so I write {a JSON object}.</think>\n{"question": "Why?"}',
    'Let me think about {this}.\n</think>\n\n{"question": "Why?"}',  # the template opened the block
    '<reasoning>{"question": "not this one"</reasoning> ```json\n{"question": "Why?"}\n```',
    'I might ask {"q": 1}, but the answer is {"question": "Why?"} then {"other": 2}',
])
def test_parse_reply_skips_reasoning_blocks_and_finds_the_object_that_parses(reply):
    # before: braces in a reasoning block made the reply malformed_reply
    assert parse_reply(reply, {"question": str}) == {"question": "Why?"}


def test_config_problems_are_reported_together():
    with pytest.raises(ValueError) as e:
        GenerateConfig(docs=".", kinds={"trivia": 0, "detail": 0}, endpoint="localhost:8000")
    message = e.value.errors()[0]["msg"]
    assert "trivia" in message and "positive weight" in message and "http(s)" in message


# -------------------------------------------------------------------------------------------------- against a server
def test_pairs_from_documents_are_read_by_format_docs(docs, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQA_TEST_KEY", KEY)
    with FakeOpenAI() as server:
        summary = generate(config(docs, tmp_path / "gen", server.url), progress=False)
    rows = lines(tmp_path / "gen" / "qa.jsonl")
    assert summary["written"] == len(rows) == 12 and summary["totals"]["open"] == 0
    assert {r["doc"] for r in rows} == {"doc0.txt", "doc1.md", "doc2.txt"}
    assert len({r["id"] for r in rows}) == 12
    assert all(r["answer_context"] == "document" and r["quotes"] for r in rows)
    assert summary["requests"]["calls"] == 24 and summary["requests"]["tokens_in"] == 2400
    # the key went to the server, and nowhere else
    assert {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    for path in (tmp_path / "gen").iterdir():
        assert KEY not in path.read_text(encoding="utf-8")
    # structured output asked with a schema by default
    assert server.requests[0]["body"]["response_format"]["type"] == "json_schema"

    # the builder's docs reader takes qa.jsonl as it is
    records = list(read_input(InputSpec(path=str(docs), format="docs", qa_file=str(tmp_path / "gen" / "qa.jsonl"))))
    assert [r.id for r in records] == [r["id"] for r in rows]
    assert all(isinstance(r, Record) and r.documents[0].title == r.id.split("#")[0] for r in records)


def test_malformed_replies_and_missing_or_false_quotes_are_rejected(docs, tmp_path):
    def no_quotes(body):
        return json.dumps({"answer": "Something.", "quotes": []})

    def false_quote(body):
        return json.dumps({"answer": "Something.", "quotes": ["This sentence is nowhere in the document."]})

    def doc2_misquoted(body):  # every answer on doc2 quotes a sentence that is not there
        user = body["messages"][-1]["content"]
        return false_quote(body) if "Question: " in user and "item 2-" in user else default_content(body)

    faults = ["broken_body", lambda body: "I think the question is: why?", default_content, no_quotes]
    with FakeOpenAI(faults=faults, content=doc2_misquoted) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1), progress=False)
    rejects = lines(tmp_path / "gen" / "rejects.jsonl")
    reasons = Counter(r["reason"] for r in rejects)
    # request 1 (q0 question): broken HTTP body; request 2 (q1 question): prose; request 4 (q2 answer): no quotes;
    # every answer on doc2 quotes a sentence that is not there
    assert reasons == {"malformed_reply": 2, "unsupported": 5}
    assert summary["written"] == 5 and sum(reasons.values()) + 5 == 12
    unsupported_rows = [r for r in rejects if r["reason"] == "unsupported"]
    assert any("no supporting quote" in r["message"] for r in unsupported_rows)
    assert any("not in the document" in r["message"] for r in unsupported_rows)
    assert all(r["origin"].split(":")[0] in {"doc0.txt", "doc1.md", "doc2.txt"} for r in rejects)
    assert all(r["record"]["id"] and r["field"] for r in rejects)


def test_duplicate_questions_on_one_document_are_rejected(docs, tmp_path):
    def same_question(body):
        if "Question: " in body["messages"][-1]["content"]:
            return json.dumps({"answer": "x", "quotes": [body["messages"][-1]["content"].split("\n")[1][:60]]})
        return json.dumps({"question": "What happened to the ship of the merchant guild?"})

    with FakeOpenAI(content=same_question) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1), progress=False)
    assert summary["written"] == 3  # one per document
    assert summary["rejected"] == {"duplicate_question": 9}


def test_429_then_success_and_a_hung_request_are_retried(docs, tmp_path):
    with FakeOpenAI(faults=[429, "hang", 503]) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1, timeout=2,
                                   max_retries=3), progress=False)
    r = summary["requests"]
    assert summary["written"] == 12 and summary["failed"] == {}
    assert r["statuses"] == {"200": 24, "429": 1, "503": 1} and r["no_reply"] == 1 and r["http_attempts"] == 27


def test_a_request_failing_after_its_retries_stays_open_for_the_next_run(docs, tmp_path):
    with FakeOpenAI(faults=[500, 500]) as server:
        first = generate(config(docs, tmp_path / "gen", server.url, concurrency=1, max_retries=1), progress=False)
    assert first["failed"] == {"http_500": 1} and first["totals"]["open"] == 1
    with FakeOpenAI() as server:
        second = generate(config(docs, tmp_path / "gen", server.url), progress=False)
    assert second["written"] == 1 and second["requests"]["calls"] == 2 and second["totals"]["open"] == 0


def test_an_unreachable_server_stops_the_run_with_a_user_error(docs, tmp_path):
    with FakeOpenAI() as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    with pytest.raises(UserError, match="cannot reach") as e:
        generate(config(docs, tmp_path / "gen", url, max_retries=0), progress=False)
    assert "running? Finished pairs" in str(e.value)  # before: "running?. Finished"


def test_stored_quotes_are_literal_substrings_of_their_document(docs, tmp_path):
    def typographic(body):
        reply = json.loads(default_content(body))
        if "quotes" in reply:
            reply["quotes"] = [f"\u201c{reply['quotes'][0]}\u2026\u201d"]
        return json.dumps(reply)

    with FakeOpenAI(content=typographic) as server:
        generate(config(docs, tmp_path / "gen", server.url), progress=False)
    rows = lines(tmp_path / "gen" / "qa.jsonl")
    texts = {p.name: p.read_text(encoding="utf-8") for p in docs.iterdir()}
    assert len(rows) == 12 and all(q in texts[r["doc"]] for r in rows for q in r["quotes"])
    assert not any("\u201c" in q or "\u2026" in q for r in rows for q in r["quotes"])


def test_no_authorization_header_without_a_key(docs, tmp_path, monkeypatch):
    monkeypatch.delenv("LONGQA_TEST_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")  # another variable's key is not sent either
    with FakeOpenAI() as server:
        generate(config(docs, tmp_path / "gen", server.url), progress=False)
    assert {r["authorization"] for r in server.requests} == {None}  # before: "Bearer none"


def test_a_server_refusing_json_schema_is_asked_in_json_object_mode(docs, tmp_path, caplog):
    with FakeOpenAI(refuse_json_schema=True) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1), progress=False)
    kinds = [r["body"].get("response_format", {}).get("type") for r in server.requests]
    # the first request is refused with its schema and accepted as json_object; every later one is json_object
    assert kinds[:2] == ["json_schema", "json_object"] and set(kinds[2:]) == {"json_object"}
    assert summary["written"] == 12 and summary["failed"] == {} and summary["json_mode"] == "json_object"
    assert summary["requests"]["statuses"] == {"200": 24, "400": 1}
    assert sum("refused response_format json_schema" in r.getMessage() for r in caplog.records) == 1


def test_a_400_is_not_retried_and_said_so_and_400s_to_every_first_request_stop_the_run(docs, tmp_path, caplog):
    with FakeOpenAI(faults=[400]) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1, json_mode="off"),
                           progress=False)
    assert summary["failed"] == {"http_400": 1} and summary["not_retried"] == 1 and summary["totals"]["open"] == 1
    assert summary["requests"]["http_attempts"] == 23  # the refused request was sent once
    assert any("not retried" in r.getMessage() for r in caplog.records)
    assert not any("after retries" in r.getMessage() or "after 2 retries" in r.getMessage()
                   for r in caplog.records)
    with FakeOpenAI(faults=[400] * 30) as server:
        with pytest.raises(UserError, match="refused the first 3 requests with HTTP 400"):
            generate(config(docs, tmp_path / "gen2", server.url, concurrency=1, json_mode="off"), progress=False)
    assert len(server.requests) == 3


def test_a_wrong_base_path_is_named_as_such(docs, tmp_path):
    with FakeOpenAI() as server:
        with pytest.raises(UserError, match=r"up to and including /v1, e.g. http://127.0.0.1:\d+/v1"):
            generate(config(docs, tmp_path / "gen", server.url.removesuffix("/v1")), progress=False)


def test_the_progress_bar_counts_finished_slots_only(docs, tmp_path, monkeypatch):
    from longqa.generate import run as run_module

    bars = []

    class Bar:
        def __init__(self, total, initial, **kw):
            self.n, self.postfix = initial, {}
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

        def set_postfix(self, **kw):
            self.postfix = kw

    monkeypatch.setattr(run_module, "tqdm", Bar)
    with FakeOpenAI(faults=[500, 500, 500]) as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, concurrency=1, max_retries=2), progress=False)
    assert summary["failed"] == {"http_500": 1} and summary["written"] == 11
    assert bars[0].n == 11 and bars[0].postfix == {"failed": 1}  # before: 12 of 12 with one slot still open


def test_answers_come_from_the_passages_when_the_document_does_not_fit(docs, tmp_path):
    with FakeOpenAI() as server:
        summary = generate(config(docs, tmp_path / "gen", server.url, context_window=1000), progress=False)
        asked = [r["body"]["messages"][-1]["content"] for r in server.requests if "Question: " in
                 r["body"]["messages"][-1]["content"]]
    assert summary["answered_from"] == {"passages": 12}
    assert all(r["answer_context"] == "passages" for r in lines(tmp_path / "gen" / "qa.jsonl"))
    assert all(a.startswith("<excerpts") and len(a) < 2500 for a in asked)


def test_a_rerun_with_other_plan_settings_is_refused(docs, tmp_path):
    with FakeOpenAI() as server:
        generate(config(docs, tmp_path / "gen", server.url), progress=False)
        with pytest.raises(ConfigError, match="other plan settings"):
            generate(config(docs, tmp_path / "gen", server.url, seed=3), progress=False)


def test_a_line_cut_by_a_kill_is_removed_and_its_slot_asked_again(docs, tmp_path):
    with FakeOpenAI() as server:
        generate(config(docs, tmp_path / "gen", server.url), progress=False)
    qa = tmp_path / "gen" / "qa.jsonl"
    data = qa.read_bytes()
    qa.write_bytes(data[:-40])  # the last line loses its end
    assert repair_last_line(qa) and not repair_last_line(qa)
    assert len(lines(qa)) == 11
    with FakeOpenAI() as server:
        summary = generate(config(docs, tmp_path / "gen", server.url), progress=False)
    assert summary["written"] == 1 and len({r["id"] for r in lines(qa)}) == 12


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path):
    docs = write_docs(tmp_path / "docs", n=4)
    out = tmp_path / "gen"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LONGQA_TEST_KEY": KEY}
    args = [sys.executable, "-m", "longqa.generate", "--docs", str(docs), "--out", str(out), "--model", "fake",
            "--questions-per-doc", "4", "--passage-chars", "300", "--concurrency", "3",
            "--api-key-env", "LONGQA_TEST_KEY", "--no-progress"]
    with FakeOpenAI(hold_after=5) as server:
        proc = subprocess.Popen([*args, "--endpoint", server.url], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert server.held.wait(timeout=120), "the generator never reached the held requests"
            deadline = time.monotonic() + 120  # outer limit only: the 5 answered pairs are written promptly
            while len(lines(out / "qa.jsonl")) < 5 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert len(lines(out / "qa.jsonl")) == 5  # requests were in flight when it died
    killed = json.loads((out / "generate.json").read_text(encoding="utf-8"))["runs"][-1]
    # the killed run's requests are in generate.json (before: its summary was written only at the end)
    assert killed["finished"] is False and killed["written"] == 5
    assert killed["requests"]["http_attempts"] == len(server.requests)
    with FakeOpenAI() as server:
        done = subprocess.run([*args, "--endpoint", server.url], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [r["id"] for r in lines(out / "qa.jsonl")] + [r["record"]["id"] for r in lines(out / "rejects.jsonl")]
    assert sorted(ids) == sorted(f"doc{d}.{'md' if d % 2 else 'txt'}#q{i}" for d in range(4) for i in range(4))
    assert "0 of 16 questions still open" in done.stdout
    runs = json.loads((out / "generate.json").read_text(encoding="utf-8"))["runs"]
    assert [r["finished"] for r in runs] == [False, True]
    assert KEY not in done.stdout + done.stderr
