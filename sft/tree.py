"""Prefix-tree rows (``packing: tree``, issue 22): every question of a document for the cost of one document.

The samples of one ``doc_id`` (the questions of a document) share a long token prefix: the chat header and the
document. A **tree** holds that prefix once and each sample's remaining tokens (its question, the assistant header,
its answer) as a **branch**::

    row:        [ prefix ........ | branch 1 ][ branch 2 ][ branch 3 ] [ other tree or ordinary sample ] ...
    positions:    0 ......... p-1   p .. L1-1   p .. L2-1   p .. L3-1    0 ...

A branch attends to the prefix and to itself, never to another branch, and its position ids are the ones the sample
has alone, so every sample gets exactly the loss and gradients it has alone (``tests/sft/test_tree.py``, float64).
The layout is told to the attention functions by the positions alone: a span that starts at a position ``p > 0``
right after a tree's root (``sft.s2attn.tree_spans``) is a branch whose keys are the root's first ``p`` tokens and
itself (one SDPA call a tree, batched over its branches, with an explicit boolean mask: causal, and for S2-Attn
inside the segments the sample has alone).

**The prefix** of a document's samples is their longest common token prefix, shortened so that no token of it is a
target: ``p = min(common prefix, first supervised position - 1)`` over the samples (the label at position ``p``, the
branch's first token, is never a target in a packed row: it would be predicted from the previous branch). When ``p``
is shorter than ``min_prefix`` the samples stay separate (ordinary packing).

**Limits**: at most ``max_branches`` branches a tree and ``prefix + branches <= max_length`` tokens; a document with
more questions becomes several trees, each holding the prefix again (``prefix_repeats``). Trees and the ordinary
samples are then placed into rows by first-fit-decreasing (``sft.packing``), rows in a seeded shuffled order.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from schemas.errors import DataError
from schemas.labels import IGNORE_INDEX
from sft.packing import LayoutStats, first_fit_decreasing, pack_samples, padding_fraction, sorted_batch_order


@dataclass(frozen=True)
class Tree:
    """One unit of a row: ``samples`` (indices; the first is the root, held whole) sharing their first ``prefix``
    tokens; an ordinary sample is a tree of one sample with ``prefix`` 0. ``length``: the tokens it takes in a row."""

    samples: tuple[int, ...]
    prefix: int
    length: int


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``sequences``."""
    n = min(len(s) for s in sequences)
    first = np.asarray(sequences[0][:n])
    for other in sequences[1:]:
        differs = np.flatnonzero(np.asarray(other[:n]) != first[:n])
        n = int(differs[0]) if differs.size else n
    return n


def first_target(labels: Sequence[int]) -> int:
    """The first position ``t >= 1`` whose label is a target (not -100); ``len(labels)`` if none."""
    targets = np.flatnonzero(np.asarray(labels[1:]) != IGNORE_INDEX)
    return int(targets[0]) + 1 if targets.size else len(labels)


