"""The classical calibration-transfer methods (plugins/ctbench_classical) on hand-built cases."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from ctbench.method import SourceData, Standards, TransferMethod
from ctbench.pls import PLSCalibration
from ctbench_classical import CCA, DIPLS, DS, GCTPLS, MDIPLS, PDS, SBC, DIPLSTransductive, ctbench_register_methods
from ctbench_classical.dipls import fit_dipls_vector, fit_gct_vector
from ctbench_classical.pds import _batched_pls1_path, _batched_svd_solve, _windows
from classical_builders import PROPS, bands, one_blas_thread, readonly, source_data, standards  # noqa: F401  (one_blas_thread: autouse fixture)

ALL = [SBC, DS, PDS, CCA, DIPLS, DIPLSTransductive, MDIPLS, GCTPLS]


# --- builders ------------------------------------------------------------------------------


def lowrank(n: int, p: int = 60, seed: int = 0, extra: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spectra, y, axis): three Gaussian-band components mixed linearly, plus an offset; rank 3 after centring."""
    rng = np.random.default_rng(seed)
    axis = np.arange(p + extra, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    pure = bands(axis, [0.25 * p, 0.5 * p, 0.75 * p], [0.06 * p, 0.1 * p, 0.08 * p])
    X = conc @ pure + 0.1
    y = conc[:, :2] * np.array([10.0, 3.0])
    return X, y, axis


@pytest.fixture(scope="module")
def shifted_task():
    """A small two-instrument task: target = source shifted by 2 channels, gain 1.1, sloped baseline."""
    rng = np.random.default_rng(3)
    n, p = 90, 50
    axis = np.arange(p + 4, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    pure = bands(axis, [14, 27, 38], [3.0, 4.0, 3.5])
    full = conc @ pure + rng.normal(scale=0.002, size=(n, p + 4))
    Xs = full[:, 2 : p + 2] + 0.05
    Xt = 1.1 * full[:, :p] + 0.08 + 0.002 * np.arange(p)
    y = conc[:, :2] * np.array([10.0, 5.0])
    cal, test = np.arange(60), np.arange(60, 90)
    S = cal[np.linspace(0, 59, 12).astype(int)]
    src = source_data(readonly(Xs[cal]), readonly(y[cal]))
    std = standards(readonly(Xs[S]), readonly(Xt[S]), readonly(y[S]))
    return src, std, readonly(Xt[test]), y[test], readonly(Xs[test])


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(((pred - y) ** 2).mean()))


# --- registration and contract ---------------------------------------------------------------


def test_hook_registers_the_classical_methods():
    from ctbench_classical import ModelUpdate

    from ctbench_classical import CORAL, SST

    classes = ctbench_register_methods()
    assert classes[:9] == [SBC, ModelUpdate] + ALL[1:]
    assert [c.name for c in classes] == [
        "sbc", "model_update", "ds", "pds", "cca", "dipls", "dipls_t", "mdipls", "gctpls",
        "sst", "coral", "epo", "top", "glsw", "pfce_ns", "pfce_ss", "pfce_fs", "jypls", "prep_sbc",
    ]
    for cls in classes:
        assert issubclass(cls, TransferMethod)
        assert "random_state" in cls.default_params()
        assert cls.tags.corrects_spectra == (cls in (DS, PDS, CCA, SST, CORAL))
    assert DIPLSTransductive.tags.transductive and DIPLSTransductive.tags.zero_shot
    assert not any(c.tags.transductive or c.tags.zero_shot for c in classes if c is not DIPLSTransductive)
    assert {DS.tags.min_shots, PDS.tags.min_shots, CCA.tags.min_shots, MDIPLS.tags.min_shots} == {2}


def test_methods_are_found_through_the_entry_point():
    from ctbench.plugins import load_methods

    methods = load_methods()
    for cls in ALL:
        assert methods[cls.name].cls is cls


# --- SBC -------------------------------------------------------------------------------------


def test_sbc_recovers_known_slope_and_bias():
    X, y, _ = lowrank(40, seed=1)
    m = SBC().fit(source_data(X[:30], y[:30]))
    yhat = m.source_model_.predict(X[30:])
    slope, bias = np.array([0.8, 1.3]), np.array([2.0, -0.5])
    y_std = bias + slope * yhat  # the reference values the target instrument "needs"
    m.transfer(standards(X[30:], X[30:], y_std))
    np.testing.assert_allclose(m.slope_, slope, rtol=1e-9)
    np.testing.assert_allclose(m.intercept_, bias, atol=1e-9)
    np.testing.assert_allclose(m.predict(X[:5]), bias + slope * m.source_model_.predict(X[:5]), atol=1e-9)


def test_sbc_corrects_only_the_bias_below_three_standards():
    X, y, _ = lowrank(40, seed=1)
    m = SBC().fit(source_data(X[:30], y[:30]))
    yhat = m.source_model_.predict(X[30:32])
    m.transfer(standards(X[30:32], X[30:32], yhat * 2.0 + 1.0))
    np.testing.assert_array_equal(m.slope_, [1.0, 1.0])
    np.testing.assert_allclose(m.intercept_, (yhat * 2.0 + 1.0 - yhat).mean(axis=0))
    one = SBC().fit(source_data(X[:30], y[:30])).transfer(standards(X[30:31], X[30:31], y[30:31]))
    assert np.isfinite(one.predict(X[:3])).all()
    bias_only = SBC(mode="bias").fit(source_data(X[:30], y[:30])).transfer(standards(X[30:], X[30:], y[30:] + 1.0))
    np.testing.assert_array_equal(bias_only.slope_, [1.0, 1.0])


# --- DS and CCA: an exact linear instrument map --------------------------------------------------


def linear_instrument(p: int = 60):
    """target = source @ M + offset with an invertible, band-coupled M."""
    X, y, _ = lowrank(70, p=p, seed=2)
    rng = np.random.default_rng(5)
    M = 1.1 * np.eye(p) + 0.08 * np.eye(p, k=1) - 0.05 * np.eye(p, k=-2) + 0.01 * rng.normal(size=(p, p))
    offset = 0.03 + 0.001 * np.arange(p)
    Xt = X @ M + offset
    return X, Xt, y


@pytest.mark.parametrize("params", [{}, {"n_components": 3}, {"regularization": "ridge", "alpha": 1e-12}])
def test_ds_recovers_an_exact_linear_instrument_map(params):
    X, Xt, y = linear_instrument()
    m = DS(**params).fit(source_data(X[:50], y[:50])).transfer(standards(X[50:60], Xt[50:60], y[50:60]))
    test = slice(60, 70)
    np.testing.assert_allclose(m.transform_target(Xt[test]), X[test], atol=1e-8)
    np.testing.assert_allclose(m.predict(Xt[test]), m.source_model_.predict(X[test]), atol=1e-6)


def test_ds_restores_a_pure_offset():
    """The standards' mean difference is restored (an instrument that only adds an offset)."""
    X, y, _ = lowrank(40, seed=4)
    m = DS().fit(source_data(X[:30], y[:30])).transfer(standards(X[30:], X[30:] + 0.5, y[30:]))
    np.testing.assert_allclose(m.transform_target(X[:5] + 0.5), X[:5], atol=1e-10)


def test_cca_maps_an_exact_linear_instrument():
    X, Xt, y = linear_instrument()
    m = CCA(n_components=3, n_canonical=3).fit(source_data(X[:50], y[:50]))
    m.transfer(standards(X[50:60], Xt[50:60], y[50:60]))
    np.testing.assert_allclose(m.canonical_correlations_, 1.0, atol=1e-8)  # an exact map: perfectly correlated
    np.testing.assert_allclose(m.predict(Xt[60:]), m.source_model_.predict(X[60:]), atol=1e-6)
    auto = CCA().fit(source_data(X[:50], y[:50])).transfer(standards(X[50:60], Xt[50:60], y[50:60]))
    np.testing.assert_allclose(auto.predict(Xt[60:]), auto.source_model_.predict(X[60:]), atol=1e-6)


def test_cca_keeps_fewer_canonical_pairs_than_pcs():
    X, Xt, y = linear_instrument()
    rng = np.random.default_rng(0)
    X, Xt = X + rng.normal(scale=1e-3, size=X.shape), Xt + rng.normal(scale=1e-3, size=Xt.shape)
    m = CCA(n_components=6, n_canonical=2).fit(source_data(X[:50], y[:50]))
    m.transfer(standards(X[40:60], Xt[40:60], y[40:60]))
    assert m.map_[2].shape[1] == 2 and m.canonical_correlations_.shape == (6,)
    assert np.all(np.diff(m.canonical_correlations_) <= 1e-12)


# --- PDS ----------------------------------------------------------------------------------------


def shifted(shift: int, n: int = 40, p: int = 80, seed: int = 6):
    """Source spectra and target spectra that are the same spectra seen `shift` channels later."""
    X, y, _ = lowrank(n, p=p + shift, seed=seed)
    return X[:, shift:], X[:, : p], y  # source[:, i] = target[:, i + shift]


@pytest.mark.parametrize("shift", [1, 2])
@pytest.mark.parametrize("params", [{}, {"solver": "tsvd", "n_components": 3}, {"solver": "ridge", "alpha": 1e-12}])
def test_pds_recovers_a_pure_wavelength_shift(shift, params):
    Xs, Xt, y = shifted(shift)
    h = 3
    m = PDS(half_window=h, **params).fit(source_data(Xs[:25], y[:25])).transfer(standards(Xs[25:35], Xt[25:35], y[25:35]))
    Z = m.transform_target(Xt[35:])
    inner = slice(h, Xs.shape[1] - h)
    # TSVD solves each window exactly; local PLS (NIPALS, 3 latent variables on nearly
    # collinear 7-channel windows) reaches the same solution up to its round-off.
    # Ridge is biased wherever a window's singular values fall near sqrt(alpha) * s_max.
    tol = {"pls": 1e-4, "ridge": 1e-5}.get(params.get("solver", "pls"), 1e-8)
    np.testing.assert_allclose(Z[:, inner], Xs[35:, inner], atol=tol * np.abs(Xs).max())
    assert np.abs(Z - Xs[35:]).max() < 0.1 * np.abs(Xs).max()  # the truncated ends stay sane


@pytest.mark.parametrize("step,expected", [(2.0, [1, 2, 4, 8]), (0.5, [4, 8, 16]), (8.0, [1, 2]), (1.0, [2, 4, 8, 16])])
def test_pds_window_candidates_are_given_in_axis_units(step, expected):
    X, y, _ = lowrank(30, p=40)
    src = SourceData(X=X, y=y, axis=1000.0 + step * np.arange(40), axis_unit="nm", properties=PROPS)
    m = PDS().fit(src)
    assert m.half_windows() == expected
    assert PDS(half_window=3).fit(src).half_windows() == [3]
    assert PDS(half_widths=(6.0,)).fit(src).half_windows() == [max(1, min(16, round(6.0 / step)))]


def test_pds_chooses_a_window_wide_enough_for_the_shift():
    # target = source seen 5 channels later, spectra of 10 rough (white-noise) components, so no
    # window of +-1 .. +-4 channels holds the source channel's information; +-8 (16 nm on this 2 nm
    # grid) does. The leave-one-out over the standards must see it and report it in nm.
    rng = np.random.default_rng(1)
    n, p, shift = 80, 90, 5
    conc = rng.uniform(0.1, 1.0, size=(n, 10))
    X = conc @ rng.normal(size=(10, p + shift))
    y = conc[:, :2] * np.array([10.0, 3.0])
    Xs, Xt = X[:, shift:], X[:, :p]
    axis = 2.0 * np.arange(p)
    src = SourceData(X=Xs[:40], y=y[:40], axis=axis, axis_unit="nm", properties=PROPS)
    std = Standards(X_source=Xs[40:60], X_target=Xt[40:60], y=y[40:60], axis=axis, axis_unit="nm", properties=PROPS)
    m = PDS().fit(src).transfer(std)
    assert m.selected_["half_window"] == 8
    chosen = m.chosen_params()
    assert chosen["selected_by_loo"] and chosen["half_width"] == 16.0 and chosen["axis_unit"] == "nm"
    err = rmse(m.predict(Xt[60:]), y[60:])
    narrow = [rmse(PDS(half_window=h).fit(src).transfer(std).predict(Xt[60:]), y[60:]) for h in (1, 2, 4)]
    assert err < 0.3 * narrow[0] and err < 0.4 * narrow[1] and err < 0.75 * narrow[2]


def test_pds_leave_one_out_in_chunks_equals_all_at_once(shifted_task, monkeypatch):
    from ctbench_classical import pds as pds_module
    from ctbench_classical._common import sample_folds

    src, std, _, _, _ = shifted_task
    m = PDS().fit(src)
    n = std.X_source.shape[0]
    Xs, Xt = np.asarray(std.X_source, float), np.asarray(std.X_target, float)
    cands = m._candidates(n)
    for groups in (None, np.asarray([f"s{i // 2}" for i in range(n)])):
        folds = sample_folds(groups, n)
        whole = m._loo_errors(Xs, Xt, cands, folds)
        monkeypatch.setattr(pds_module, "LOO_CHUNK_FLOATS", 1)  # one fold at a time
        parts = m._loo_errors(Xs, Xt, cands, folds)
        monkeypatch.undo()
        np.testing.assert_allclose(parts, whole, rtol=1e-10, atol=1e-12 * np.abs(whole).max())


def test_pds_vectorized_equals_a_loop_over_channels_with_truncated_windows():
    rng = np.random.default_rng(7)
    n, p, h = 9, 12, 2
    Xt = rng.normal(size=(n, p))
    Xs = Xt @ rng.normal(size=(p, p)) * 0.3 + rng.normal(size=(n, p))
    Tc, Sc = Xt - Xt.mean(0), Xs - Xs.mean(0)
    Xw = _windows(Tc, h)
    pls = _batched_pls1_path(Xw, np.ascontiguousarray(Sc.T), 3)
    svd = _batched_svd_solve(Xw, np.ascontiguousarray(Sc.T), [("tsvd", 2, 0.0), ("ridge", 0, 0.1)])
    for i in range(p):
        lo, hi = max(0, i - h), min(p, i + h + 1)
        A, b = Tc[:, lo:hi], Sc[:, i]
        cols = slice(lo - (i - h), lo - (i - h) + (hi - lo))  # the truncated window inside the padded one
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        np.testing.assert_allclose(svd[0][i, cols], Vt[:2].T @ (U[:, :2].T @ b / s[:2]), atol=1e-10)
        lam = 0.1 * s[0] ** 2
        np.testing.assert_allclose(svd[1][i, cols], np.linalg.solve(A.T @ A + lam * np.eye(hi - lo), A.T @ b), atol=1e-10)
        # PLS1 with 3 latent variables (NIPALS, reference written out here)
        E, f, W, P, c = A.copy(), b.copy(), [], [], []
        for _ in range(3):
            w = E.T @ f
            w /= np.linalg.norm(w)
            t = E @ w
            pa, ca = E.T @ t / (t @ t), f @ t / (t @ t)
            E, f = E - np.outer(t, pa), f - ca * t
            W.append(w), P.append(pa), c.append(ca)
        W_, P_ = np.array(W).T, np.array(P).T
        np.testing.assert_allclose(pls[i, cols, 2], W_ @ np.linalg.solve(P_.T @ W_, np.array(c)), atol=1e-8)
        outside = np.ones(2 * h + 1, dtype=bool)
        outside[cols] = False
        assert np.abs(svd[0][i, outside]).max(initial=0) < 1e-12 and np.all(pls[i, outside, 2] == 0)


def test_pds_transfer_of_700_channels_builds_a_banded_map():
    # speed is measured by `ctbench bench transfer --method pds`, not asserted here
    rng = np.random.default_rng(8)
    n, p = 30, 700
    Xt = np.cumsum(rng.normal(size=(n, p)), axis=1) * 0.01
    Xs = Xt + 0.01 * rng.normal(size=(n, p))
    m = PDS(half_window=5, n_components=2)
    m.source_model_ = PLSCalibration(n_components=2).fit(Xs, rng.normal(size=(n, 2)))  # skip the CV
    m.n_channels_, m.n_properties_, m.y_scale_, m.axis_step_ = p, 2, np.ones(2), 1.0
    m.transfer(standards(Xs, Xt, np.zeros((n, 2))))
    assert m.transfer_matrix_.shape == (p, p)


# --- di-PLS family --------------------------------------------------------------------------------


def _ref_dipls(x, y, xs, xt, A, l, gct=False):
    """Full-space di-PLS / GCT-PLS written from the papers (target always deflated), for comparison."""
    x, y = x - x.mean(0), (y - y.mean())[:, None]
    if gct:
        D = (xs - xt).T @ (xs - xt) / len(xs)
    else:
        xs, xt = xs - xs.mean(0), xt - xt.mean(0)
    W, P, C = [], [], []
    for _ in range(A):
        w_pls = (y.T @ x) / (y.T @ y)
        if not gct:
            ev, V = np.linalg.eigh(xs.T @ xs / len(xs) - xt.T @ xt / len(xt))
            D = (V * np.abs(ev)) @ V.T
        w = np.linalg.solve(np.eye(x.shape[1]) + l / (y.T @ y) * D, w_pls.T).T
        w /= np.linalg.norm(w)
        t = x @ w.T
        c, p = (y.T @ t) / (t.T @ t), (t.T @ x) / (t.T @ t)
        if not gct:
            ts, tt = xs @ w.T, xt @ w.T
            xs, xt = xs - ts @ ((ts.T @ xs) / (ts.T @ ts)), xt - tt @ ((tt.T @ xt) / (tt.T @ tt))
        x, y = x - t @ p, y - t * c
        W.append(w.ravel()), P.append(p.ravel()), C.append(c.item())
    W, P = np.array(W).T, np.array(P).T
    return W @ np.linalg.solve(P.T @ W, np.array(C))


@pytest.mark.parametrize("l", [0.0, 1.0, 300.0])
def test_dipls_subspace_fit_equals_the_full_space_algorithm(l):
    rng = np.random.default_rng(0)
    p = 50
    X = np.cumsum(rng.normal(size=(30, p)), axis=1)
    y = X[:, 10] + rng.normal(size=30)
    xt = np.cumsum(rng.normal(size=(12, p)), axis=1) * 1.1 + 0.5
    xs = X[:12]
    Xc, yc = X - X.mean(0), y - y.mean()
    b = fit_dipls_vector(Xc, yc, xs - xs.mean(0), xt - xt.mean(0), 3, l)
    np.testing.assert_allclose(b, _ref_dipls(X, y, xs, xt, 3, l), rtol=1e-8, atol=1e-10)
    g = fit_gct_vector(Xc, yc, xs - xt, 3, l)
    np.testing.assert_allclose(g, _ref_dipls(X, y, xs, xt, 3, l, gct=True), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cls", [DIPLS, GCTPLS, MDIPLS, DIPLSTransductive], ids=lambda c: c.name)
def test_domain_invariant_methods_reduce_the_error_of_a_shift(cls, shifted_task):
    """Defaults (LVs and l chosen on the source calibration) on a shift + gain + baseline instrument."""
    src, std, X_test, y_test, _ = shifted_task
    no_transfer = rmse(PLSCalibration(random_state=0).fit(src.X, src.y).predict(X_test), y_test)
    m = cls().fit(src)
    m.transfer(std, unlabelled=X_test if cls.tags.transductive else None)
    err = rmse(m.predict(X_test), y_test)
    assert err < 0.4 * no_transfer, f"{cls.name}: {err:.3f} vs no transfer {no_transfer:.3f}"


def test_gctpls_pair_penalty_helps_where_pairs_are_informative(shifted_task):
    """GCT-PLS pulls paired standards together in latent space: a strong penalty beats none here."""
    src, std, X_test, y_test, _ = shifted_task
    plain = GCTPLS(n_components=3, l=0.0).fit(src).transfer(std)
    strong = GCTPLS(n_components=3, l=1000.0).fit(src).transfer(std)
    assert rmse(strong.predict(X_test), y_test) < 0.7 * rmse(plain.predict(X_test), y_test)


def test_dipls_defaults_choose_components_and_l_on_the_source(shifted_task):
    src, std, X_test, y_test, _ = shifted_task
    m = DIPLS().fit(src)
    cv = PLSCalibration(random_state=0).fit(src.X, src.y)
    np.testing.assert_array_equal(m.n_components_, cv.n_components_)
    m.transfer(std)
    assert m.l_.shape == (2,) and np.all(m.l_ >= 0)
    assert rmse(m.predict(X_test), y_test) < 0.5 * rmse(cv.predict(X_test), y_test)


def test_dipls_t_runs_zero_shot_on_the_unlabelled_spectra(shifted_task):
    src, std, X_test, y_test, _ = shifted_task
    empty = standards(np.zeros((0, 50)), np.zeros((0, 50)), np.zeros((0, 2)))
    m = DIPLSTransductive().fit(src).transfer(empty, unlabelled=X_test)
    base = PLSCalibration(random_state=0).fit(src.X, src.y)
    # without standards only the offset and the covariance shift are corrected, not the gain
    assert rmse(m.predict(X_test), y_test) < 0.6 * rmse(base.predict(X_test), y_test)
    with pytest.raises(ValueError, match="unlabelled"):
        DIPLSTransductive().fit(src).transfer(std)


# --- the contract for every method ------------------------------------------------------------------


def _run(cls, task, **params):
    src, std, X_test, _, _ = task
    m = cls(**params).fit(src)
    m.transfer(std, unlabelled=X_test if cls.tags.transductive else None)
    return m


FAST = {DIPLS: {"l": 1.0}, DIPLSTransductive: {"l": 1.0}, MDIPLS: {"l": 1.0}, GCTPLS: {"l": 1.0}}
"""Fixed l for the contract tests (skips the CV over l, which the tests above cover)."""


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_search_space_suggests_valid_parameters(cls, shifted_task):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    names = set(cls._param_names())
    for i in range(6):
        params = cls.search_space(study.ask())
        assert isinstance(params, dict) and set(params) <= names, params
        m = cls(**params)
        assert m.get_params() == {**cls.default_params(), **params}
        if i < 2:
            X_test = shifted_task[2]
            assert np.isfinite(_run(cls, shifted_task, **params).predict(X_test)).all()
    fixed = optuna.trial.FixedTrial(_fixed_trial_values(cls))
    assert set(cls.search_space(fixed)) <= names


def _fixed_trial_values(cls) -> dict:
    return {
        SBC: {"mode": "slope_bias", "min_slope_shots": 4},
        DS: {"regularization": "ridge", "alpha": 1e-3},
        PDS: {"half_window": 2, "solver": "pls", "n_components": 2},
        CCA: {"n_components": 4, "canonical_fraction": 0.5, "shrink": False},
        GCTPLS: {"l": 3.0, "choose_n_components": "cv"},
    }.get(cls, {"l": 3.0, "choose_n_components": "fixed", "n_components": 4, "source_domain": "calibration"})


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_pickle_roundtrip_and_determinism(cls, shifted_task):
    X_test = shifted_task[2]
    m = _run(cls, shifted_task, **FAST.get(cls, {}))
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(again.predict(X_test), m.predict(X_test))
    # a second run from scratch: the same numbers up to round-off (BLAS sums may differ in the last bit)
    np.testing.assert_allclose(_run(cls, shifted_task, **FAST.get(cls, {})).predict(X_test), m.predict(X_test),
                               rtol=1e-10, atol=1e-12)
    assert m.predict(X_test).shape == (X_test.shape[0], 2)
    if cls.tags.corrects_spectra:
        np.testing.assert_allclose(m.predict(X_test), m.source_model_.predict(m.transform_target(X_test)))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.name)
def test_inputs_are_not_mutated(cls, shifted_task):
    src, std, X_test, _, _ = shifted_task  # read-only arrays: an in-place write would raise
    before = [a.copy() for a in (src.X, src.y, std.X_source, std.X_target, std.y, X_test)]
    m = _run(cls, shifted_task, **FAST.get(cls, {}))
    m.predict(X_test)
    writable = [np.array(a) for a in before]
    m2 = cls(**FAST.get(cls, {})).fit(source_data(writable[0], writable[1]))
    m2.transfer(standards(writable[2], writable[3], writable[4]), unlabelled=writable[5] if cls.tags.transductive else None)
    m2.predict(writable[5])
    for a, b, w in zip(before, (src.X, src.y, std.X_source, std.X_target, std.y, X_test), writable):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("cls", [DS, PDS, CCA, MDIPLS], ids=lambda c: c.name)
def test_too_few_standards_is_a_clear_error(cls, shifted_task):
    src, std, _, _, _ = shifted_task
    one = standards(std.X_source[:1], std.X_target[:1], std.y[:1])
    with pytest.raises(ValueError, match="at least 2 transfer standards"):
        cls().fit(src).transfer(one)


@pytest.mark.parametrize("cls", [DS, PDS, CCA, SBC, DIPLS, GCTPLS], ids=lambda c: c.name)
def test_min_shots_works(cls, shifted_task):
    src, std, X_test, _, _ = shifted_task
    n = cls.tags.min_shots
    m = cls(**FAST.get(cls, {})).fit(src).transfer(standards(std.X_source[:n], std.X_target[:n], std.y[:n]))
    assert np.isfinite(m.predict(X_test)).all()


def test_bad_parameters_are_one_line_errors(shifted_task):
    src = shifted_task[0]
    for m, match in [(DS(regularization="lasso"), "regularization"), (PDS(solver="svm"), "solver"),
                     (SBC(mode="slope"), "mode"), (DIPLS(source_domain="test"), "source_domain"),
                     (PDS(half_window=-1), "half_window")]:
        with pytest.raises(ValueError, match=match):
            m.fit(src)
    with pytest.raises(RuntimeError, match="transfer"):
        PDS().fit(src).predict(shifted_task[2])
    wrong = standards(np.zeros((3, 7)), np.zeros((3, 7)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="channels"):
        DS().fit(src).transfer(wrong)


def test_clone_gives_an_unfitted_copy(shifted_task):
    m = _run(PDS, shifted_task, half_window=2)
    c = m.clone()
    assert c.get_params() == m.get_params() and not hasattr(c, "map_")
    assert copy.deepcopy(m).selected_ == m.selected_


# --- fast paths against their references (issue 3: the reference sweep in about a minute) ----------


def _with_groups(std: Standards, groups) -> Standards:
    return Standards(X_source=std.X_source, X_target=std.X_target, y=std.y, axis=std.axis, axis_unit=std.axis_unit,
                     properties=std.properties, groups=np.asarray(groups))


def _loo_errors_both(m, std, folds):
    from ctbench_classical._common import SpectralStandardization

    Xs, Xt = np.asarray(std.X_source, float), np.asarray(std.X_target, float)
    cands = m._candidates(Xs.shape[0])
    return m._loo_errors(Xs, Xt, cands, folds), SpectralStandardization._loo_errors(m, Xs, Xt, cands, folds)


@pytest.mark.parametrize("grouped", [False, True], ids=["rows", "samples"])
@pytest.mark.parametrize("cls,params", [(DS, {}), (DS, {"regularization": "ridge"}), (PDS, {}), (CCA, {}),
                                        (CCA, {"shrink": False})], ids=["ds", "ds-ridge", "pds", "cca", "cca-noshrink"])
def test_closed_form_leave_one_out_equals_refitting_each_fold(cls, params, grouped, shifted_task):
    from ctbench_classical._common import sample_folds

    src, std, _, _, _ = shifted_task
    m = cls(**params).fit(src)
    n = std.X_source.shape[0]
    groups = [f"s{i // 2}" for i in range(n)] if grouped else None  # pairs of rows as one sample's replicates
    folds = sample_folds(None if groups is None else np.asarray(groups), n)
    assert len(folds) == (n // 2 if grouped else n)
    fast, ref = _loo_errors_both(m, std, folds)
    if cls is CCA:
        # keeping q < r canonical pairs is ill-posed when correlations (nearly) tie, as here where
        # the instruments are almost an exact linear map of each other (all close to 1): compare
        # the candidates that keep them all (q = r), whose map does not depend on the pairs' basis
        ok = [i for i, c in enumerate(m._candidates(n)) if c["n_canonical"] == c["n_components"]]
        fast, ref = fast[ok], ref[ok]
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())


def test_leave_one_out_holds_a_samples_replicates_out_together(shifted_task):
    src, std, _, _, _ = shifted_task
    # every standard measured twice, identically: a row-wise leave-one-out keeps the held-out
    # spectrum's twin in the training rows, so the highest rank reproduces it exactly
    n = len(std.y)
    dup = standards(np.repeat(np.asarray(std.X_source), 2, axis=0), np.repeat(np.asarray(std.X_target), 2, axis=0),
                    np.repeat(np.asarray(std.y), 2, axis=0))
    by_sample = DS().fit(src).transfer(_with_groups(dup, np.repeat(np.arange(n), 2)))
    by_row = DS().fit(src).transfer(dup)  # no sample ids: each row is its own fold
    assert by_row.loo_scores_[-1] < 1e-6 * by_row.loo_scores_.max()  # the leak: a "perfect" overfit
    assert by_sample.loo_scores_[-1] > 100 * by_row.loo_scores_[-1]


def test_sample_folds_in_order_of_appearance():
    from ctbench_classical._common import sample_folds

    folds = sample_folds(np.array(["b", "a", "b", "c", "a"]), 5)
    assert [f.tolist() for f in folds] == [[0, 2], [1, 4], [3]]
    assert [f.tolist() for f in sample_folds(None, 3)] == [[0], [1], [2]]


def _diplslib_vector(X_c, y_c, xs, xt, A, l_abs, mode):
    """diPLSlib 2.5.0 itself (with the extra coordinate that makes it deflate a centred xt)."""
    import warnings

    from diPLSlib.models import DIPLS as LibDIPLS
    from diPLSlib.models import GCTPLS as LibGCT

    def lift(M, v):
        return np.hstack([M, np.full((M.shape[0], 1), v)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "gct":
            model = LibGCT(A=A, l=float(l_abs), centering=True).fit(X_c, y_c, xs - xt, np.zeros_like(xs))
            return np.ravel(model.b_)
        if mode == "mdipls":
            model = LibDIPLS(A=A, l=tuple([float(l_abs)] * A), centering=False, target_domain=1)
            model.fit(lift(X_c, 0.0), y_c, lift(xs, 0.0), [lift(xt, 1.0)])
        else:
            model = LibDIPLS(A=A, l=float(l_abs), centering=False).fit(lift(X_c, 0.0), y_c, lift(xs, 0.0), lift(xt, 1.0))
    return np.ravel(model.b_)[:-1]


@pytest.mark.parametrize("mode", ["dipls", "mdipls", "gct"])
@pytest.mark.parametrize("l", [0.0, 1.0, 300.0])
def test_batched_core_equals_diplslib(mode, l):
    rng = np.random.default_rng(1)
    p = 40
    X = np.cumsum(rng.normal(size=(30, p)), axis=1)
    y = X[:, 10] + rng.normal(size=30)
    xs = X[:12]
    xt = np.cumsum(rng.normal(size=(12, p)), axis=1) * 1.1 + 0.5
    X_c, y_c = X - X.mean(0), y - y.mean()
    xs_c, xt_c = xs - xs.mean(0), xt - xt.mean(0)
    A = 4
    if mode == "gct":
        ours = fit_gct_vector(X_c, y_c, xs - xt, A, l)
        ref = _diplslib_vector(X_c, y_c, xs, xt, A, l, "gct")
    else:
        ours = fit_dipls_vector(X_c, y_c, xs_c, [xt_c] if mode == "mdipls" else xt_c, A, l, multi_domain=mode == "mdipls")
        ref = _diplslib_vector(X_c, y_c, xs_c, xt_c, A, l, mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())


def test_batched_fits_equal_one_at_a_time():
    from ctbench_classical._dipls_core import Domains, fit_batch

    rng = np.random.default_rng(2)
    X = rng.normal(size=(3, 20, 15))
    X -= X.mean(axis=1, keepdims=True)
    X[1, 17:] = 0.0  # a smaller calibration padded with zero rows
    y = rng.normal(size=(3, 20))
    y[1, 17:] = 0.0
    y[[0, 2]] -= y[[0, 2]].mean(axis=1, keepdims=True)
    y[1, :17] -= y[1, :17].mean()
    xs, xt = rng.normal(size=(6, 15)), rng.normal(size=(6, 15)) * 2
    dom = Domains(xs - xs.mean(0), [xt - xt.mean(0)], "dipls")
    l_abs = np.array([0.0, 5.0, 50.0])
    together = fit_batch(X, y, 3, l_abs, dom)
    for b in range(3):
        np.testing.assert_allclose(together[b], fit_batch(X[b : b + 1], y[b : b + 1], 3, l_abs[b : b + 1], dom)[0], rtol=1e-10)
    np.testing.assert_allclose(fit_batch(X[1:2, :17], y[1:2, :17], 3, l_abs[1:2], dom)[0], together[1], rtol=1e-10)


@pytest.mark.parametrize("cls", [DIPLS, MDIPLS])
def test_two_standards_and_many_latent_variables_stay_finite(cls, shifted_task):
    """The domains are exhausted after one latent variable; diPLSlib gave 0/0 here (dipls)."""
    src, std, X_test, _, _ = shifted_task
    two = standards(std.X_source[:2], std.X_target[:2], std.y[:2])
    m = cls(n_components=6, l=1000.0).fit(src).transfer(two)
    assert np.isfinite(m.predict(X_test)).all()


@pytest.mark.parametrize("cls", [DIPLS])
def test_replicate_rows_count_once_in_the_domains(cls, shifted_task):
    src, std, X_test, _, _ = shifted_task
    once = cls(l=100.0).fit(src).transfer(std)
    twice = standards(np.repeat(np.asarray(std.X_source), 2, axis=0), np.repeat(np.asarray(std.X_target), 2, axis=0),
                      np.repeat(np.asarray(std.y), 2, axis=0))
    twice = _with_groups(twice, np.repeat(np.arange(len(std.y)), 2))
    m = cls(l=100.0).fit(src).transfer(twice)
    np.testing.assert_allclose(m.predict(X_test), once.predict(X_test), rtol=1e-8)


@pytest.mark.parametrize("rule", ["calibration", "cv"])
def test_l_selection_rules_pick_from_the_grid(rule, shifted_task):
    from ctbench_classical.dipls import L_GRID

    src, std, X_test, _, _ = shifted_task
    m = DIPLS(l_selection=rule).fit(src).transfer(std)
    assert all(l in L_GRID for l in m.l_) and np.isfinite(m.predict(X_test)).all()
    with pytest.raises(ValueError, match="l_selection"):
        DIPLS(l_selection="test").fit(src)


def test_source_pls_cross_validation_equals_nipals_on_each_fold():
    """ctbench.pls computes the CV in the dual (Gram) form; the reference refits NIPALS per fold."""
    from ctbench.pls import _choose, _cv_folds, _cv_press, nipals_pls1_path

    rng = np.random.default_rng(4)
    X = np.cumsum(rng.normal(size=(37, 60)), axis=1)
    Y = np.c_[X[:, 5] - X[:, 40], X[:, 20]] + rng.normal(size=(37, 2))
    press, n = _cv_press(X, Y, 12, 10, 3)
    folds = _cv_folds(37, 10, 3)
    A = min(12, 37 - max(len(f) for f in folds) - 1)
    for j in range(2):
        ref = np.zeros(A)
        for test in folds:
            train = np.setdiff1d(np.arange(37), test)
            B, xm, ym = nipals_pls1_path(X[train], Y[train, j], A)
            ref += (((X[test] - xm) @ B + ym - Y[test, j, None]) ** 2).sum(axis=0)
        np.testing.assert_allclose(press[j], ref, rtol=1e-8)
        assert 1 <= _choose(press[j], n) <= A


def test_bench_sweep_skips_impossible_shots_of_a_named_task(tmp_path):
    from typer.testing import CliRunner

    from ctbench.cli.main import app

    out = tmp_path / "pub"
    res = CliRunner().invoke(app, ["bench", "sweep", "-t", "synthetic_a_b", "-m", "no_transfer,target_only,sbc", "-n", "0,5",
                                   "-r", "1", "-j", "1", "--publish", str(out)])
    assert res.exit_code == 0, res.output
    assert "records: 4 (4 ok, 0 failed)" in res.output  # target_only and sbc cannot run N = 0
    md = (out / "reference_leaderboard.md").read_text()
    assert "Regenerate: `CTBENCH_DATA=<data mirror> ctbench bench sweep --jobs 1 --method no_transfer,target_only,sbc" in md
    assert "--task synthetic_a_b --shots 0,5 --reps 1 --publish" in md
    # the protocol line describes the outer splits the records saw, per dataset
    assert "Protocol (leaderboard v2): synthetic: 5 grouped outer folds (" in md and "shared by its 1 task; a repetition is" in md


# --- cross-check against an independent open implementation (test-only) ---------------------------


def test_pds_matches_pynir_on_a_real_split(monkeypatch):
    """pynir's PDS (ordinary least squares per window, with intercept) on the same standards of the
    same real split: PDS with a TSVD of full rank (2h + 1 <= N - 1) is that regression, so the
    transferred spectra agree on every channel whose window is whole (pynir shifts the windows at
    the ends where PDS truncates them)."""
    pytest.importorskip("pynir")
    import os
    from pathlib import Path

    from pynir.CalibrationTransfer import PDS as PynirPDS

    from ctbench.cards import load_card
    from ctbench.runner import source_for, standards_for
    from ctbench.splits import make_split
    from ctbench.tasks import build_task

    mirror = Path(os.environ.get("CTBENCH_DATA") or "/work/shared/datasets")
    if not (mirror / "corn").is_dir():
        pytest.skip(f"dataset mirror {mirror} absent")
    monkeypatch.setenv("CTBENCH_DATA", str(mirror))
    task = build_task(load_card("corn_m5_mp6"))
    split = make_split(task, 30, 0, 0)
    outer = task.outer(split.outer)
    std = standards_for(outer, split.standard_rows)
    h = 3
    ours = PDS(half_window=h, solver="tsvd", n_components=2 * h + 1).fit(source_for(outer, PDS)).transfer(std)
    theirs = PynirPDS(halfWindowSize=h, regType="mlr").fit(np.asarray(std.X_source), np.asarray(std.X_target))
    X = outer.X_target[split.test_rows]
    a, b = ours.transform_target(X), theirs.transform(X)
    inner = slice(h, X.shape[1] - h - 1)
    np.testing.assert_allclose(a[:, inner], b[:, inner], rtol=1e-6, atol=1e-6 * np.abs(b).max())
