"""Sample-efficiency curves: the metric against the number of transfer standards N.

One figure per task, one panel per property, one line per method (mean over repetitions)
with a band (±1 sd or min-max over repetitions). no_transfer and full_recalibration do not
depend on N and are drawn as dashed horizontal lines at their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.leaderboard import method_label
from ctbench.report.collect import (
    base_name,
    is_anchor,
    label_order,
    record_value,
    task_properties,
)
from ctbench.report.figures import SavedFigure, method_colors, new_figure, save_figure

METRIC_NAMES = {"rmsep": "RMSEP", "r2": "R²", "rpd": "RPD", "bias": "bias", "sep": "SEP", "gap_closed": "gap closed"}


@dataclass
class Curve:
    label: str
    method: str
    anchor: bool
    values: dict[int, list[float]]
    """N -> values over repetitions (finite only)."""

    def ns(self) -> list[int]:
        return sorted(n for n, v in self.values.items() if v)

    def summary(self, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """N, mean, lower, upper of the band."""
        ns = self.ns()
        mean = np.array([np.mean(self.values[n]) for n in ns])
        if band == "minmax":
            lo = np.array([np.min(self.values[n]) for n in ns])
            hi = np.array([np.max(self.values[n]) for n in ns])
        else:
            sd = np.array([np.std(self.values[n], ddof=1) if len(self.values[n]) > 1 else 0.0 for n in ns])
            lo, hi = mean - sd, mean + sd
        return np.asarray(ns, dtype=float), mean, lo, hi

    def level(self) -> float:
        """Mean over every N and repetition (for N-independent anchors)."""
        allv = [v for vals in self.values.values() for v in vals]
        return float(np.mean(allv)) if allv else float("nan")


def task_curves(records: list[dict[str, Any]], metric: str, prop: str, refs: dict) -> list[Curve]:
    """Curves of one task and property from its ok records, in display order."""
    by_label: dict[str, Curve] = {}
    for r in records:
        label = method_label(r)
        c = by_label.setdefault(label, Curve(label, base_name(r), is_anchor(r), {}))
        v = record_value(r, metric, prop, refs)
        vals = c.values.setdefault(int(r["identity"]["n_shots"]), [])
        if np.isfinite(v):
            vals.append(v)
    order = label_order(records)
    return [by_label[lab] for lab in order if lab in by_label and by_label[lab].ns()]


def efficiency_figure(
    task: str,
    records: list[dict[str, Any]],
    metric: str,
    refs: dict,
    out_dir: Path,
    band: str = "sd",
    title: str | None = None,
) -> SavedFigure | None:
    """The task's sample-efficiency figure, or None when it has no usable record."""
    from matplotlib.ticker import FixedLocator, NullLocator

    props = task_properties(records)
    panels = [(p, task_curves(records, metric, p, refs)) for p in props]
    panels = [(p, cs) for p, cs in panels if cs]
    if not panels:
        return None
    all_ns = sorted({n for _, cs in panels for c in cs for n in c.ns()})
    labels = [c.label for _, cs in panels for c in cs]
    labels = list(dict.fromkeys(labels))
    styles = method_colors(labels, {c.label: c.method for _, cs in panels for c in cs})
    n = len(panels)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig = new_figure(4.6 * ncols + 0.4, 3.4 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    zero = 0 in all_ns
    name = METRIC_NAMES.get(metric, metric)
    handles: dict[str, Any] = {}
    for ax, (prop, curves) in zip(axes.flat, panels):
        lows, highs = [], []
        for c in curves:
            st = styles[c.label]
            if c.anchor:
                y = c.level()
                h = ax.axhline(y, color=st["color"], linestyle="--", linewidth=1.6, label=c.label)
                lows.append(y)
                highs.append(y)
            else:
                x, mean, lo, hi = c.summary(band)
                lw = 1.4 if st["linestyle"] == ":" else 2.0
                (h,) = ax.plot(x, mean, color=st["color"], linestyle=st["linestyle"], marker="o", markersize=4,
                               linewidth=lw, label=c.label)
                ax.fill_between(x, lo, hi, color=st["color"], alpha=0.15, linewidth=0)
                if x.size == 1:
                    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], color=st["color"], capsize=3)
                lows += list(lo)
                highs += list(hi)
            handles.setdefault(c.label, h)
        if zero:
            ax.set_xscale("symlog", linthresh=1.0)
        elif len(all_ns) > 1 and all_ns[-1] / max(all_ns[0], 1) >= 3:
            ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(all_ns))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(v) for v in all_ns])
        if len(all_ns) > 1:
            pad = 0.08
            if ax.get_xscale() == "linear":
                span = all_ns[-1] - all_ns[0]
                ax.set_xlim(all_ns[0] - pad * span, all_ns[-1] + pad * span)
            elif ax.get_xscale() == "log":
                ax.set_xlim(all_ns[0] / (1 + 2 * pad), all_ns[-1] * (1 + 2 * pad))
        _maybe_log_y(ax, metric, lows, highs)
        ax.set_xlabel("N (transfer standards)")
        ax.set_ylabel(name)
        ax.set_title(prop)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{task}: {name} vs N", fontsize=12)
    fig.legend([handles[lab] for lab in labels if lab in handles], [lab for lab in labels if lab in handles],
               loc="outside lower center", ncols=min(len(handles), 4), frameon=False, fontsize=9)
    band_text = "min-max" if band == "minmax" else "±1 sd"
    caption = (f"{task}: {name} on the test set against the number of transfer standards N, one panel per "
               f"property. Lines: mean over repetitions, band: {band_text} over repetitions. Dashed horizontal "
               f"lines: no_transfer (floor) and full_recalibration (ceiling), which do not depend on N.")
    return save_figure(fig, out_dir, f"efficiency_{task}_{metric}", caption)


def _maybe_log_y(ax: Any, metric: str, lows: list[float], highs: list[float]) -> None:
    """Log y-axis for positive error metrics spanning more than a decade (the floor is often far off)."""
    if metric not in ("rmsep", "sep"):
        return
    lo = [v for v in lows if np.isfinite(v)]
    hi = [v for v in highs if np.isfinite(v)]
    if not lo or not hi:
        return
    bottom = min(v for v in lo + hi if v > 0) if any(v > 0 for v in lo + hi) else 0
    if bottom > 0 and max(hi) / bottom > 8:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.set_ylim(bottom=bottom / 1.3)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