def tree_prefix(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> int:
    """The prefix ``p`` the samples can share: every token before ``p`` common, no label at positions ``<= p`` a
    target, and every branch at least one token."""
    return max(0, min(common_prefix(input_ids), min(first_target(x) for x in labels) - 1,
                      min(len(x) for x in input_ids) - 1))


def plan_trees(doc_ids: Sequence[str], lengths: Sequence[int], prefix_of: Callable[[list[int]], int], *,
               max_length: int, max_branches: int, min_prefix: int, seed: int) -> list[Tree]:
    """The units (trees and ordinary samples) of a training set, every sample in exactly one.

    ``prefix_of(indices)``: the prefix the samples ``indices`` (of one document) can share (:func:`tree_prefix`).
    Documents in order of first appearance; a document's samples in an order drawn from ``seed``, filled greedily
    into trees of at most ``max_branches`` branches and ``max_length`` tokens (the next tree holds the prefix again).
    """
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(doc_ids):
        groups.setdefault(doc, []).append(i)
    gen = random.Random(seed)
    units: list[Tree] = []
    for members in groups.values():
        prefix = prefix_of(members) if len(members) > 1 else 0
        if len(members) == 1 or prefix < min_prefix:
            units.extend(Tree((i,), 0, lengths[i]) for i in members)
            continue
        members = list(members)
        gen.shuffle(members)
        current, length = [members[0]], lengths[members[0]]
        for i in members[1:]:
            branch = lengths[i] - prefix
            if len(current) < max_branches and length + branch <= max_length:
                current.append(i)
                length += branch
                continue
            units.append(Tree(tuple(current), prefix if len(current) > 1 else 0, length))
            current, length = [i], lengths[i]
        units.append(Tree(tuple(current), prefix if len(current) > 1 else 0, length))
    return units


def tree_samples(samples: Sequence[dict], prefix: int) -> list[dict]:
    """The pieces of one tree as ``sft.packing.pack_samples`` takes them: the root whole, then every other sample
    from ``prefix`` on, its positions counted from ``prefix`` (``position_offset``)."""
    root, *rest = samples
    pieces = [{"input_ids": root["input_ids"], "labels": root["labels"]}]
    for sample in rest:
        pieces.append({"input_ids": list(sample["input_ids"])[prefix:], "labels": list(sample["labels"])[prefix:],
                       "position_offset": prefix})
    return pieces


def tree_row(samples: Sequence[dict], units: Sequence[tuple[int, int]]) -> dict:
    """One row from ``samples`` laid out as ``units``: ``(number of samples, prefix)`` per unit, in order."""
    pieces, at = [], 0
    for count, prefix in units:
        pieces += tree_samples(samples[at:at + count], prefix)
        at += count
    row = pack_samples(pieces)
    row["samples"] = len(samples)
    return row


class TreeRows(torch.utils.data.Dataset):
    """Rows of trees and ordinary samples over a dataset of samples (``input_ids``, ``labels``); built on access, in
    the batch contract of ``sft.packing`` (positions of a branch continue its prefix's)."""

    def __init__(self, samples, rows: list[list[Tree]]):
        self.samples, self.rows = samples, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        units = self.rows[index]
        picked = self.samples[[i for unit in units for i in unit.samples]]
        if isinstance(picked, dict):
            picked = [dict(zip(picked, values)) for values in zip(*picked.values())]
        return tree_row(picked, [(len(unit.samples), unit.prefix) for unit in units])


@dataclass
class TreeStats(LayoutStats):
    """:class:`sft.packing.LayoutStats` of tree rows, and what the trees save (``data_stats.json``, ``layout``).

    ``tokens`` are the tokens computed; ``tokens_alone`` those the same samples hold alone; ``saving`` their ratio.
    ``prefix_repeats``: trees beyond a document's first (its prefix computed again because of the limits)."""

    trees: int = 0
    samples_in_trees: int = 0
    branches_per_tree_mean: float = 0.0
    branches_per_tree_max: int = 0
    prefix_repeats: int = 0
    tokens_alone: int = 0
    saving: float = 1.0
    supervised_tokens: int = 0
    supervised_per_computed_token: float = 0.0

    def summary(self) -> str:
        return (f"tree rows: {self.samples} samples as {self.trees} trees ({self.samples_in_trees} samples, "
                f"{self.branches_per_tree_mean:.1f} branches a tree, at most {self.branches_per_tree_max}; "
                f"{self.prefix_repeats} prefix repeats) and {self.samples - self.samples_in_trees} ordinary samples "
                f"in {self.rows} rows of <= {self.max_length} tokens; {self.tokens:,} tokens computed for "
                f"{self.tokens_alone:,} held alone ({self.saving:.2f}x fewer); "
                f"{self.supervised_per_computed_token:.4f} supervised tokens per computed token; padding "
                f"{100 * (self.padding_fraction or 0):.2f}% at batch size {self.batch_size}")


def tree_layout(dataset, lengths: Sequence[int], *, max_length: int, batch_size: int, seed: int, max_branches: int,
                min_prefix: int) -> tuple[TreeRows, TreeStats]:
    """``dataset`` (columns ``input_ids``, ``labels``, ``doc_id``) as tree rows in a seeded shuffled order.

    Raises DataError for an empty dataset or one without ``doc_id``."""
    if not len(lengths):
        raise DataError("packing: the training split holds no samples (nothing to pack)")
    columns = getattr(dataset, "column_names", None) or list(dataset[0])
    if "doc_id" not in columns or "labels" not in columns:
        raise DataError("packing: tree groups the samples by doc_id: the tokenized dataset has no doc_id (or labels) "
                        "column; rebuild it with python -m longqa.build or use packing: true")
    doc_ids = list(dataset["doc_id"])
    supervised = [0] * len(lengths)

    def prefix_of(members: list[int]) -> int:  # one document's samples at a time: never the whole set in memory
        picked = dataset[members]
        for i, labels in zip(members, picked["labels"]):
            supervised[i] = int((np.asarray(labels[1:]) != IGNORE_INDEX).sum())
        return tree_prefix(picked["input_ids"], picked["labels"])

    units = plan_trees(doc_ids, lengths, prefix_of, max_length=max_length, max_branches=max_branches,
                       min_prefix=min_prefix, seed=seed)
    for unit in units:  # samples alone (documents of one sample, or too short a prefix): count their targets too
        if len(unit.samples) == 1 and not supervised[unit.samples[0]]:
            labels = dataset[unit.samples[0]]["labels"]
            supervised[unit.samples[0]] = int((np.asarray(labels[1:]) != IGNORE_INDEX).sum())
    placed = first_fit_decreasing([u.length for u in units], max_length, seed)
    order = sorted_batch_order([sum(units[u].length for u in row) for row in placed], batch_size, seed)
    rows = [[units[u] for u in placed[r]] for r in order]
    return TreeRows(dataset, rows), tree_stats(rows, units, lengths, supervised, doc_ids, max_length, batch_size)


def tree_stats(rows: list[list[Tree]], units: list[Tree], lengths: Sequence[int], supervised: Sequence[int],
               doc_ids: Sequence[str], max_length: int, batch_size: int) -> TreeStats:
    """:class:`TreeStats` of ``rows`` (in training order); ``supervised``: each sample's target tokens."""
    trees = [u for u in units if len(u.samples) > 1]
    row_lengths = [sum(u.length for u in row) for row in rows]
    per_row = [sum(len(u.samples) for u in row) for row in rows]
    tokens, samples = sum(row_lengths), sum(per_row)
    supervised = sum(supervised)
    repeats = len(trees) - len({doc_ids[u.samples[0]] for u in trees})
    return TreeStats(
        layout="tree", rows=len(rows), samples=samples, tokens=tokens, max_length=max_length, batch_size=batch_size,
        samples_per_row_mean=round(samples / max(len(rows), 1), 4), samples_per_row_max=max(per_row, default=0),
        fill=round(tokens / max(len(rows) * max_length, 1), 6),
        padding_fraction=round(padding_fraction(row_lengths, batch_size), 6),
        trees=len(trees), samples_in_trees=sum(len(u.samples) for u in trees),
        branches_per_tree_mean=round(sum(len(u.samples) for u in trees) / max(len(trees), 1), 4),
        branches_per_tree_max=max((len(u.samples) for u in trees), default=0), prefix_repeats=repeats,
        tokens_alone=sum(lengths), saving=round(sum(lengths) / max(tokens, 1), 4), supervised_tokens=supervised,
        supervised_per_computed_token=round(supervised / max(tokens, 1), 6))
