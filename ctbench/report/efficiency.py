"""Sample-efficiency curves: the metric against the number of transfer standards N.

One figure per task, one panel per property, one line per method. The default is the relative
RMSEP (RMSEP / RMSEP of full_recalibration on the same outer test split) with its 95 %
bootstrap interval as the band, both taken from the leaderboard's per-property rows. With
``band`` "sd" or "minmax" (or a metric without an interval) the line and band come from the
records: the mean over repetitions (geometric for relative RMSEP) with ±1 sd (geometric sd for
relative RMSEP) or the min-max. no_transfer and full_recalibration do not depend on N and are
drawn as dashed horizontal lines at their level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.leaderboard import method_label
from ctbench.report.collect import (
    ANCHORS,
    base_name,
    is_anchor,
    label_order,
    property_unit,
    record_value,
    task_properties,
)
from ctbench.report.figures import SavedFigure, method_colors, new_figure, save_figure

METRIC_NAMES = {"rel_rmsep": "relative RMSEP", "rmsep": "RMSEP", "r2": "R²", "rpd": "RPD", "bias": "bias",
                "sep": "SEP", "gap_closed": "gap closed"}
BANDS = ("ci", "sd", "minmax")
GEOMETRIC = ("rel_rmsep",)
UNIT_METRICS = ("rmsep", "sep", "bias")
"""Metrics in the property's own units (the others are ratios or unitless)."""
ANCHOR_NOTES = {"no_transfer": "no correction", "full_recalibration": "target model"}


def axis_label(metric: str, unit: str | None = None) -> str:
    """The y-axis label of a metric: with the property's unit for RMSEP, SEP and bias
    ("property units" when the records do not say), as a ratio for relative RMSEP."""
    if metric == "rel_rmsep":
        return "RMSEP / RMSEP(full recalibration)"
    name = METRIC_NAMES.get(metric, metric)
    if metric in UNIT_METRICS:
        return f"{name} ({unit or 'property units'})"
    if metric == "gap_closed":
        return "gap closed (fraction of the gap)"
    return name


