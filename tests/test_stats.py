"""Leaderboard uncertainty: Holm by hand, the paired bootstrap, tie groups, the leaderboard on hand-made records."""

from __future__ import annotations

import numpy as np
import pytest

from ctbench.leaderboard import build_leaderboard
from ctbench.stats import cell_bootstrap, holm, interval, resample_weights, tie_groups


def test_holm_by_hand():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> raised to the running max 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]).size == 0


def test_resample_weights_are_seeded_counts():
    w = resample_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and np.all(w.sum(axis=1) == 7)
    assert np.array_equal(w, resample_weights(7, 50, seed=3))


def _record(method: str, rep: int, residuals: np.ndarray, split: str, n: int = 10, samples=None,
            reference: bool = False) -> dict:
    props = [f"p{j}" for j in range(residuals.shape[1])]
    per = {p: {"rmsep": float(np.sqrt(np.mean(residuals[:, j] ** 2))), "r2": 0.5, "rpd": 1.0, "bias": 0.0, "sep": 1.0}
           for j, p in enumerate(props)}
    mean = {k: float(np.mean([per[p][k] for p in props])) for k in ("rmsep", "r2", "rpd", "bias", "sep")}
    sample = list(range(len(residuals))) if samples is None else list(samples)
    return {
        "identity": {"method": method, "method_version": "1", "params": {}, "task": "t", "task_version": "1",
                     "n_shots": n, "rep": rep, "seed": 0},
        "method": {"name": method, "user_params": {}, "params_source": "default"},
        "task": {"dataset": "d"},
        "status": "ok",
        "reference": reference,
        "split": {"test_rows_hash": split},
        "metrics": {"per_property": per, "mean": mean},
        "residuals": {"sample": sample, "values": residuals.tolist()},
    }


def _store(rng: np.random.Generator) -> list[dict]:
    """Four repetitions on two outer splits: 'same' equals full recalibration up to tiny noise,
    'double' has twice its errors on every row, 'far' is 3x worse; 'near' is 'same' with small noise."""
    recs = []
    bases = [rng.normal(size=(30, 2)) for _ in range(2)]  # full recalibration's errors on each outer split
    for rep in range(4):
        split = f"split{rep % 2}"
        base = bases[rep % 2]
        recs.append(_record("full_recalibration", rep, base, split, reference=True))
        recs.append(_record("double", rep, 2.0 * base, split))
        recs.append(_record("same", rep, base * 1.01, split))
        recs.append(_record("near", rep, base * 1.01 + rng.normal(scale=0.02, size=base.shape), split))
        recs.append(_record("far", rep, 3.0 * base + rng.normal(scale=0.5, size=base.shape), split))
    return recs


def test_paired_bootstrap_scores_every_method_on_the_same_resamples():
    recs = _store(np.random.default_rng(0))
    fr = {r["split"]["test_rows_hash"]: r for r in recs if r["identity"]["method"] == "full_recalibration"}
    methods = {}
    for r in recs:
        methods.setdefault(r["identity"]["method"], (r["reference"], []))[1].append(r)
    cells = cell_bootstrap(methods, fr, ["p0", "p1"], seed=1, replicates=400)
    # errors exactly twice full recalibration's on every row: relative RMSEP 2 in every resample
    lo, hi = interval(cells["double"], None)
    assert np.exp(cells["double"].value(None)) == pytest.approx(2.0)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    assert interval(cells["full_recalibration"], 0) == pytest.approx((1.0, 1.0))
    lo, hi = interval(cells["far"], None)
    assert lo < np.exp(cells["far"].value(None)) < hi
    groups = tie_groups(cells, None)
    assert "full_recalibration" not in groups  # reference rows are never ranked
    assert groups["same"][0] == 1 and groups["near"][0] == 1  # tied with the best
    assert groups["double"][0] == 2 and groups["far"][0] == 3
    assert groups["double"][1] < 0.05  # Holm-adjusted p against the best


def test_replicates_are_resampled_together():
    """Rows of one sample share a bootstrap count: a sample's replicates never split."""
    base = np.ones((6, 1))
    rec = _record("m", 0, base * 2, "s", samples=[0, 0, 1, 1, 2, 2])
    fr = _record("full_recalibration", 0, base, "s", samples=[0, 0, 1, 1, 2, 2], reference=True)
    cells = cell_bootstrap({"m": (False, [rec]), "full_recalibration": (True, [fr])}, {"s": fr}, ["p0"], seed=0,
                           replicates=50)
    assert interval(cells["m"], 0) == pytest.approx((2.0, 2.0))


def test_leaderboard_rows_carry_intervals_and_groups():
    rows = build_leaderboard(_store(np.random.default_rng(1)), per_property=True, replicates=400)
    mean = {r["method"]: r for r in rows if r["property"] == "mean"}
    assert mean["double"]["mean"] == pytest.approx(2.0) and mean["double"]["group"] == 2
    assert mean["same"]["tied"] and mean["near"]["tied"] and not mean["far"]["tied"]
    assert mean["full_recalibration"]["rank"] is None and mean["full_recalibration"]["reference"]
    assert all(r["lo"] <= r["mean"] <= r["hi"] for r in rows)
    # rows of a cell are ordered by the headline value
    assert [r["method"] for r in rows if r["property"] == "mean"][:2] == ["full_recalibration", "same"]
    # without full recalibration there is no relative RMSEP, but the raw rows stay
    rows = build_leaderboard([r for r in _store(np.random.default_rng(1)) if r["identity"]["method"] != "full_recalibration"],
                             metric="rmsep", replicates=100)
    assert all(np.isnan(r["rel_mean"]) and r["group"] is None and np.isfinite(r["mean"]) for r in rows)


def test_residual_columns_follow_the_task_property_order_not_the_sorted_metrics():
    """Records store metrics with sorted keys but residuals in the task's property order
    ("z" before "a" here): each property's interval must come from its own column."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(20, 2))  # columns: z, a

    def rec(method: str, scale: tuple[float, float], reference: bool = False) -> dict:
        r = _record(method, 0, base * np.array(scale), "s", reference=reference)
        values = base * np.array(scale)
        r["metrics"]["per_property"] = {  # sorted keys, as the store writes them
            "a": {**r["metrics"]["per_property"]["p1"], "rmsep": float(np.sqrt(np.mean(values[:, 1] ** 2)))},
            "z": {**r["metrics"]["per_property"]["p0"], "rmsep": float(np.sqrt(np.mean(values[:, 0] ** 2)))},
        }
        r["residuals"]["properties"] = ["z", "a"]
        return r

    fr = rec("full_recalibration", (1.0, 1.0), reference=True)
    m = rec("m", (2.0, 3.0))
    cells = cell_bootstrap({"m": (False, [m]), "full_recalibration": (True, [fr])}, {"s": fr}, ["a", "z"], seed=0,
                           replicates=50)
    assert np.exp(cells["m"].value(0)) == pytest.approx(3.0) and interval(cells["m"], 0) == pytest.approx((3.0, 3.0))
    assert np.exp(cells["m"].value(1)) == pytest.approx(2.0) and interval(cells["m"], 1) == pytest.approx((2.0, 2.0))
    del m["residuals"]["properties"], fr["residuals"]["properties"]
    m["task"]["properties"] = fr["task"]["properties"] = ["z", "a"]  # older records: the task summary names them
    cells = cell_bootstrap({"m": (False, [m]), "full_recalibration": (True, [fr])}, {"s": fr}, ["a", "z"], seed=0,
                           replicates=50)
    assert interval(cells["m"], 0) == pytest.approx((3.0, 3.0))
