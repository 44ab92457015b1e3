"""Significance across tasks: Friedman test over (task, N) blocks, Nemenyi post-hoc, CD diagram.

Methods are ranked within each block (rank 1 = best, ties share the average rank) on the
block's mean metric; only methods with a value in every block take part (Demšar 2006).
The Nemenyi critical difference is CD = q_alpha * sqrt(k (k + 1) / (6 B)) with
q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.metrics import LOWER_IS_BETTER
from ctbench.report.figures import SavedFigure, new_figure, save_figure

MIN_METHODS = 3
MIN_BLOCKS = 2


@dataclass
class FriedmanResult:
    metric: str
    alpha: float
    blocks: list[tuple[str, int]]
    methods: list[str]
    excluded: list[str]
    """Methods left out because they lack a value in some block."""
    ranks: np.ndarray | None = None
    """(blocks, methods) ranks, 1 = best."""
    avg_ranks: dict[str, float] = field(default_factory=dict)
    statistic: float = float("nan")
    p_value: float = float("nan")
    q_alpha: float = float("nan")
    cd: float = float("nan")
    reason: str | None = None
    """Why the test was not run (too few blocks or methods), else None."""

    @property
    def ran(self) -> bool:
        return self.reason is None

    @property
    def significant(self) -> bool:
        return self.ran and np.isfinite(self.p_value) and self.p_value < self.alpha

    def cliques(self) -> list[list[str]]:
        """Maximal groups of methods whose average ranks differ by less than CD."""
        return cd_cliques(self.avg_ranks, self.cd)


def block_table(rows: list[dict[str, Any]]) -> tuple[list[tuple[str, int]], dict[tuple[str, int], dict[str, float]]]:
    """Leaderboard rows (mean over properties) -> blocks and block -> method -> value."""
    table: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["property"] != "mean" or not np.isfinite(r["mean"]):
            continue
        table.setdefault((r["task"], int(r["n_shots"])), {})[r["method"]] = float(r["mean"])
    return sorted(table), table


def friedman_nemenyi(rows: list[dict[str, Any]], metric: str, alpha: float = 0.05) -> FriedmanResult:
    """Friedman's test and Nemenyi's critical difference over the (task, N) blocks of the rows."""
    from scipy import stats

    blocks, table = block_table(rows)
    everywhere = set.intersection(*(set(table[b]) for b in blocks)) if blocks else set()
    anywhere = sorted({m for b in blocks for m in table[b]})
    methods = [m for m in anywhere if m in everywhere]
    excluded = [m for m in anywhere if m not in everywhere]
    res = FriedmanResult(metric=metric, alpha=alpha, blocks=blocks, methods=methods, excluded=excluded)
    if len(blocks) < MIN_BLOCKS or len(methods) < MIN_METHODS:
        res.reason = (
            f"too few for the Friedman test: {len(blocks)} (task, N) block(s) and {len(methods)} method(s) present in "
            f"every block; it needs at least {MIN_BLOCKS} blocks and {MIN_METHODS} methods"
        )
        return res
    X = np.array([[table[b][m] for m in methods] for b in blocks])
    if metric == "bias":
        X = np.abs(X)
    score = X if LOWER_IS_BETTER.get(metric, True) else -X
    res.ranks = np.vstack([stats.rankdata(row) for row in score])
    avg = res.ranks.mean(axis=0)
    order = np.argsort(avg, kind="stable")
    res.methods = [methods[i] for i in order]
    res.ranks = res.ranks[:, order]
    res.avg_ranks = {methods[i]: float(avg[i]) for i in order}
    k, b = len(methods), len(blocks)
    if np.allclose(score, score[:, :1]):
        res.statistic, res.p_value = 0.0, 1.0
    else:
        stat = stats.friedmanchisquare(*[score[:, j] for j in range(k)])
        res.statistic, res.p_value = float(stat.statistic), float(stat.pvalue)
    res.q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))
    res.cd = float(res.q_alpha * np.sqrt(k * (k + 1) / (6.0 * b)))
    return res


def cd_cliques(avg_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs (in rank order) whose first and last average ranks differ by less than CD."""
    names = sorted(avg_ranks, key=avg_ranks.get)
    r = [avg_ranks[n] for n in names]
    out: list[tuple[int, int]] = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return [names[a : b + 1] for a, b in out]


