"""Generation shared by the generating tasks (qa, short_qa, passkey, RULER) and ``benchmarks/eval_qa.py``: greedy
decoding with transformers' ``generate`` and the KV cache, prompts batched by length, and prompts that share a long
start prefilled once.

Long-context evaluation asks many questions about each document, so its prompts share long leading token runs
(template + document). :func:`generate_tokens` prefills such a shared prefix once and lets every prompt of the group
continue from a copy of its KV cache (the prefix caching of vLLM/SGLang, with transformers' own ``generate``).

Pure helpers (:func:`make_batches`, :func:`prefix_groups`, :func:`pack_rows`) are tested alone.
"""
from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationStats:
    """Token counts and wall time of a generation run: `prompt_tokens` (all prompts), `prefill_tokens` (those the
    model computed: a shared prefix counts once), `new_tokens` (decoded, up to and with the end token)."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        total = self.prompt_tokens + self.new_tokens
        return {"prompt_tokens": self.prompt_tokens, "prefill_tokens": self.prefill_tokens,
                "new_tokens": self.new_tokens, "batches": self.batches,
                "seconds": round(self.seconds, 3),
                "tokens_per_s": round(total / self.seconds, 1) if self.seconds else None,
                "new_tokens_per_s": round(self.new_tokens / self.seconds, 2) if self.seconds else None}



def make_batches(lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int,
                 max_pad_fraction: float = 0.2) -> list[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by length (ties by index), a batch grows while it has fewer
    than `batch_size` members, its padded size ``members * longest`` stays within `max_batch_tokens`, and its
    shortest prompt is at least ``(1 - max_pad_fraction)`` of its longest (so little of a batch is padding).
    A prompt longer than `max_batch_tokens` forms a batch alone."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is not None:
            shortest, longest = lengths[current[0]], max(lengths[i], lengths[current[-1]])
            if (len(current) < batch_size and (len(current) + 1) * longest <= max_batch_tokens
                    and shortest >= (1 - max_pad_fraction) * longest):
                current.append(i)
                continue
        batches.append([i])
    return batches


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


def prefix_groups(prompts: Sequence[Sequence[int]], *, min_tokens: int,
                  max_members: int = 1024) -> list[tuple[int, list[int]]]:
    """Indices of `prompts` as ``(prefix_length, members)`` groups whose members share their first `prefix_length`
    tokens, ``min_tokens <= prefix_length < len(shortest member)`` (every member keeps a token of its own).

    Prompts are sorted lexicographically, so prompts with a common start are neighbours, and cut into runs that
    save the most prefill: a run of m prompts sharing s tokens computes ``(m - 1) * s`` fewer tokens (dynamic
    programming over the neighbours' shared lengths, runs of at most `max_members`). So one odd prompt that shares
    only a header does not shrink the group of a long shared document. Prompts left alone come last, as one group
    with ``prefix_length`` 0. ``min_tokens <= 0`` turns sharing off (one such group)."""
    if not prompts:
        return []
    if min_tokens <= 0:
        return [(0, list(range(len(prompts))))]
    order = sorted(range(len(prompts)), key=lambda i: (list(prompts[i]), i))
    ranked = [prompts[i] for i in order]
    # links[k]: tokens sorted prompts k and k + 1 can share, each keeping one of its own
    links = [min(common_prefix_length(a, b), len(a) - 1, len(b) - 1) for a, b in zip(ranked, ranked[1:])]
    n = len(order)
    saved = [0] * (n + 1)  # saved[j]: most prefill tokens saved on the first j sorted prompts
    start = list(range(-1, n))  # start[j]: first prompt of the run that ends with prompt j - 1
    for j in range(1, n + 1):
        saved[j], start[j] = saved[j - 1], j - 1  # prompt j - 1 alone
        shared = len(ranked[j - 1])
        for i in range(j - 2, max(-1, j - 1 - max_members), -1):  # the run i .. j - 1
            shared = min(shared, links[i])
            if shared < min_tokens:
                break
            if saved[i] + (j - 1 - i) * shared > saved[j]:
                saved[j], start[j] = saved[i] + (j - 1 - i) * shared, i
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    j = n
    while j > 0:
        i = start[j]
        if j - i > 1:
            groups.append((min(links[i:j - 1]), order[i:j]))
        else:
            alone.append(order[i])
        j = i
    groups.reverse()
    return groups + ([(0, sorted(alone))] if alone else [])


def end_token_ids(model, tokenizer) -> set[int]:
    """Tokens that end an answer: the generation config's end tokens and the tokenizer's (a chat model's
    end-of-turn token)."""
    eos = model.generation_config.eos_token_id
    return (set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}) - {None}


def cache_argument(model) -> str:
    """The name under which `model.forward` takes a KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier 5.x, e.g. 5.17)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefill(model, ids: Sequence[int]):
    """A ``DynamicCache`` holding the keys and values of token ids `ids` (one row), computed in one forward pass
    that keeps only the last position's logits."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    kwargs: dict[str, Any] = {cache_argument(model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # not a (N, vocabulary) logits tensor for a document-long prefix
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=model.device), **kwargs)
    return cache


def continuation_cache(prefix_cache, capacity: int):
    """A copy of `prefix_cache` (a ``DynamicCache`` from :func:`prefill`) whose full-attention layers hold their keys
    and values in buffers of `capacity` positions, so decoding writes each new token in place.

    transformers' ``DynamicLayer`` appends by ``torch.cat``, which copies the whole cache at every decoded token: for a
    6k-token document that is a 260 MB copy per token for SmolLM2-135M, most of a long-context QA evaluation's time on
    a CPU. Here the prefix is copied once per prompt (as ``copy.deepcopy`` did) and each token costs its own keys and
    values. Other layer kinds (sliding windows) are deep-copied as before; so is everything where transformers'
    cache classes differ from what this expects."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - older transformers
        return copy.deepcopy(prefix_cache)
    layers = getattr(prefix_cache, "layers", None)
    if layers is None or not all(type(layer) is DynamicLayer for layer in layers):
        return copy.deepcopy(prefix_cache)
    cache = copy.copy(prefix_cache)
    cache.layers = [BufferedLayer.from_layer(layer, capacity) for layer in layers]
    return cache


