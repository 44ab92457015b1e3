"""SST (spectral space transformation) and CORAL (covariance alignment) on hand-built cases."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ctbench_classical._common import SpectralStandardization, sample_folds
from ctbench_classical.coral import ALPHA_GRID, CORAL
from ctbench_classical.sst import SST
from classical_builders import bands, one_blas_thread, readonly, source_data, standards  # noqa: F401  (one_blas_thread: autouse fixture)

BOTH = [SST, CORAL]


# --- builders ------------------------------------------------------------------------------


def lowrank(n: int, p: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spectra, y, concentrations): three Gaussian bands mixed linearly plus an offset (rank 3 after centring)."""
    rng = np.random.default_rng(seed)
    axis = np.arange(p, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    pure = bands(axis, [0.25 * p, 0.5 * p, 0.75 * p], [0.06 * p, 0.1 * p, 0.08 * p])
    return conc @ pure + 0.1, conc[:, :2] * np.array([10.0, 3.0]), conc


@pytest.fixture(scope="module")
def shifted_task():
    """Two instruments: target = source shifted by 2 channels, gain 1.1, sloped baseline, with noise."""
    rng = np.random.default_rng(3)
    n, p = 90, 50
    axis = np.arange(p + 4, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    full = conc @ bands(axis, [14, 27, 38], [3.0, 4.0, 3.5]) + rng.normal(scale=0.002, size=(n, p + 4))
    Xs = full[:, 2 : p + 2] + 0.05
    Xt = 1.1 * full[:, :p] + 0.08 + 0.002 * np.arange(p)
    y = conc[:, :2] * np.array([10.0, 5.0])
    cal, test = np.arange(60), np.arange(60, 90)
    S = cal[np.linspace(0, 59, 12).astype(int)]
    src = source_data(readonly(Xs[cal]), readonly(y[cal]))
    std = standards(readonly(Xs[S]), readonly(Xt[S]), readonly(y[S]))
    return src, std, readonly(Xt[test]), y[test]


def _exact_pair(seed: int = 1):
    """Source spectra (rank 3 + offset) and a target instrument that is an exact linear map of them."""
    X, y, _ = lowrank(60, seed=seed)
    p = X.shape[1]
    rng = np.random.default_rng(seed + 10)
    A = 1.1 * np.eye(p) + 0.02 * rng.normal(size=(p, p))  # mixes channels: not a gain, not banded
    return X, y, X @ A + 0.05 + 0.001 * np.arange(p)


# --- SST ------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"n_components": 3}, {"n_components": 7}, {"center": False, "n_components": 4},
                                    {"center": False}], ids=["loo", "k3", "k7", "raw-k4", "raw-loo"])
def test_sst_corrects_an_exact_linear_instrument_within_a_low_rank_space(params):
    """Centred, the joint matrix has rank 3 (4 on raw spectra, the offset being one more direction):
    any rank at or above it maps a target spectrum of that space to its exact source spectrum."""
    X, y, Xt = _exact_pair()
    m = SST(**params).fit(source_data(X[:40], y[:40]))
    m.transfer(standards(X[40:52], Xt[40:52], y[40:52]))
    np.testing.assert_allclose(m.transform_target(Xt[52:]), X[52:], atol=1e-8)
    np.testing.assert_allclose(m.predict(Xt[52:]), m.source_model_.predict(X[52:]), atol=1e-8)
    assert m.chosen_params()["selected_by_loo"] == ("n_components" not in params)


def test_sst_below_the_instrument_rank_is_not_exact():
    """The exact case above is not exact for every rank: one joint direction is not enough."""
    X, y, Xt = _exact_pair()
    m = SST(n_components=1).fit(source_data(X[:40], y[:40])).transfer(standards(X[40:52], Xt[40:52], y[40:52]))
    assert np.abs(m.transform_target(Xt[52:]) - X[52:]).max() > 1e-3


