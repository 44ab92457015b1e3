"""Significance at a fixed N: Friedman test, Nemenyi critical difference, CD diagram, and a
Wilcoxon signed-rank + Holm table against the best method.

One analysis per shot count N (methods are never ranked across different N). The blocks are
either the **tasks** at that N (default) or the **datasets** at that N:

* ``tasks``: one block per task. Tasks of one dataset share their samples (the 6 corn tasks
  are the same 80 samples measured on three instruments), so the blocks are not independent
  and the p-values are optimistic; the result says so in ``dependence``.
* ``datasets``: one block per dataset. A method's value in a dataset block is the geometric
  mean of its relative RMSEP (``rel_rmsep``) over the dataset's tasks at N, or the arithmetic
  mean for any other metric (of ``|bias|`` for bias). Every method of a dataset block is
  averaged over the same tasks: the block uses the dataset's tasks where a value exists (at
  N), and a method takes a value in the block only when it has a value in every one of them.
  When that leaves fewer than 3 methods in the block, the block's tasks that miss the most
  methods are dropped first (the same rule as for blocks below, one level down); dropped
  tasks are listed in ``dropped_blocks`` as ``dataset/task``.

Reference rows (no_transfer, target_only, full_recalibration) are never ranked; they are
listed in ``references``. Only leaderboard rows with ``property == "mean"`` are used.

Missing methods and blocks (nothing is left out without being listed):

1. A method with a value in every block at N takes part.
2. A method without a value in some block (no record there, or every run failed) does not
   take part; it is listed in ``excluded`` with the blocks it lacks.
3. If fewer than 3 methods have a value in every block, the block missing the most methods
   (ties: the first by name) is dropped, and again, until at least 3 methods are complete or
   only 2 blocks remain. Dropped blocks are listed in ``dropped_blocks`` with the methods they
   lack. If 3 complete methods cannot be reached that way, no block is dropped and the test is
   not run (``reason`` says why).

Methods are ranked within each block (rank 1 = best, ties share the average rank) on the
block's value (lower is better for rel_rmsep, rmsep, sep and ``|bias|``; higher for r2, rpd,
gap_closed). Friedman's chi-square is ``scipy.stats.friedmanchisquare``. The Nemenyi critical
difference is CD = q_alpha * sqrt(k (k + 1) / (6 B)) with
q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2) (Demšar 2006). The pairwise
table compares each method with the best (lowest average rank) by the Wilcoxon signed-rank
test over the blocks (on log values for rel_rmsep), Holm-adjusted over the comparisons.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.leaderboard import REFERENCE_METHODS
from ctbench.metrics import LOWER_IS_BETTER
from ctbench.report.figures import SavedFigure, new_figure, save_figure

MIN_METHODS = 3
MIN_BLOCKS = 2
BLOCK_KINDS = ("tasks", "datasets")
GEOMETRIC = ("rel_rmsep",)
"""Metrics averaged geometrically over the tasks of a dataset block (ratios)."""
_ROW_FIELD = {"rel_rmsep": "rel_mean", "rmsep": "rmsep_mean", "r2": "r2_mean", "gap_closed": "gap_closed"}


@dataclass
class Excluded:
    """A method that does not take part: the blocks (at this N) where it has no value."""

    method: str
    blocks: list[str]
    reason: str

    def __str__(self) -> str:
        return f"{self.method} ({self.reason})"


@dataclass
class DroppedBlock:
    """A block (or, for dataset blocks, ``dataset/task``) left out, with the methods it lacks."""

    block: str
    missing: list[str]
    reason: str

    def __str__(self) -> str:
        return f"{self.block} ({self.reason})"


@dataclass
class Pairwise:
    """Wilcoxon signed-rank test of ``method`` against the best method over the blocks."""

    method: str
    best: str
    n: int
    """Blocks with a non-zero difference."""
    wins: int
    """Blocks where ``method`` beats the best."""
    statistic: float
    p_value: float
    p_holm: float
    alpha: float

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.p_holm) and self.p_holm < self.alpha)


@dataclass
class FriedmanResult:
    metric: str
    alpha: float
    n_shots: int
    block_kind: str
    blocks: list[str]
    """Blocks used (task names or dataset names), sorted."""
    methods: list[str]
    """Methods ranked, best (lowest average rank) first."""
    excluded: list[Excluded] = field(default_factory=list)
    dropped_blocks: list[DroppedBlock] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    """Reference methods present at this N, never ranked."""
    members: dict[str, list[str]] = field(default_factory=dict)
    """Block -> the tasks its values come from."""
    dependence: str = ""
    """A plain sentence on how independent the blocks are."""
    notes: list[str] = field(default_factory=list)
    ranks: np.ndarray | None = None
    """(blocks, methods) ranks, 1 = best, columns in ``methods`` order."""
    values: np.ndarray | None = None
    """(blocks, methods) block values, columns in ``methods`` order."""
    avg_ranks: dict[str, float] = field(default_factory=dict)
    statistic: float = float("nan")
    p_value: float = float("nan")
    q_alpha: float = float("nan")
    cd: float = float("nan")
    pairwise: list[Pairwise] = field(default_factory=list)
    reason: str | None = None
    """Why the test was not run (too few blocks or methods), else None."""

    @property
    def ran(self) -> bool:
        return self.reason is None

    @property
    def significant(self) -> bool:
        return self.ran and bool(np.isfinite(self.p_value)) and self.p_value < self.alpha

    @property
    def excluded_methods(self) -> list[str]:
        return [e.method for e in self.excluded]

    @property
    def block_word(self) -> str:
        return "task" if self.block_kind == "tasks" else "dataset"

    @property
    def label(self) -> str:
        return f"N = {self.n_shots}, {self.block_word} blocks"

    def cliques(self) -> list[list[str]]:
        """Maximal groups of methods whose average ranks differ by less than CD."""
        return cd_cliques(self.avg_ranks, self.cd)


# -- the block table -------------------------------------------------------------------------

def row_value(row: dict[str, Any], metric: str) -> float:
    """The row's value of ``metric`` (its ``mean`` if the row was built for that metric)."""
    if row.get("metric", metric) == metric:
        v = row.get("mean")
    else:
        v = row.get(_ROW_FIELD.get(metric, ""))
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _is_reference(row: dict[str, Any]) -> bool:
    """Reference rows are flagged; a failed row may not be, so the name counts too."""
    return bool(row.get("reference")) or row["method"] in REFERENCE_METHODS


