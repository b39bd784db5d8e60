"""Packing and sorted batching: how training samples become rows and batches (issue 13; LongAlign, Bai et al. 2024).

Real long-context data is uneven (the default build: 3k-8k tokens). Trained one sample a row, short rows leave the
device idle; in padded batches it computes padding. Two answers, chosen in :class:`schemas.train.TrainConfig`:

- **packing** (``packing: true``): samples are placed into rows of at most ``max_length`` tokens by
  first-fit-decreasing (:func:`first_fit_decreasing`), the rows in a seeded shuffled order (batches of several rows
  take rows of similar length, as sorted batching does). In a row
  (:class:`PackedRows`), ``position_ids`` restart at 0 at every sample and the first token of every sample has label
  -100, so no sample's first token is a target predicted from the previous sample. Attention never crosses a sample:
  ``sft.s2attn`` finds the samples from ``position_ids`` (O(N); S2 segments restart at every sample, and the
  ``packed_causal`` function does full attention inside each sample), never from a tokens x tokens mask.
- **sorted batching** (``batching: sorted``): samples sorted by length, cut into batches of similar length, the
  batch order shuffled (:func:`sorted_batch_order`) — LongAlign's alternative when samples are near ``max_length``.

Both lay out the training set in the order the Trainer reads it (its ``sequential`` sampler), so the padding the
batches compute is known here and reported (:class:`LayoutStats`, in ``data_stats.json`` and the start-up line).

Batch contract (what the trainer, the loss and the attention functions read): ``input_ids``, ``labels`` (unshifted,
-100 ignored), ``position_ids`` (restart at 0 at each packed sample); ``attention_mask`` only for padded, unpacked
rows. Packed rows of one batch are right-padded with one
padding *sample* (pad ids, labels -100, positions ``0..p-1``): it is a sample of its own, so no real token sees it and
S2 segments of the real samples do not change.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from schemas.errors import DataError
from schemas.labels import IGNORE_INDEX



# ----------------------------------------------------------------------------------------------------------------------
# First-fit-decreasing
# ----------------------------------------------------------------------------------------------------------------------


def first_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length ``<= capacity``, by first-fit-decreasing.

    Samples are taken longest first (equal lengths in an order drawn from ``seed``) and each goes into the first
    (oldest) row with room for it, else a new row. Rows keep their samples in placement order. Deterministic for a
    given ``seed``; O(n log n) with a max-segment tree over the rows' free space.

    Raises DataError if a sample is longer than ``capacity`` (the loaders drop those first: never cut a sample).
    """
    n = len(lengths)
    too_long = [i for i, length in enumerate(lengths) if length > capacity]
    if too_long:
        raise DataError(f"packing: {len(too_long)} sample(s) longer than max_length {capacity} (e.g. sample "
                        f"{too_long[0]}: {lengths[too_long[0]]} tokens); they must be dropped before packing")
    tie = list(range(n))
    random.Random(seed).shuffle(tie)
    order = sorted(range(n), key=lambda i: (-lengths[i], tie[i]))
    size = 1
    while size < max(n, 1):
        size *= 2
    free = [0] * size + [capacity] * n + [0] * (size - n)  # leaves at size..2*size-1, row r at size + r
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    rows: list[list[int]] = []
    for i in order:
        node = 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
        free[node] -= lengths[i]
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return rows