def test_sst_identity_instrument_gives_identity_and_keeps_what_the_standards_do_not_span():
    X, y, _ = lowrank(50, seed=2)
    rng = np.random.default_rng(0)
    Xn = X + rng.normal(scale=0.01, size=X.shape)
    m = SST().fit(source_data(Xn[:30], y[:30])).transfer(standards(Xn[30:40], Xn[30:40], y[30:40]))
    other = rng.normal(size=(5, X.shape[1]))  # anything at all, mostly outside the standards' span
    np.testing.assert_allclose(m.transform_target(other), other, atol=1e-10)
    # a real instrument difference: a direction orthogonal to the standards' spectra passes unchanged
    _, _, Xt = _exact_pair()
    m = SST(n_components=3).fit(source_data(X[:30], y[:30])).transfer(standards(X[30:40], Xt[30:40], y[30:40]))
    V, _ = np.linalg.qr(np.hstack([Xt[30:40].T, rng.normal(size=(X.shape[1], 1))]))
    v = V[:, -1]  # orthogonal to every target standard spectrum (so to their mean and loadings)
    np.testing.assert_allclose(m.transform_target(Xt[45:48] + v) - m.transform_target(Xt[45:48]),
                               np.tile(v, (3, 1)), atol=1e-10)


def test_sst_at_full_rank_is_ds_on_the_standards_span_and_identity_off_it():
    """With all N - 1 joint directions, SST maps the standards exactly, equals DS's minimum-norm map on
    the span of the centred target standards, and passes the rest of a spectrum through unchanged."""
    from ctbench_classical.ds import DS

    X, y, _ = lowrank(60)
    rng = np.random.default_rng(0)
    Xs = X + rng.normal(scale=0.01, size=X.shape)
    Xt = Xs @ (np.eye(60) + 0.1 * rng.normal(size=(60, 60))) + rng.normal(scale=0.01, size=X.shape)
    std = standards(Xs[40:50], Xt[40:50], y[40:50])
    m = SST(n_components=9).fit(source_data(Xs[:40], y[:40])).transfer(std)
    d = DS(n_components=9).fit(source_data(Xs[:40], y[:40])).transfer(std)
    np.testing.assert_allclose(m.transform_target(Xt[40:50]), Xs[40:50], atol=1e-12)
    mt = Xt[40:50].mean(axis=0)
    V = np.linalg.svd(Xt[40:50] - mt)[2][:9].T
    x = Xt[50:]
    inside = mt + (x - mt) @ V @ V.T
    np.testing.assert_allclose(m.transform_target(x), d.transform_target(inside) + (x - inside), atol=1e-12)


def test_sst_leave_one_out_picks_the_instrument_rank():
    """A target that is a linear map of a rank-3 chemistry, plus noise on both sides: fewer than 3 joint
    directions miss part of the chemistry (10 x the error); more add only noise directions, whose
    correction is small because SST passes what they do not explain through unchanged, so the scores
    are flat from 3 on and the choice among them is the noise's."""
    X, y, Xt = _exact_pair(seed=4)
    rng = np.random.default_rng(5)
    Xs_n = X + rng.normal(scale=2e-3, size=X.shape)
    Xt_n = Xt + rng.normal(scale=2e-3, size=X.shape)
    m = SST().fit(source_data(Xs_n[:40], y[:40])).transfer(standards(Xs_n[40:55], Xt_n[40:55], y[40:55]))
    assert len(m.loo_scores_) == 13  # ranks 1 .. N - 2
    best = m.loo_scores_.min()
    assert m.selected_["n_components"] >= 3 and m.loo_scores_[m.selected_["n_components"] - 1] == best
    assert min(m.loo_scores_[:2]) > 5 * best and m.loo_scores_[2] < 1.05 * best


