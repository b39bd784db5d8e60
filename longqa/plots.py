"""The token-length histogram per split (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_lengths(lengths: dict[str, np.ndarray], max_length: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    bins = np.linspace(0, max_length, 41)
    for split, values in lengths.items():
        if len(values):
            ax.hist(values, bins=bins, alpha=0.6, label=f"{split} ({len(values)})")
    ax.axvline(max_length, color="black", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens per sample")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
