"""EPO, TOP and GLSW (plugins/ctbench_classical/orthogonal.py) on hand-built exact cases."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import ctbench_classical.orthogonal as orth
from ctbench.method import SourceData, Standards
from ctbench_classical.orthogonal import EPO, GLSW, TOP
from classical_builders import PROPS, bands, one_blas_thread, readonly  # noqa: F401  (one_blas_thread: autouse fixture)

ALL = [EPO, TOP, GLSW]
P = 60


# --- builders ------------------------------------------------------------------------------


AXIS = np.arange(P, dtype=float)
PURE = bands(AXIS, [15, 30, 45], [4.0, 6.0, 5.0])
NUISANCE = bands(AXIS, [22], [3.0])[0] + 0.01 * AXIS  # an instrument artefact: a band and a slope
OFFSET = 0.3 + 0.2 * np.sin(AXIS / 7.0)  # an additive spectrum common to every target spectrum


def lowrank(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(spectra, y): three Gaussian bands mixed linearly plus a constant; y exactly linear in them."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    return conc @ PURE + 0.1, conc[:, :2] * np.array([10.0, 3.0])


def source_data(X, y, groups=None) -> SourceData:
    return SourceData(X=readonly(X), y=readonly(y), axis=AXIS, axis_unit="nm", properties=PROPS, groups=groups)


def standards(Xs, Xt, y, groups=None) -> Standards:
    return Standards(X_source=readonly(Xs), X_target=readonly(Xt), y=readonly(y), axis=AXIS, axis_unit="nm",
                     properties=PROPS, groups=groups)


@pytest.fixture(scope="module")
def task():
    """Source calibration (40 rows), test rows (15), and standards = the first 8 calibration rows."""
    X, y = lowrank(55, seed=1)
    return X[:40], y[:40], X[40:], y[40:]


def amounts(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=n)


def fitted(cls, task, shift, n_std: int = 8, **params):
    """``cls`` fitted on the task's calibration and transferred with target = source + shift(rows)."""
    Xc, yc, _, _ = task
    m = cls(**params).fit(source_data(Xc, yc))
    S = np.arange(n_std)
    return m.transfer(standards(Xc[S], Xc[S] + shift(S), yc[S]))


# --- exact cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, params",
    [(EPO, {}), (EPO, {"n_directions": 1}), (TOP, {}), (GLSW, {"alpha": 1e-14})],
    ids=["epo-cv", "epo-1", "top", "glsw"],
)
def test_a_sample_dependent_artefact_is_removed(task, cls, params):
    """target = source + a_i * v (one spectral direction, random amounts): the transferred model
    predicts target spectra as the source model predicts the clean ones (exact y here)."""
    Xc, yc, Xtest, ytest = task
    m = fitted(cls, task, lambda rows: np.outer(amounts(len(rows), 7), NUISANCE), **params)
    Xtarget = Xtest + np.outer(amounts(len(Xtest), 8) * 1.5, NUISANCE)
    pred = m.predict(Xtarget)
    np.testing.assert_allclose(pred, m.predict(Xtest), atol=1e-8 * np.abs(ytest).max())
    np.testing.assert_allclose(pred, m.source_model_.predict(Xtest), atol=1e-7 * np.abs(ytest).max())
    np.testing.assert_allclose(pred, ytest, atol=1e-7 * np.abs(ytest).max())
    # without transfer the artefact ruins the predictions
    assert np.abs(m.source_model_.predict(Xtarget) - ytest).max() > 0.1
    assert m.chosen_params()["n_directions"] >= 1


@pytest.mark.parametrize("cls", ALL)
def test_an_offset_common_to_all_target_spectra_is_removed(task, cls):
    Xc, yc, Xtest, ytest = task
    params = {"alpha": 1e-14} if cls is GLSW else {}
    m = fitted(cls, task, lambda rows: np.tile(OFFSET, (len(rows), 1)), **params)
    pred = m.predict(Xtest + OFFSET)
    np.testing.assert_allclose(pred, m.source_model_.predict(Xtest), atol=1e-7 * np.abs(ytest).max())
    assert np.abs(m.source_model_.predict(Xtest + OFFSET) - ytest).max() > 0.1