def cd_figure(res: FriedmanResult, out_dir: Path) -> SavedFigure:
    """Critical-difference diagram: average ranks on an axis (1 = best, left), bars join methods
    whose ranks differ by less than CD (not significantly different)."""
    k = len(res.methods)
    names = res.methods
    ranks = [res.avg_ranks[n] for n in names]
    cliques = res.cliques()
    half = (k + 1) // 2
    n_side = max(half, k - half)
    # vertical layout in inches, from the top: CD bar, tick labels, axis, clique bars, labels
    top_pad, cd_h, tick_h = 0.15, 0.35, 0.3
    bar_step, label_step, bottom_pad = 0.16, 0.3, 0.2
    y_axis_from_top = top_pad + cd_h + tick_h
    bars_h = 0.15 + bar_step * len(cliques)
    height = y_axis_from_top + bars_h + 0.1 + label_step * (n_side - 1) + bottom_pad + 0.1
    width = 9.0
    fig = new_figure(width, height, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    lo, hi = 1, max(k, 2)
    x0, x1 = 2.6, width - 2.6  # the rank axis (labels sit outside it)

    def xpos(rank: float) -> float:
        return x0 + (rank - lo) / (hi - lo) * (x1 - x0)

    y_axis = height - y_axis_from_top
    ax.plot([x0, x1], [y_axis, y_axis], color="black", linewidth=1.2)
    for t in range(lo, hi + 1):
        ax.plot([xpos(t)] * 2, [y_axis, y_axis + 0.08], color="black", linewidth=1)
        ax.text(xpos(t), y_axis + 0.11, str(t), ha="center", va="bottom", fontsize=9)
    for t in np.arange(lo + 0.5, hi, 1.0):
        ax.plot([xpos(t)] * 2, [y_axis, y_axis + 0.04], color="black", linewidth=0.8)
    if np.isfinite(res.cd):
        x_end = xpos(lo + res.cd)
        yc = height - top_pad - 0.22
        ax.plot([x0, x_end], [yc, yc], color="black", linewidth=1.6)
        for xx in (x0, x_end):
            ax.plot([xx, xx], [yc - 0.05, yc + 0.05], color="black", linewidth=1.2)
        ax.text((x0 + x_end) / 2, yc + 0.06, f"CD = {res.cd:.2f}", ha="center", va="bottom", fontsize=9)
    y_bar = y_axis - 0.15
    for c in cliques:
        a, b = res.avg_ranks[c[0]], res.avg_ranks[c[-1]]
        ax.plot([xpos(a) - 0.05, xpos(b) + 0.05], [y_bar, y_bar], color="#444444", linewidth=3.0,
                solid_capstyle="round")
        y_bar -= bar_step
    y_first = y_axis - bars_h - 0.1
    for i, (name, r) in enumerate(zip(names, ranks)):
        if i < half:  # best half on the left, from the top down
            y = y_first - i * label_step
            xe, ha, text = x0 - 0.2, "right", f"{name} ({r:.2f})"
        else:  # the rest on the right, worst at the top
            y = y_first - (k - 1 - i) * label_step
            xe, ha, text = x1 + 0.2, "left", f"({r:.2f}) {name}"
        xr = xpos(r)
        ax.plot([xr, xr, xe], [y_axis, y, y], color="black", linewidth=0.9)
        ax.text(xe + (-0.05 if ha == "right" else 0.05), y, text, ha=ha, va="center", fontsize=9)
    caption = (f"Critical-difference diagram ({res.metric}, α = {res.alpha}): average rank of each method over "
               f"{len(res.blocks)} (task, N) blocks (1 = best, on the left). Methods joined by a thick bar are not "
               f"significantly different by the Nemenyi test (their average ranks differ by less than CD = "
               f"{res.cd:.2f}).")
    return save_figure(fig, out_dir, f"critical_difference_{res.metric}", caption)
