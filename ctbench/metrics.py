"""Prediction metrics per property: RMSEP, R2, RPD, bias, SEP; and gap closed.

RMSEP = sqrt(mean(e^2)); bias = mean(e) with e = predicted - reference; SEP = standard
deviation of e (n - 1) i.e. the error after removing the bias; R2 = 1 - SSE / SST;
RPD = SD(reference) / SEP.
"""

from __future__ import annotations

import numpy as np

METRICS = ("rmsep", "r2", "rpd", "bias", "sep")
LOWER_IS_BETTER = {"rel_rmsep": True, "rmsep": True, "r2": False, "rpd": False, "bias": True, "sep": True, "gap_closed": False}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    e = y_pred - y_true
    n = e.size
    rmsep = float(np.sqrt(np.mean(e**2)))
    bias = float(np.mean(e))
    sep = float(np.sqrt(np.sum((e - bias) ** 2) / max(n - 1, 1)))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = float(1.0 - np.sum(e**2) / sst) if sst > 0 else float("nan")
    sd = float(np.std(y_true, ddof=1)) if n > 1 else float("nan")
    rpd = sd / sep if sep > 0 else float("inf")
    return {"rmsep": rmsep, "r2": r2, "rpd": float(rpd), "bias": bias, "sep": sep}


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, properties: tuple[str, ...]) -> dict:
    """Per-property metrics and their mean over properties.

    A missing reference value (NaN in ``y_true``: a sample without a reference for that
    property) leaves that row out of that property's metrics only; a property with no
    reference at all gets NaN metrics, and the means are over the properties that have one."""
    y_true = np.asarray(y_true, dtype=float)
    per = {}
    for j, p in enumerate(properties):
        have = ~np.isnan(y_true[:, j])
        if have.all():
            per[p] = regression_metrics(y_true[:, j], y_pred[:, j])
        elif have.any():
            per[p] = regression_metrics(y_true[have, j], y_pred[have, j])
        else:
            per[p] = {m: float("nan") for m in METRICS}
    mean = {}
    for m in METRICS:
        vals = [per[p][m] for p in properties if not np.isnan(per[p][m])]
        mean[m] = float(np.mean(vals)) if vals else float("nan")
    return {"per_property": per, "mean": mean}


def relative_rmsep(rmsep: dict[str, float], reference: dict[str, float] | None) -> float:
    """A record's relative RMSEP: the geometric mean over its properties of RMSEP / the RMSEP of
    full_recalibration on the same outer test split (``reference``, property -> RMSEP); NaN when a
    property has no positive reference or a ratio is not positive."""
    if not reference or not rmsep:
        return float("nan")
    ratios = []
    for prop, value in rmsep.items():
        ref = reference.get(prop)
        if ref is None or not ref > 0:
            return float("nan")
        ratios.append(value / ref)
    r = np.asarray(ratios, dtype=float)
    return float(np.exp(np.mean(np.log(r)))) if np.all(r > 0) else float("nan")


def gap_closed(rmsep: float, rmsep_no_transfer: float, rmsep_full_recal: float) -> float:
    """(RMSEP_no_transfer - RMSEP) / (RMSEP_no_transfer - RMSEP_full_recalibration)."""
    denom = rmsep_no_transfer - rmsep_full_recal
    if not np.isfinite(denom) or abs(denom) < 1e-12:
        return float("nan")
    return float((rmsep_no_transfer - rmsep) / denom)