def test_sst_equals_the_open_pynir_implementation_on_a_real_split(mirror):
    """Test-only cross-check against pynir's SST (raw spectra, no centring): on corn m5 -> mp6, repetition
    0, N = 10, the corrected spectra agree with ``center=False``; with centring they agree with pynir
    fitted on the centred standards plus the source standards' mean."""
    pynir_ct = pytest.importorskip("pynir.CalibrationTransfer")
    from ctbench.runner import _split, source_for, standards_for
    from ctbench.tuning import load_task

    task = load_task("corn_m5_mp6")
    split, _ = _split(task, 10, 0, 0)
    std = standards_for(task, split.standard_rows)
    X_test = task.X_target[split.test_rows]
    src = source_for(task, SST)
    Xs, Xt = np.asarray(std.X_source), np.asarray(std.X_target)
    for k in (2, 5):
        ours = SST(n_components=k, center=False).fit(src).transfer(std).transform_target(X_test)
        theirs = pynir_ct.SST(n_components=k).fit(Xs, Xt).transform(X_test)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8 * np.abs(theirs).max())
        ms, mt = Xs.mean(axis=0), Xt.mean(axis=0)
        ours = SST(n_components=k).fit(src).transfer(std).transform_target(X_test)
        theirs = pynir_ct.SST(n_components=k).fit(Xs - ms, Xt - mt).transform(X_test - mt) + ms
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8 * np.abs(theirs).max())


# --- CORAL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [None, 1e-3, 10.0])
def test_coral_undoes_a_pure_gain_and_offset(alpha):
    X, y, _ = lowrank(60, seed=1)
    X = X + np.random.default_rng(1).normal(scale=0.01, size=X.shape)  # full-rank spectra
    Xt = 1.3 * X + 0.05 + 0.001 * np.arange(X.shape[1])  # gain and a sloped offset
    m = CORAL(alpha=alpha).fit(source_data(X[:40], y[:40])).transfer(standards(X[40:52], Xt[40:52], y[40:52]))
    np.testing.assert_allclose(m.transform_target(Xt[52:]), X[52:], atol=1e-10)
    np.testing.assert_allclose(m.predict(Xt[52:]), m.source_model_.predict(X[52:]), atol=1e-8)


def test_coral_identity_instrument_gives_identity():
    X, y, _ = lowrank(50, seed=2)
    X = X + np.random.default_rng(2).normal(scale=0.01, size=X.shape)
    other = np.random.default_rng(3).normal(size=(4, X.shape[1]))
    for alpha in (None, 1e-3):
        m = CORAL(alpha=alpha).fit(source_data(X[:30], y[:30])).transfer(standards(X[30:40], X[30:40], y[30:40]))
        np.testing.assert_allclose(m.transform_target(other), other, atol=1e-10)


def test_coral_map_is_the_dense_formula():
    """The thin factors equal C_t^{-1/2} C_s^{1/2} built densely (p x p eigen-decompositions)."""
    X, y, _ = lowrank(40, p=30, seed=3)
    rng = np.random.default_rng(4)
    Xs = X + rng.normal(scale=0.01, size=X.shape)
    Xt = Xs @ (np.eye(30) + 0.1 * rng.normal(size=(30, 30))) + 0.02
    alpha = 0.1
    m = CORAL(alpha=alpha).fit(source_data(Xs[:25], y[:25])).transfer(standards(Xs[25:35], Xt[25:35], y[25:35]))

    def power(Xc, q):
        C = np.cov(Xc, rowvar=False)
        C = C + alpha * np.trace(C) / C.shape[0] * np.eye(C.shape[0])
        e, V = np.linalg.eigh(C)
        return (V * e**q) @ V.T

    ms, mt = Xs[25:35].mean(axis=0), Xt[25:35].mean(axis=0)
    dense = ms + (Xt[35:] - mt) @ power(Xt[25:35], -0.5) @ power(Xs[25:35], 0.5)
    np.testing.assert_allclose(m.transform_target(Xt[35:]), dense, atol=1e-9)
    np.testing.assert_allclose(m.transfer_matrix_, power(Xt[25:35], -0.5) @ power(Xs[25:35], 0.5), atol=1e-9)