def test_top_projects_out_the_mean_difference_only(task):
    """TOP's direction is the instruments' mean difference; the per-sample part needs n_extra."""
    a = amounts(8, 3)
    a = a - a.mean()  # the artefact averages to zero over the standards: the means see the offset only
    shift = lambda rows: OFFSET + np.outer(a[rows], NUISANCE)  # noqa: E731
    top = fitted(TOP, task, shift)
    V = top.directions_
    assert V.shape == (P, 1)
    np.testing.assert_allclose(np.abs(V[:, 0]), np.abs(OFFSET) / np.linalg.norm(OFFSET), atol=1e-12)
    _, _, Xtest, ytest = task
    Xtarget = Xtest + OFFSET + np.outer(np.linspace(-1, 1, len(Xtest)), NUISANCE)
    assert np.abs(top.predict(Xtarget) - ytest).max() > 1e-3  # the artefact is still there
    extra = fitted(TOP, task, shift, n_extra=1)
    assert extra.directions_.shape == (P, 2)
    np.testing.assert_allclose(extra.predict(Xtarget), ytest, atol=1e-7 * np.abs(ytest).max())
    cv = fitted(TOP, task, shift, n_extra=None)
    assert cv.chosen_params()["selected_by_cv"] and cv.selected_["n_extra"] >= 1


def test_centred_epo_leaves_the_mean_difference(task):
    """Centring D on its mean difference (center=True) keeps a pure offset in the spectra: the
    reason for center=False."""
    _, _, Xtest, ytest = task
    shift = lambda rows: np.tile(OFFSET, (len(rows), 1))  # noqa: E731
    centred = fitted(EPO, task, shift, center=True, n_directions=2)
    assert centred.directions_.shape[1] == 0
    np.testing.assert_allclose(centred.predict(Xtest + OFFSET), centred.source_model_.predict(Xtest + OFFSET))
    plain_epo = fitted(EPO, task, shift, n_directions=2)
    assert plain_epo.directions_.shape[1] == 1  # rank one: capped by the rank of D
    np.testing.assert_allclose(plain_epo.predict(Xtest + OFFSET), ytest, atol=1e-7 * np.abs(ytest).max())


@pytest.mark.parametrize("cls, params", [(EPO, {"n_directions": 0}), (EPO, {}), (TOP, {}), (GLSW, {})])
def test_no_transfer_gives_the_source_model(task, cls, params):
    """g = 0, or identical instruments (D = 0: no direction), is the plain source PLS model."""
    Xc, yc, Xtest, _ = task
    shift = (lambda rows: np.outer(amounts(len(rows), 7), NUISANCE)) if params else (lambda rows: 0.0 * Xc[rows])
    m = fitted(cls, task, shift, **params)
    assert m.directions_.shape[1] == 0
    assert m.model_ is m.source_model_
    np.testing.assert_array_equal(m.predict(Xtest), m.source_model_.predict(Xtest))
    assert m.chosen_params()["recalibrated_components"] == m.chosen_params()["source_components"]


def test_epo_projector_is_the_leading_right_singular_vectors(task):
    Xc, yc, _, _ = task
    rng = np.random.default_rng(5)
    Xt = Xc[:8] + rng.normal(scale=0.05, size=(8, P))
    m = EPO(n_directions=3).fit(source_data(Xc, yc)).transfer(standards(Xc[:8], Xt, yc[:8]))
    _, _, Vt = np.linalg.svd(Xt - Xc[:8])  # not centred
    Q = np.eye(P) - Vt[:3].T @ Vt[:3]
    np.testing.assert_allclose(m.filter_spectra(Xc), Xc @ Q, atol=1e-12)
    # the recalibrated model is the CV'd source PLS on the projected calibration
    from ctbench_classical._common import fit_source_pls

    ref = fit_source_pls(Xc @ Q, yc, 30, 0)
    np.testing.assert_allclose(m.predict(Xt), (Xt @ Q) @ ref.coef_ + ref.intercept_, atol=1e-9)


@pytest.mark.parametrize("center", [False, True])
def test_glsw_filter_matches_the_formula(task, center):
    Xc, yc, _, _ = task
    rng = np.random.default_rng(6)
    Xt = Xc[:8] + 0.05 + rng.normal(scale=0.05, size=(8, P))
    alpha = 0.01
    m = GLSW(alpha=alpha, center=center).fit(source_data(Xc, yc)).transfer(standards(Xc[:8], Xt, yc[:8]))
    D = Xt - Xc[:8]
    if center:
        D = D - D.mean(axis=0)
    _, s, Vt = np.linalg.svd(D, full_matrices=False)
    V = Vt.T
    G = V @ np.diag(1 / np.sqrt(s**2 / (alpha * s[0] ** 2) + 1)) @ V.T + (np.eye(P) - V @ V.T)
    np.testing.assert_allclose(m.filter_spectra(Xt), Xt @ G, atol=1e-12)
    from ctbench_classical._common import fit_source_pls

    ref = fit_source_pls(Xc @ G, yc, 30, 0)
    np.testing.assert_allclose(m.predict(Xt), (Xt @ G) @ ref.coef_ + ref.intercept_, atol=1e-9)


