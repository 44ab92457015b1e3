"""Metrics against hand-computed values; PLS against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from ctbench.metrics import evaluate, gap_closed, regression_metrics
from ctbench.pls import PLSCalibration, nipals_pls1_path


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.5, 3.5, 4.5])  # pure bias of 0.5
    m = regression_metrics(y, p)
    assert m["rmsep"] == pytest.approx(0.5)
    assert m["bias"] == pytest.approx(0.5)
    assert m["sep"] == pytest.approx(0.0)
    assert m["r2"] == pytest.approx(1 - 4 * 0.25 / 5.0)
    e = np.array([0.1, -0.2, 0.3, 0.0])
    m = regression_metrics(y, y + e)
    assert m["rmsep"] == pytest.approx(np.sqrt(np.mean(e**2)))
    assert m["sep"] == pytest.approx(np.std(e, ddof=1))
    assert m["rpd"] == pytest.approx(np.std(y, ddof=1) / np.std(e, ddof=1))


def test_evaluate_means_over_properties_and_gap():
    y = np.c_[np.arange(5.0), np.arange(5.0) * 2]
    out = evaluate(y, y + np.array([1.0, 3.0]), ("a", "b"))
    assert out["per_property"]["a"]["rmsep"] == pytest.approx(1.0)
    assert out["mean"]["rmsep"] == pytest.approx(2.0)
    assert gap_closed(2.0, 4.0, 1.0) == pytest.approx(2 / 3)
    assert np.isnan(gap_closed(2.0, 1.0, 1.0))


def test_nipals_matches_sklearn():
    from sklearn.cross_decomposition import PLSRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 25))
    y = X[:, :4] @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.05 * rng.normal(size=40)
    B, xm, ym = nipals_pls1_path(X, y, 6)
    for a in (1, 3, 6):
        ref = PLSRegression(a, scale=False).fit(X, y).predict(X).ravel()
        assert np.allclose((X - xm) @ B[:, a - 1] + ym, ref, atol=1e-8)


def test_cv_picks_few_components_for_a_low_rank_problem():
    rng = np.random.default_rng(2)
    T = rng.normal(size=(60, 2))
    X = T @ rng.normal(size=(2, 50)) + 0.01 * rng.normal(size=(60, 50))
    y = T @ np.array([1.0, 2.0]) + 0.01 * rng.normal(size=60)
    m = PLSCalibration(max_components=12).fit(X, np.c_[y, -y])
    assert all(2 <= a <= 4 for a in m.n_components_)
    assert np.sqrt(np.mean((m.predict(X)[:, 0] - y) ** 2)) < 0.05


def test_cv_press_survives_a_component_stopped_by_the_score_rule():
    """Spectra so weak that a weight exists but its score falls below the t^T t rule (seen when GLSW
    filtered a Raman source calibration nearly to zero): the component is unused, as in
    nipals_pls1_path, instead of leaving a singular P^T W (it raised 'Singular matrix')."""
    from ctbench.pls import _cv_press, nipals_pls1_path

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 30)) * 1e-8
    y = rng.normal(size=(40, 2))
    press, n = _cv_press(X, y, 10, 5, 0)
    assert n == 40 and np.isfinite(press).all()
    coef, _, _ = nipals_pls1_path(X - X.mean(axis=0), y[:, 0] - y[:, 0].mean(), 10)
    assert np.allclose(press[0], press[0, 0]) and not np.any(coef)  # no component on either path
