"""model_update (plugins/ctbench_classical/model_update.py): hand-built exact cases, the kit, and corn."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ctbench_classical.model_update as mu
from ctbench.pls import PLSCalibration, _cv_folds, _cv_press, nipals_pls1_path
from ctbench_classical import SBC, ModelUpdate, ctbench_register_methods
from ctbench_classical._common import sample_folds
from ctbench_classical.model_update import grouped_folds, source_rows_of, target_gain, weighted_pls1_dual
from classical_builders import bands, one_blas_thread, standards  # noqa: F401  (one_blas_thread: autouse fixture)
from classical_builders import source_data as source


def two_instruments(n: int = 70, p: int = 50, noise: float = 0.002, seed: int = 3, gain: float = 1.1):
    """(X_source, X_target, y): target = source shifted by 2 channels, times ``gain``, plus a sloped baseline."""
    rng = np.random.default_rng(seed)
    axis = np.arange(p + 4, dtype=float)
    conc = rng.uniform(0.1, 1.0, size=(n, 3))
    pure = bands(axis, [14, 27, 38], [3.0, 4.0, 3.5])
    full = conc @ pure + rng.normal(scale=noise, size=(n, p + 4))
    Xs = full[:, 2 : p + 2] + 0.05
    Xt = gain * (full[:, :p] + 0.08 + 0.002 * np.arange(p))
    y = conc[:, :2] * np.array([10.0, 5.0])
    return Xs, Xt, y


def split(Xs, Xt, y, n_cal=50, n_std=10):
    """Calibration = first n_cal rows; standards = every (n_cal // n_std)-th of them; test = the rest."""
    S = np.arange(0, n_cal, n_cal // n_std)[:n_std]
    return source(Xs[:n_cal], y[:n_cal]), standards(Xs[S], Xt[S], y[S]), Xt[n_cal:], y[n_cal:]


def rmse(pred, y) -> float:
    return float(np.sqrt(((pred - y) ** 2).mean()))


# --- registration and the kit ---------------------------------------------------------------------


def test_registered_after_sbc():
    classes = ctbench_register_methods()
    assert classes[classes.index(SBC) + 1] is ModelUpdate
    from ctbench.plugins import load_methods

    assert load_methods()["model_update"].cls is ModelUpdate
    assert ModelUpdate.name == "model_update" and ModelUpdate.version == "1"
    assert ModelUpdate.tags.min_shots == 2 and ModelUpdate.tags.multi_target
    assert not (ModelUpdate.tags.zero_shot or ModelUpdate.tags.transductive or ModelUpdate.tags.corrects_spectra)
    assert ModelUpdate.default_params()["max_components"] == PLSCalibration().max_components


def test_conforms():
    from ctbench.testing import assert_conforms

    assert_conforms(ModelUpdate)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"weight": 0}, "weight"),
        ({"weight": -2.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"weights": ()}, "weights"),
        ({"weights": (1, -1)}, "weights"),
        ({"weights": "abc"}, "weights"),
        ({"max_weight_ratio": 0.0}, "max_weight_ratio"),
        ({"gain_correction": True}, "gain_correction"),
        ({"components": "test"}, "components"),
        ({"max_components": 0}, "max_components"),
        ({"max_components": 2.5}, "max_components"),
    ],
)
def test_bad_parameters_raise_one_line_errors_at_fit(params, match):
    src, _, _, _ = split(*two_instruments())
    m = ModelUpdate(**params)  # __init__ only stores
    with pytest.raises(ValueError, match=match) as info:
        m.fit(src)
    assert "\n" not in str(info.value)


def test_candidate_weights_are_capped_by_the_pool():
    m = ModelUpdate()
    assert m.candidate_weights(10, 64) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert m.candidate_weights(50, 64) == [1.0, 2.0, 4.0, 8.0, 16.0]  # 16 * 64 / 50 = 20.5
    assert ModelUpdate(max_weight_ratio=4).candidate_weights(20, 64) == [1.0, 2.0, 4.0, 8.0]
    assert ModelUpdate(max_weight_ratio=0.01).candidate_weights(20, 64) == [1.0]  # the smallest always stays
    assert ModelUpdate(max_weight_ratio=None).candidate_weights(500, 10) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert ModelUpdate(weights=(8, 2, 2)).candidate_weights(10, 64) == [2.0, 8.0]
    assert ModelUpdate(weight=3).candidate_weights(1000, 1) == [3.0]