def _oriented(x: np.ndarray, metric: str) -> np.ndarray:
    """Values turned into scores where lower is better."""
    if metric == "bias":
        x = np.abs(x)
    return x if LOWER_IS_BETTER.get(metric, True) else -x


def _shots_rows(rows: list[dict[str, Any]], n_shots: int) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("property", "mean") == "mean" and int(r["n_shots"]) == int(n_shots)]


def _task_table(rows: list[dict[str, Any]], metric: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """task -> method -> finite value, and task -> method -> why a row has no value ("failed":
    every run failed; "no value": e.g. no full_recalibration record to divide by)."""
    values: dict[str, dict[str, float]] = {}
    novalue: dict[str, dict[str, str]] = {}
    for r in rows:
        v = row_value(r, metric)
        if np.isfinite(v):
            values.setdefault(r["task"], {})[r["method"]] = v
        else:
            novalue.setdefault(r["task"], {})[r["method"]] = "failed" if not r.get("reps", 1) else "no value"
    out = {t: {m: why for m, why in d.items() if m not in values.get(t, {})} for t, d in novalue.items()}
    return values, {t: d for t, d in out.items() if d}


def _select(table: dict[str, dict[str, Any]], min_methods: int, min_blocks: int, cap: bool = False
            ) -> tuple[list[str], list[str], list[tuple[str, list[str]]]]:
    """Rules 1-3 of the module docstring: (kept blocks, complete methods, dropped (block, missing)).
    ``cap``: aim for min(min_methods, methods present) instead of min_methods (inside a dataset)."""
    blocks = sorted(table)
    every = sorted({m for b in blocks for m in table[b]})

    def complete(bs: list[str]) -> list[str]:
        return [m for m in every if bs and all(m in table[b] for b in bs)]

    goal = min(min_methods, len(every)) if cap else min_methods
    kept, dropped = list(blocks), []
    comp = complete(kept)
    while len(comp) < goal and len(kept) > min_blocks:
        present = {m for b in kept for m in table[b]}
        worst = max(kept, key=lambda b: (len(present - set(table[b])), -kept.index(b)))
        dropped.append((worst, sorted(present - set(table[worst]))))
        kept.remove(worst)
        comp = complete(kept)
    if len(comp) < goal:  # dropping does not help: keep every block, the test will not run
        kept, dropped = list(blocks), []
        comp = complete(kept)
    return kept, comp, dropped


def _aggregate(vals: list[float], metric: str) -> float:
    a = np.asarray(vals, dtype=float)
    if metric == "bias":
        a = np.abs(a)
    if metric in GEOMETRIC and np.all(a > 0):
        return float(np.exp(np.mean(np.log(a))))
    return float(np.mean(a))


def _dataset_of(rows: list[dict[str, Any]], datasets: dict[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """task -> dataset from the rows' ``dataset`` field, else ``datasets``, else the task itself."""
    out: dict[str, str] = {}
    for r in rows:
        if r.get("dataset") and not out.get(r["task"]):
            out[r["task"]] = str(r["dataset"])
    unknown: list[str] = []
    for t in sorted({r["task"] for r in rows}):
        if not out.get(t):
            d = (datasets or {}).get(t)
            if not d:
                unknown.append(t)
            out[t] = str(d or t)
    return out, unknown


# -- the test ---------------------------------------------------------------------------------

def friedman_nemenyi(
    rows: list[dict[str, Any]],
    metric: str,
    n_shots: int,
    blocks: str = "tasks",
    alpha: float = 0.05,
    datasets: dict[str, str] | None = None,
    dataset_samples: dict[str, int] | None = None,
) -> FriedmanResult:
    """Friedman's test, Nemenyi's critical difference and the Wilcoxon-Holm table at N = ``n_shots``.

    ``rows`` are leaderboard rows; ``datasets`` maps task -> dataset where rows lack a
    ``dataset`` field; ``dataset_samples`` (dataset -> number of samples) only feeds the
    ``dependence`` sentence.
    """
    from scipy import stats

    if blocks not in BLOCK_KINDS:
        raise ValueError(f"blocks must be one of {', '.join(BLOCK_KINDS)}, got {blocks!r}")
    at_n = _shots_rows(rows, n_shots)
    refs = sorted({r["method"] for r in at_n if _is_reference(r)})
    ranked_rows = [r for r in at_n if not _is_reference(r)]
    task_values, task_failed = _task_table(ranked_rows, metric)
    all_tasks = sorted(set(task_values) | set(task_failed))
    dataset_of, unknown = _dataset_of(at_n, datasets)
    res = FriedmanResult(metric=metric, alpha=alpha, n_shots=int(n_shots), block_kind=blocks, blocks=[],
                         methods=[], references=refs)
    if unknown and blocks == "datasets":
        res.notes.append(f"dataset unknown for task(s) {', '.join(unknown)}; each counted as its own dataset.")

    # block -> method -> value; block -> method -> why it has no value (for the excluded list)
    table: dict[str, dict[str, float]] = {}
    why_missing: dict[str, dict[str, str]] = {}
    if blocks == "tasks":
        for t in all_tasks:
            table[t] = dict(task_values.get(t, {}))
            why_missing[t] = {m: f"{t} ({why})" for m, why in task_failed.get(t, {}).items()}
            res.members[t] = [t]
    else:
        by_ds: dict[str, list[str]] = {}
        for t in all_tasks:
            by_ds.setdefault(dataset_of.get(t, t), []).append(t)
        for ds, tasks in sorted(by_ds.items()):
            sub = {t: task_values[t] for t in tasks if task_values.get(t)}
            missing_tasks = [t for t in tasks if not task_values.get(t)]
            for t in missing_tasks:
                res.dropped_blocks.append(DroppedBlock(f"{ds}/{t}", sorted(task_failed.get(t, {})),
                                                       "no method has a value in this task at this N"))
            if not sub:
                continue
            kept, comp, dropped = _select(sub, MIN_METHODS, 1, cap=True)
            for t, miss in dropped:
                res.dropped_blocks.append(DroppedBlock(
                    f"{ds}/{t}", miss, f"task left out of the {ds} block: it lacks {len(miss)} method(s) "
                                       f"({', '.join(miss)}); keeping it would leave fewer than {MIN_METHODS} methods "
                                       f"with a value in every {ds} task"))
            table[ds] = {m: _aggregate([sub[t][m] for t in kept], metric) for m in comp}
            res.members[ds] = kept
            why_missing[ds] = {}
            for m in {m for t in sub for m in sub[t]} - set(comp):  # tasks left out too: listed, not lost
                lacks = [t + (f" ({task_failed[t][m]})" if m in task_failed.get(t, {}) else "")
                         for t in kept if m not in sub[t]]
                why_missing[ds][m] = f"{ds} (no value in {', '.join(lacks)})"
            for m in {m for t in tasks for m in task_failed.get(t, {})} - set(comp) - set(why_missing[ds]):
                why_missing[ds][m] = f"{ds} (no value in any of its tasks)"

    # methods with a row somewhere but no value in any block still count as missing everywhere
    every_method = sorted({m for b in table for m in table[b]} | {m for b in why_missing for m in why_missing[b]})
    present_table = {b: table[b] for b in table}
    for b in why_missing:
        present_table.setdefault(b, {})
    kept, comp, dropped = _select(present_table, MIN_METHODS, MIN_BLOCKS)
    for b, miss in dropped:
        res.dropped_blocks.append(DroppedBlock(
            b, miss, f"lacks {len(miss)} method(s): {', '.join(miss)}; keeping it would leave fewer than "
                     f"{MIN_METHODS} methods with a value in every block"))
    for b, _ in dropped:
        res.members.pop(b, None)
    res.blocks = kept
    for m in every_method:
        if m in comp:
            continue
        lacks = [why_missing.get(b, {}).get(m, b) for b in kept if m not in present_table[b]]
        res.excluded.append(Excluded(m, [b for b in kept if m not in present_table[b]],
                                     f"no value in {len(lacks)} of {len(kept)} {res.block_word} block(s) at "
                                     f"N = {n_shots}: {', '.join(lacks)}"))
    res.methods = list(comp)
    res.dependence = _dependence(res, dataset_of, dataset_samples or {}, unknown)

    if len(kept) < MIN_BLOCKS or len(comp) < MIN_METHODS:
        res.reason = (
            f"too few at N = {n_shots}: {len(kept)} {res.block_word} block(s) and {len(comp)} non-reference "
            f"method(s) with a value in every block; the test needs at least {MIN_BLOCKS} blocks and "
            f"{MIN_METHODS} methods"
        )
        return res
    X = np.array([[present_table[b][m] for m in comp] for b in kept], dtype=float)
    score = _oriented(X, metric)
    ranks = np.vstack([stats.rankdata(row) for row in score])
    avg = ranks.mean(axis=0)
    order = np.argsort(avg, kind="stable")
    res.methods = [comp[i] for i in order]
    res.ranks = ranks[:, order]
    res.values = X[:, order]
    score = score[:, order]
    res.avg_ranks = {comp[i]: float(avg[i]) for i in order}
    k, b = len(comp), len(kept)
    if np.allclose(score, score[:, :1]):
        res.statistic, res.p_value = 0.0, 1.0
    else:
        stat = stats.friedmanchisquare(*[score[:, j] for j in range(k)])
        res.statistic, res.p_value = float(stat.statistic), float(stat.pvalue)
    res.q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))
    res.cd = float(res.q_alpha * np.sqrt(k * (k + 1) / (6.0 * b)))
    res.pairwise = _pairwise(res, score)
    return res


def friedman_by_shots(
    rows: list[dict[str, Any]],
    metric: str,
    blocks: str = "tasks",
    alpha: float = 0.05,
    shots: list[int] | None = None,
    datasets: dict[str, str] | None = None,
    dataset_samples: dict[str, int] | None = None,
) -> list[FriedmanResult]:
    """One :func:`friedman_nemenyi` per N that has a non-reference row (or per N in ``shots``)."""
    if shots is None:
        shots = sorted({int(r["n_shots"]) for r in rows
                        if r.get("property", "mean") == "mean" and not _is_reference(r)})
    return [friedman_nemenyi(rows, metric, n, blocks=blocks, alpha=alpha, datasets=datasets,
                             dataset_samples=dataset_samples) for n in shots]


from ctbench.stats import holm  # noqa: E402  (re-exported: the report's Holm is the leaderboard's)


def _pairwise(res: FriedmanResult, score: np.ndarray) -> list[Pairwise]:
    """Wilcoxon signed-rank of each method against the best, Holm-adjusted."""
    from scipy import stats

    s = score
    if res.metric in GEOMETRIC and np.all(res.values > 0):
        s = np.log(res.values)  # ratios: compare log values
    best = res.methods[0]
    out: list[Pairwise] = []
    for j, m in enumerate(res.methods[1:], start=1):
        d = s[:, j] - s[:, 0]
        nz = int(np.sum(np.abs(d) > 1e-12 * np.maximum(1.0, np.abs(s[:, 0]))))
        wins = int(np.sum(d < -1e-12 * np.maximum(1.0, np.abs(s[:, 0]))))
        if nz == 0:
            stat, p = float("nan"), 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = stats.wilcoxon(s[:, j], s[:, 0], zero_method="wilcox")
            stat, p = float(w.statistic), float(w.pvalue)
        out.append(Pairwise(m, best, nz, wins, stat, p, float("nan"), res.alpha))
    adj = holm([p.p_value for p in out])
    for p, a in zip(out, adj):
        p.p_holm = float(a)
    return out


def _dependence(res: FriedmanResult, dataset_of: dict[str, str], samples: dict[str, int], unknown: list[str]) -> str:
    if res.block_kind == "datasets":
        return (f"One block per dataset (B = {len(res.blocks)}): datasets are separate sample sets, so the blocks are "
                f"independent, but with few datasets the test has little power.")
    by_ds: dict[str, list[str]] = {}
    for t in res.blocks:
        by_ds.setdefault(dataset_of.get(t, t), []).append(t)
    shared = {d: ts for d, ts in sorted(by_ds.items()) if len(ts) > 1}
    unknown = [t for t in unknown if t in res.blocks]
    if not shared and unknown:
        return (f"The dataset of task(s) {', '.join(unknown)} is unknown, so whether the blocks share samples "
                f"(and the p-values are optimistic) cannot be checked.")
    if not shared:
        return "Each task block comes from a different dataset, so the blocks share no samples."
    parts = []
    for d, ts in shared.items():
        n = samples.get(d)
        parts.append(f"the {len(ts)} {d} tasks share " + (f"{n} samples" if n else "their samples"))
    return (f"The blocks are not independent: tasks of one dataset are the same samples measured on different "
            f"instruments ({'; '.join(parts)}), so the Friedman and Nemenyi p-values are optimistic (too small). "
            f"--blocks datasets makes one block per dataset instead.")


# -- cliques and the diagram -------------------------------------------------------------------

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
    # vertical layout in inches, from the top: title, CD bar, tick labels, axis, clique bars, labels
    top_pad, title_h, cd_h, tick_h = 0.15, 0.3, 0.35, 0.3
    bar_step, label_step, bottom_pad = 0.16, 0.3, 0.2
    y_axis_from_top = top_pad + title_h + cd_h + tick_h
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

    ax.text(width / 2, height - top_pad, f"N = {res.n_shots}: {len(res.blocks)} {res.block_word} blocks, "
            f"Friedman p = {_p(res.p_value)}", ha="center", va="top", fontsize=10)
    y_axis = height - y_axis_from_top
    ax.plot([x0, x1], [y_axis, y_axis], color="black", linewidth=1.2)
    for t in range(lo, hi + 1):
        ax.plot([xpos(t)] * 2, [y_axis, y_axis + 0.08], color="black", linewidth=1)
        ax.text(xpos(t), y_axis + 0.11, str(t), ha="center", va="bottom", fontsize=9)
    for t in np.arange(lo + 0.5, hi, 1.0):
        ax.plot([xpos(t)] * 2, [y_axis, y_axis + 0.04], color="black", linewidth=0.8)
    if np.isfinite(res.cd):
        x_end = xpos(lo + min(res.cd, hi - lo))
        yc = height - top_pad - title_h - 0.22
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
    what = ("task" if res.block_kind == "tasks" else "dataset (a method's value per dataset aggregated over the "
            "dataset's tasks)")
    caption = (f"Critical-difference diagram at N = {res.n_shots} ({res.metric}, α = {res.alpha}): average rank of "
               f"each method over {len(res.blocks)} blocks, one per {what} (1 = best, on the left). Methods joined by "
               f"a thick bar are not significantly different by the Nemenyi test (their average ranks differ by less "
               f"than CD = {res.cd:.2f}). Reference methods are not ranked.")
    if res.block_kind == "tasks" and res.dependence.startswith("The blocks are not independent"):
        caption += " Tasks of one dataset share samples, so the blocks are not independent and the test is optimistic."
    return save_figure(fig, out_dir, f"critical_difference_{res.metric}_N{res.n_shots}_{res.block_kind}", caption)


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"
