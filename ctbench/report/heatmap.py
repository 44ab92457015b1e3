"""The *gap closed* heatmap, per property: methods x (task, property) at one shot count (the
closest each task has). A secondary view: the headline is the relative RMSEP. Gap closed is
unstable where no_transfer and full_recalibration are close, so it is never averaged over
properties."""

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
    columns: list[tuple[str, str]]
    """(task, property) per column."""
    shots: dict[str, int]
    """task -> N used for its columns."""
    values: np.ndarray
    """(methods, columns); NaN where a method has no record or the task lacks its anchors."""

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for t, _ in self.columns))


def closest_shots(available: list[int], wanted: int) -> int:
    """The available N closest to ``wanted`` (the smaller one on a tie)."""
    return min(available, key=lambda n: (abs(n - wanted), n))


def gap_matrix(rows: list[dict[str, Any]], tasks: list[str], wanted: int, method_order: list[str]) -> GapMatrix | None:
    """From per-property leaderboard rows: gap closed per method and (task, property) at ~N."""
    rows = [r for r in rows if r.get("property", "mean") != "mean"]
    shots: dict[str, int] = {}
    for t in tasks:
        ns = sorted({r["n_shots"] for r in rows if r["task"] == t and r["reps"] > 0})
        if ns:
            shots[t] = closest_shots(ns, wanted)
    cols: list[tuple[str, str]] = []
    for t in tasks:
        if t in shots:
            for r in rows:
                if r["task"] == t and (t, r["property"]) not in cols:
                    cols.append((t, r["property"]))
    if not cols:
        return None
    cell = {(r["method"], r["task"], r["property"]): r["gap_closed"] for r in rows
            if r["task"] in shots and r["n_shots"] == shots[r["task"]] and r["reps"] > 0}
    methods = [m for m in method_order if m not in ANCHORS and any((m,) + c in cell for c in cols)]
    if not methods:
        return None
    values = np.array([[cell.get((m,) + c, np.nan) for c in cols] for m in methods], dtype=float)
    return GapMatrix(methods=methods, columns=cols, shots=shots, values=values)


def heatmap_figure(gm: GapMatrix, out_dir: Path, wanted: int) -> SavedFigure:
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import FuncFormatter

    k, t = gm.values.shape
    fig = new_figure(max(4.8, 0.8 * t + 3.2), max(2.4, 0.45 * k + 2.4))
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
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=9 if t <= 12 else 7,
                    color="white" if dark else "black")
    ax.set_xticks(range(t))
    ax.set_xticklabels([f"{task} · {prop} (N={gm.shots[task]})" for task, prop in gm.columns], fontsize=8,
                       rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k))
    ax.set_yticklabels(gm.methods, fontsize=9)
    ax.tick_params(length=0)
    below = finite.size and finite.min() < -1.0
    cb = fig.colorbar(im, ax=ax, shrink=0.9, extend="min" if below else "neither")
    cb.set_ticks([-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0] + ([vmax] if vmax > 1.0 else []))
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}".rstrip("0").rstrip(".")))
    cb.set_label("gap closed")
    ax.set_title(f"Gap closed per property at N = {wanted} (or the closest N a task has); secondary view",
                 fontsize=11)
    caption = (f"Per property, a secondary view (the headline is the relative RMSEP): gap closed = "
               f"(RMSEP_no_transfer − RMSEP) / (RMSEP_no_transfer − RMSEP_full_recalibration) on the same outer "
               f"split, mean over repetitions, per method (rows) and task · property (columns) at N = {wanted} or "
               f"the closest N the task has (shown in each label). It is unstable where no_transfer and "
               f"full_recalibration are close, so it is not averaged over properties. 0 = no better than no "
               f"transfer, 1 = as good as full recalibration; colours saturate below −1, the numbers are exact. "
               f"Grey: no record, or no no_transfer / full_recalibration record on the same outer split.")
    return save_figure(fig, out_dir, f"gap_closed_per_property_heatmap_N{wanted}", caption)