def _buffered_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _BufferedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose ``keys``/``values`` are views of preallocated buffers (see
        :func:`continuation_cache`); it grows them by doubling when a prompt outruns the capacity."""

        @classmethod
        def from_layer(cls, layer, capacity: int):
            new = cls()
            if layer.is_initialized and layer.keys is not None and layer.keys.numel():
                new.device = layer.device
                new.is_initialized = True
                new._store(layer.keys, layer.values, max(capacity, layer.keys.shape[-2]))
            return new

        def _store(self, keys, values, capacity: int) -> None:
            import torch

            n = keys.shape[-2]
            shape = (*keys.shape[:-2], capacity, keys.shape[-1])
            self._k = torch.empty(shape, dtype=keys.dtype, device=keys.device)
            self._v = torch.empty(shape, dtype=values.dtype, device=values.device)
            self._k[..., :n, :] = keys
            self._v[..., :n, :] = values
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

        def _owns(self) -> bool:  # keys still a view of the buffer (crop keeps it; batch ops replace it)
            return getattr(self, "_k", None) is not None and self.keys is not None and \
                self.keys.data_ptr() == self._k.data_ptr() and self.keys.shape[0] == self._k.shape[0]

        def batch_repeat_interleave(self, repeats: int) -> None:
            """Each row `repeats` times, into buffers of the same capacity (no intermediate copy)."""
            import torch

            if self.get_seq_length() == 0 or not self._owns():
                return super().batch_repeat_interleave(repeats)
            n, (b, *middle, capacity, d) = self.keys.shape[-2], self._k.shape
            for name in ("_k", "_v"):
                old = getattr(self, name)
                new = torch.empty((b * repeats, *middle, capacity, d), dtype=old.dtype, device=old.device)
                new.view(b, repeats, *middle, capacity, d)[..., :n, :] = old[:, None, ..., :n, :]
                setattr(self, name, new)
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                return super().update(key_states, value_states, *args, **kwargs)
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if not self._owns() or n + m > self._k.shape[-2]:
                self._store(self.keys, self.values, max(2 * (n + m), 64))
            self._k[..., n:n + m, :] = key_states
            self._v[..., n:n + m, :] = value_states
            self.keys, self.values = self._k[..., :n + m, :], self._v[..., :n + m, :]
            return self.keys, self.values

    return _BufferedLayer


class _LazyBufferedLayer:
    """:func:`_buffered_layer_class`, built on first use (transformers is imported lazily in this module)."""

    _cls = None

    def from_layer(self, layer, capacity: int):
        if _LazyBufferedLayer._cls is None:
            _LazyBufferedLayer._cls = _buffered_layer_class()
        return _LazyBufferedLayer._cls.from_layer(layer, capacity)


BufferedLayer = _LazyBufferedLayer()


def pack_rows(prefix: Sequence[int], rests: Sequence[Sequence[int]], pad: int):
    """``(input_ids, attention_mask)``, both (B, N): row b is ``prefix + padding + rests[b]``, padding masked (0)."""
    import torch

    width = len(prefix) + max(len(r) for r in rests)
    input_ids = torch.full((len(rests), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rests), width), dtype=torch.long)
    input_ids[:, :len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
    attention_mask[:, :len(prefix)] = 1
    for row, rest in enumerate(rests):
        input_ids[row, width - len(rest):] = torch.tensor(list(rest), dtype=torch.long)
        attention_mask[row, width - len(rest):] = 1
    return input_ids, attention_mask


def generate_tokens(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int,
                    max_batch_tokens: int, max_pad_fraction: float = 0.2, min_shared_prefix: int = 0,
                    progress: bool = False, desc: str = "generate",
                    stats: GenerationStats | None = None) -> list[list[int]]:
    """Greedy continuations (``do_sample=False``, KV cache) of token-id `prompts` as token ids, in the order of
    `prompts`; each cut after its first end token (:func:`end_token_ids`, kept), so a row that ended early is
    shorter than `max_new_tokens`.

    Prompts sharing at least `min_shared_prefix` leading tokens (:func:`prefix_groups`; 0: never) are generated from
    one prefill of that prefix: each batch continues from a copy of its cache (repeated per row), so only the rest
    of each prompt is computed. Within a group, prompts are batched by :func:`make_batches` (on their full
    lengths); a row is ``prefix + padding + rest`` with the padding masked out, so positions and attention are those
    of the unpadded prompt (generate numbers positions from the attention mask)."""
    import torch
    from tqdm.auto import tqdm

    # the pad id as sft.data.pad_token_id, without importing sft.data (datasets): the GPU scripts use this module
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
    stats = stats if stats is not None else GenerationStats()
    outputs: list[list[int]] = [[] for _ in prompts]
    eos_ids = end_token_ids(model, tokenizer)
    cache_key = cache_argument(model)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for shared, members in prefix_groups(prompts, min_tokens=min_shared_prefix):
        started = time.perf_counter()
        prefix_cache = prefill(model, prompts[members[0]][:shared]) if shared else None
        stats.seconds += time.perf_counter() - started
        stats.prefill_tokens += shared
        batches = make_batches([len(prompts[i]) for i in members], batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, max_pad_fraction=max_pad_fraction)
        for batch in ([members[j] for j in b] for b in batches):
            rests = [list(prompts[i][shared:]) for i in batch]
            input_ids, attention_mask = pack_rows(prompts[batch[0]][:shared], rests, pad)
            width = input_ids.shape[1]
            started = time.perf_counter()
            kwargs: dict[str, Any] = {}
            if prefix_cache is not None:  # a copy per batch, one row per prompt
                cache = continuation_cache(prefix_cache, width + max_new_tokens)
                if len(batch) > 1:
                    cache.batch_repeat_interleave(len(batch))
                kwargs[cache_key] = cache
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(model.device),
                                     attention_mask=attention_mask.to(model.device), do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad,
                                     eos_token_id=list(eos_ids) or None, temperature=None, top_p=None, top_k=None,
                                     use_cache=True, **kwargs)
            new = out[:, width:].tolist()  # (B, T) on the host; also waits for an asynchronous device
            stats.seconds += time.perf_counter() - started
            stats.batches += 1
            for row, i in enumerate(batch):
                tokens = new[row]
                length = next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
                stats.prompt_tokens += len(prompts[i])
                stats.prefill_tokens += len(rests[row])
                stats.new_tokens += length
                outputs[i] = tokens[:length]
            bar.update(len(batch))
    bar.close()
    return outputs


def greedy_generate(model, tokenizer, prompts: Sequence[Sequence[int]], **kwargs) -> list[str]:
    """:func:`generate_tokens` (same keyword arguments) decoded without special tokens and stripped."""
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip()
            for tokens in generate_tokens(model, tokenizer, prompts, **kwargs)]
