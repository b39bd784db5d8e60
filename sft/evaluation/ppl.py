"""Task ``ppl``: perplexity by context length.

Three window protocols over one token stream (documents joined by the end-of-sequence token, as the paper evaluates
the concatenated PG19 / proof-pile validation tokens):

- ``sliding`` (default) — LongLoRA ``eval.py``'s windows (``get_as_batch``: a window of L input tokens every
  `stride` (256) tokens, the last start dropped), with all L next-token predictions of each window scored (its `y`).
- ``longlora`` — ``eval.py`` exactly: the same windows, but its loss has ``labels = inputs``, so only the L - 1
  next tokens inside each window are scored; the mean per window, averaged per batch, the batches averaged,
  ``2.71828 ** loss`` (:func:`aggregate`).
- ``strided`` — Hugging Face's "perplexity of fixed-length models": windows of at most L tokens every `stride`
  tokens; only the tokens not scored by an earlier window are scored, each once, with as much context as fits.

A :class:`Window` ``(begin, end, first_target)`` means: feed ``tokens[begin:end-1]`` and score the predictions of
``tokens[first_target:end]`` (each token from all window tokens before it). The generators are pure.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from schemas.errors import DataError

if TYPE_CHECKING:  # annotations only: the GPU scripts import this module where pydantic is absent
    from schemas.eval import PPLConfig


class Window(NamedTuple):
    begin: int
    end: int
    first_target: int

    @property
    def n_inputs(self) -> int:
        return self.end - 1 - self.begin

    @property
    def n_scored(self) -> int:
        return self.end - self.first_target


def sliding_windows(n_tokens: int, length: int, stride: int = 256) -> list[Window]:
    """The paper's windows: starts ``range(0, n_tokens - length, stride)`` without the last one (LongLoRA's
    ``all_ix.pop()``); each feeds `length` tokens and scores all `length` next tokens."""
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be positive, got {length}, {stride}")
    starts = list(range(0, n_tokens - length, stride))
    if starts:
        starts.pop()  # as eval.py does
    return [Window(i, i + length + 1, i + 1) for i in starts]


def strided_windows(n_tokens: int, length: int, stride: int) -> list[Window]:
    """Hugging Face's strided protocol: windows ``[begin, min(begin + length, n_tokens))`` for ``begin`` in
    ``range(0, n_tokens, stride)`` up to the one reaching the end; each scores the tokens after the previous window's
    end, each once. A window's first token has no context in it and is not scored (HF's labels are shifted inside
    the model): with ``stride < length`` that is only the stream's first token, with ``stride == length`` every
    window's first."""
    if length < 2 or stride < 1 or stride > length:
        raise ValueError(f"strided windows need 2 <= length and 1 <= stride <= length, got {length}, {stride}")
    windows, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        first = max(previous_end, begin + 1)
        if end > first:
            windows.append(Window(begin, end, first))
        previous_end = end
        if end == n_tokens:
            break
    return windows


def longlora_windows(n_tokens: int, length: int, stride: int = 256) -> list[Window]:
    """LongLoRA ``eval.py`` exactly: the starts of :func:`sliding_windows`; the model gets the `length` tokens of
    the window with ``labels = inputs`` (transformers shifts them), so the ``length - 1`` next tokens *inside* the
    window are scored (its ``y`` is computed but only used for accuracy)."""
    return [Window(w.begin, w.begin + length, w.begin + 1) for w in sliding_windows(n_tokens, length, stride)]


WINDOW_PROTOCOLS: dict[str, Callable[..., list[Window]]] = {"sliding": sliding_windows, "longlora": longlora_windows,
                                                            "strided": strided_windows}
LONGLORA_E = 2.71828  # eval.py: stats['val_perplexity'] = 2.71828 ** stats['val_loss']


