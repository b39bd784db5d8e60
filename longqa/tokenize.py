"""Tokenize rendered samples with label masks and document-only truncation.

A sample is tokenized as its whole rendered text, once (batched, fast tokenizer, all cores), so its ids are the ones
the model sees at inference: a SentencePiece-style tokenizer (Metaspace, as Llama-2, Mistral and Gemma use) puts no
extra ``▁`` at segment joins, a byte-level one merges across them as it would in the whole text. The character
offsets of the tokens then give the document's token span and the answer's: labels are -100 everywhere except the
tokens that overlap the answer and its end of turn, and truncation removes a part of the document's token span only
(middle, head or tail). The cut is the only place the ids may differ from a tokenization of the text as it reads
after the cut; every removed token is counted.

A document shared by many questions (SQuAD: dozens per article) is tokenized once and reused: a sample's ids are
then the tokens of its head (template + the document's first characters) and tail (the document's last characters +
question + answer), each tokenized in place, joined to the cached document tokens where both tokenizations agree on
every token of a long overlap; where they do not, the sample is tokenized whole. Either way the ids equal a whole-text
tokenization (tests/longqa/test_tokenize.py checks three kinds of tokenizer).

Control-token text inside a document or an answer (a literal ``<|im_end|>``) stays text: such samples are tokenized in
pieces at those strings, the strings by a copy of the tokenizer that treats control tokens as text.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from longqa.render import Rendered
from longqa.truncation import middle_split
from schemas.labels import IGNORE_INDEX



@dataclass
class Encoded:
    """The tokenized form of one sample (int32 arrays)."""

    input_ids: np.ndarray
    labels: np.ndarray
    n_doc_tokens: int
    n_doc_tokens_dropped: int


@dataclass
class OverBudget:
    """The template, question and answer alone do not fit in `max_length`: the sample is rejected."""

    n_fixed_tokens: int
    max_length: int

    @property
    def message(self) -> str:
        return (f"template + question + answer take {self.n_fixed_tokens} tokens, leaving no room for the document "
                f"within max_length {self.max_length}")


def keep_indices(n: int, budget: int, policy: str) -> slice | tuple[slice, slice]:
    """Which of `n` document tokens survive a `budget`: policy names the part that is removed."""
    if n <= budget:
        return slice(0, n)
    if policy == "tail":
        return slice(0, budget)
    if policy == "head":
        return slice(n - budget, n)
    head, tail = middle_split(n, budget)  # the project's one middle rule (longqa.truncation)
    return slice(0, head), slice(n - tail, n)


@dataclass
class Located:
    """A sample's whole-text ids, its document's token span ``[d0, d1)`` and which tokens are trained on."""

    ids: np.ndarray
    d0: int
    d1: int
    labeled: np.ndarray


def bounds(sample: Rendered) -> tuple[int, int, int, int]:
    """Character positions in ``sample.text``: document start and end, answer start, end of the trained span."""
    a = len(sample.prefix)
    b = a + len(sample.material)
    c = b + len(sample.middle)
    return a, b, c, c + len(sample.answer) + len(sample.end)


@dataclass
class Tokens:
    """Token ids and their character spans in the text they were made from (int arrays)."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, encoding, shift: int = 0) -> "Tokens":
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        return cls(np.asarray(encoding.ids, dtype=np.int32), offsets[:, 0] + shift, offsets[:, 1] + shift)

    @classmethod
    def join(cls, parts: list["Tokens"]) -> "Tokens":
        return cls(*(np.concatenate([getattr(t, f) for t in parts]) for f in ("ids", "starts", "ends")))

    def cut(self, lo: int, hi: int) -> "Tokens":
        return Tokens(self.ids[lo:hi], self.starts[lo:hi], self.ends[lo:hi])

    def shifted(self, shift: int) -> "Tokens":
        return Tokens(self.ids, self.starts + shift, self.ends + shift)

    def located(self, sample: Rendered) -> Located:
        """Spans from the tokens' character offsets: a token belongs to the document when it starts inside it,
        is trained on when it overlaps the answer and its end of turn (and is not the document's)."""
        a, b, c, d = bounds(sample)
        starts, ends = self.starts, np.maximum(self.ends, self.starts + 1)  # an empty span is a point
        d0, d1 = int(np.searchsorted(starts, a)), int(np.searchsorted(starts, b))
        labeled = (starts < d) & (ends > c)
        labeled[d0:d1] = False  # a token of the document is never trained on
        return Located(self.ids, d0, d1, labeled)


#: characters of the document tokenized in place at each end of a sample that reuses the cached document tokens
WINDOW = 512
#: characters at the edges of a window whose tokens may depend on what lies beyond it (never joined there)
EDGE = 64
#: documents shorter than this many characters are always tokenized with their sample
MIN_CACHED_CHARS = 4 * WINDOW