# --- the weighted PLS kernel ---------------------------------------------------------------------


def _random_problem(n=40, p=80, seed=0):
    rng = np.random.default_rng(seed)
    X = np.cumsum(rng.normal(size=(n, p)), axis=1) + 5.0
    Y = np.c_[X[:, 5] - X[:, 30], X[:, 50]] + rng.normal(size=(n, 2))
    return X, Y


def test_weighted_rows_equal_replicated_rows():
    """Weighted centring + rows scaled by sqrt(w) == NIPALS on the rows replicated w times (1e-10)."""
    X, Y = _random_problem()
    rng = np.random.default_rng(1)
    D = rng.integers(0, 5, size=(3, X.shape[0])).astype(float)
    D[:, :4] = 1.0
    counts = np.array([4, 7])
    X0 = X - X.mean(axis=0)
    beta, ybar, pred, v = weighted_pls1_dual(X0 @ X0.T, Y, D, counts)
    for b in range(3):
        coef = (X0 - v[b] @ X0).T @ beta[b]
        intercept = ybar[b] - (X.mean(axis=0) + v[b] @ X0) @ coef
        rep = np.repeat(np.arange(X.shape[0]), D[b].astype(int))
        for j, a in enumerate(counts):
            B, xm, ym = nipals_pls1_path(X[rep], Y[rep, j], a)
            ref = B[:, a - 1]
            np.testing.assert_allclose(coef[:, j], ref, rtol=0, atol=1e-10 * np.abs(ref).max())
            ref_pred = (X - xm) @ ref + ym  # every row, including the zero-weight (held-out) ones
            np.testing.assert_allclose(pred[b, :, j], ref_pred, rtol=0, atol=1e-10 * np.abs(ref_pred).max())
            np.testing.assert_allclose(X @ coef[:, j] + intercept[j], ref_pred, rtol=0, atol=1e-10 * np.abs(ref_pred).max())


def test_non_integer_weights_scale_freely():
    """Only the weights' ratios matter (weights 0.5/1.5 == 1/3), as for replicated rows."""
    X, Y = _random_problem(seed=2)
    d = np.r_[np.full(20, 0.5), np.full(20, 1.5)]
    X0 = X - X.mean(axis=0)
    b1, y1, p1, _ = weighted_pls1_dual(X0 @ X0.T, Y, d[None], np.array([5, 5]))
    b2, y2, p2, _ = weighted_pls1_dual(X0 @ X0.T, Y, 2 * d[None], np.array([5, 5]))
    np.testing.assert_allclose(p1, p2, rtol=1e-10)
    np.testing.assert_allclose(b1, b2, rtol=1e-10)  # the same regression vector


def test_all_counts_press_equals_ctbench_pls_cross_validation():
    """The latent-variable CV on the stack (zero weights on each fold) is ctbench.pls's, exactly."""
    X, Y = _random_problem(n=50, p=90, seed=4)
    codes = np.arange(50) // 2
    folds = _cv_folds(50, 10, 3, codes)
    ref, _ = _cv_press(X, Y, 12, 10, 3, folds=folds)
    D = np.ones((10, 50))
    for f, rows in enumerate(folds):
        D[f, rows] = 0.0
    X0 = X - X.mean(axis=0)
    G = X0 @ X0.T
    pred = weighted_pls1_dual([G, 9.0 * G], Y, np.r_[D, D], np.array([12, 12]), np.repeat([0, 1], 10), all_counts=True)
    for h in range(2):  # a second Gram (spectra x 3): the same PRESS (PLS predictions are scale-free)
        press = np.einsum("bkan,bn->ka", (pred[10 * h : 10 * h + 10] - Y.T[None, :, None, :]) ** 2, 1 - D)
        np.testing.assert_allclose(press, ref, rtol=1e-9)


def test_exhausted_rank_stops_components():
    """Exactly rank-3 data: counts beyond 3 give the 3-component model, finite (no 0/0)."""
    Xs, _, y = two_instruments(noise=0.0)
    X0 = Xs - Xs.mean(axis=0)
    beta, ybar, pred, v = weighted_pls1_dual(X0 @ X0.T, y, np.ones((1, len(y))), np.array([3, 9]))
    assert np.isfinite(beta).all()
    np.testing.assert_allclose(pred[0], y, atol=1e-8)


# --- the method on hand-built cases ---------------------------------------------------------------