def test_coral_calibration_covariance_uses_the_whole_source_calibration():
    X, y, _ = lowrank(60, seed=1)
    X = X + np.random.default_rng(1).normal(scale=0.01, size=X.shape)
    Xt = 1.3 * X + 0.05
    std = standards(X[40:52], Xt[40:52], y[40:52])
    paired = CORAL(alpha=1.0).fit(source_data(X[:40], y[:40])).transfer(std)
    cal = CORAL(alpha=1.0, source_covariance="calibration").fit(source_data(X[:40], y[:40])).transfer(std)
    V, e, tr = cal.calibration_covariance_
    C = np.cov(X[:40], rowvar=False)
    np.testing.assert_allclose((V * e) @ V.T, C, atol=1e-12)
    assert tr == pytest.approx(np.trace(C))
    # the means stay paired: the target standards' mean maps to the source standards' mean
    mt = Xt[40:52].mean(axis=0, keepdims=True)
    np.testing.assert_allclose(cal.transform_target(mt), X[40:52].mean(axis=0, keepdims=True), atol=1e-12)
    assert not np.allclose(cal.transform_target(Xt[52:]), paired.transform_target(Xt[52:]), atol=1e-6)


def test_coral_leave_one_out_keeps_the_ridge_strong_for_a_gain_with_noise():
    """Target = 1.2 x source + offset, independent noise on each instrument: the instruments differ by a
    gain only, which the strongest ridge (close to a pure gain-and-offset map) captures, while weaker
    ridges re-colour along the standards' noisy directions; the scores rise as the ridge weakens."""
    X, y, _ = lowrank(60, seed=6)
    rng = np.random.default_rng(6)
    Xs = X + rng.normal(scale=3e-3, size=X.shape)
    Xt = 1.2 * X + 0.05 + rng.normal(scale=3e-3, size=X.shape)
    m = CORAL().fit(source_data(Xs[:40], y[:40])).transfer(standards(Xs[40:55], Xt[40:55], y[40:55]))
    assert m.selected_ == {"alpha": max(ALPHA_GRID)}
    assert np.all(np.diff(m.loo_scores_) > 0) and m.loo_scores_[-1] > 1.5 * m.loo_scores_[0]


def test_coral_leave_one_out_weakens_the_ridge_when_the_instrument_recolours_the_chemistry():
    """Target = source with a different gain along each of the standards' principal directions (1.5,
    0.6, 2.5): a global gain cannot undo it, whitening and re-colouring can (not exactly in the folds,
    whose principal directions differ a little), so the strongest ridge loses by far."""
    X, y, _ = lowrank(60, seed=6)
    _, _, Vt = np.linalg.svd(X[40:55] - X[40:55].mean(axis=0), full_matrices=False)
    V = Vt[:3].T
    Xt = X @ (np.eye(X.shape[1]) + V @ np.diag([0.5, -0.4, 1.5]) @ V.T) + 0.05
    m = CORAL().fit(source_data(X[:40], y[:40])).transfer(standards(X[40:55], Xt[40:55], y[40:55]))
    assert m.selected_["alpha"] <= 1.0
    assert m.loo_scores_[0] > 3 * m.loo_scores_.min()


# --- both -----------------------------------------------------------------------------------


def _loo_errors_both(m, std, folds):
    Xs, Xt = np.asarray(std.X_source, dtype=float), np.asarray(std.X_target, dtype=float)
    cands = m._candidates(Xs.shape[0])
    return m._loo_errors(Xs, Xt, cands, folds), SpectralStandardization._loo_errors(m, Xs, Xt, cands, folds)


@pytest.mark.parametrize("grouped", [False, True], ids=["rows", "samples"])
@pytest.mark.parametrize("cls,params", [(SST, {}), (SST, {"center": False}), (CORAL, {}),
                                        (CORAL, {"source_covariance": "calibration"})],
                         ids=["sst", "sst-raw", "coral", "coral-calibration"])
