"""The offline long-text corpus (`python -m longqa.corpus`): sources, split by document, manifest, publish guard."""
from __future__ import annotations

import hashlib
import json

import pytest

from longqa import corpus
from schemas.corpus import CorpusConfig

ESSAYS = ("April 2012A palliative care nurse made a list. Her list seems plausible.\n"
          "Thanks to X for reading drafts of this.January 2015Corporate blogs are read. It is so.\n\n\n\n"
          "\nMarch 2009  \n  \nAbout twenty years ago, in January 2005 and later, something happened.\n\n"
          "\nApril 2006, rev August 2009  \n  \nPlato quotes Socrates.")


@pytest.fixture
def sources(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    (lib / "json").mkdir(parents=True)
    (lib / "test").mkdir()
    for i in range(12):
        (lib / f"mod{i:02d}.py").write_text(f"# module {i}\n" + "x = 1\n" * (40 + i))
    (lib / "json" / "decoder.py").write_text("def decode():\n    pass\n" * 30)
    (lib / "tiny.py").write_text("y = 2\n")  # below stdlib_min_chars
    (lib / "test" / "test_big.py").write_text("assert True\n" * 100)  # tests are left out
    monkeypatch.setattr(corpus, "stdlib_root", lambda: lib)
    squad = {"version": "v2.0", "data": [
        {"title": f"Article {i}", "paragraphs": [{"context": f"Paragraph one of {i}.", "qas": []},
                                                 {"context": f"Paragraph two of {i}.", "qas": []}]}
        for i in range(8)]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    (tmp_path / "pg.json").write_text(json.dumps({"text": ESSAYS}))
    return tmp_path


def config(tmp_path, **over) -> CorpusConfig:
    return CorpusConfig(out=str(tmp_path / "corpus"), squad_path=str(tmp_path / "squad.json"),
                        paul_graham_path=str(tmp_path / "pg.json"), tokenizer=None, stdlib_min_chars=200,
                        heldout_fraction=0.3, **over)


def read_split(out, split):
    return [json.loads(line) for f in sorted((out / split).glob("*.jsonl")) for line in f.open()]


def test_essays_are_cut_at_their_date_lines():
    essays = list(corpus.read_paul_graham_text(ESSAYS))
    assert [e.title for e in essays] == ["April 2012", "January 2015", "March 2009", "April 2006, rev August 2009"]
    assert essays[2].text.endswith("something happened.")  # a date inside the text does not cut it
    assert "".join(e.text for e in essays).replace(" ", "").replace("\n", "") == ESSAYS.replace(" ", "").replace(
        "\n", "")


def test_corpus_splits_whole_documents_deterministically(sources):
    cfg = config(sources)
    manifest = corpus.build_corpus(cfg)
    out = sources / "corpus"
    train, heldout = read_split(out, "train"), read_split(out, "heldout")
    assert train and heldout
    assert not {d["id"] for d in train} & {d["id"] for d in heldout}
    for doc in train + heldout:  # the id is the builder's document hash
        assert doc["id"] == hashlib.sha256(doc["text"].encode() + b"\x00").hexdigest()[:16]
        assert corpus.split_of(doc["id"], cfg) == ("train" if doc in train else "heldout")
    titles = {d["title"] for d in train + heldout}
    assert "json/decoder.py" in titles and "tiny.py" not in titles and not any("test" in t for t in titles)
    assert sum(s["documents"] for s in manifest["splits"].values()) == len(train) + len(heldout) == 12 + 1 + 8 + 4
    assert manifest["sources"]["squad"]["license"] == "CC-BY-SA-4.0"
    assert {d["id"] for d in manifest["documents"]} == {d["id"] for d in train + heldout}
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*.jsonl")}
    assert "Publishable: no" in (out / "README.md").read_text()

    # same configuration: the finished folder is kept; a rebuild elsewhere gives the same files
    stamp = (out / "manifest.json").stat().st_mtime_ns
    corpus.build_corpus(cfg)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    again = corpus.build_corpus(cfg.model_copy(update={"out": str(sources / "again")}))
    assert again["files"] == manifest["files"]


def test_publishing_refuses_restricted_sources(sources):
    cfg = config(sources)
    corpus.build_corpus(cfg)
    with pytest.raises(ValueError, match="paul_graham"):
        corpus.check_publishable(sources / "corpus")
    free = cfg.model_copy(update={"out": str(sources / "free"), "sources": ["stdlib", "squad"]})
    assert corpus.build_corpus(free)["publishable"]
    corpus.check_publishable(sources / "free")


def test_train_split_feeds_the_extend_loader(sources):
    from sft.data import read_documents, text_files

    corpus.build_corpus(config(sources))
    docs = list(read_documents(text_files([sources / "corpus" / "train"])))
    assert len(docs) == len(read_split(sources / "corpus", "train"))


def test_command_line(sources, capsys):
    code = corpus.main(["--out", str(sources / "cli"), "--sources", "squad", "--tokenizer", "null",
                        "--squad-path", str(sources / "squad.json"), "--print-config"])
    assert code == 0 and "- squad" in capsys.readouterr().out
    assert corpus.main(["--heldout-fraction", "2"]) == 2
    assert corpus.main(["--out", str(sources / "cli"), "--sources", "squad", "--tokenizer", "null",
                        "--squad-path", str(sources / "squad.json")]) == 0
    assert (sources / "cli" / "manifest.json").is_file()


def test_longqa_publish_refuses_the_corpus(sources):
    from schemas.paths import corpus_publish_problem

    corpus.build_corpus(config(sources))
    assert "may not be published" in corpus_publish_problem("dataset_dir", str(sources / "corpus"))
    free = config(sources).model_copy(update={"out": str(sources / "free"), "sources": ["squad"]})
    corpus.build_corpus(free)
    assert "not a built LongQA dataset" in corpus_publish_problem("dataset_dir", str(sources / "free"))
    assert corpus_publish_problem("dataset_dir", str(sources)) is None