@dataclass
class Curve:
    label: str
    method: str
    anchor: bool
    values: dict[int, list[float]] = field(default_factory=dict)
    """N -> values over repetitions (finite only)."""
    points: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    """N -> (value, lower, upper) given directly (leaderboard rows); used instead of ``values``."""
    geometric: bool = False

    def ns(self) -> list[int]:
        if self.points:
            return sorted(n for n, p in self.points.items() if np.isfinite(p[0]))
        return sorted(n for n, v in self.values.items() if v)

    def summary(self, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """N, centre, lower, upper of the band."""
        ns = self.ns()
        if self.points:
            pts = np.array([self.points[n] for n in ns], dtype=float).reshape(-1, 3)
            return np.asarray(ns, dtype=float), pts[:, 0], pts[:, 1], pts[:, 2]
        vals = [np.log(self.values[n]) if self.geometric else np.asarray(self.values[n], dtype=float) for n in ns]
        centre = np.array([np.mean(v) for v in vals])
        if band == "minmax":
            lo = np.array([np.min(v) for v in vals])
            hi = np.array([np.max(v) for v in vals])
        else:
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
            lo, hi = centre - sd, centre + sd
        if self.geometric:
            centre, lo, hi = np.exp(centre), np.exp(lo), np.exp(hi)
        return np.asarray(ns, dtype=float), centre, lo, hi

    def level(self) -> float:
        """The level of an N-independent anchor (mean over N; geometric for relative RMSEP)."""
        if self.points:
            allv = [p[0] for p in self.points.values() if np.isfinite(p[0])]
        else:
            allv = [v for vals in self.values.values() for v in vals]
        if not allv:
            return float("nan")
        return float(np.exp(np.mean(np.log(allv)))) if self.geometric and min(allv) > 0 else float(np.mean(allv))


def task_curves(records: list[dict[str, Any]], metric: str, prop: str, refs: dict) -> list[Curve]:
    """Curves of one task and property from its ok records, in display order."""
    by_label: dict[str, Curve] = {}
    geo = metric in GEOMETRIC
    for r in records:
        label = method_label(r)
        c = by_label.setdefault(label, Curve(label, base_name(r), is_anchor(r), geometric=geo))
        v = record_value(r, metric, prop, refs)
        vals = c.values.setdefault(int(r["identity"]["n_shots"]), [])
        if np.isfinite(v) and (not geo or v > 0):
            vals.append(v)
    order = label_order(records)
    return [by_label[lab] for lab in order if lab in by_label and by_label[lab].ns()]


def row_curves(rows: list[dict[str, Any]], records: list[dict[str, Any]], prop: str) -> list[Curve]:
    """Curves of one property from the leaderboard's per-property rows: value and 95 % interval."""
    names = {method_label(r): base_name(r) for r in records}
    by_label: dict[str, Curve] = {}
    for r in rows:
        if r.get("property") != prop:
            continue
        label = r["method"]
        method = names.get(label, label)
        anchor = bool(r.get("reference")) and label in ANCHORS
        c = by_label.setdefault(label, Curve(label, method, anchor, geometric=True))
        c.points[int(r["n_shots"])] = (float(r.get("mean", np.nan)), float(r.get("lo", np.nan)),
                                       float(r.get("hi", np.nan)))
    order = label_order(records)
    return [by_label[lab] for lab in order if lab in by_label and by_label[lab].ns()]


def has_interval(rows: list[dict[str, Any]]) -> bool:
    return any(np.isfinite(r.get("lo", np.nan)) and np.isfinite(r.get("hi", np.nan)) for r in rows)


def efficiency_figure(
    task: str,
    records: list[dict[str, Any]],
    metric: str,
    refs: dict,
    out_dir: Path,
    band: str = "ci",
    title: str | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> SavedFigure | None:
    """The task's sample-efficiency figure, or None when it has no usable record.

    ``rows``: the task's per-property leaderboard rows built for ``metric``; with ``band`` "ci"
    and relative RMSEP their values and 95 % intervals are drawn. Otherwise (another metric, or
    rows without intervals) "ci" falls back to ±1 sd over repetitions, and the caption says so.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    props = task_properties(records)
    prop_rows = [r for r in rows or [] if r.get("property") != "mean" and r.get("metric", metric) == metric]
    use_rows = band == "ci" and metric == "rel_rmsep" and has_interval(prop_rows)
    fallback = band == "ci" and not use_rows
    if use_rows:
        panels = [(p, row_curves(prop_rows, records, p)) for p in props]
    else:
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
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    ax.fill_between(x, np.where(ok, lo, mean), np.where(ok, hi, mean), color=st["color"],
                                    alpha=0.15, linewidth=0)
                if x.size == 1 and ok.all():
                    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], color=st["color"], capsize=3)
                lows += list(lo[ok]) + list(mean)
                highs += list(hi[ok]) + list(mean)
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
        _label_anchors(ax, [c for c in curves if c.anchor], styles)
        ax.set_xlabel("N (transfer standards)")
        ax.set_ylabel(axis_label(metric, property_unit(records, prop)))
        ax.set_title(prop)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title or f"{task}: {name} vs N", fontsize=12)
    fig.legend([handles[lab] for lab in labels if lab in handles], [lab for lab in labels if lab in handles],
               loc="outside lower center", ncols=min(len(handles), 4), frameon=False, fontsize=9)
    if use_rows:
        how = ("Lines: geometric mean over repetitions (as in the leaderboard); band: 95 % bootstrap interval "
               "over test samples (ctbench.stats).")
    elif metric in GEOMETRIC:
        how = ("Lines: geometric mean over repetitions; band: " + ("min-max" if band == "minmax" else
               "±1 geometric sd") + " over repetitions" + (" (no bootstrap interval in the records)." if fallback
                                                           else "."))
    else:
        how = ("Lines: mean over repetitions; band: " + ("min-max" if band == "minmax" else "±1 sd")
               + " over repetitions" + (f" ({name} has no bootstrap interval)." if fallback else "."))
    what = (f"{name} (RMSEP / RMSEP of full_recalibration on the same outer test split; 1 = full recalibration)"
            if metric == "rel_rmsep" else name)
    lower = metric in ("rel_rmsep",) + UNIT_METRICS  # an error: lower is better
    caption = (f"{task}: {what} on the test set against the number of transfer standards N, one panel per "
               f"property. {how} Dashed horizontal lines, labelled on the plot: no_transfer (the source model "
               f"without correction: the level to beat) and full_recalibration (a model recalibrated on the "
               f"target: the best to expect), which do not depend on N"
               + ("; with an error metric a method is better the lower it lies." if lower else ".")
               + ("" if metric not in UNIT_METRICS else " RMSEP, SEP and bias are in each property's own units."))
    return save_figure(fig, out_dir, f"efficiency_{task}_{metric}", caption)


def _maybe_log_y(ax: Any, metric: str, lows: list[float], highs: list[float]) -> None:
    """Log y-axis for positive error metrics spanning more than a decade (the floor is often far off)."""
    if metric not in ("rel_rmsep", "rmsep", "sep"):
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


def _label_anchors(ax: Any, anchors: list[Curve], styles: dict[str, dict[str, str]]) -> None:
    """Name each dashed anchor line on the plot, at its right end, on the side away from the
    other anchor (the upper line labelled above itself, the lower one below), inside the axes:
    the limits grow a little when a label would not fit."""
    levels = [(c, c.level()) for c in anchors]
    levels = [(c, y) for c, y in levels if np.isfinite(y)]
    if not levels:
        return
    levels.sort(key=lambda cy: cy[1])
    for i, (c, y) in enumerate(levels):
        above = i == len(levels) - 1 and (len(levels) > 1 or _axes_fraction(ax, y) < 0.8)
        _make_room(ax, y, above)
        note = ANCHOR_NOTES.get(c.method)
        text = f"{c.label} ({note})" if note and c.label == c.method else c.label
        ax.annotate(text, xy=(0.99, y), xycoords=("axes fraction", "data"), xytext=(0, 3 if above else -3),
                    textcoords="offset points", ha="right", va="bottom" if above else "top", fontsize=8,
                    color=styles[c.label]["color"],
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75})


def _axes_fraction(ax: Any, y: float) -> float:
    """Where ``y`` sits between the bottom (0) and top (1) of the axes, on its scale."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and lo > 0 and hi > 0 and y > 0:
        lo, hi, y = np.log(lo), np.log(hi), np.log(y)
    return float((y - lo) / (hi - lo)) if hi != lo else 0.5


def _make_room(ax: Any, y: float, above: bool, room: float = 0.09) -> None:
    """Widen the y-limits so that a label of ``room`` axes height fits above (or below) ``y``."""
    lo, hi = ax.get_ylim()
    log = ax.get_yscale() == "log" and lo > 0 and hi > 0 and y > 0
    f = (lambda v: np.log(v)) if log else (lambda v: v)
    g = (lambda v: float(np.exp(v))) if log else (lambda v: float(v))
    a, b, v = f(lo), f(hi), f(y)
    if above and (b - v) < room * (b - a):
        b = (v - room * a) / (1 - room)  # solve (b - v) = room * (b - a)
        ax.set_ylim(g(a), g(b))
    elif not above and (v - a) < room * (b - a):
        a = (v - room * b) / (1 - room)  # solve (v - a) = room * (b - a)
        ax.set_ylim(g(a), g(b))
