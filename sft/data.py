"""Training data: the built LongQA dataset (sft), long plain text cut into chunks (extend), and the collator.

- :func:`load_sft_dataset`: one split of the builder's tokenized DatasetDict, reduced to ``input_ids``, ``labels``,
  ``length``. Samples longer than the training context are dropped and counted (or refused), never truncated: a cut
  could remove the answer (docs/design.md, "The data model": every truncation is counted).
- :func:`chunk_token_streams` / :func:`load_extend_dataset`: the paper's first stage, continued pre-training on long
  text: documents tokenized, each followed by EOS, concatenated and cut into ``max_length`` chunks; ``labels`` equal the
  inputs (the collator copies them).
- :class:`PadCollator`: right padding; ``labels`` padded with -100; ``attention_mask`` and ``position_ids``.

Length-grouped batching is the Trainer's (``train_sampling_strategy="group_by_length"`` reading the ``length`` column);
packing and sorted batching are ``sft.packing``'s.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch

from schemas.errors import DataError  # noqa: F401 (the training data cannot be used as configured; re-exported)
from schemas.labels import IGNORE_INDEX

#: Columns the trainer keeps; everything else of the built dataset is provenance.
TRAIN_COLUMNS = ("input_ids", "labels", "length")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


@dataclass
class DataStats:
    """What the loader kept and dropped; printed at start and written to ``output_dir/data_stats.json``."""

    source: str
    samples: int = 0
    tokens: int = 0
    dropped_too_long: int = 0
    documents: int = 0
    notes: list[str] = field(default_factory=list)
    layout: object | None = None  # sft.packing.LayoutStats: rows, samples per row, padding fraction

    def summary(self) -> str:
        parts = [f"{self.samples} samples, {self.tokens} tokens from {self.source}"]
        if self.documents:
            parts.append(f"{self.documents} documents")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} longer than max_length dropped")
        if self.layout is not None:
            parts.append(self.layout.summary())
        return "; ".join(parts + self.notes)


# ----------------------------------------------------------------------------------------------------------------------
# sft: the built dataset
# ----------------------------------------------------------------------------------------------------------------------


def tokenized_folder(path: str | Path) -> Path:
    """The builder's ``DIR/tokenized`` when ``path`` is its output folder, else ``path`` itself."""
    folder = Path(path)
    return folder / "tokenized" if (folder / "tokenized").is_dir() else folder


def load_sft_dataset(path: str | Path, split: str, max_length: int, too_long: str = "drop",
                     extra_columns: Sequence[str] = ()) -> tuple[datasets.Dataset, DataStats]:
    """``split`` of the tokenized dataset at ``path``, keeping only :data:`TRAIN_COLUMNS` (and ``extra_columns``
    where the dataset has them: ``doc_id`` for ``packing: tree``).

    Samples with ``length > max_length`` are dropped and counted (``too_long="drop"``) or raise :class:`DataError`
    (``"error"``). Nothing is written next to the dataset (selection happens in memory).
    """
    folder = tokenized_folder(path)
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{folder}: no split '{split}' (has {sorted(loaded)})")
        loaded = loaded[split]
    missing = sorted({"input_ids", "labels"} - set(loaded.column_names))
    if missing:
        raise DataError(f"{folder}: not a tokenized dataset, missing column(s) {missing}")
    if "length" not in loaded.column_names:
        loaded = loaded.map(lambda ids: {"length": len(ids)}, input_columns="input_ids", keep_in_memory=True)
    loaded = loaded.select_columns(list(TRAIN_COLUMNS) + [c for c in extra_columns if c in loaded.column_names])
    lengths = list(loaded["length"])
    if not lengths:
        raise DataError(f"{folder} [{split}]: the split holds no samples")
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    stats = DataStats(source=f"{folder} [{split}]", dropped_too_long=len(lengths) - len(keep))
    if stats.dropped_too_long and too_long == "error":
        raise DataError(f"{folder} [{split}]: {stats.dropped_too_long} of {len(lengths)} samples are longer than "
                        f"max_length {max_length} (longest {max(lengths)}); raise max_length, set too_long: drop, or "
                        f"rebuild with python -m longqa.build --max-length {max_length}")
    if not lengths:
        raise DataError(f"{folder} [{split}]: the split is empty (0 samples); see the build's manifest.json and "
                        "rejects.jsonl for why, or train on another --split")
    if not keep:
        raise DataError(f"{folder} [{split}]: none of the {len(lengths)} samples fits max_length {max_length} "
                        f"(shortest {min(lengths, default=0)} tokens); raise max_length or rebuild with "
                        f"python -m longqa.build --max-length {max_length}")
    if len(keep) < len(lengths):
        loaded = loaded.select(keep, keep_in_memory=True)
    stats.samples, stats.tokens = len(keep), sum(lengths[i] for i in keep)
    return loaded, stats