def _agree(a: Tokens, i: int, b: Tokens, j: int, limit: int) -> bool:
    """`a` from token i and `b` from token j are the same tokens at the same characters, up to character `limit`
    (at least 4 tokens)."""
    n = min(len(a.ids) - i, len(b.ids) - j)
    if n <= 0:
        return False
    upto = int(np.searchsorted(a.ends[i:i + n], limit, side="right"))
    if upto < 4:
        return False
    return (np.array_equal(a.ids[i:i + upto], b.ids[j:j + upto])
            and np.array_equal(a.starts[i:i + upto], b.starts[j:j + upto]))


def _sync(a: Tokens, b: Tokens, lo: int, hi: int) -> tuple[int, int] | None:
    """The first token i of `a` starting in [lo, hi) where `b` has a token j at the same character and both agree up
    to character `hi`: (i, j), else None."""
    for i in range(int(np.searchsorted(a.starts, lo)), len(a.ids)):
        start = a.starts[i]
        if start >= hi:
            return None
        j = int(np.searchsorted(b.starts, start))
        if j < len(b.ids) and b.starts[j] == start and _agree(a, i, b, j, hi):
            return i, j
    return None


class Encoder:
    """Encodes batches of rendered samples. `doc_keys` identify materials for the token cache (doc ids).

    It calls the Rust tokenizer behind the transformers tokenizer directly (`encode_batch`, which releases the GIL and
    uses every core); a second copy of it treats control-token text in documents and answers as plain text.
    """

    def __init__(self, tokenizer, max_length: int, truncation: str, cache_size: int = 64):
        import re

        from tokenizers import Tokenizer

        backend = tokenizer.backend_tokenizer
        self._template = Tokenizer.from_str(backend.to_str())  # a copy: settings of the caller's never reach it
        self._content_copy = None  # made on first use (:attr:`_content`): most documents hold no control-token text
        specials = sorted({t.content for t in backend.get_added_tokens_decoder().values() if t.special}, key=len,
                          reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.max_length = max_length
        self.truncation = truncation
        self._doc_cache: OrderedDict[str, tuple[str, Tokens]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def _content(self):
        """The tokenizer for content (documents, answers): literal "<|im_end|>" text never becomes a control token."""
        from tokenizers import Tokenizer

        with self._lock:
            if self._content_copy is None:
                self._content_copy = Tokenizer.from_str(self._template.to_str())
                self._content_copy.encode_special_tokens = True
            return self._content_copy

    def _tokens(self, texts: list[str], tokenizer=None) -> list[Tokens]:
        if not texts:
            return []
        encodings = (tokenizer or self._template).encode_batch(texts, add_special_tokens=False)
        return [Tokens.of(e) for e in encodings]

    def _protected(self, text: str, spans: list[tuple[int, int]]) -> Tokens:
        """`text` tokenized in pieces at the control-token strings inside `spans` (content), those strings as text."""
        cuts = [(m.start(), m.end()) for lo, hi in spans for m in self._specials.finditer(text, lo, hi)]
        parts, at = [], 0
        for lo, hi in sorted(cuts):
            if lo > at:
                parts.append((at, self._template, text[at:lo]))
            parts.append((lo, self._content, text[lo:hi]))
            at = hi
        if at < len(text):
            parts.append((at, self._template, text[at:]))
        return Tokens.join([Tokens.of(tok.encode(piece, add_special_tokens=False), shift)
                            for shift, tok, piece in parts])

    def _documents(self, samples: list[Rendered], doc_keys: list[str]) -> dict[str, tuple[str, Tokens]]:
        """The cached tokens of every long document shared by two or more samples (this batch or earlier ones)."""
        with self._lock:
            cached = {key: self._doc_cache[key] for key in set(doc_keys) if key in self._doc_cache}
        seen: dict[str, int] = {}
        for key in doc_keys:
            seen[key] = seen.get(key, 0) + 1
        missing: dict[str, str] = {}
        for sample, key in zip(samples, doc_keys):
            if key in cached and cached[key][0] != sample.material:
                continue  # the same key, another text: this sample is tokenized whole
            if (key not in cached and key not in missing and seen[key] > 1
                    and len(sample.material) >= MIN_CACHED_CHARS):
                missing[key] = sample.material
        cached.update((key, (text, tokens)) for (key, text), tokens in
                      zip(missing.items(), self._tokens(list(missing.values()))))
        with self._lock:
            for key in dict.fromkeys(k for k in doc_keys if k in cached):
                self._doc_cache[key] = cached[key]
                self._doc_cache.move_to_end(key)
            while len(self._doc_cache) > self._cache_size:
                self._doc_cache.popitem(last=False)
        return cached

    def _plain(self, samples: list[Rendered], plain: list[int], out: list) -> list[int]:
        """Samples tokenized whole without character offsets (converting every token's offsets to Python costs more
        than the tokenization itself): the document span from the ids of the prompt before it and of the text after
        it, each tokenized alone, where the whole text's ids begin and end with exactly those; the trained tokens
        from the offsets of that short text after the document. The samples where they do not agree (a token
        across the document's edge) are returned, to be tokenized with offsets."""
        if not plain:
            return []
        whole = self._template.encode_batch_fast([samples[i].text for i in plain], add_special_tokens=False)
        prefixes = list(dict.fromkeys(samples[i].prefix for i in plain))
        prefix_ids = dict(zip(prefixes, (np.asarray(e.ids, dtype=np.int32) for e in
                                         self._template.encode_batch_fast(prefixes, add_special_tokens=False))))
        tails = self._tokens([samples[i].text[bounds(samples[i])[1]:] for i in plain])
        fallback = []
        for i, encoding, tail in zip(plain, whole, tails):
            ids, head = np.asarray(encoding.ids, dtype=np.int32), prefix_ids[samples[i].prefix]
            d0, d1 = len(head), len(ids) - len(tail.ids)
            if d1 < d0 or not (np.array_equal(ids[:d0], head) and np.array_equal(ids[d1:], tail.ids)):
                fallback.append(i)
                continue
            _, b, c, d = bounds(samples[i])
            labeled = np.zeros(len(ids), dtype=bool)
            labeled[d1:] = (tail.starts < d - b) & (np.maximum(tail.ends, tail.starts + 1) > c - b)
            out[i] = Located(ids, d0, d1, labeled)
        return fallback

    def _whole(self, samples: list[Rendered], doc_keys: list[str]) -> list[Located]:
        """Every sample's whole-text ids and spans (the cached document joined in where it may be)."""
        documents = self._documents(samples, doc_keys)
        out: list[Tokens | None] = [None] * len(samples)
        plain: list[int] = []
        stitched: list[tuple[int, Tokens, int, int]] = []  # (sample, document tokens, document start, end)
        for i, (sample, key) in enumerate(zip(samples, doc_keys)):
            a = len(sample.prefix)
            b = a + len(sample.material)
            content = [(a, b), (b + len(sample.middle), b + len(sample.middle) + len(sample.answer))]
            if self._specials is not None and any(self._specials.search(sample.text, lo, hi) for lo, hi in content):
                out[i] = self._protected(sample.text, content).located(sample)
            elif key in documents and documents[key][0] == sample.material:
                stitched.append((i, documents[key][1], a, b))
            else:
                plain.append(i)
        fallback = self._plain(samples, plain, out)
        texts = []
        for i, _, a, b in stitched:
            texts += [samples[i].text[:a + WINDOW], samples[i].text[b - WINDOW:]]
        tokens = self._tokens(texts)
        for k, (i, doc, a, b) in enumerate(stitched):
            head, tail = tokens[2 * k], tokens[2 * k + 1].shifted(b - WINDOW)
            joined = self._join(head, doc.shifted(a), tail, a, b)
            if joined is None:
                fallback.append(i)
            else:
                out[i] = joined.located(samples[i])
        for i, t in zip(fallback, self._tokens([samples[i].text for i in fallback])):
            out[i] = t.located(samples[i])
        return out

    @staticmethod
    def _join(head: Tokens, doc: Tokens, tail: Tokens, a: int, b: int) -> Tokens | None:
        front = _sync(head, doc, a + EDGE, a + WINDOW - EDGE)
        back = _sync(tail, doc, b - WINDOW + EDGE, b - EDGE)
        if front is None or back is None or front[1] > back[1]:
            return None
        (p, m), (r, n) = front, back
        return Tokens.join([head.cut(0, p), doc.cut(m, n), tail.cut(r, len(tail.ids))])

    def encode(self, samples: list[Rendered], doc_keys: list[str]) -> list[Encoded | OverBudget]:
        """The samples of a batch; those of one document (the same key and text) share one cut of it, made to the
        budget its longest question and answer leave (issue 22: the questions of a document then share the whole
        kept document as a token prefix, which prefix-tree training computes once)."""
        located = self._whole(samples, doc_keys)
        budgets = [self.max_length - (len(x.ids) - (x.d1 - x.d0)) for x in located]
        shared: dict[tuple[str, str], int] = {}
        for sample, key, budget in zip(samples, doc_keys, budgets):
            if budget > 0:  # a sample whose question and answer alone do not fit is rejected, not a constraint
                doc = (key, sample.material)
                shared[doc] = min(shared.get(doc, budget), budget)
        out: list[Encoded | OverBudget] = []
        for sample, key, spans, own in zip(samples, doc_keys, located, budgets):
            ids, d0, d1 = spans.ids, spans.d0, spans.d1
            n_doc = d1 - d0
            if own <= 0:
                out.append(OverBudget(len(ids) - n_doc, self.max_length))
                continue
            kept = keep_indices(n_doc, shared[(key, sample.material)], self.truncation)
            keep = np.ones(len(ids), dtype=bool)
            if not (isinstance(kept, slice) and kept == slice(0, n_doc)):
                keep[d0:d1] = False
                for part in (kept,) if isinstance(kept, slice) else kept:
                    keep[d0 + part.start:d0 + part.stop] = True
            input_ids = ids[keep]
            labels = np.where(spans.labeled, ids, IGNORE_INDEX).astype(np.int32)[keep]
            out.append(Encoded(input_ids, labels, n_doc, n_doc - int(keep[d0:d1].sum())))
        return out