def test_fixed_weight_is_the_pls_of_source_plus_replicated_standards():
    Xs, Xt, y = two_instruments()
    src, std, X_test, _ = split(Xs, Xt, y)
    m = ModelUpdate(weight=3, components="source", gain_correction="never").fit(src).transfer(std)
    assert m.weight_ == 3.0 and m.cv_scores_ is None and m.gain_ == 1.0
    X_stack = np.vstack([src.X, np.repeat(std.X_target, 3, axis=0)])
    y_stack = np.vstack([src.y, np.repeat(std.y, 3, axis=0)])
    for j, a in enumerate(m.source_model_.n_components_):
        B, xm, ym = nipals_pls1_path(X_stack, y_stack[:, j], a)
        np.testing.assert_allclose(m.coef_[:, j], B[:, a - 1], rtol=0, atol=1e-10 * np.abs(B[:, a - 1]).max())
        ref = (X_test - xm) @ B[:, a - 1] + ym
        np.testing.assert_allclose(m.predict(X_test)[:, j], ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_a_large_weight_fits_the_standards_target_values():
    """w -> infinity: the stack is the standards; with >= N - 1 latent variables PLS interpolates them."""
    Xs, Xt, y = two_instruments(noise=0.01)
    src, _, _, _ = split(Xs, Xt, y)
    S = np.array([3, 17, 31, 44])
    rng = np.random.default_rng(0)
    y_std = y[S] + rng.normal(scale=1.0, size=(4, 2))  # values the target instrument "needs"
    m = ModelUpdate(weight=1e9, components="source", gain_correction="never").fit(src)
    assert (m.source_model_.n_components_ >= 3).all()  # N - 1 = 3
    m.transfer(standards(Xs[S], Xt[S], y_std))
    np.testing.assert_allclose(m.predict(Xt[S]), y_std, atol=1e-4 * np.abs(y_std).max())
    small = ModelUpdate(weight=1e-9, components="source", gain_correction="never").fit(src)
    small.transfer(standards(Xs[S], Xt[S], y_std))  # w -> 0: the source model
    np.testing.assert_allclose(small.coef_, m.source_model_.coef_, atol=1e-6 * np.abs(m.source_model_.coef_).max())


def test_identical_instruments_give_the_source_model():
    """Target == source, exact rank-3 data: every weight and count >= 3 gives the source model."""
    Xs, _, y = two_instruments(noise=0.0)
    src, std, X_test, y_test = split(Xs, Xs, y)
    m = ModelUpdate().fit(src).transfer(std)
    assert m.cv_scores_ is not None and len(m.options_) == 6 and m.gain_ == 1.0
    np.testing.assert_allclose(m.predict(X_test), m.source_model_.predict(X_test), atol=1e-8)
    np.testing.assert_allclose(m.predict(X_test), y_test, atol=1e-8)


def test_identical_noisy_instruments_give_nearly_the_source_model():
    Xs, _, y = two_instruments(noise=0.01)
    src, std, X_test, y_test = split(Xs, Xs, y)
    m = ModelUpdate().fit(src).transfer(std)
    source_pred = m.source_model_.predict(X_test)
    err = rmse(source_pred, y_test)
    assert rmse(m.predict(X_test), source_pred) < 0.2 * err
    assert rmse(m.predict(X_test), y_test) < 1.1 * err


def test_update_beats_the_source_model_on_a_shifted_instrument():
    Xs, Xt, y = two_instruments(noise=0.002)
    src, std, X_test, y_test = split(Xs, Xt, y)
    m = ModelUpdate().fit(src).transfer(std)
    assert rmse(m.predict(X_test), y_test) < 0.2 * rmse(m.source_model_.predict(X_test), y_test)
    params = m.chosen_params()
    assert json.loads(json.dumps(params)) == params  # plain JSON
    assert params["weight"] in [o["weight"] for o in params["cv_options"]]
    assert len(params["cv_scores"]) == len(params["cv_options"]) and params["selected_by_cv"]
    assert params["cv_folds"] == 6 and len(params["components"]) == 2
    best = params["cv_scores"].index(min(params["cv_scores"]))
    assert params["cv_options"][best] == {"gain": params["gain"], "weight": params["weight"]}


def test_ties_go_to_the_smaller_weight(monkeypatch):
    Xs, Xt, y = two_instruments()
    src, std, _, _ = split(Xs, Xt, y)
    real = mu.weighted_pls1_dual

    def same_for_every_weight(grams, Y, D, counts, which=None, all_counts=False):
        out = real(grams, Y, D, counts, which, all_counts)
        if all_counts:
            return out
        beta, ybar, pred, v = out
        return beta, ybar, np.zeros_like(pred) + Y.mean(axis=0), v  # every option predicts the same

    monkeypatch.setattr(mu, "weighted_pls1_dual", same_for_every_weight)
    m = ModelUpdate().fit(src).transfer(std)
    assert len(set(np.round(m.cv_scores_, 12))) == 1 and m.weight_ == 1.0


def test_grouped_folds_never_split_a_samples_replicates():
    groups = np.repeat(np.array(["s3", "s1", "s7", "s2", "s9", "s4", "s8", "s5", "s6"]), 3)
    groups = np.r_[groups, ["s1", "s3"]]  # two more replicates, out of order
    samples = sample_folds(groups, len(groups))
    for n_samples in (3, 6, 9):
        sub = samples[:n_samples]
        folds = grouped_folds(sub)
        assert len(folds) == min(n_samples, 6)
        assert sorted(i for f in folds for i in f) == list(range(n_samples))  # each sample in one fold
        rows_of_sample = {groups[s[0]]: set(s.tolist()) for s in sub}
        for f in folds:
            rows = set(np.concatenate([sub[i] for i in f]).tolist())
            for sample in set(groups[list(rows)]):
                assert rows_of_sample[sample] <= rows  # every replicate of a held-out sample is held out


def test_cv_folds_hold_out_whole_samples_on_both_instruments(monkeypatch):
    """In every weight-CV fold the held-out samples lose their target rows and their source rows
    (all replicates); nothing else is dropped."""
    Xs, Xt, y = two_instruments(n=60)
    rng = np.random.default_rng(5)
    Xs_rep = np.repeat(Xs, 2, axis=0) + rng.normal(scale=1e-3, size=(120, Xs.shape[1]))  # 2 replicates
    Xt_rep = np.repeat(Xt, 2, axis=0) + rng.normal(scale=1e-3, size=(120, Xs.shape[1]))
    y_rep, g_rep = np.repeat(y, 2, axis=0), np.repeat(np.array([f"id{i}" for i in range(60)]), 2)
    cal = np.arange(80)  # samples 0..39
    std_samples = np.array([2, 9, 15, 22, 30, 33, 38, 11, 5])
    S = np.sort(np.r_[2 * std_samples, 2 * std_samples + 1])
    src = source(Xs_rep[cal], y_rep[cal], g_rep[cal])
    std = standards(Xs_rep[S], Xt_rep[S], y_rep[S], g_rep[S])
    seen = []
    real = mu.weighted_pls1_dual

    def spy(grams, Y, D, counts, which=None, all_counts=False):
        seen.append((D.copy(), all_counts))
        return real(grams, Y, D, counts, which, all_counts)

    monkeypatch.setattr(mu, "weighted_pls1_dual", spy)
    m = ModelUpdate(gain_correction="never").fit(src).transfer(std)
    D = [d for d, a in seen if not a][0]
    n_opt = len(m.options_)
    folds = D[n_opt:]
    assert len(folds) == 6 * n_opt
    ids = np.r_[g_rep[cal], g_rep[S]]
    held_samples = []
    for d in folds[::n_opt]:
        dropped = set(ids[d == 0])
        assert set(ids[d == 0]) == set(ids[np.isin(ids, list(dropped))])  # all rows of those samples
        assert dropped <= set(g_rep[S])  # only standards
        assert ((d == 0) == np.isin(ids, list(dropped))).all()
        held_samples.append(dropped)
    assert sorted(s for h in held_samples for s in h) == sorted(set(g_rep[S]))  # each standard held out once
    # the latent-variable CV on the stack: a standard's target rows share its source rows' fold
    D_aug = [d for d, a in seen if a][0]
    for d in D_aug:
        dropped = set(ids[d == 0])
        assert ((d == 0) == np.isin(ids, list(dropped))).all()


def test_source_rows_are_found_by_spectra_then_by_sample_id():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 5))
    codes = np.array([0, 0, 1, 2, 2, 3])
    samples = [np.array([0]), np.array([1, 2])]
    X_std = np.vstack([X[3], X[5], rng.normal(size=5)])  # sample A = source row 3; sample B = row 5 + unknown
    found = source_rows_of(samples, X_std, X, codes)
    assert found[0].tolist() == [3, 4] and found[1].tolist() == [5]
    assert source_rows_of(samples, X_std, X, None)[0].tolist() == [3]
    assert source_rows_of([np.array([2])], X_std, X, codes)[0].size == 0


