"""PNG plots of a run's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTS = {
    "accuracy.png": ("accuracy", ("accuracy", "fed_accuracy")),
    "loss.png": ("loss", ("loss", "train_loss", "fed_loss")),
}


def plot_metrics(rows: Sequence[Mapping[str, Any]], folder: Path, title: str) -> list[Path]:
    """One PNG per entry of ``PLOTS`` with every series present in ``rows``."""
    written = []
    for filename, (ylabel, keys) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=key)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=100)
        plt.close(fig)
        written.append(folder / filename)
    return written