# ----------------------------------------------------------------------------------------------------------------------
# extend: long plain text cut into chunks
# ----------------------------------------------------------------------------------------------------------------------


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named in ``paths`` plus the ``.txt``/``.md``/``.jsonl`` files under any folder among them (sorted)."""
    files = []
    for ref in paths:
        path = Path(ref)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"data: {ref} does not exist")
    return files


def read_documents(files: Iterable[Path]) -> Iterator[str]:
    """One document per ``.txt``/``.md`` file; one per line of a ``.jsonl`` file (its ``text`` field)."""
    for file in files:
        if file.suffix != ".jsonl":
            yield file.read_text(encoding="utf-8")
            continue
        with file.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{file}:{number}: expected a JSON object with a 'text' field ({e})") from None
                yield text


def chunk_token_streams(documents: Iterable[Sequence[int]], max_length: int, eos_id: int) -> Iterator[list[int]]:
    """Concatenate ``doc + [eos]`` for every document and cut the stream into ``max_length`` chunks.

    Every token is kept: ``n = sum(len(doc) + 1)`` tokens give ``n // max_length`` full chunks and, when
    ``n % max_length`` is not 0, a last shorter one. Documents are not aligned to chunk starts (as in the paper's
    continued pre-training on PG19/RedPajama).
    """
    buffer: list[int] = []
    for doc in documents:
        buffer.extend(doc)
        buffer.append(eos_id)
        while len(buffer) >= max_length:
            yield buffer[:max_length]
            buffer = buffer[max_length:]
    if buffer:
        yield buffer


def document_pieces(documents: Iterable[Sequence[int]], max_length: int, eos_id: int) -> Iterator[list[int]]:
    """``doc + [eos]`` for every document, a longer one cut into pieces of ``max_length`` (the last one shorter):
    the samples that packing places into rows (no document starts inside another's piece)."""
    for doc in documents:
        tokens = [*doc, eos_id]
        for start in range(0, len(tokens), max_length):
            yield tokens[start:start + max_length]


def load_extend_dataset(paths: Sequence[str | Path], tokenizer, max_length: int, packing: bool = False
                        ) -> tuple[datasets.Dataset, DataStats]:
    """Chunks of ``max_length`` tokens from the text at ``paths`` (see :func:`chunk_token_streams`); with
    ``packing``, one sample per document (cut into ``max_length`` pieces, :func:`document_pieces`) for
    ``sft.packing`` to place into rows."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError("extend: the tokenizer has no EOS token to separate documents")
    files = text_files(paths)
    if not files:
        raise DataError(f"extend: no {'/'.join(TEXT_SUFFIXES)} files in {list(map(str, paths))}")
    stats = DataStats(source=f"{len(files)} file(s)")

    def token_streams() -> Iterator[list[int]]:
        for text in read_documents(files):
            stats.documents += 1
            yield tokenizer(text, add_special_tokens=False)["input_ids"]

    cut = document_pieces if packing else chunk_token_streams
    chunks = list(cut(token_streams(), max_length, eos_id))
    if not chunks:
        raise DataError(f"extend: the {len(files)} file(s) hold no text")
    stats.samples, stats.tokens = len(chunks), sum(map(len, chunks))
    if len(chunks[-1]) < max_length and not packing:
        stats.notes.append(f"last chunk {len(chunks[-1])} tokens")
    table = {"input_ids": chunks, "length": [len(c) for c in chunks]}
    return datasets.Dataset.from_dict(table), stats


# ----------------------------------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PadCollator:
    """Right-pad a list of samples into a batch.

    Each sample holds ``input_ids`` and optionally ``labels`` (missing: a copy of ``input_ids``, extend mode); other
    keys (``length``) are ignored. Returns int64 tensors of shape ``(B, N)``, ``N`` the longest sample:

    - ``input_ids`` padded with ``pad_id``; ``labels`` padded with -100 (the loss ignores them);
    - ``attention_mask`` 1 on real tokens, 0 on padding;
    - ``position_ids`` ``0..N-1`` in every row (``0..len-1`` on the real tokens; with right padding the padding
      positions are never attended to), which S2-Attn reads to find sample boundaries.

    A sample longer than ``max_length`` raises ValueError: the loaders drop those, so one here is a bug, and
    truncating it could cut the answer.
    """

    pad_id: int
    max_length: int | None = None

    def __call__(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("empty batch")
        lengths = [len(s["input_ids"]) for s in samples]
        width = max(lengths)
        if self.max_length is not None and width > self.max_length:
            raise ValueError(f"a sample of {width} tokens exceeds max_length {self.max_length}")
        input_ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, (sample, n) in enumerate(zip(samples, lengths)):
            ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            sample_labels = sample.get("labels")
            if sample_labels is not None and len(sample_labels) != n:
                raise ValueError(f"labels ({len(sample_labels)}) and input_ids ({n}) differ in length")
            input_ids[row, :n] = ids
            labels[row, :n] = ids if sample_labels is None else torch.as_tensor(sample_labels, dtype=torch.long)
            attention_mask[row, :n] = 1
        position_ids = torch.arange(width, dtype=torch.long).expand(len(samples), width).clone()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                "position_ids": position_ids}


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has none (padding is masked out either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token to pad with")
    return pad