def test_the_choice_depends_on_the_standards_only():
    """Test spectra never reach transfer (unlabelled is ignored); predicting other spectra changes nothing."""
    Xs, Xt, y = two_instruments()
    src, std, X_test, _ = split(Xs, Xt, y)
    a = ModelUpdate().fit(src).transfer(std)
    b = ModelUpdate().fit(src).transfer(std, unlabelled=X_test)
    c = ModelUpdate().fit(src).transfer(std, unlabelled=np.random.default_rng(0).normal(size=X_test.shape) * 1e3)
    for m in (b, c):
        assert m.chosen_params() == a.chosen_params()
        np.testing.assert_array_equal(m.coef_, a.coef_)
    before = a.chosen_params()
    a.predict(X_test)
    a.predict(X_test[::-1] * 2.0)
    assert a.chosen_params() == before
    # and different standards do change it
    S2 = np.arange(1, 50, 5)
    d = ModelUpdate().fit(src).transfer(standards(Xs[S2], Xt[S2], y[S2]))
    assert d.chosen_params()["cv_scores"] != before["cv_scores"]


def test_too_few_standard_samples_use_the_smallest_weight():
    Xs, Xt, y = two_instruments()
    src, _, _, _ = split(Xs, Xt, y)
    two_rows_one_sample = standards(Xs[[4, 4]], Xt[[4, 4]] + np.array([[0.0], [1e-3]]), y[[4, 4]], np.array(["x", "x"]))
    m = ModelUpdate().fit(src).transfer(two_rows_one_sample)
    assert m.weight_ == 1.0 and m.cv_scores_ is None and m.chosen_params()["selected_by_cv"] is False
    assert np.isfinite(m.predict(Xt)).all()
    with pytest.raises(ValueError, match="at least 2"):
        m.transfer(standards(Xs[:1], Xt[:1], y[:1]))


