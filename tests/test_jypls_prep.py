"""jypls and prep_sbc (plugins/ctbench_classical/jypls.py, prep.py): exact cases, the CV, the kit."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from ctbench.pls import PLSCalibration, nipals_pls1_path
from ctbench_classical.jypls import JYPLS, jypls_cv_predictions
from ctbench_classical.prep import PrepSBC, preprocess, snv
from classical_builders import bands, one_blas_thread, standards  # noqa: F401  (one_blas_thread: autouse fixture)
from classical_builders import source_data as source


def two_instruments(n: int = 70, p: int = 60, noise: float = 0.002, seed: int = 3, gain: float = 1.1):
    """(X_source, X_target, y): target = source shifted by 2 channels, times ``gain``, plus a sloped baseline."""
    rng = np.random.default_rng(seed)
    axis = np.arange(p + 4, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    pure = bands(axis, [14, 30, 45], [3.0, 4.0, 3.5])
    full = conc @ pure + rng.normal(scale=noise, size=(n, p + 4))
    Xs = full[:, 2 : p + 2] + 0.05
    Xt = gain * (full[:, :p] + 0.08 + 0.002 * np.arange(p))
    y = conc[:, :2] * np.array([10.0, 5.0])
    return Xs, Xt, y


def split(Xs, Xt, y, n_cal=50, n_std=10):
    """Calibration = first n_cal rows; standards = every (n_cal // n_std)-th of them; test = the rest."""
    S = np.arange(0, n_cal, n_cal // n_std)[:n_std]
    return source(Xs[:n_cal], y[:n_cal]), standards(Xs[S], Xt[S], y[S]), Xt[n_cal:], y[n_cal:]


def plain_jypls(Xs, ys, Xt, yt, A, weight=1.0, gain=1.0):
    """Joint-Y PLS1 written out as in the paper (X blocks deflated explicitly); the target block's
    (coef, intercept) on raw target spectra."""
    Z = Xt / gain
    Es, Et = Xs - Xs.mean(axis=0), Z - Z.mean(axis=0)
    fs, ft = ys - ys.mean(), yt - yt.mean()
    W, P, Q = [], [], []
    for _ in range(A):
        ws, wt = Es.T @ fs, Et.T @ ft
        ws, wt = ws / np.linalg.norm(ws), wt / np.linalg.norm(wt)
        ts, tt = Es @ ws, Et @ wt
        q = (ts @ fs + weight * (tt @ ft)) / (ts @ ts + weight * (tt @ tt))
        pt = Et.T @ tt / (tt @ tt)
        Es = Es - np.outer(ts, Es.T @ ts / (ts @ ts))
        Et = Et - np.outer(tt, pt)
        fs, ft = fs - q * ts, ft - q * tt
        W.append(wt), P.append(pt), Q.append(q)
    W, P = np.array(W).T, np.array(P).T
    b = W @ np.linalg.solve(P.T @ W, np.array(Q))
    return b / gain, yt.mean() - Z.mean(axis=0) @ b


def stacked_nipals(blocks, A):
    """Plain NIPALS PLS1 on the stacked blocks [(X_i, y_i)], each block centred on its own means;
    returns the common regression vector (p,)."""
    E = np.vstack([X - X.mean(axis=0) for X, _ in blocks])
    f = np.concatenate([y - y.mean() for _, y in blocks])
    W, P, c = [], [], []
    for _ in range(A):
        w = E.T @ f
        w /= np.linalg.norm(w)
        t = E @ w
        p = E.T @ t / (t @ t)
        c.append(f @ t / (t @ t))
        E, f = E - np.outer(t, p), f - c[-1] * t
        W.append(w), P.append(p)
    W, P = np.array(W).T, np.array(P).T
    return W @ np.linalg.solve(P.T @ W, np.array(c))


# --- JYPLS: the algorithm ----------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_jypls_dual_form_equals_the_plain_joint_y_nipals(weight):
    """The Gram-matrix implementation == the paper's NIPALS with explicit deflation (1e-9), every count,
    both properties, a target with a gain of 3."""
    Xs, Xt, y = two_instruments(noise=0.01, gain=3.0)
    src, std, _, _ = split(Xs, Xt, y)
    for A in (1, 2, 4, 6):
        m = JYPLS(n_components=A, target_weight=weight).fit(src).transfer(std)
        assert m.gain_ == pytest.approx(np.linalg.norm(std.X_target - std.X_target.mean(0))
                                        / np.linalg.norm(std.X_source - std.X_source.mean(0)))
        for j in range(2):
            b, b0 = plain_jypls(src.X, src.y[:, j], std.X_target, std.y[:, j], A, weight, m.gain_)
            np.testing.assert_allclose(m.coef_[:, j], b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
            assert m.intercept_[j] == pytest.approx(b0, rel=1e-9)


def test_jypls_equals_pls_on_the_stack_when_the_target_block_is_the_source_block():
    """Target block = source block (the standards are the whole pool, target = source): every block weight
    is the stacked X^T y, the scores are [t; t], and JYPLS is NIPALS on the stacked (per-block centred)
    data, i.e. the source PLS itself."""
    Xs, _, y = two_instruments(noise=0.01)
    X, Y = Xs[:40], y[:40]
    for A in (1, 3, 5):
        m = JYPLS(n_components=A).fit(source(X, Y)).transfer(standards(X, X, Y))
        for j in range(2):
            b = stacked_nipals([(X, Y[:, j]), (X, Y[:, j])], A)
            np.testing.assert_allclose(m.coef_[:, j], b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
            B, _, _ = nipals_pls1_path(X, Y[:, j], A)
            np.testing.assert_allclose(m.coef_[:, j], B[:, A - 1], rtol=1e-8, atol=1e-8 * np.abs(b).max())


def test_jypls_is_exact_on_rank_one_data_from_different_instruments():
    """y = c z + d and X_i = z a_i^T + m_i with unrelated instrument vectors a_s, a_t: each block's scores are
    z ||a_i|| (centred), the gain ||a_t|| / ||a_s|| makes them equal, so the common q is each block's own
    and the target spectra are predicted exactly. Without the gain the shared q is a compromise."""
    rng = np.random.default_rng(0)
    p = 40
    z = rng.uniform(-1, 1, size=70)
    a_s, a_t = rng.normal(size=p), 5.0 * rng.normal(size=p)
    Xs = np.outer(z, a_s) + rng.normal(size=p)
    Xt = np.outer(z, a_t) + rng.normal(size=p)
    y = np.c_[3.0 * z + 1.0, -2.0 * z]
    src, std, X_test, y_test = split(Xs, Xt, y)
    m = JYPLS().fit(src).transfer(std)  # the CV: counts beyond 1 add nothing, ties go to 1
    assert list(m.n_components_) == [1, 1]
    np.testing.assert_allclose(m.predict(X_test), y_test, atol=1e-8)
    off = JYPLS(gain_correction=False).fit(src).transfer(std)
    assert np.abs(off.predict(X_test) - y_test).max() > 1e-3


def test_jypls_is_exact_when_the_blocks_share_their_gram_matrix():
    """Rank 3, the standards are the whole pool and the target instrument is a gain times an orthogonal
    map of the source channels plus an offset: after the gain both blocks have the same Gram matrix, the
    same scores and the same q, and the target spectra are predicted exactly (~1e-8). (With unrelated
    instrument maps the shared q is a compromise and joint-Y PLS is not exact: see the docstring.)"""
    rng = np.random.default_rng(1)
    n, p, r = 60, 30, 3
    Z = rng.normal(size=(n, r))
    Xs = Z @ rng.normal(size=(r, p)) + rng.normal(size=p)
    R, _ = np.linalg.qr(rng.normal(size=(p, p)))
    Xt = 2.5 * Xs @ R + rng.normal(size=p)
    y = np.c_[Z @ [1.0, -2.0, 0.5], Z @ [0.0, 1.0, 1.0] + 4.0]
    cal = np.arange(40)
    m = JYPLS(n_components=3).fit(source(Xs[cal], y[cal])).transfer(standards(Xs[cal], Xt[cal], y[cal]))
    np.testing.assert_allclose(m.predict(Xt[40:]), y[40:], atol=1e-8)


def test_jypls_is_invariant_to_the_target_intensity_scale():
    """A target reading 1e6 times weaker (the time-gated Raman) gives the same model: the gain divides it out."""
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y)
    ref = JYPLS().fit(src).transfer(std)
    for scale in (1e-6, 1e6):
        weak = standards(std.X_source, std.X_target * scale, std.y)
        m = JYPLS().fit(src).transfer(weak)
        assert list(m.n_components_) == list(ref.n_components_)
        np.testing.assert_allclose(m.predict(X_test * scale), ref.predict(X_test), rtol=1e-7, atol=1e-8)


def test_jypls_has_at_most_the_target_blocks_rank_in_latent_variables():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y, n_std=5)
    m = JYPLS(n_components=20).fit(src).transfer(std)
    assert list(m.n_components_) == [4, 4]  # 5 centred rows
    assert np.isfinite(m.predict(X_test)).all()


def test_jypls_below_three_standards_uses_the_source_counts_capped_by_the_target_rank():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, _, _ = split(Xs, Xt, y, n_std=2)
    m = JYPLS().fit(src).transfer(std)
    assert m.cv_scores_ is None and m.chosen_params()["selected_by_cv"] is False
    assert list(m.n_components_) == [1, 1]
    assert min(m.source_model_.n_components_) > 1


# --- JYPLS: the latent-variable CV -----------------------------------------------------------------


def _replicated(n=30, p=60, seed=5):
    """Source calibration with 2 replicate rows per sample (ids), target = shifted instrument."""
    Xs, Xt, y = two_instruments(n=n, p=p, noise=0.01, seed=seed)
    rng = np.random.default_rng(seed)
    Xs2 = np.repeat(Xs, 2, axis=0) + rng.normal(scale=0.01, size=(2 * n, p))
    return Xs2, np.repeat(y, 2, axis=0), np.repeat(np.arange(n), 2), Xt, y


def test_jypls_cv_holds_out_the_standards_source_rows_and_replicates():
    """The CV scores equal those of explicit refits without the held-out standard, and without all its
    rows (both replicates) in the source calibration; refits that keep those rows score differently."""
    Xs2, ys2, ids, Xt, y = _replicated()
    S = np.array([0, 7, 14, 21])
    src = source(Xs2, ys2, groups=ids)
    std = standards(Xs2[2 * S], Xt[S], y[S])  # the standards' source spectra are the first replicates
    m = JYPLS(gain_correction=False).fit(src).transfer(std)
    assert m.n_folds_ == 4
    A = m.cv_scores_.shape[1]
    assert A == 2  # 3 training standards -> 2 latent variables
    sd = ys2.std(axis=0)

    def scores(drop_source: bool) -> np.ndarray:
        err = np.zeros((2, A, len(S)))
        for i, s in enumerate(S):
            keep_std = np.delete(np.arange(len(S)), i)
            keep_src = np.flatnonzero(ids != s) if drop_source else np.arange(len(ids))
            for a in range(1, A + 1):
                fit = JYPLS(n_components=a, gain_correction=False).fit(source(Xs2[keep_src], ys2[keep_src]))
                fit.transfer(standards(std.X_source[keep_std], std.X_target[keep_std], std.y[keep_std]))
                err[:, a - 1, i] = fit.predict(Xt[S[i]][None])[0] - y[S[i]]
        return np.sqrt((err**2).mean(axis=2)) / sd[:, None]

    np.testing.assert_allclose(m.cv_scores_, scores(True), rtol=1e-8)
    assert not np.allclose(m.cv_scores_, scores(False), rtol=1e-6)
    assert list(m.n_components_) == [int(np.argmin(s)) + 1 for s in m.cv_scores_]


def test_jypls_cv_predictions_equal_a_refit_on_the_training_rows():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, _, _ = split(Xs, Xt, y)
    X0 = src.X - src.X.mean(axis=0)
    Z0 = std.X_target - std.X_target.mean(axis=0)
    out_s, out_t = np.array([0, 5, 6]), np.array([0, 3])
    pred = jypls_cv_predictions(X0 @ X0.T, src.y, Z0 @ Z0.T, std.y, out_s, out_t, 4)
    keep_s = np.delete(np.arange(src.X.shape[0]), out_s)
    keep_t = np.delete(np.arange(std.n), out_t)
    for a in range(1, 5):
        fit = JYPLS(n_components=a, gain_correction=False).fit(source(src.X[keep_s], src.y[keep_s]))
        fit.transfer(standards(std.X_source[keep_t], std.X_target[keep_t], std.y[keep_t]))
        np.testing.assert_allclose(pred[:, a - 1, :].T, fit.predict(std.X_target[out_t]), rtol=1e-9, atol=1e-9)


def test_jypls_choice_depends_on_the_standards_only():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y)
    a = JYPLS().fit(src).transfer(std)
    b = JYPLS().fit(src).transfer(std, unlabelled=X_test[::-1])
    assert a.chosen_params() == b.chosen_params()
    np.testing.assert_array_equal(a.predict(X_test), b.predict(X_test))


# --- prep_sbc --------------------------------------------------------------------------------------


def test_snv_and_savitzky_golay_definitions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 40)) * 3 + 7
    S = snv(X)
    np.testing.assert_allclose(S.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(S.std(axis=1), 1, rtol=1e-12)
    ramp = np.tile(0.5 * np.arange(40.0) + 2.0, (3, 1))
    np.testing.assert_allclose(preprocess(ramp, False, 7, 2, 1), 0.5, rtol=1e-10)  # exact on a polynomial
    np.testing.assert_allclose(preprocess(ramp, False, 7, 2, 2), 0.0, atol=1e-10)
    np.testing.assert_allclose(preprocess(X, True, 11, 2, 0), preprocess(S, False, 11, 2, 0), atol=1e-12)


def test_prep_sbc_removes_an_offset_and_gain_exactly():
    """Target spectra = offset_i + gain_i * source spectra (per spectrum): SNV maps both to the same
    spectrum, so the standards' predictions, the slope and bias, and the target predictions are those of
    the same method with an identical target instrument on the source spectra (1e-9)."""
    Xs, _, y = two_instruments(noise=0.01)
    rng = np.random.default_rng(2)
    Xt = rng.uniform(-1, 1, size=(Xs.shape[0], 1)) + rng.uniform(0.5, 2.0, size=(Xs.shape[0], 1)) * Xs
    src, std, Xt_test, y_test = split(Xs, Xt, y)
    same = standards(std.X_source, std.X_source, std.y)
    m = PrepSBC().fit(src).transfer(std)
    ref = PrepSBC().fit(src).transfer(same)
    np.testing.assert_allclose(m.slope_, ref.slope_, rtol=1e-9)
    np.testing.assert_allclose(m.intercept_, ref.intercept_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m.predict(Xt_test), ref.predict(Xs[50:]), rtol=1e-9, atol=1e-9)
    source_pred = m.source_model_.predict(m.preprocess(Xs[50:]))
    np.testing.assert_allclose(m.predict(Xt_test), m.intercept_ + m.slope_ * source_pred, rtol=1e-9, atol=1e-9)
    # standards whose values are the source model's own predictions: the SBC line is slope 1, bias 0, and
    # target predictions are the source model's predictions of the same samples' source spectra
    own = standards(std.X_source, std.X_target, m.source_model_.predict(m.preprocess(std.X_source)))
    m.transfer(own)
    np.testing.assert_allclose(m.slope_, 1.0, rtol=1e-9)
    np.testing.assert_allclose(m.intercept_, 0.0, atol=1e-9 * np.abs(y).max())
    np.testing.assert_allclose(m.predict(Xt_test), source_pred, rtol=1e-9, atol=1e-9)


def test_prep_sbc_window_is_chosen_on_the_source_calibration_only():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y)
    m = PrepSBC().fit(src)
    expected = []
    for w in (7, 11, 15, 21, 31):
        pls = PLSCalibration(max_components=30, cv=10, random_state=0).fit(preprocess(src.X, True, w, 2, 1), src.y)
        r = np.array([pls.rmsecv_[j][pls.n_components_[j] - 1] for j in range(2)])
        expected.append(float((r / src.y.std(axis=0)).sum()))
    np.testing.assert_allclose(m.window_scores_, expected, rtol=1e-12)
    assert m.window_ == (7, 11, 15, 21, 31)[int(np.argmin(expected))]
    chosen = []
    for n_std, Xtarget in ((10, Xt), (3, Xt * 2 + 1), (10, Xs)):
        s = split(Xs, Xtarget, y, n_std=n_std)[1]
        t = copy.deepcopy(m).transfer(s)
        chosen.append((t.chosen_params()["window"], t.chosen_params()["window_scores"]))
    assert all(c == (m.window_, m.window_scores_) for c in chosen)
    fixed = PrepSBC(window=15).fit(src).transfer(std)
    assert fixed.window_ == 15 and fixed.chosen_params()["window_by_cv"] is False


