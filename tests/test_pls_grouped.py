"""Replicate-grouped cross-validation of the PLS model, the component cap diagnostics, and the
hyper-parameters every reference and classical method reports (``chosen_params``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctbench.method import Standards
from ctbench.pls import (
    DEFAULT_MAX_COMPONENTS,
    PLSCalibration,
    _choose,
    _cv_folds,
    _cv_press,
    nipals_pls1_path,
    select_components,
)


def replicate_data(n_samples: int = 24, reps: int = 4, seed: int = 0, p: int = 80):
    """Spectra of ``n_samples`` physical samples measured ``reps`` times each.

    y depends on two latent directions of the spectra; every sample also carries its own
    spectral "fingerprint" (high-dimensional, shared by its replicates) and its own error in
    the reference value. A model with many latent variables can learn fingerprint -> error for
    the training samples: when the replicates of a test sample are in the training rows (row
    CV), that memorisation looks like skill; holding out whole samples shows it is not.
    """
    rng = np.random.default_rng(seed)
    T = rng.normal(size=(n_samples, 2))
    loadings = rng.normal(size=(2, p))
    finger = 0.5 * rng.normal(size=(n_samples, p))
    y_err = 0.5 * rng.normal(size=n_samples)
    y_s = T @ np.array([1.0, -1.5]) + y_err
    Xs = T @ loadings + finger
    groups = np.repeat([f"s{i:02d}" for i in range(n_samples)], reps)
    idx = np.repeat(np.arange(n_samples), reps)
    X = Xs[idx] + 0.01 * rng.normal(size=(n_samples * reps, p))
    y = np.c_[y_s[idx], 2.0 * y_s[idx]]
    perm = rng.permutation(len(idx))  # replicates scattered over the rows
    return X[perm], y[perm], groups[perm]


# --- folds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_folds_never_split_a_sample(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=23)  # uneven replicate counts
    groups = rng.permutation(np.repeat([f"id-{i}" for i in range(23)], counts))
    n = len(groups)
    for n_folds in (2, 5, 10, 23):
        folds = _cv_folds(n, n_folds, seed, groups)
        assert len(folds) == n_folds and all(len(f) for f in folds)
        rows = np.concatenate(folds)
        assert np.array_equal(np.sort(rows), np.arange(n))  # a partition of the rows
        fold_of = np.empty(n, dtype=int)
        for i, f in enumerate(folds):
            fold_of[f] = i
        for g in np.unique(groups):
            assert len(set(fold_of[groups == g])) == 1  # all replicates in one fold
        again = _cv_folds(n, n_folds, seed, groups)
        assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # seeded


def test_grouped_folds_with_one_id_per_row_are_the_row_folds():
    for n, k, seed in ((37, 10, 3), (12, 5, 0), (5, 5, 2)):
        plain = _cv_folds(n, k, seed)
        grouped = _cv_folds(n, k, seed, np.arange(n))
        assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def test_folds_are_capped_at_the_number_of_samples():
    X, y, groups = replicate_data(n_samples=4, reps=3)
    m = PLSCalibration(cv=10).fit(X, y, groups=groups)  # 4 samples: leave-one-sample-out
    # 4 folds of 3 rows: the smallest training fold has 9 rows
    assert m.max_components_tried_ == 8
    with pytest.raises(ValueError, match="samples"):
        PLSCalibration().fit(X[:3], y[:3], groups=["a", "a", "a"])
    with pytest.raises(ValueError, match="sample id per row"):
        PLSCalibration().fit(X, y, groups=groups[:-1])


# --- the CV itself -----------------------------------------------------------------------------


def _press_by_refitting(X, Y, folds, A):
    n = X.shape[0]
    press = np.zeros((Y.shape[1], A))
    for j in range(Y.shape[1]):
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            B, xm, ym = nipals_pls1_path(X[train], Y[train, j], A)
            press[j] += (((X[test] - xm) @ B + ym - Y[test, j, None]) ** 2).sum(axis=0)
    return press


def test_no_groups_fit_equals_explicit_nipals_fits_on_the_legacy_folds():
    """Without groups: the folds are those of the version before groups (a seeded permutation
    of the rows dealt round-robin), the PRESS that of NIPALS refitted per fold, and the final
    model exactly NIPALS on all rows with the chosen count."""
    rng = np.random.default_rng(11)
    n, p = 41, 50
    X = np.cumsum(rng.normal(size=(n, p)), axis=1)
    Y = np.c_[X[:, 3] - X[:, 30], X[:, 12] + 0.5 * X[:, 44]] + rng.normal(size=(n, 2))
    cv, seed, cap = 7, 5, 12
    order = np.random.default_rng(seed).permutation(n)
    legacy = [order[i::cv] for i in range(cv)]
    assert all(np.array_equal(a, b) for a, b in zip(_cv_folds(n, cv, seed), legacy))
    A = min(cap, n - max(len(f) for f in legacy) - 1)
    ref = _press_by_refitting(X, Y, legacy, A)
    m = PLSCalibration(max_components=cap, cv=cv, random_state=seed).fit(X, Y)
    assert m.max_components_tried_ == A
    for j in range(2):
        np.testing.assert_allclose(m.rmsecv_[j] ** 2 * n, ref[j], rtol=1e-8)
        a = _choose(ref[j], n)
        assert m.n_components_[j] == a
        B, xm, ym = nipals_pls1_path(X, Y[:, j], a)
        assert np.array_equal(m.coef_[:, j], B[:, a - 1])  # bit for bit
        assert m.intercept_[j] == ym - xm @ B[:, a - 1]
    # groups=None and one id per row give the same numbers bit for bit
    m2 = PLSCalibration(max_components=cap, cv=cv, random_state=seed).fit(X, Y, groups=np.arange(n))
    assert np.array_equal(m.coef_, m2.coef_) and np.array_equal(m.n_components_, m2.n_components_)
    assert all(np.array_equal(a, b) for a, b in zip(m.rmsecv_, m2.rmsecv_))


def test_grouped_press_equals_explicit_nipals_fits_on_the_grouped_folds():
    X, y, groups = replicate_data(n_samples=15, reps=3, seed=2, p=40)
    folds = _cv_folds(len(y), 5, 1, groups)
    press, n = _cv_press(X, y, 10, 5, 1, groups)
    press_f, _ = _cv_press(X, y, 10, 5, 1, folds=folds)
    assert np.array_equal(press, press_f)
    A = min(10, n - max(len(f) for f in folds) - 1)
    np.testing.assert_allclose(press, _press_by_refitting(X, y, folds, A), rtol=1e-8)


def test_grouped_cv_does_not_reward_memorised_replicates():
    X, y, groups = replicate_data()
    rows = PLSCalibration(max_components=20).fit(X, y)
    grouped = PLSCalibration(max_components=20).fit(X, y, groups=groups)
    # row CV: the test sample's replicates are in training, so extra latent variables that
    # memorise each sample's fingerprint look useful; grouped CV sees that they are not
    assert all(rows.n_components_ >= 8) and grouped.n_components_.tolist() == [2, 2]  # 2 is the truth
    for r, g in zip(rows.rmsecv_, grouped.rmsecv_):
        assert r[-1] < 0.5 * g[-1]  # row CV is optimistic where it over-fits
    # select_components agrees with the model, for one property
    a, rmsecv = select_components(X, y[:, 0], 20, groups=groups)
    assert a == grouped.n_components_[0]
    np.testing.assert_allclose(rmsecv, grouped.rmsecv_[0], rtol=1e-9)
    a_rows, _ = select_components(X, y[:, 0], 20)
    assert a_rows == rows.n_components_[0]


def test_groups_are_part_of_the_fit_cache_key():
    X, y, groups = replicate_data(seed=3)
    a = PLSCalibration(max_components=20).fit(X, y)
    b = PLSCalibration(max_components=20).fit(X, y, groups=groups)
    c = PLSCalibration(max_components=20).fit(X, y)
    assert not np.array_equal(a.rmsecv_[0], b.rmsecv_[0])
    assert np.array_equal(a.rmsecv_[0], c.rmsecv_[0]) and np.array_equal(a.coef_, c.coef_)
    # relabelled ids that describe the same grouping give the same fit
    relabelled = np.array([g.replace("s", "sample-") for g in groups])
    d = PLSCalibration(max_components=20).fit(X, y, groups=relabelled)
    assert np.array_equal(b.coef_, d.coef_)


# --- the cap ----------------------------------------------------------------------------------


def test_cap_binds_when_the_data_want_more_components():
    rng = np.random.default_rng(5)
    n, p = 80, 40
    X = rng.normal(size=(n, p))
    y = X @ rng.normal(size=p) + 0.01 * rng.normal(size=n)  # every direction matters
    T = rng.normal(size=(n, 2))
    X2 = T @ rng.normal(size=(2, p)) + 0.001 * rng.normal(size=(n, p))
    y2 = T @ np.array([1.0, 2.0])  # two directions suffice
    m = PLSCalibration(max_components=3).fit(X, y)
    assert m.max_components_tried_ == 3 and m.n_components_.tolist() == [3] and m.cap_binds_.tolist() == [True]
    m = PLSCalibration(max_components=3).fit(X2, y2)
    assert m.n_components_.tolist() == [2] and m.cap_binds_.tolist() == [False]
    m = PLSCalibration(max_components=60).fit(X, y)
    assert m.max_components_tried_ == min(60, n - 8 - 1, p)  # 10 folds of 8 rows, 40 channels
    assert m.cap_binds_.dtype == bool and m.cap_binds_.shape == (1,)
    fixed = PLSCalibration(n_components=4).fit(X, y)
    assert fixed.max_components_tried_ == 4 and not fixed.cap_binds_.any()


def test_default_cap():
    assert PLSCalibration().max_components == DEFAULT_MAX_COMPONENTS == 30


# --- what the methods chose ----------------------------------------------------------------------

REFERENCE = ("no_transfer", "target_only", "full_recalibration")
CLASSICAL = ("sbc", "ds", "pds", "cca", "dipls", "dipls_t", "mdipls", "gctpls")


@pytest.fixture(scope="module")
def demo():
    from ctbench.cards import load_card
    from ctbench.splits import make_split
    from ctbench.tasks import build_task

    task = build_task(load_card("synthetic_a_b"))
    return task, make_split(task, 10, 0, 0).standard_rows


def _plain_json(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


@pytest.mark.parametrize("name", REFERENCE + CLASSICAL)
def test_chosen_params_are_plain_json_after_fit_and_transfer(name, demo):
    from ctbench.plugins import get_method
    from ctbench.runner import source_for, standards_for

    task, rows = demo
    cls = get_method(name)
    cls = getattr(cls, "cls", cls)
    m = cls(random_state=0).fit(source_for(task, cls))
    unlabelled = task.X_target[task.test_rows] if cls.tags.transductive else None
    m.transfer(standards_for(task, rows), unlabelled)
    chosen = m.chosen_params()
    assert chosen and _plain_json(chosen), chosen
    assert json.loads(json.dumps(chosen)) == chosen
    k = len(task.properties)
    if name in REFERENCE:
        assert len(chosen["components"]) == k and len(chosen["cap_binds"]) == k
        assert all(1 <= a <= chosen["max_components_tried"] for a in chosen["components"])
    else:
        comps = chosen.get("source_components", chosen.get("components"))
        assert len(comps) == k and all(isinstance(a, int) and a >= 1 for a in comps)
    if name == "sbc":
        assert set(chosen["mode_used"]) <= {"slope_bias", "bias"} and len(chosen["mode_used"]) == k
    if name in ("ds", "pds", "cca"):
        assert chosen["selected"] and chosen["selected_by_loo"] is True  # 10 standards: LOO chose
    if name in ("dipls", "dipls_t", "mdipls", "gctpls"):
        assert len(chosen["l"]) == k and len(chosen["components_used"]) == k
        assert "source_cap_binds" in chosen


def test_target_only_cross_validates_over_whole_standard_samples():
    from ctbench_reference.methods import TargetOnly

    X, y, groups = replicate_data(n_samples=8, reps=4, seed=4, p=30)
    std = Standards(X_source=X, X_target=X, y=y, axis=np.arange(30.0), axis_unit="nm", properties=("a", "b"),
                    groups=groups)
    m = TargetOnly().transfer(std)
    chosen = m.chosen_params()
    # 8 samples: cap 8 - 2 = 6, 8 folds of one sample each (cv = min(10, 8 samples), not 32 rows)
    assert chosen["max_components_tried"] == 6
    ref = PLSCalibration(max_components=6, cv=8).fit(X, y, groups=groups)
    assert chosen["components"] == ref.n_components_.tolist()
    assert np.array_equal(m.model_.coef_, ref.coef_)


@pytest.mark.parametrize("name", ("sbc", "ds", "pds", "cca", "dipls", "dipls_t", "mdipls", "gctpls",
                                  "no_transfer", "full_recalibration"))
def test_source_models_hold_out_whole_samples(name):
    """Every method whose source model is cross-validated passes the calibration's sample ids."""
    from ctbench.method import SourceData
    from ctbench.plugins import get_method

    X, y, groups = replicate_data()
    cls = get_method(name)
    cls = getattr(cls, "cls", cls)
    src = SourceData(X=X, y=y, axis=np.arange(X.shape[1], dtype=float), axis_unit="nm", properties=("a", "b"),
                     groups=groups)
    m = cls(random_state=0).fit(src)
    chosen = m.chosen_params()
    comps = chosen.get("source_components", chosen.get("components"))
    assert comps == [2, 2]  # the grouped choice; row CV would pick 10 here
    no_ids = cls(random_state=0).fit(SourceData(X=X, y=y, axis=src.axis, axis_unit="nm", properties=("a", "b")))
    chosen = no_ids.chosen_params()
    assert all(a >= 8 for a in chosen.get("source_components", chosen.get("components")))


def test_dipls_l_cross_validation_holds_out_whole_samples(monkeypatch):
    """The 5-fold CV of l_selection="cv" deals whole source samples to its folds."""
    import ctbench_classical.dipls as dipls_mod
    from ctbench.method import SourceData

    X, y, groups = replicate_data(n_samples=12, reps=3, seed=6, p=30)
    seen = []
    real = dipls_mod._cv_folds

    def spy(n, n_folds, random_state, g=None):
        folds = real(n, n_folds, random_state, g)
        seen.append((g, folds))
        return folds

    monkeypatch.setattr(dipls_mod, "_cv_folds", spy)
    src = SourceData(X=X, y=y, axis=np.arange(30.0), axis_unit="nm", properties=("a", "b"), groups=groups)
    std = Standards(X_source=X[:6], X_target=X[:6] + 0.1, y=y[:6], axis=src.axis, axis_unit="nm",
                    properties=("a", "b"), groups=groups[:6])
    dipls_mod.GCTPLS(n_components=2, l_selection="cv").fit(src).transfer(std)
    assert seen
    for g, folds in seen:
        assert g is not None and len(folds) == 5
        for f in folds:
            held = set(groups[f])
            assert not held & set(groups[np.setdiff1d(np.arange(len(groups)), f)])