def test_glsw_cv_prefers_a_strong_filter_on_a_strong_artefact(task):
    m = fitted(GLSW, task, lambda rows: np.outer(amounts(len(rows), 7), NUISANCE))
    cp = m.chosen_params()
    assert cp["selected_by_cv"] and cp["cv_folds"] == 6
    assert m.selected_["alpha"] <= 1e-4  # the weakest filters leave the artefact in
    assert cp["cv_scores"][0] > 10 * min(cp["cv_scores"])


# --- the cross-validation ------------------------------------------------------------------------


def test_cv_drops_the_held_out_standards_source_rows(task, monkeypatch):
    """Each fold's weights: 0 on every standard's target row, 0 on the held-out samples' rows in
    the source calibration (matched by spectrum, then by sample id: replicates go too), 1 elsewhere."""
    Xc, yc, _, _ = task
    # calibration: 20 samples x 2 replicates; standards: 8 samples, one replicate row each
    Xrep = np.repeat(Xc[:20], 2, axis=0) + np.tile([[0.0], [1e-3]], (20, 1))
    yrep = np.repeat(yc[:20], 2, axis=0)
    groups = np.repeat([f"s{i}" for i in range(20)], 2)
    S = np.arange(0, 16, 2)  # first replicate of samples 0..7
    seen = []
    real = orth.weighted_pls1_dual

    def spy(grams, Y, D, counts, which=None, all_counts=False):
        if not all_counts:
            seen.append(D.copy())
        return real(grams, Y, D, counts, which, all_counts)

    monkeypatch.setattr(orth, "weighted_pls1_dual", spy)
    m = EPO(max_directions=2).fit(source_data(Xrep, yrep, groups))
    shift = np.outer(amounts(8, 7), NUISANCE)
    m.transfer(standards(Xrep[S], Xrep[S] + shift, yrep[S], groups[S]))
    assert len(seen) == 6  # 8 samples: 6 folds, samples dealt round-robin
    for f, D in enumerate(seen):
        held_samples = list(range(f, 8, 6))
        expect = np.ones(40 + 8)
        expect[40:] = 0.0
        for s in held_samples:
            expect[[2 * s, 2 * s + 1]] = 0.0  # both replicates of the held-out sample
        for row in D:
            np.testing.assert_array_equal(row, expect)


def test_cv_without_the_drop_would_leak(task, monkeypatch):
    """With the held-out standards' source rows kept, the refit has seen their reference values:
    the CV scores change (the drop matters for the choice's evidence)."""
    Xc, yc, _, _ = task
    rng = np.random.default_rng(11)
    Xn = Xc + rng.normal(scale=0.01, size=Xc.shape)
    yn = yc + rng.normal(scale=0.5, size=yc.shape)
    S = np.arange(8)
    std = standards(Xn[S], Xn[S] + np.outer(amounts(8, 7), NUISANCE), yn[S])
    honest = EPO(max_directions=3).fit(source_data(Xn, yn)).transfer(std).cv_scores_
    monkeypatch.setattr(orth, "source_rows_of", lambda samples, *a: [np.zeros(0, dtype=int) for _ in samples])
    leaky = EPO(max_directions=3).fit(source_data(Xn, yn)).transfer(std).cv_scores_
    # with the artefact projected out (g >= 1) the leaked rows make the held-out standards look
    # better predicted than they are (at g = 0 the artefact's error swamps the leak)
    assert np.all(leaky[1:] < 0.95 * honest[1:])


def test_replicate_standards_share_a_fold():
    rng = np.random.default_rng(2)
    X, y = lowrank(30, seed=4)
    X = X + rng.normal(scale=1e-3, size=X.shape)
    S = np.repeat(np.arange(4), 2)  # 4 samples, 2 replicate rows each
    Xs = X[S] + rng.normal(scale=1e-3, size=(8, P))
    std = standards(Xs, Xs + np.outer(amounts(8, 1), NUISANCE), y[S], groups=np.repeat(["a", "b", "c", "d"], 2))
    m = EPO().fit(source_data(X, y)).transfer(std)
    cp = m.chosen_params()
    assert cp["cv_folds"] == 4
    assert [c["n_directions"] for c in cp["cv_candidates"]] == [0, 1, 2, 3]  # up to samples - 1


def test_one_standard_sample_skips_the_cv(task):
    Xc, yc, _, _ = task
    std = standards(Xc[:2], Xc[:2] + NUISANCE, yc[:2], groups=np.array(["x", "x"]))
    for cls in ALL:
        m = cls().fit(source_data(Xc, yc)).transfer(std)
        assert m.chosen_params()["selected_by_cv"] is False
    assert EPO().fit(source_data(Xc, yc)).transfer(std).selected_ == {"n_directions": 0}


