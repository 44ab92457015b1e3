"""The *gap closed* heatmap: methods x tasks at one shot count (the closest each task has)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.report.collect import ANCHORS
from ctbench.report.figures import SavedFigure, new_figure, save_figure


@dataclass
class GapMatrix:
    methods: list[str]
    tasks: list[str]
    shots: dict[str, int]
    """task -> N used for its column."""
    values: np.ndarray
    """(methods, tasks); NaN where a method has no record or the task lacks its anchors."""


def closest_shots(available: list[int], wanted: int) -> int:
    """The available N closest to ``wanted`` (the smaller one on a tie)."""
    return min(available, key=lambda n: (abs(n - wanted), n))


def gap_matrix(rows: list[dict[str, Any]], tasks: list[str], wanted: int, method_order: list[str]) -> GapMatrix | None:
    """From leaderboard rows (mean over properties): gap closed per method and task at ~N."""
    shots: dict[str, int] = {}
    for t in tasks:
        ns = sorted({r["n_shots"] for r in rows if r["task"] == t and r["reps"] > 0})
        if ns:
            shots[t] = closest_shots(ns, wanted)
    cols = [t for t in tasks if t in shots]
    if not cols:
        return None
    cell = {(r["method"], r["task"]): r["gap_closed"] for r in rows
            if r["task"] in shots and r["n_shots"] == shots[r["task"]] and r["reps"] > 0}
    methods = [m for m in method_order if m not in ANCHORS and any((m, t) in cell for t in cols)]
    if not methods:
        return None
    values = np.array([[cell.get((m, t), np.nan) for t in cols] for m in methods], dtype=float)
    return GapMatrix(methods=methods, tasks=cols, shots=shots, values=values)


def heatmap_figure(gm: GapMatrix, out_dir: Path, wanted: int) -> SavedFigure:
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import FuncFormatter

    k, t = gm.values.shape
    fig = new_figure(max(4.8, 1.7 * t + 3.2), max(2.4, 0.45 * k + 1.6))
    ax = fig.subplots()
    finite = gm.values[np.isfinite(gm.values)]
    # the colour scale spans -1 (as far below no transfer as full recalibration is above) .. 1;
    # values beyond saturate (the numbers in the cells stay exact)
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    norm = TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=vmax)
    masked = np.ma.masked_invalid(gm.values)
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    for i in range(k):
        for j in range(t):
            v = gm.values[i, j]
            dark = np.isfinite(v) and (v < -0.6 or v > 0.85 * vmax)
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(t))
    ax.set_xticklabels([f"{task}\n(N={gm.shots[task]})" for task in gm.tasks], fontsize=9)
    ax.set_yticks(range(k))
    ax.set_yticklabels(gm.methods, fontsize=9)
    ax.tick_params(length=0)
    below = finite.size and finite.min() < -1.0
    cb = fig.colorbar(im, ax=ax, shrink=0.9, extend="min" if below else "neither")
    cb.set_ticks([-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0] + ([vmax] if vmax > 1.0 else []))
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}".rstrip("0").rstrip(".")))
    cb.set_label("gap closed")
    ax.set_title(f"Gap closed at N = {wanted} (or the closest N a task has)", fontsize=11)
    caption = (f"Gap closed = (RMSEP_no_transfer − RMSEP) / (RMSEP_no_transfer − RMSEP_full_recalibration), "
               f"mean over properties and repetitions, per method (rows) and task (columns) at N = {wanted} or the "
               f"closest N the task has (shown under each task). 0 = no better than no transfer, 1 = as good as full "
               f"recalibration; colours saturate below −1, the numbers are exact. Grey: no record, or the task lacks its no_transfer / full_recalibration records.")
    return save_figure(fig, out_dir, f"gap_closed_heatmap_N{wanted}", caption)