def aggregate(scores: Sequence[tuple[float, int]], protocol: str, batch_size: int = 32) -> dict[str, Any]:
    """Perplexity of per-window ``(NLL sum, scored tokens)`` with a 95 % interval (bootstrap over windows), and the
    per-window pairs themselves (``per_window``: two models scored on the same windows compare window by window).

    sliding / strided: ``exp(sum NLL / sum tokens)``. longlora, as ``eval.py``: each window's mean NLL, averaged per
    batch of `batch_size` consecutive windows, the batch means averaged (a smaller last batch weighs more), and
    ``2.71828 ** loss``; its interval is the bootstrap of the window means (batches ignored)."""
    from sft.evaluation.intervals import bootstrap_mean, bootstrap_ratio

    nlls, counts = [s for s, _ in scores], [n for _, n in scores]
    if protocol == "longlora":
        means = [s / n for s, n in scores]
        batches = [means[i:i + batch_size] for i in range(0, len(means), batch_size)]
        loss = sum(sum(b) / len(b) for b in batches) / len(batches)
        ci, base = bootstrap_mean(means), LONGLORA_E
    else:
        loss, ci, base = sum(nlls) / sum(counts), bootstrap_ratio(nlls, counts), math.e
    return {"ppl": round(base ** loss, 4), "nll": round(loss, 6), "tokens": sum(counts), "windows": len(scores),
            "ci": [round(base ** ci[0], 4), round(base ** ci[1], 4)],
            "per_window": [[round(s, 4), n] for s, n in scores]}


def paired_ratio(model: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any] | None:
    """``ppl(model) / ppl(reference)`` of two :func:`aggregate` results on the same windows, with a 95 % paired
    bootstrap interval over windows (both models' NLL on a resampled window move together), and how many windows
    the model scored lower; None when the windows differ (other token counts, or no ``per_window``: older reports).
    Perplexity protocols with ``exp(sum NLL / tokens)`` only (not ``longlora``'s averaged batch means)."""
    from sft.evaluation.intervals import bootstrap_paired_ratio

    a, b = model.get("per_window"), reference.get("per_window")
    if not a or not b or [n for _, n in a] != [n for _, n in b]:
        return None
    nll_a, nll_b, tokens = [s for s, _ in a], [s for s, _ in b], [n for _, n in a]
    log_ratio = (sum(nll_a) - sum(nll_b)) / sum(tokens)
    lo, hi = bootstrap_paired_ratio(nll_a, nll_b, tokens)
    return {"ratio": round(math.exp(log_ratio), 4), "ci": [round(math.exp(lo), 4), round(math.exp(hi), 4)],
            "windows": len(a), "lower_windows": sum(x < y for x, y in zip(nll_a, nll_b))}


