"""PFCE (parameter-free calibration enhancement): NS-, SS- and FS-PFCE of ctbench_classical."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from ctbench_classical.pfce import FSPFCE, NSPFCE, SSPFCE, _PFCE, pearson, pfce_vector
from classical_builders import bands, readonly, source_data, standards

ALL = [NSPFCE, SSPFCE, FSPFCE]


# --- builders ------------------------------------------------------------------------------


def mixture(n: int, p: int = 60, seed: int = 0, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of three Gaussian bands mixed linearly plus an offset, and two linear properties."""
    rng = np.random.default_rng(seed)
    axis = np.arange(p, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    X = conc @ bands(axis, [0.25 * p, 0.5 * p, 0.75 * p], [0.06 * p, 0.1 * p, 0.08 * p]) + 0.1
    X = X + noise * rng.standard_normal(X.shape)
    y = conc[:, :2] * np.array([10.0, 3.0])
    return X, y


@pytest.fixture(scope="module")
def shifted():
    """A noisy source calibration, and a target instrument that shifts, broadens and tilts the spectra."""
    X, y = mixture(70, 60, seed=4, noise=0.002)
    rng = np.random.default_rng(5)
    kernel = np.array([0.25, 0.5, 0.25])
    Xt = np.array([np.convolve(np.roll(x, 1), kernel, mode="same") for x in X]) * 1.05 + 0.02 * np.linspace(0, 1, 60)
    Xt = Xt + 0.002 * rng.standard_normal(Xt.shape)
    src = source_data(X[:40], y[:40])
    std = standards(X[40:52], Xt[40:52], y[40:52])
    return src, std, Xt[52:], y[52:], X[52:]


def full_space_direction(Xt: np.ndarray, ref: np.ndarray, b_m: np.ndarray, tau: float) -> np.ndarray:
    """The reference solution: SLSQP over all p coefficients, max corr(X_t b, ref) s.t. corr(b, b_m) >= tau."""
    from scipy.optimize import minimize

    Xc = Xt - Xt.mean(axis=0)
    r = (ref - ref.mean()) / np.linalg.norm(ref - ref.mean())
    scale = np.linalg.norm(b_m)
    res = minimize(lambda z: -pearson(Xc @ z, r), b_m / scale, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda z: pearson(z, b_m) - tau}],
                   options={"maxiter": 2000, "ftol": 1e-14})
    return res.x * scale


# --- exact cases ---------------------------------------------------------------------------


def test_identical_instruments_keep_the_source_model():
    """Target = source: NS-PFCE's reference is the source model's own prediction, rho = 1 at b_m."""
    X, y = mixture(40, 60, seed=1, noise=0.003)
    m = NSPFCE().fit(source_data(X[:30], y[:30])).transfer(standards(X[30:36], X[30:36], y[30:36]))
    np.testing.assert_allclose(m.coef_, m.source_model_.coef_, rtol=1e-13, atol=0)  # slope 1 to round-off
    np.testing.assert_allclose(m.predict(X[36:]), m.source_model_.predict(X[36:]), rtol=0, atol=1e-10)
    chosen = m.chosen_params()
    assert chosen["status"] == ["start optimal"] * 2 and chosen["fallback"] == [None, None]
    assert chosen["corr_b_bm"] == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("cls", ALL)
def test_a_source_model_that_fits_the_standards_exactly_is_kept(cls):
    """Noise-free rank-3 data: the source PLS predicts y exactly, so every reference has rho = 1 at b_m."""
    X, y = mixture(40, 60, seed=1)
    m = cls().fit(source_data(X[:30], y[:30])).transfer(standards(X[30:36], X[30:36], y[30:36]))
    np.testing.assert_allclose(m.coef_, m.source_model_.coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.predict(X[36:]), y[36:], rtol=0, atol=1e-8)


