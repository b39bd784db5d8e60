"""Tokenize rendered samples with label masks and document-only truncation.

Each segment of a `Rendered` sample is tokenized on its own (batched, fast tokenizer, all cores) and the ids are
concatenated, so the token span of the material is known exactly: truncation removes material tokens only (middle,
head or tail), and labels are -100 everywhere except the answer and its end-of-turn token. A document shared by many
questions (SQuAD: dozens per article) is tokenized once and reused.
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


def truncate(ids: np.ndarray, budget: int, policy: str) -> np.ndarray:
    kept = keep_indices(len(ids), budget, policy)
    if isinstance(kept, slice):
        return ids[kept]
    return np.concatenate([ids[kept[0]], ids[kept[1]]])


class Encoder:
    """Encodes batches of rendered samples. `doc_keys` identify materials for the token cache (doc ids).

    It calls the Rust tokenizer behind the transformers tokenizer directly (`encode_batch_fast`, which releases the
    GIL and uses every core); a second copy of it treats control-token text in documents and answers as plain text.
    """

    def __init__(self, tokenizer, max_length: int, truncation: str, cache_size: int = 64):
        from tokenizers import Tokenizer

        backend = tokenizer.backend_tokenizer
        self._template = Tokenizer.from_str(backend.to_str())
        self._content = Tokenizer.from_str(backend.to_str())
        # Content (documents, answers) never turns literal "<|im_end|>" text into a control token.
        self._content.encode_special_tokens = True
        self.max_length = max_length
        self.truncation = truncation
        self._doc_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _ids(self, texts: list[str], *, content: bool) -> list[np.ndarray]:
        if not texts:
            return []
        encodings = (self._content if content else self._template).encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def _materials(self, samples: list[Rendered], doc_keys: list[str]) -> list[np.ndarray]:
        with self._lock:
            cached = {key: self._doc_cache[key] for key in doc_keys if key in self._doc_cache}
        missing: dict[str, str] = {}
        for sample, key in zip(samples, doc_keys):
            if key not in cached and key not in missing:
                missing[key] = sample.material
        cached.update(zip(missing, self._ids(list(missing.values()), content=True)))
        with self._lock:
            for key in doc_keys:
                self._doc_cache[key] = cached[key]
                self._doc_cache.move_to_end(key)
            while len(self._doc_cache) > self._cache_size:
                self._doc_cache.popitem(last=False)
        return [cached[key] for key in doc_keys]

    def _template_ids(self, texts: list[str]) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(texts))
        return dict(zip(unique, self._ids(unique, content=False)))

    def encode(self, samples: list[Rendered], doc_keys: list[str]) -> list[Encoded | OverBudget]:
        materials = self._materials(samples, doc_keys)
        template = self._template_ids([t for s in samples for t in (s.prefix, s.middle, s.end, s.tail)])
        answers = self._ids([s.answer for s in samples], content=True)
        out: list[Encoded | OverBudget] = []
        for sample, material, answer in zip(samples, materials, answers):
            prefix, middle = template[sample.prefix], template[sample.middle]
            end, tail = template[sample.end], template[sample.tail]
            n_fixed = len(prefix) + len(middle) + len(answer) + len(end) + len(tail)
            budget = self.max_length - n_fixed
            if budget <= 0:
                out.append(OverBudget(n_fixed, self.max_length))
                continue
            kept = truncate(material, budget, self.truncation)
            input_ids = np.concatenate([prefix, kept, middle, answer, end, tail])
            labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int32)
            start = len(prefix) + len(kept) + len(middle)
            labels[start:start + len(answer) + len(end)] = input_ids[start:start + len(answer) + len(end)]
            out.append(Encoded(input_ids, labels, len(material), len(material) - len(kept)))
        return out