def shuffled(rows: list, seed: int) -> list:
    """``rows`` in an order drawn from ``seed`` (a copy)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def sorted_batch_order(lengths: Sequence[int], batch_size: int, seed: int = 0) -> list[int]:
    """LongAlign's sorted batching: sample indices sorted by length, cut into batches of ``batch_size``, the batches
    in an order drawn from ``seed``, flattened (the Trainer's sequential sampler reads them batch by batch). A last,
    smaller batch stays last, so that every batch is read as it was cut."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    full = len(order) - len(order) % batch_size
    batches = [order[i:i + batch_size] for i in range(0, full, batch_size)]
    return [i for batch in shuffled(batches, seed) for i in batch] + order[full:]


# ----------------------------------------------------------------------------------------------------------------------
# The packed rows
# ----------------------------------------------------------------------------------------------------------------------


class PackedRows(torch.utils.data.Dataset):
    """Packed training rows over a dataset of samples (``input_ids``, optional ``labels``); built on access.

    Row ``r`` concatenates the samples ``rows[r]``: ``input_ids``; ``labels`` (the samples' own, or their
    ``input_ids`` when they have none, extend mode) with -100 at the first token of every sample; ``position_ids``
    ``0..len-1`` per sample; ``length``.
    """

    def __init__(self, samples, rows: list[list[int]]):
        self.samples, self.rows = samples, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        picked = self.samples[self.rows[index]]  # a column dict of lists (datasets.Dataset) or a list of dicts
        if isinstance(picked, dict):
            picked = [dict(zip(picked, values)) for values in zip(*picked.values())]
        return pack_samples(picked)


def pack_samples(samples: Sequence[dict]) -> dict:
    """One packed row from ``samples`` (see :class:`PackedRows`). A sample with ``position_offset`` p (a branch of a
    prefix tree, ``sft.tree``) counts its positions from p instead of 0."""
    input_ids, labels, position_ids = [], [], []
    for sample in samples:
        ids = list(sample["input_ids"])
        own = sample.get("labels")
        input_ids.extend(ids)
        labels.append(IGNORE_INDEX)  # never predicted from the previous sample (the batch contract above)
        labels.extend((ids if own is None else own)[1:])
        offset = sample.get("position_offset", 0)
        position_ids.extend(range(offset, offset + len(ids)))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "length": len(input_ids),
            "samples": len(samples)}


#: the key of a packed batch's count of real (non-padding) tokens: counted by the trainer, never given to the model
REAL_TOKENS = "real_tokens"