def paired_comparisons(pairs: Sequence[Sequence[str]], by_length: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ``(arm, reference)`` of `pairs` whose two models are in `by_length` (name -> ``{length: aggregate
    result}``): :func:`paired_ratio` at every length both scored on the same windows, as ``{"arm", "reference",
    "ppl_ratio": {length: ...}}``; pairs with no such length are left out."""
    found = []
    for arm, reference in pairs:
        a, b = by_length.get(arm) or {}, by_length.get(reference) or {}
        ratios = {n: r for n in a if n in b for r in [paired_ratio(a[n], b[n])] if r}
        if ratios:
            found.append({"arm": arm, "reference": reference, "ppl_ratio": ratios})
    return found


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_texts(data: str, *, split: str = "test", max_documents: int | None = None) -> list[str]:
    """The documents of `data`, in a stable order: a text file (one document), long-text corpus documents (a
    ``.jsonl`` with a ``text`` field a line, or a folder of ``.jsonl``/``.txt`` files: file by file, in order), or a
    built dataset folder (each distinct ``doc_id`` of `split`, sorted; the document is its user turn without the
    question)."""
    path = Path(data)
    if path.suffix == ".jsonl" or (path.is_dir() and is_text_folder(path)):  # long-text corpus documents
        from sft.data import read_documents, text_files

        texts = list(read_documents(text_files([path])))
    elif path.is_file():
        texts = [path.read_text(encoding="utf-8")]
    else:
        import datasets

        text = path / "text" if (path / "text").is_dir() else path
        rows = datasets.load_from_disk(str(text))[split]
        by_doc: dict[str, str] = {}
        for row in rows:
            if row["doc_id"] in by_doc:
                continue
            user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            question = row["question"]
            for cut in (user.rfind(question), user.find(question)):  # question after (default) or before
                if cut >= 0 and (cut == 0 or cut + len(question) == len(user.rstrip())):
                    user = (user[:cut] + user[cut + len(question):]).strip()
                    break
            by_doc[row["doc_id"]] = user
        texts = [by_doc[k] for k in sorted(by_doc)]
    return texts[:max_documents] if max_documents is not None else texts


def is_text_folder(path: Path) -> bool:
    """A folder of plain documents (.txt/.md/.jsonl, e.g. a split of ``python -m longqa.corpus``) rather than a
    built dataset."""
    from sft.data import TEXT_SUFFIXES

    built = (path / "text").is_dir() or (path / "dataset_dict.json").is_file()
    return not built and any(p.suffix in TEXT_SUFFIXES for p in path.iterdir() if p.is_file())


def token_stream(texts: Sequence[str], tokenizer) -> list[int]:
    """All `texts` tokenized (no special tokens) and joined by the end-of-sequence token."""
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    for k, text in enumerate(texts):
        if k and sep is not None:
            stream.append(sep)
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return stream


# ----------------------------------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------------------------------


def window_nll(model, tokens: Sequence[int], window: Window) -> tuple[float, int]:
    """(sum of negative log-likelihoods, number of scored tokens) of one window, float64 accumulation."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(tokens[window.begin:window.end], dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids[None, :-1].to(model.device), use_cache=False).logits[0]  # (N-1, V)
        offset = window.first_target - window.begin - 1  # logits row that predicts first_target
        targets = ids[window.first_target - window.begin:].to(logits.device)
        nll = F.cross_entropy(logits[offset:].float(), targets, reduction="sum")
    return float(nll.double()), window.n_scored


def run(model, tokenizer, cfg: PPLConfig, ctx) -> dict[str, Any]:
    """The task on one model (:mod:`sft.evaluation.tasks`): the documents of ``cfg.data``, read once for all models."""
    if "ppl" not in ctx.cache:
        ctx.cache["ppl"] = load_texts(cfg.data, split=cfg.split, max_documents=cfg.max_documents)
    return evaluate_ppl(model, tokenizer, ctx.cache["ppl"], cfg, window=ctx.window, too_long=ctx.too_long,
                        progress=ctx.progress, say=ctx.say)


def summary(result: dict[str, Any]) -> str:
    """Perplexity per length, time and throughput in one line."""
    timing = result["timing"]
    ppl = ", ".join(f"{k}: {v['ppl']:.2f}" for k, v in result["by_length"].items())
    return f"perplexity {ppl or 'none'}  {timing['seconds']:.1f} s, {timing['tokens_per_s']} tokens/s"


def data_provenance(cfg: PPLConfig, cache: dict[str, Any]) -> dict[str, Any]:
    """The data's fingerprint and the number of documents read."""
    from sft.evaluation.provenance import data_fingerprint

    return {**data_fingerprint(cfg.data, cfg.split), "documents": len(cache["ppl"])}


def evaluate_ppl(model, tokenizer, texts: Sequence[str], cfg: PPLConfig, *, window: int, too_long: str = "skip",
                 progress: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Perplexity ``exp(sum NLL / scored tokens)`` at each context length of ``cfg.lengths`` over the first
    ``cfg.max_windows`` windows of the token stream. Lengths beyond the model `window`, or longer than the stream, are
    skipped with a message (a length beyond the window raises ValueError when `too_long` is ``"error"``)."""
    from tqdm.auto import tqdm

    protocol, stride, max_windows = cfg.protocol, cfg.stride, cfg.max_windows
    stream = token_stream(texts, tokenizer)
    make = WINDOW_PROTOCOLS[protocol]
    by_length: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    scored_tokens, started = 0, time.perf_counter()
    for length in cfg.lengths:
        if length > window:
            message = f"ppl: length {length} exceeds the model window ({window} tokens)"
            if too_long == "error":
                raise DataError(message)
            say(message + "; skipped")
            skipped[str(length)] = "beyond the model window"
            continue
        windows = make(len(stream), length, stride)
        if protocol != "strided" and not windows:
            say(f"ppl: the text has {len(stream)} tokens, too few for a {length}-token sliding window; skipped")
            skipped[str(length)] = f"text too short ({len(stream)} tokens)"
            continue
        windows = windows[:max_windows] if max_windows is not None else windows
        scores = [window_nll(model, stream, w)
                  for w in tqdm(windows, desc=f"ppl {length}", disable=not progress, leave=False)]
        scored_tokens += sum(n for _, n in scores)
        by_length[str(length)] = aggregate(scores, protocol, cfg.longlora_batch_size)
    seconds = time.perf_counter() - started
    return {"protocol": protocol, "stride": stride, "stream_tokens": len(stream), "by_length": by_length,
            "skipped": skipped, "window": window,
            "timing": {"seconds": round(seconds, 3), "scored_tokens": scored_tokens,
                       "tokens_per_s": round(scored_tokens / seconds, 1) if seconds else None}}