def test_closed_form_leave_one_out_equals_refitting_each_fold(cls, params, grouped, shifted_task):
    src, std, _, _ = shifted_task
    m = cls(**params).fit(src)
    n = std.X_source.shape[0]
    groups = np.array([f"s{i // 2}" for i in range(n)]) if grouped else None
    folds = sample_folds(groups, n)
    assert len(folds) == (n // 2 if grouped else n)
    fast, ref = _loo_errors_both(m, std, folds)
    assert fast.shape == ref.shape == (len(m._candidates(n)), n, 2)
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.name)
def test_reduces_the_error_of_a_shift(cls, shifted_task):
    src, std, X_test, y_test = shifted_task
    m = cls().fit(src)
    no_transfer = np.sqrt(((m.source_model_.predict(X_test) - y_test) ** 2).mean())
    err = np.sqrt(((m.transfer(std).predict(X_test) - y_test) ** 2).mean())
    assert err < 0.5 * no_transfer, f"{cls.name}: {err:.3f} vs no transfer {no_transfer:.3f}"


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.name)
def test_pickle_clone_and_determinism(cls, shifted_task):
    src, std, X_test, _ = shifted_task
    m = cls().fit(src).transfer(std)
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.predict(X_test), m.predict(X_test))
    np.testing.assert_allclose(cls().fit(src).transfer(std).predict(X_test), m.predict(X_test), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.predict(X_test), m.source_model_.predict(m.transform_target(X_test)))
    assert m.predict(X_test).shape == (X_test.shape[0], 2)
    c = m.clone()
    assert type(c) is cls and c.get_params() == m.get_params() and not hasattr(c, "map_")
    assert m.chosen_params()["selected_by_loo"] is True and "source_components" in m.chosen_params()


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.name)
def test_inputs_are_not_mutated(cls, shifted_task):
    src, std, X_test, _ = shifted_task  # read-only arrays: an in-place write would raise
    writable = [np.array(a) for a in (src.X, src.y, std.X_source, std.X_target, std.y, X_test)]
    before = [a.copy() for a in writable]
    m = cls().fit(source_data(writable[0], writable[1]))
    m.transfer(standards(writable[2], writable[3], writable[4]))
    m.predict(writable[5])
    m.transform_target(writable[5])
    for a, b in zip(writable, before):
        np.testing.assert_array_equal(a, b)
    cls().fit(src).transfer(std).predict(X_test)


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.name)
def test_tags_version_and_two_standards(cls, shifted_task):
    src, std, X_test, _ = shifted_task
    assert cls.tags.min_shots == 2 and cls.tags.corrects_spectra and not cls.tags.transductive
    assert cls.version == "1" and set(cls.default_params()) >= {"max_components", "random_state"}
    two = standards(std.X_source[:2], std.X_target[:2], std.y[:2])
    m = cls().fit(src).transfer(two)
    assert np.isfinite(m.predict(X_test)).all() and m.chosen_params()["selected_by_loo"] is False
    with pytest.raises(ValueError, match="at least 2"):
        cls().fit(src).transfer(standards(std.X_source[:1], std.X_target[:1], std.y[:1]))


@pytest.mark.parametrize("cls,bad", [(SST, {"n_components": 0}), (SST, {"center": "yes"}), (CORAL, {"alpha": 0.0}),
                                     (CORAL, {"alpha": -1.0}), (CORAL, {"source_covariance": "pool"})])
def test_bad_parameters_are_one_line_errors(cls, bad, shifted_task):
    with pytest.raises(ValueError, match=f"^{cls.name}: ") as err:
        cls(**bad).fit(shifted_task[0])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cls,values", [(SST, {"n_components": 4, "center": False}),
                                        (CORAL, {"alpha": 0.05, "source_covariance": "calibration"})],
                         ids=["sst", "coral"])
def test_search_space_with_a_fixed_trial(cls, values, shifted_task):
    import optuna

    params = cls.search_space(optuna.trial.FixedTrial(values))
    assert params == values
    src, std, X_test, _ = shifted_task
    m = cls(**params).fit(src).transfer(std)
    assert np.isfinite(m.predict(X_test)).all() and m.chosen_params()["selected_by_loo"] is False


@pytest.mark.parametrize("cls", BOTH, ids=lambda c: c.name)
def test_conformance_kit(cls):
    from ctbench.testing import assert_conforms

    assert_conforms(cls)
