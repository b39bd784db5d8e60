"""The token-length histogram per split (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_lengths(lengths: dict[str, np.ndarray], max_length: int, path: Path, title: str) -> None:
    """One filled step histogram per split (40 bins up to `max_length`), drawn on a figure of its own (matplotlib's
    object API with the Agg canvas: no pyplot state, so builds in threads do not share a figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=110, layout="tight")
    ax = fig.add_subplot()
    bins = np.linspace(0, max_length, 41)
    for split, values in lengths.items():
        if len(values):
            counts, _ = np.histogram(values, bins=bins)
            ax.stairs(counts, bins, fill=True, alpha=0.6, label=f"{split} ({len(values)})")
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path)