def test_gain_makes_the_update_independent_of_the_target_intensity_scale():
    Xs, Xt, y = two_instruments()
    src, std, X_test, y_test = split(Xs, Xt, y)
    ref = ModelUpdate(gain_correction="always").fit(src).transfer(std)
    scaled = standards(std.X_source, 1e6 * std.X_target, std.y)
    m = ModelUpdate(gain_correction="always").fit(src).transfer(scaled)
    assert m.gain_ == pytest.approx(1e6 * ref.gain_, rel=1e-12)
    np.testing.assert_allclose(m.predict(1e6 * X_test), ref.predict(X_test), rtol=0, atol=1e-8)
    auto = ModelUpdate().fit(src).transfer(scaled)  # the plain options explode; the CV sees it
    assert auto.gain_ == m.gain_ and len(auto.options_) == 12
    assert rmse(auto.predict(1e6 * X_test), y_test) < 2 * rmse(ref.predict(X_test), y_test)
    assert target_gain(std.X_source, 3.0 * std.X_target) == pytest.approx(3.0 * target_gain(std.X_source, std.X_target))
    near = ModelUpdate().fit(src).transfer(standards(std.X_source, std.X_source * 1.05, std.y))
    assert len({g for g, _ in near.options_}) == 1  # within 10 % of 1: plain options only


# --- real data --------------------------------------------------------------------------------------


def _corn_task():
    from ctbench.cards import load_card
    from ctbench.tasks import build_task

    return build_task(load_card("corn_m5_mp6"))


def _corn_rmsep(task, cls, n: int, rep: int) -> float:
    from ctbench.runner import source_for, standards_for
    from ctbench.splits import make_split

    sp = make_split(task, n, rep)
    view = task.outer(sp.outer) if hasattr(task, "outer") else task
    m = cls().fit(source_for(view, cls)).transfer(standards_for(task, sp.standard_rows))
    test = sp.test_rows
    err = m.predict(view.X_target[test]) - view.y[test]
    return float(np.sqrt((err**2).mean(axis=0)).mean())


@pytest.mark.parametrize("rep", [0, 1, 2])
def test_corn_n10_beats_no_transfer_and_target_only(mirror, rep):
    from ctbench_reference.methods import NoTransfer, TargetOnly

    task = _corn_task()
    ours = _corn_rmsep(task, ModelUpdate, 10, rep)
    assert ours < _corn_rmsep(task, NoTransfer, 10, rep)
    assert ours < _corn_rmsep(task, TargetOnly, 10, rep)
