"""Figures of a pretraining run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .objectives import LOSS_NAMES


def plot_losses(history: list[dict[str, Any]], path: str | Path, title: str = "Spektron pretraining") -> Path:
    """Total loss and each objective against the step (log scale), plus throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [h["step"] for h in history]
    names = [k for k in LOSS_NAMES if any(k in h for h in history)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    axes[0].plot(steps, [h.get("total", float("nan")) for h in history], color="k")
    axes[0].set_title("total (weighted)")
    for name in names:
        vals = [abs(h.get(name, float("nan"))) + 1e-12 for h in history]
        axes[1].plot(steps, vals, label=name)
    axes[1].set_yscale("log")
    axes[1].set_title("objectives (unweighted, |value|)")
    axes[1].legend(fontsize=7, ncol=2)
    axes[2].plot(steps, [h.get("spectra_per_s", float("nan")) for h in history], color="tab:green")
    axes[2].set_title("throughput (spectra / s)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