# --- parameters and the contract -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, params",
    [
        (EPO, {"n_directions": -1}),
        (EPO, {"n_directions": 1.5}),
        (EPO, {"n_directions": True}),
        (EPO, {"max_directions": -2}),
        (EPO, {"center": "yes"}),
        (EPO, {"max_components": 0}),
        (TOP, {"basis": "mean"}),
        (TOP, {"n_extra": -1}),
        (TOP, {"max_extra": None}),
        (TOP, {"max_components": 2.0}),
        (GLSW, {"alpha": 0}),
        (GLSW, {"alpha": float("nan")}),
        (GLSW, {"alphas": ()}),
        (GLSW, {"alphas": (1.0, -1.0)}),
        (GLSW, {"alphas": 3}),
        (GLSW, {"center": None}),
    ],
)
def test_bad_parameters_fail_in_fit_with_one_line(task, cls, params):
    Xc, yc, _, _ = task
    m = cls(**params)  # __init__ only stores
    with pytest.raises(ValueError) as err:
        m.fit(source_data(Xc, yc))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(cls.name + ":")


@pytest.mark.parametrize("cls", ALL)
def test_order_of_calls_is_enforced(task, cls):
    Xc, yc, _, _ = task
    with pytest.raises(RuntimeError):
        cls().transfer(standards(Xc[:4], Xc[:4], yc[:4]))
    m = cls().fit(source_data(Xc, yc))
    with pytest.raises(RuntimeError):
        m.predict(Xc)
    with pytest.raises(ValueError):
        m.transfer(standards(Xc[:1], Xc[:1], yc[:1]))  # min_shots = 2


@pytest.mark.parametrize("cls", ALL)
def test_deterministic_picklable_clonable_and_inputs_untouched(task, cls):
    Xc, yc, Xtest, _ = task
    rng = np.random.default_rng(9)
    Xt = Xc[:10] + 0.02 + rng.normal(scale=0.01, size=(10, P))
    Xs_copy, Xt_copy, Xtest_copy = Xc[:10].copy(), Xt.copy(), Xtest.copy()
    std = Standards(X_source=Xc[:10], X_target=Xt, y=yc[:10], axis=AXIS, axis_unit="nm", properties=PROPS)
    src = SourceData(X=Xc, y=yc, axis=AXIS, axis_unit="nm", properties=PROPS)
    params = {"random_state": 3}
    if cls is TOP:
        params["n_extra"] = None  # exercise the CV
    a = cls(**params).fit(src).transfer(std)
    b = a.clone().fit(src).transfer(std)
    assert a.clone().get_params() == a.get_params() == cls(**params).get_params()
    pa = a.predict(Xtest)
    np.testing.assert_array_equal(pa, b.predict(Xtest))
    np.testing.assert_array_equal(pa, pickle.loads(pickle.dumps(a)).predict(Xtest))
    assert a.chosen_params() == b.chosen_params()
    json.dumps(a.chosen_params())
    for arr, copy in [(Xc[:10], Xs_copy), (Xt, Xt_copy), (Xtest, Xtest_copy)]:
        np.testing.assert_array_equal(arr, copy)


@pytest.mark.parametrize("cls", ALL)
def test_chosen_params_report_source_and_transfer_choices(task, cls):
    m = fitted(cls, task, lambda rows: np.outer(amounts(len(rows), 7), NUISANCE))
    cp = m.chosen_params()
    for key in ("source_components", "recalibrated_components", "selected", "n_directions", "selected_by_cv",
                "cv_scores", "cv_candidates", "cv_components"):
        assert key in cp
    assert len(cp["source_components"]) == len(cp["recalibrated_components"]) == 2
    if cp["selected_by_cv"]:
        assert len(cp["cv_scores"]) == len(cp["cv_candidates"]) == len(cp["cv_components"])
    assert cls().fit(source_data(*task[:2])).chosen_params().keys() >= {"source_components"}


@pytest.mark.parametrize(
    "cls, values",
    [
        (EPO, {"center": True, "directions_by": "fixed", "n_directions": 2}),
        (EPO, {"center": False, "directions_by": "cv", "max_directions": 3}),
        (TOP, {"basis": "means", "extra_by": "fixed", "n_extra": 1}),
        (TOP, {"basis": "difference", "extra_by": "cv", "max_extra": 2}),
        (GLSW, {"center": False, "alpha_by": "fixed", "alpha": 0.01}),
        (GLSW, {"center": True, "alpha_by": "cv"}),
    ],
)
def test_search_space_gives_valid_params(task, cls, values):
    import optuna

    params = cls.search_space(optuna.trial.FixedTrial(values))
    assert set(params) <= set(cls.default_params())
    m = fitted(cls, task, lambda rows: 0.01 + np.outer(amounts(len(rows), 7), NUISANCE), **params)
    assert np.isfinite(m.predict(task[2])).all()


@pytest.mark.parametrize("cls", ALL)
def test_conforms(cls):
    from ctbench.testing import assert_conforms

    assert_conforms(cls)