@dataclass
class PackedCollator:
    """Collate packed rows (items with ``position_ids``) into ``input_ids``, ``labels``, ``position_ids`` (no
    ``attention_mask``); shorter rows of a batch are right-padded by a padding sample (pad ids, labels -100, positions
    ``0..p-1``). ``real_tokens`` (the tokens of the rows, padding excluded) is for the trainer's throughput and padding
    counts, which remove it before the model sees the batch. Items without ``position_ids`` (the held-out set) go to
    :class:`sft.data.PadCollator`."""

    pad_id: int
    max_length: int | None = None

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not items or "position_ids" not in items[0]:
            from sft.data import PadCollator

            return PadCollator(self.pad_id, self.max_length)(items)
        width = max(len(item["input_ids"]) for item in items)
        if self.max_length is not None and width > self.max_length:
            raise ValueError(f"a packed row of {width} tokens exceeds max_length {self.max_length}")
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.arange(width, dtype=torch.long).repeat(len(items), 1)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.as_tensor(item["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(item["labels"], dtype=torch.long)
            position_ids[row, :n] = torch.as_tensor(item["position_ids"], dtype=torch.long)
            position_ids[row, n:] -= n  # the padding sample counts from 0
        real = torch.tensor(sum(len(item["input_ids"]) for item in items))
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, REAL_TOKENS: real}


# ----------------------------------------------------------------------------------------------------------------------
# Layout: packing / sorted batching of a training set, with its statistics
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LayoutStats:
    """How the training set is laid out in rows and batches (``data_stats.json``, key ``layout``).

    ``padding_fraction``: padding tokens / tokens computed when the rows are read ``batch_size`` at a time in the
    training order (each batch padded to its longest row); ``None`` when the order is drawn by the Trainer (random,
    length-grouped) and batches hold more than one row. ``fill``: tokens / (rows x max_length), how full the rows are.
    """

    layout: str
    rows: int
    samples: int
    tokens: int
    max_length: int
    batch_size: int
    samples_per_row_mean: float
    samples_per_row_max: int
    fill: float
    padding_fraction: float | None

    def summary(self) -> str:
        padding = "unknown" if self.padding_fraction is None else f"{100 * self.padding_fraction:.2f}%"
        if self.layout == "packed":
            return (f"packed {self.samples} samples into {self.rows} rows of <= {self.max_length} tokens "
                    f"({self.samples_per_row_mean:.2f} samples a row, at most {self.samples_per_row_max}; rows "
                    f"{100 * self.fill:.1f}% full); padding {padding} of computed tokens at batch size "
                    f"{self.batch_size}")
        return f"{self.layout} batches of {self.batch_size}: padding {padding} of computed tokens"


def padding_fraction(row_lengths: Sequence[int], batch_size: int) -> float:
    """Padding / computed tokens when ``row_lengths`` are batched in order, each batch padded to its longest row."""
    computed = sum(max(row_lengths[i:i + batch_size]) * len(row_lengths[i:i + batch_size])
                   for i in range(0, len(row_lengths), batch_size))
    return 1.0 - sum(row_lengths) / computed if computed else 0.0


def layout_stats(layout: str, rows: list[list[int]], lengths: Sequence[int], max_length: int, batch_size: int,
                 ordered: bool) -> LayoutStats:
    """:class:`LayoutStats` of ``rows`` (lists of sample indices, in training order when ``ordered``)."""
    row_lengths = [sum(lengths[i] for i in row) for row in rows]
    known = ordered or batch_size == 1
    tokens = sum(row_lengths)
    return LayoutStats(
        layout=layout, rows=len(rows), samples=sum(map(len, rows)), tokens=tokens, max_length=max_length,
        batch_size=batch_size, samples_per_row_mean=round(sum(map(len, rows)) / max(len(rows), 1), 4),
        samples_per_row_max=max(map(len, rows), default=0), fill=round(tokens / max(len(rows) * max_length, 1), 6),
        padding_fraction=round(padding_fraction(row_lengths, batch_size), 6) if known else None)


def pack_dataset(dataset, lengths: Sequence[int], max_length: int, batch_size: int, seed: int
                 ) -> tuple[PackedRows, LayoutStats]:
    """``dataset``'s samples packed into rows of ``<= max_length`` tokens, rows in a seeded shuffled order.

    Raises DataError for an empty dataset (nothing to pack) or a sample longer than ``max_length``.
    """
    if not len(lengths):
        raise DataError("packing: the training split holds no samples (nothing to pack)")
    rows = first_fit_decreasing(lengths, max_length, seed)
    # batches of rows of similar length (the last, emptier rows together), in shuffled order: with one row a batch
    # simply the rows shuffled
    order = sorted_batch_order([sum(lengths[i] for i in row) for row in rows], batch_size, seed)
    rows = [rows[r] for r in order]
    return PackedRows(dataset, rows), layout_stats("packed", rows, lengths, max_length, batch_size, ordered=True)


def arrange(dataset, lengths: Sequence[int], *, packing: bool | str, batching: str, max_length: int, batch_size: int,
            seed: int, tree_max_branches: int = 64, tree_min_prefix: int = 256):
    """The training set in the layout ``packing``/``batching`` ask for, and its :class:`LayoutStats`.

    - ``packing="tree"``: prefix-tree rows (``sft.tree.tree_layout``; read in order);
    - packing: :func:`pack_dataset` (the Trainer reads the rows in order);
    - ``batching="sorted"``: the samples reordered by :func:`sorted_batch_order` (read in order);
    - otherwise ``dataset`` unchanged (the Trainer draws the order: ``random`` or ``grouped`` by length).
    """
    if packing == "tree":
        from sft.tree import tree_layout

        return tree_layout(dataset, lengths, max_length=max_length, batch_size=batch_size, seed=seed,
                           max_branches=tree_max_branches, min_prefix=tree_min_prefix)
    if packing:
        return pack_dataset(dataset, lengths, max_length, batch_size, seed)
    if not len(lengths):
        raise DataError("the training split holds no samples")
    if batching == "sorted":
        order = sorted_batch_order(lengths, batch_size, seed)
        rows = [[i] for i in order]
        return dataset.select(order), layout_stats("sorted", rows, lengths, max_length, batch_size, ordered=True)
    return dataset, layout_stats(batching, [[i] for i in range(len(lengths))], lengths, max_length, batch_size,
                                 ordered=False)