def test_prep_sbc_one_standard_is_a_bias_correction():
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y, n_std=1)
    m = PrepSBC().fit(src).transfer(std)
    assert m.chosen_params()["mode_used"] == ["bias", "bias"]
    np.testing.assert_allclose(m.predict(std.X_target), std.y, atol=1e-9)


# --- both: parameters and the contract --------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, params, match",
    [
        (JYPLS, {"n_components": 0}, "n_components"),
        (JYPLS, {"n_components": 2.5}, "n_components"),
        (JYPLS, {"target_weight": 0}, "target_weight"),
        (JYPLS, {"target_weight": float("nan")}, "target_weight"),
        (JYPLS, {"target_weight": "1"}, "target_weight"),
        (JYPLS, {"gain_correction": "auto"}, "gain_correction"),
        (JYPLS, {"max_components": 0}, "max_components"),
        (PrepSBC, {"window": 8}, "window"),
        (PrepSBC, {"window": 1}, "window"),
        (PrepSBC, {"window": 301}, "window"),
        (PrepSBC, {"windows": ()}, "windows"),
        (PrepSBC, {"windows": (7, 10)}, "windows"),
        (PrepSBC, {"deriv": 3}, "deriv"),
        (PrepSBC, {"deriv": 2, "polyorder": 1}, "deriv"),
        (PrepSBC, {"polyorder": -1}, "polyorder"),
        (PrepSBC, {"snv": "yes"}, "snv"),
        (PrepSBC, {"mode": "slope"}, "mode"),
        (PrepSBC, {"max_components": 0}, "max_components"),
    ],
)
def test_bad_parameters_raise_one_line_errors_at_fit(cls, params, match):
    src, _, _, _ = split(*two_instruments())
    m = cls(**params)  # __init__ only stores
    assert m.get_params() == {**cls.default_params(), **params}
    with pytest.raises(ValueError, match=match) as info:
        m.fit(src)
    assert "\n" not in str(info.value) and str(info.value).startswith(cls.name)