def test_pure_gain_and_offset_is_undone_exactly_by_ns_pfce():
    """X_t = c X_s + offset: corr(X_t b_m, yhat_s) = 1 already; slope 1/c and the intercept undo it."""
    X, y = mixture(50, 60, seed=2, noise=0.003)
    offset = 0.05 + 0.002 * np.arange(60)
    T = 1.7 * X + offset
    m = NSPFCE().fit(source_data(X[:30], y[:30])).transfer(standards(X[30:38], T[30:38], y[30:38]))
    np.testing.assert_allclose(m.predict(T[38:]), m.source_model_.predict(X[38:]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.chosen_params()["slope"], [1 / 1.7, 1 / 1.7], rtol=1e-12)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("tau", [0.9, 0.98, 0.999, 1.0])
def test_the_correlation_constraint_holds(shifted, cls, tau):
    src, std, X_test, y_test, _ = shifted
    m = cls(tau=tau).fit(src).transfer(std)
    chosen = m.chosen_params()
    for j in range(2):
        b, b_m = m.coef_[:, j], m.source_model_.coef_[:, j]
        assert pearson(b, b_m) >= tau - 1e-9
        assert chosen["corr_b_bm"][j] == pytest.approx(pearson(b, b_m), abs=1e-12)
        assert chosen["fallback"][j] is None
        assert chosen["objective_corr"][j] >= pearson(std.X_target @ b_m, m._reference(std.X_source, std.y)[:, j]) - 1e-12
    assert np.isfinite(m.predict(X_test)).all()


@pytest.mark.parametrize("tau", [0.95, 0.999])
def test_the_subspace_optimum_is_the_full_space_optimum(tau):
    """p = 12 channels, 10 standards: SLSQP over all 12 coefficients finds the same optimum."""
    rng = np.random.default_rng(7)
    n, p = 10, 12
    Xt = rng.standard_normal((n, p)) + 3.0
    b_m = rng.standard_normal(p)
    ref = Xt @ (b_m + 0.5 * rng.standard_normal(p)) + 0.3 * rng.standard_normal(n)
    sol = pfce_vector(Xt, ref, b_m, tau)
    assert sol["status"] == "secular equation"  # the constraint binds: rho < 1
    full = full_space_direction(Xt, ref, b_m, tau)
    assert pearson(full, b_m) >= tau - 1e-7
    rho_full = pearson(Xt @ full, ref)
    assert sol["objective_corr"] >= rho_full - 1e-9
    assert sol["objective_corr"] == pytest.approx(rho_full, abs=1e-7)
    assert sol["corr_b_bm"] == pytest.approx(tau, abs=1e-9)
    # the optimum is unique: the same vector up to its (least-squares) scale
    X_new = rng.standard_normal((5, p)) + 3.0
    h = Xt @ full
    slope = np.cov(h, ref)[0, 1] / np.var(h, ddof=1)
    pred_full = X_new @ (slope * full) + (ref.mean() - slope * h.mean())
    np.testing.assert_allclose(X_new @ sol["b"] + sol["intercept"], pred_full, rtol=0, atol=1e-4 * np.ptp(ref))


def test_the_slsqp_fallback_agrees_with_the_secular_equation(shifted, monkeypatch):
    """The two solvers of the reduced problem (bisection on the KKT multiplier; SLSQP from b_m)
    reach the same optimum on every property and variant."""
    import ctbench_classical.pfce as pfce

    src, std, X_test, _, _ = shifted
    for cls in ALL:
        exact = cls().fit(src).transfer(std)
        assert exact.chosen_params()["status"] == ["secular equation"] * 2
        with monkeypatch.context() as mp:
            mp.setattr(pfce, "_secular", lambda *a: None)
            slsqp = cls().fit(src).transfer(std)
        assert slsqp.chosen_params()["status"] == ["converged"] * 2
        rho_exact, rho_slsqp = exact.chosen_params()["objective_corr"], slsqp.chosen_params()["objective_corr"]
        assert np.all(np.array(rho_exact) >= np.array(rho_slsqp) - 1e-12)
        np.testing.assert_allclose(rho_exact, rho_slsqp, rtol=0, atol=1e-9)
        np.testing.assert_allclose(slsqp.predict(X_test), exact.predict(X_test), rtol=0, atol=1e-3)


def test_a_perfect_fit_is_the_one_closest_to_the_source_vector():
    """Few standards: rho = 1 is reachable inside the constraint, the optima form a set; the
    solution is its member of largest corr(b, b_m) (checked in the full p-dimensional space)."""
    rng = np.random.default_rng(8)
    n, p = 5, 12
    Xt = rng.standard_normal((n, p)) + 3.0
    b_m = rng.standard_normal(p)
    ref = Xt @ (b_m + 0.05 * rng.standard_normal(p))
    sol = pfce_vector(Xt, ref, b_m, 0.9)
    assert sol["status"] == "perfect fit, closest to b_m"
    assert sol["objective_corr"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(Xt @ sol["b"] + sol["intercept"], ref, rtol=0, atol=1e-9 * np.ptp(ref))
    # Over all p coefficients: max corr(b, b_m) among perfect fits X_c b = s r_c. With the
    # normalisation <J b, g> = 1 (g = J b_m / |J b_m|) it is min |J b|^2, a linearly constrained
    # quadratic program: solve its KKT system (least squares: the constant of b is free).
    Xc = Xt - Xt.mean(axis=0)
    rc = ref - ref.mean()
    J = np.eye(p) - 1.0 / p
    g = J @ b_m / np.linalg.norm(J @ b_m)
    H = np.zeros((p + 1, p + 1))
    H[:p, :p] = 2 * J
    E = np.vstack([np.append(g, 0.0), np.column_stack([Xc, -rc])])
    f = np.zeros(E.shape[0])
    f[0] = 1.0
    kkt = np.block([[H, E.T], [E, np.zeros((E.shape[0], E.shape[0]))]])
    z = np.linalg.lstsq(kkt, np.concatenate([np.zeros(p + 1), f]), rcond=None)[0]
    b_full, s_full = z[:p], z[p]
    assert s_full > 0 and np.allclose(Xc @ b_full, s_full * rc, atol=1e-10)
    assert sol["corr_b_bm"] >= pearson(b_full, b_m) - 1e-12
    assert sol["corr_b_bm"] == pytest.approx(pearson(b_full, b_m), abs=1e-10)


# --- degenerate cases ----------------------------------------------------------------------


def test_labels_without_spread_fall_back_to_a_bias_correction(shifted):
    src, std, X_test, _, _ = shifted
    flat = standards(std.X_source, std.X_target, np.column_stack([np.full(std.n, 5.0), std.y[:, 1]]))
    m = SSPFCE().fit(src).transfer(flat)
    chosen = m.chosen_params()
    assert chosen["fallback"][0] == "reference has no spread" and chosen["fallback"][1] is None
    b_m = m.source_model_.coef_[:, 0]
    np.testing.assert_array_equal(m.coef_[:, 0], b_m)
    expected = X_test @ b_m + np.mean(5.0 - std.X_target @ b_m)
    np.testing.assert_allclose(m.predict(X_test)[:, 0], expected, rtol=1e-12)


def test_fewer_than_three_distinct_samples_fall_back(shifted):
    src, std, _, _, _ = shifted
    few = standards(std.X_source[:4], std.X_target[:4], std.y[:4], groups=np.array(["a", "a", "b", "b"]))
    m = FSPFCE().fit(src).transfer(few)
    assert m.chosen_params()["fallback"] == ["fewer than 3 standard samples"] * 2
    np.testing.assert_array_equal(m.coef_, m.source_model_.coef_)


def test_a_constant_source_vector_and_flat_standards_fall_back():
    rng = np.random.default_rng(1)
    Xt = rng.standard_normal((6, 10))
    ref = rng.standard_normal(6)
    sol = pfce_vector(Xt, ref, np.full(10, 0.3), 0.98)
    assert sol["fallback"] == "constant source regression vector"
    flat = np.tile(Xt[0], (6, 1))
    sol = pfce_vector(flat, ref, rng.standard_normal(10), 0.98)
    assert sol["fallback"] == "standards have no spread along the source model"
    assert sol["intercept"] == pytest.approx(float(np.mean(ref - flat @ sol["b"])))


@pytest.mark.parametrize("cls", ALL)
def test_two_standards_are_refused(shifted, cls):
    src, std, _, _, _ = shifted
    m = cls().fit(src)
    with pytest.raises(ValueError, match="at least 3"):
        m.transfer(standards(std.X_source[:2], std.X_target[:2], std.y[:2]))


# --- the contract --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    "params",
    [{"tau": 0.0}, {"tau": 1.01}, {"tau": -0.5}, {"tau": float("nan")}, {"tau": True}, {"tau": "0.98"},
     {"max_components": 0}, {"max_components": 2.5}],
)
def test_bad_parameters_are_one_line_errors(shifted, cls, params):
    src = shifted[0]
    with pytest.raises(ValueError) as err:
        cls(**params).fit(src)
    assert "\n" not in str(err.value) and cls.name in str(err.value)


@pytest.mark.parametrize("cls", ALL)
def test_params_clone_pickle_determinism_and_untouched_inputs(shifted, cls):
    src, std, X_test, _, _ = shifted
    m = cls(tau=0.95, max_components=8, random_state=3)
    assert m.get_params() == {"tau": 0.95, "max_components": 8, "random_state": 3}
    assert cls().get_params() == {"tau": 0.98, "max_components": 30, "random_state": 0}
    assert m.clone().get_params() == m.get_params()
    ro_src = source_data(readonly(src.X), readonly(src.y))
    ro_std = standards(readonly(std.X_source), readonly(std.X_target), readonly(std.y))
    before = [np.array(a) for a in (ro_src.X, ro_src.y, ro_std.X_source, ro_std.X_target, ro_std.y)]
    X_ro = readonly(X_test)
    pred = m.fit(ro_src).transfer(ro_std).predict(X_ro)
    after = [ro_src.X, ro_src.y, ro_std.X_source, ro_std.X_target, ro_std.y]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert pred.shape == (X_test.shape[0], 2)
    again = m.clone().fit(src).transfer(std).predict(X_test)
    np.testing.assert_array_equal(pred, again)
    restored = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(restored.predict(X_test), pred)
    assert restored.chosen_params() == m.chosen_params()
    fitted = copy.deepcopy(cls().fit(src))  # the runner deep-copies a fitted method per (N, rep)
    np.testing.assert_array_equal(fitted.transfer(std).predict(X_test), cls().fit(src).transfer(std).predict(X_test))


@pytest.mark.parametrize("cls", ALL)
def test_chosen_params_are_plain_json(shifted, cls):
    import json

    src, std, _, _, _ = shifted
    m = cls().fit(src)
    assert set(m.chosen_params()) == {"source_components", "source_cap_binds", "source_max_components_tried"}
    chosen = m.transfer(std).chosen_params()
    assert json.loads(json.dumps(chosen)) == chosen
    for key in ("objective_corr", "corr_b_bm", "slope", "intercept", "fallback", "iterations", "status"):
        assert len(chosen[key]) == 2


def test_names_tags_and_shared_base():
    assert [c.name for c in ALL] == ["pfce_ns", "pfce_ss", "pfce_fs"]
    for cls in ALL:
        assert issubclass(cls, _PFCE) and cls.version == "1"
        assert cls.tags.min_shots == 3 and cls.tags.multi_target and not cls.tags.transductive


def test_the_variants_fit_their_own_references(shifted):
    """NS ignores the labels, SS the source spectra; FS is PFCE on the average of both references."""
    src, std, X_test, _, _ = shifted
    ns = NSPFCE().fit(src).transfer(std)
    ns_other_y = NSPFCE().fit(src).transfer(standards(std.X_source, std.X_target, std.y * 3 + 1))
    np.testing.assert_array_equal(ns.predict(X_test), ns_other_y.predict(X_test))
    ss = SSPFCE().fit(src).transfer(std)
    ss_other_src = SSPFCE().fit(src).transfer(standards(std.X_source * 2, std.X_target, std.y))
    np.testing.assert_array_equal(ss.predict(X_test), ss_other_src.predict(X_test))
    fs = FSPFCE().fit(src).transfer(std)
    average = 0.5 * (fs.source_model_.predict(std.X_source) + std.y)
    direct = pfce_vector(std.X_target, average[:, 1], fs.source_model_.coef_[:, 1], 0.98)
    np.testing.assert_allclose(fs.coef_[:, 1], direct["b"], rtol=0, atol=1e-14)


@pytest.mark.parametrize("cls", ALL)
def test_search_space(cls):
    optuna = pytest.importorskip("optuna")
    params = cls.search_space(optuna.trial.FixedTrial({"tau": 0.95}))
    assert params == {"tau": 0.95}
    cls(**params)._check_params()


@pytest.mark.parametrize("cls", ALL)
def test_conforms(cls):
    from ctbench.testing import assert_conforms

    assert_conforms(cls)


# --- cross-check against the authors' implementation (pynir), on real data ------------------


def test_agrees_with_pynir_on_corn(mirror):
    """corn_m5_mp6, repetition 0, N = 30, every 10th channel (70), moisture; the same b_m
    (a PLS1 with the latent variables the source model chose, on those channels).

    pynir minimises the least-squares form (1) with SLSQP over all 71 coefficients (finite-
    difference gradients); ours solves the correlation form (2) in <= N dimensions. Both must
    satisfy the constraint; ours must reach at least pynir's objective (the same least squares),
    and where pynir reached our optimum its predictions must be ours.
    """
    pytest.importorskip("pynir")
    from pynir.CalibrationTransfer import FS_PFCE, NS_PFCE, SS_PFCE

    from ctbench.cards import load_card
    from ctbench.pls import PLSCalibration
    from ctbench.runner import source_for, standards_for
    from ctbench.splits import make_split
    from ctbench.tasks import build_task

    base = build_task(load_card("corn_m5_mp6"))
    split = make_split(base, 30, 0, 0)
    task = base.outer(split.outer)
    src = source_for(task, NSPFCE)
    std = standards_for(task, split.standard_rows)
    lv = int(NSPFCE().fit(src).source_model_.n_components_[0])
    ch = slice(None, None, 10)
    pls = PLSCalibration(n_components=lv).fit(np.asarray(src.X)[:, ch], np.asarray(src.y)[:, 0])
    b_m, c_m = pls.coef_[:, 0], float(pls.intercept_[0])
    Xs, Xt, y = np.asarray(std.X_source)[:, ch], np.asarray(std.X_target)[:, ch], np.asarray(std.y)[:, 0]
    X_test = task.X_target[task.test_rows][:, ch]
    yhat_s = Xs @ b_m + c_m
    b1 = np.concatenate([[c_m], b_m])
    cases = {
        "ns": (NS_PFCE, (Xs, Xt, b1), yhat_s),
        "ss": (SS_PFCE, (Xt, y, b1), y),
        "fs": (FS_PFCE, (Xs, Xt, y, b1), 0.5 * (yhat_s + y)),
    }
    reached = []
    for name, (cls, args, ref) in cases.items():
        theirs = cls(thres=0.98).fit(*args).b2.x
        ours = pfce_vector(Xt, ref, b_m, 0.98)
        assert pearson(theirs[1:], b_m) >= 0.98 - 1e-6 and ours["corr_b_bm"] >= 0.98 - 1e-9
        rho_theirs = pearson(Xt @ theirs[1:], ref)
        assert ours["objective_corr"] >= rho_theirs - 1e-9, name
        sse_theirs = float(np.sum((ref - theirs[0] - Xt @ theirs[1:]) ** 2))
        sse_ours = float(np.sum((ref - ours["intercept"] - Xt @ ours["b"]) ** 2))
        assert sse_ours <= sse_theirs * (1 + 1e-9), name
        if rho_theirs > ours["objective_corr"] - 1e-6:
            reached.append(name)
            pred_theirs = theirs[0] + X_test @ theirs[1:]
            np.testing.assert_allclose(X_test @ ours["b"] + ours["intercept"], pred_theirs, rtol=0,
                                       atol=1e-3 * np.ptp(pred_theirs))
    assert "ns" in reached and "ss" in reached  # pynir converges on these two here
