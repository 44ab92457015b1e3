"""Uncertainty of leaderboard cells: a paired bootstrap over test samples, Holm-corrected tests, tie groups.

The headline of a cell is the relative RMSEP: per property, RMSEP / RMSEP(full_recalibration)
on the same test set (the repetition's outer split); a record's value is the geometric mean
over properties, and the cell's value the geometric mean over repetitions.

Interval: a two-stage paired bootstrap. In each replicate (1) the repetitions (outer split x
standards draw) are resampled with replacement, the same draw for every method, and (2) every
outer split's test samples are resampled with replacement (whole samples: replicate spectra stay
together); every repetition on that split, every method and full_recalibration itself are scored
on the same resampled samples. Relative RMSEP under a resample is
``sqrt(SSE_method / SSE_full_recalibration)`` on the same weighted rows. The interval so covers
both the test set's sampling noise and the choice of standards. 95 % percentile intervals, ``B``
replicates; everything is seeded, so a leaderboard is reproducible.

Ties: the best method of a cell (lowest value, reference rows excluded) is compared with each
other method by the bootstrap distribution of the difference of their log cell values (a paired
two-sided test: p = 2 * share of replicates where the other method is not worse), Holm-corrected
over the comparisons; methods with an adjusted p >= alpha are tied with the best (group 1). The
best of the rest then leads group 2, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ctbench.splits import stable_seed

BOOTSTRAP_REPLICATES = 2000
ALPHA = 0.05


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    running = 0.0
    for j, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - j) * p[i]))
        out[i] = running
    return out


def resample_weights(n_samples: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n_samples) counts of each sample in a bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_samples, size=(replicates, n_samples))
    out = np.zeros((replicates, n_samples))
    np.add.at(out, (np.repeat(np.arange(replicates), n_samples), draws.ravel()), 1.0)
    return out


def residual_columns(rec: dict[str, Any], properties: list[str]) -> np.ndarray:
    """A record's (rows, properties) residuals with columns in the order of ``properties``.

    The residuals' columns follow the task's property order (named in the block, else in the
    record's task summary); metrics dictionaries are stored with sorted keys, so never rely on
    their order. A null residual (no reference value) is NaN.
    """
    res = rec["residuals"]
    names = res.get("properties") or (rec.get("task") or {}).get("properties") or properties
    values = np.asarray(res["values"], dtype=float).reshape(len(res["values"]), len(names))
    return values[:, [list(names).index(p) for p in properties]]


def _squared(residuals: np.ndarray) -> np.ndarray:
    """Squared residuals, 0 where a sample has no reference value for a property (null in the
    record): such a row drops out of that property's SSE for every method alike, so the ratio
    of SSEs is the ratio of RMSEPs over the samples that have the reference."""
    return np.nan_to_num(np.square(residuals), nan=0.0)


@dataclass
class MethodCell:
    """One method in one (task, N) cell: its log relative RMSEP per property, observed and bootstrapped."""

    label: str
    reference: bool
    observed: np.ndarray
    """(P,) mean over repetitions of log(RMSEP / RMSEP_full_recalibration) per property."""
    boot: np.ndarray | None
    """(B, P) the same under each bootstrap replicate, or None without residuals."""
    per_rep: np.ndarray
    """(R, P) log relative RMSEP of each repetition."""

    def value(self, prop: int | None) -> float:
        return float(self.observed.mean() if prop is None else self.observed[prop])

    def boot_values(self, prop: int | None) -> np.ndarray | None:
        if self.boot is None:
            return None
        return self.boot.mean(axis=1) if prop is None else self.boot[:, prop]


def cell_bootstrap(
    methods: dict[str, tuple[bool, list[dict[str, Any]]]],
    full_recal: dict[str, dict[str, Any]],
    properties: list[str],
    seed: int,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> dict[str, MethodCell]:
    """Log relative RMSEP of every method of a cell, observed and under a paired bootstrap.

    ``methods``: label -> (is reference, its ok records); ``full_recal``: test-rows hash ->
    the full_recalibration record on that outer split. Records without a full_recalibration on
    their split are left out (and a method with none gets no entry).
    """
    weights: dict[str, np.ndarray] = {}
    fr_sse: dict[str, np.ndarray] = {}

    def split_weights(h: str, rec: dict) -> np.ndarray | None:
        res = rec.get("residuals")
        if res is None:
            return None
        if h not in weights:
            sample = np.asarray(res["sample"], dtype=int)
            w = resample_weights(int(sample.max()) + 1, replicates, stable_seed("bootstrap", seed, h))
            weights[h] = w[:, sample]  # per row: its sample's count
        return weights[h]

    universe = sorted({int(r["identity"]["rep"]) for _, recs in methods.values() for r in recs})
    rep_weights = resample_weights(len(universe), replicates, stable_seed("bootstrap-reps", seed)) if universe else None
    column = {rep: i for i, rep in enumerate(universe)}
    out: dict[str, MethodCell] = {}
    for label, (is_ref, recs) in methods.items():
        obs, boots, reps, complete = [], [], [], True
        for rec in sorted(recs, key=lambda r: r["identity"]["rep"]):
            h = rec["split"]["test_rows_hash"]
            fr = full_recal.get(h)
            if fr is None:
                continue
            per, fper = rec["metrics"]["per_property"], fr["metrics"]["per_property"]
            obs.append([np.log(max(per[p]["rmsep"], 1e-300) / max(fper[p]["rmsep"], 1e-300)) for p in properties])
            w = split_weights(h, rec)
            if w is None or fr.get("residuals") is None:
                complete = False
                continue
            if h not in fr_sse:
                fr_sse[h] = w @ _squared(residual_columns(fr, properties))
            sse = w @ _squared(residual_columns(rec, properties))
            boots.append(0.5 * (np.log(np.maximum(sse, 1e-300)) - np.log(np.maximum(fr_sse[h], 1e-300))))
            reps.append(column[int(rec["identity"]["rep"])])
        if not obs:
            continue
        per_rep = np.asarray(obs)
        boot = None
        if complete and boots:
            v = rep_weights[:, reps]  # (B, R): how often each of this method's repetitions was drawn
            total = v.sum(axis=1, keepdims=True)
            v = np.where(total > 0, v, 1.0) / np.where(total > 0, total, len(reps))
            boot = np.einsum("br,rbp->bp", v, np.asarray(boots))
        out[label] = MethodCell(label, is_ref, per_rep.mean(axis=0), boot, per_rep)
    return out


def tie_groups(cells: dict[str, MethodCell], prop: int | None, alpha: float = ALPHA) -> dict[str, tuple[int, float]]:
    """label -> (tie group, Holm-adjusted p against the cell's best) for the non-reference methods.

    Group 1 is the best method and every method not significantly worse than it; the rest are
    grouped the same way around the best of the remainder. Methods without a bootstrap get no group.
    """
    pool = {k: c for k, c in cells.items() if not c.reference and c.boot is not None}
    out: dict[str, tuple[int, float]] = {}
    group = 0
    while pool:
        group += 1
        leader = min(pool, key=lambda k: (pool[k].value(prop), k))
        lead_boot = pool[leader].boot_values(prop)
        others = [k for k in pool if k != leader]
        raw = []
        for k in others:
            diff = pool[k].boot_values(prop) - lead_boot
            not_worse = int(np.sum(diff <= 0.0))
            raw.append(min(1.0, 2.0 * (1 + not_worse) / (len(diff) + 1)))
        adj = holm(raw)
        if group == 1:
            p_best = dict(zip(others, (float(p) for p in adj)))
            p_best[leader] = float("nan")
        for k in [leader] + [k for k, p in zip(others, adj) if p >= alpha]:
            out[k] = (group, p_best[k])
            pool.pop(k)
    return out


def interval(cell: MethodCell, prop: int | None, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the cell's relative RMSEP (NaN without a bootstrap)."""
    b = cell.boot_values(prop)
    if b is None:
        return float("nan"), float("nan")
    q = (1 - level) / 2
    lo, hi = np.quantile(b, [q, 1 - q])
    return float(np.exp(lo)), float(np.exp(hi))