@pytest.mark.parametrize("cls", [JYPLS, PrepSBC], ids=lambda c: c.name)
def test_clone_pickle_determinism_and_inputs(cls):
    Xs, Xt, y = two_instruments(noise=0.01)
    src, std, X_test, _ = split(Xs, Xt, y)
    before = [a.copy() for a in (src.X, src.y, std.X_source, std.X_target, std.y, X_test)]
    m = cls().fit(src).transfer(std)
    for a, b in zip(before, (src.X, src.y, std.X_source, std.X_target, std.y, X_test)):
        np.testing.assert_array_equal(a, b)
    pred = m.predict(X_test)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).predict(X_test), pred)
    again = m.clone()
    assert not hasattr(again, "coef_") and not hasattr(again, "slope_") and again.get_params() == m.get_params()
    np.testing.assert_allclose(again.fit(src).transfer(std).predict(X_test), pred, rtol=1e-10, atol=1e-12)
    assert pred.shape == (X_test.shape[0], 2) and np.isfinite(pred).all()
    import json

    json.dumps(m.chosen_params())
    assert m.chosen_params()["source_components"] == [int(a) for a in m.source_model_.n_components_]


@pytest.mark.parametrize(
    "cls, values",
    [
        (JYPLS, {"target_weight": 2.0, "gain_correction": True}),
        (PrepSBC, {"snv": True, "deriv": 2, "window_by": "fixed", "window": 15, "mode": "bias"}),
        (PrepSBC, {"snv": False, "deriv": 1, "window_by": "cv", "mode": "slope_bias"}),
    ],
)
def test_search_space_with_a_fixed_trial(cls, values):
    import optuna

    params = cls.search_space(optuna.trial.FixedTrial(values))
    assert set(params) <= set(cls._param_names())
    src, std, X_test, _ = split(*two_instruments(noise=0.01))
    assert np.isfinite(cls(**params).fit(src).transfer(std).predict(X_test)).all()


@pytest.mark.parametrize("cls", [JYPLS, PrepSBC], ids=lambda c: c.name)
def test_conforms(cls):
    from ctbench.testing import assert_conforms

    assert_conforms(cls)
