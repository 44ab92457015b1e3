"""Joint-Y PLS (JYPLS): one latent model of the source calibration and the target standards sharing their y-space."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

from ._common import (
    check_max_components,
    is_count,
    MAX_COMPONENTS,
    as_spectra,
    one_blas_thread,
    plain,
    require_fitted,
    sample_folds,
    source_model_params,
    standards_arrays,
)
from .model_update import grouped_folds, keep_calibration, source_rows_of, target_gain

CV_MIN_SAMPLES = 3
"""Fewest standard samples for the latent-variable CV (a fold must leave 2 samples, one
latent variable, in the target block); below it the source model's counts are used."""


class JYPLS(TransferMethod):
    """Joint-Y PLS (García-Muñoz, MacGregor and Kourti, Chemometr. Intell. Lab. Syst. 79 (2005) 101-114).

    Two X blocks, the source calibration ``X_s`` (with ``y_s``) and the N standards' *target*
    spectra ``X_t`` (with their ``y_t``), each centred on its own means (spectra and values), are
    modelled with latent variables that share one y-space. For one property (PLS1) and each
    latent variable ``a``, with ``f_i`` the block's deflated values and ``E_i`` its deflated
    spectra::

        w_i = E_i^T f_i / ||E_i^T f_i||          block weights (own direction per block)
        t_i = E_i w_i                            block scores
        q   = (t_s^T f_s + v t_t^T f_t) / (t_s^T t_s + v t_t^T t_t)    common y-loading
        p_i = E_i^T t_i / t_i^T t_i              block loadings
        E_i <- E_i - t_i p_i^T,   f_i <- f_i - q t_i

    (``v`` = ``target_weight``, 1 in the paper). A target spectrum ``x`` is predicted with the
    target block's own regression vector: ``y = ybar_t + (x / g - xbar_t) W_t (P_t^T W_t)^{-1} q``.

    The paper's joint-Y NIPALS starts from a column of the stacked Y, computes
    ``w_i = X_i^T u_i / u_i^T u_i`` (normalised), ``t_i = X_i w_i``, ``q = Y_J^T t_J / t_J^T t_J``
    on the stacked scores ``t_J = [t_s; t_t]`` and ``u_J = Y_J q / q^T q``, iterates to convergence,
    then deflates every ``X_i`` with its own ``p_i`` and the stacked ``Y_J`` with ``t_J q^T``. With
    one y column ``u_J`` is ``Y_J`` itself and the loop converges at once, which gives the
    formulas above. Deviations, all stated a priori:

    * **PLS1 per property** (the paper fits all properties at once, PLS2 with a common q); every
      classical source model here is a PLS1 per property with its own latent variables.
    * **No per-channel autoscaling** (MacGregor's group usually autoscales each block): spectra
      are centred only, as by every PLS in ctbench. Instead the target block is divided by the
      instruments' **gain** ``g`` (``gain_correction``; ``target_gain`` of the paired standards:
      ratio of their spectral spread on target and source), so the two blocks' scores are in the
      same units and the common ``q`` means the same thing for both; without it a target device
      reading 1e6 times weaker (the time-gated Raman) would contribute nothing to ``q``, one
      reading 1e6 times stronger everything. ``g`` does not change any block's weights, loadings
      or the direction of its regression vector, only how ``q`` blends the blocks; with the same
      instrument ``g`` = 1 exactly.
    * A block whose spectra are exhausted (its ``E_i^T f_i`` vanishes) stops: the target block
      has at most (its rows - 1) latent variables, so the model has at most that many.

    Not an exact method: because ``q`` is shared, the target block's values are fitted by a
    compromise between the blocks' score-to-y relations, so even noise-free data with y linear in
    a low-rank X are not predicted exactly when the instruments map the latent space differently
    (a rank-3 example: errors of the order of y's spread). It is exact when the blocks' scores
    relate to y alike: rank-1 data (any two instrument vectors, thanks to the gain), or blocks
    with the same Gram matrix after the gain (the tests hold both to 1e-8).

    Latent variables (``n_components=None``): per property, by grouped CV over the standards'
    samples (leave-one-sample-out up to 6 samples, 6 folds of whole samples dealt round-robin
    beyond, as model_update). A fold's held-out samples leave *both* blocks: their target rows,
    and their rows in the source calibration (``source_rows_of``: standards are copies of
    calibration-pool rows, which would hand the model their reference values). The held-out
    standards are predicted from their target spectra at every count 1..A, A = min(max_components,
    smallest training target block's rows - 1); the criterion per property is RMSE / SD(y_source)
    over all standards (each held out once), the lowest wins, ties go to fewer latent variables.
    Per property, because each property is its own PLS1. With fewer than ``CV_MIN_SAMPLES`` (3)
    standard samples the source model's counts are used (capped by the target block's rank).

    Parameters (defaults in brackets):
      n_components [None]: latent variables for every property; None chooses them by the CV above.
      target_weight [1.0]: a standard row counts as this many source rows in the common ``q``
        (it changes nothing else: each block's weights are its own).
      gain_correction [True]: divide the target block by the instruments' gain ``g`` (above).
      max_components [30]: largest latent-variable count tried by the source model's CV and by
        the CV above.
      random_state [0]: seeds the source model's CV folds (the standards' folds are not random).

    Why the defaults: all a priori, none from test results. ``target_weight`` = 1 is the paper's
    unweighted joint Y: the small target block (N rows against ~100-200) then barely moves ``q``,
    so ``q`` is the source calibration's score-to-y relation and the standards supply the target
    block's own directions and means; up-weighting it (towards a PLS on the standards alone) is
    left to tuning (``search_space``). The gain correction follows from the shared ``q`` (above).
    The fold rule and the criterion are model_update's; the candidate counts are all the target
    block can hold.
    """

    name = "jypls"
    version = "1"
    tags = Tags(min_shots=2, zero_shot=False, transductive=False, multi_target=True)
    description = "joint-Y PLS of the source calibration and the standards' target spectra (common y-space)"

    def __init__(
        self,
        n_components: int | None = None,
        target_weight: float = 1.0,
        gain_correction: bool = True,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.target_weight = target_weight
        self.gain_correction = gain_correction
        self.max_components = max_components
        self.random_state = random_state

    # --- parameters ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        nc = self.n_components
        if nc is not None and not is_count(nc, 1):
            raise ValueError(f"jypls: n_components must be None or a positive integer, got {nc!r}")
        tw = self.target_weight
        ok = not isinstance(tw, bool) and isinstance(tw, (int, float, np.integer, np.floating))
        if not ok or not math.isfinite(float(tw)) or float(tw) <= 0:
            raise ValueError(f"jypls: target_weight must be a positive number, got {tw!r}")
        if not isinstance(self.gain_correction, (bool, np.bool_)):
            raise ValueError(f"jypls: gain_correction must be True or False, got {self.gain_correction!r}")
        check_max_components("jypls", self.max_components)

    # --- the contract ---------------------------------------------------------------------------
    def fit(self, source: SourceData) -> JYPLS:
        self._check_params()
        keep_calibration(self, source)  # the source block only enters through its Gram matrix
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> JYPLS:
        require_fitted(self, "source_model_", "fit")
        self._check_params()
        Xs, Xt, yt = standards_arrays(standards, self.n_channels_, self.n_properties_, self.tags.min_shots, self.name)
        n_std, k = Xt.shape[0], self.n_properties_
        samples = sample_folds(standards.groups, n_std)
        gain = target_gain(Xs, Xt) if self.gain_correction else 1.0
        weight = float(self.target_weight)
        with one_blas_thread():
            Z = Xt / gain
            Zc = Z - Z.mean(axis=0)
            target_gram = Zc @ Zc.T
            folds: list[list[int]] = []
            if self.n_components is not None:
                counts = np.full(k, int(self.n_components))
                self.cv_scores_ = None
            elif len(samples) < CV_MIN_SAMPLES:
                counts = np.asarray(self.source_model_.n_components_, dtype=int).copy()
                self.cv_scores_ = None
            else:
                held_source = source_rows_of(samples, Xs, self.X_source_, self.source_codes_)
                folds = grouped_folds(samples)
                std_out = [np.concatenate([samples[i] for i in f]) for f in folds]
                src_out = [np.concatenate([held_source[i] for i in f]).astype(int) for f in folds]
                A = max(1, min(int(self.max_components), min(n_std - len(r) for r in std_out) - 1))
                err = np.zeros((k, A, n_std))
                for rows, src_rows in zip(std_out, src_out):
                    pred = jypls_cv_predictions(
                        self.source_gram_, self.y_source_, target_gram, yt, src_rows, rows, A, weight
                    )  # (k, A, len(rows))
                    err[:, :, rows] = pred - yt[rows].T[:, None, :]
                scores = np.sqrt((err**2).mean(axis=2)) / self.y_scale_[:, None]  # (k, A)
                counts = np.array([int(np.flatnonzero(s <= s.min() * (1 + 1e-9))[0]) + 1 for s in scores])
                self.cv_scores_ = scores
            A_fit = int(counts.max())
            Ks = self.source_gram_ - self.source_gram_.mean(axis=0)
            Ks = Ks - Ks.mean(axis=1)[:, None]  # centred exactly (the Gram is of centred rows already)
            fs = self.y_source_ - self.y_source_.mean(axis=0)
            ybar_t = yt.mean(axis=0)
            U, M, q, used = jypls1_dual(Ks, fs, target_gram, yt - ybar_t, A_fit, weight)
            n_used = used.sum(axis=1)
            counts = np.minimum(counts, np.maximum(n_used, 1))
            coef = np.zeros((self.n_channels_, k))
            for j in range(k):
                a = int(counts[j])
                if n_used[j] == 0:
                    continue  # the target block carries no information on this property: predict its mean
                z = np.linalg.solve(M[j, :a, :a], q[j, :a])
                coef[:, j] = Zc.T @ (U[:, j, :a] @ z)
        self.gain_ = float(gain)
        self.n_folds_ = len(folds)
        self.n_components_ = counts.astype(int)
        self.coef_ = coef / gain  # the model sees target spectra divided by the gain
        self.intercept_ = ybar_t - Z.mean(axis=0) @ coef
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "coef_", "transfer")
        X = as_spectra(X_target, "target spectra", self.n_channels_)
        return X @ self.coef_ + self.intercept_

    def chosen_params(self) -> dict[str, Any]:
        """The source model's latent variables; after transfer the joint model's (per property),
        whether the standards' CV chose them, its folds and scores (per property and count), and
        the gain applied to the target block."""
        out: dict[str, Any] = {}
        if hasattr(self, "source_model_"):
            out.update(source_model_params(self.source_model_))
        if hasattr(self, "coef_"):
            out["components"] = plain(self.n_components_)
            out["selected_by_cv"] = self.cv_scores_ is not None
            out["cv_folds"] = self.n_folds_
            out["cv_scores"] = None if self.cv_scores_ is None else plain(self.cv_scores_)
            out["gain"] = self.gain_
        return out

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "target_weight": trial.suggest_float("target_weight", 0.25, 64.0, log=True),
            "gain_correction": trial.suggest_categorical("gain_correction", [True, False]),
        }


# --- the joint-Y PLS1 in the dual (Gram) form -----------------------------------------------------


def jypls1_dual(
    Ks: np.ndarray, fs: np.ndarray, Kt: np.ndarray, ft: np.ndarray, A: int, weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Joint-Y PLS1 of every property, two blocks, from their centred Gram matrices.

    ``Ks`` (m_s, m_s) and ``Kt`` (m_t, m_t): the Gram matrices ``X_i X_i^T`` of the blocks' centred
    spectra; ``fs`` (m_s, k), ``ft`` (m_t, k): their centred values; ``A`` latent variables;
    ``weight``: the target rows' weight in the common y-loading.

    For a block with centred spectra ``X``, the deflated spectra are ``E_a = (I - Pi_a) X`` (Pi_a
    the projection on the block's earlier scores), so its weight ``E_a^T f_a`` is ``X^T h_a`` with
    ``h_a = (I - Pi_a) f_a`` (the common ``q`` leaves ``f_a`` with a part along the earlier scores,
    hence the projection), ``u_a = h_a / ||X^T h_a||``, ``w_a = X^T u_a`` and the score
    ``t_a = (I - Pi_a) K u_a``; the loadings satisfy ``P^T W = diag(1/t^T t) T^T K U`` (upper
    triangular: the scores are orthogonal within a block). Stopping: the target block stops when
    its weight vanishes (``||X^T h||^2`` below 1e-22 of its first value) or its score does (``t^T t``
    below 1e-20 of trace K), later components stay unused; a source block that stops contributes
    nothing more to ``q``.

    Returns ``(U, M, q, used)`` of the target block: ``U`` (m_t, k, A) with ``W_t = X_t^T U``,
    ``M`` (k, A, A) = ``P_t^T W_t`` (identity rows on unused components), ``q`` (k, A) the common
    y-loadings (0 when unused) and ``used`` (k, A). The target regression vector with ``a`` latent
    variables is ``X_t^T U[:, j, :a] M[j, :a, :a]^{-1} q[j, :a]``.
    """
    k = fs.shape[1]
    mt = Kt.shape[0]
    blocks = [(Ks, fs.copy(), 1.0), (Kt, ft.copy(), float(weight))]
    T = [np.zeros((K.shape[0], k, A)) for K, _, _ in blocks]  # unit scores per block
    first = [None, None]
    alive = [np.ones(k, dtype=bool), np.ones(k, dtype=bool)]
    trace = [max(float(np.trace(K)), 1e-300) for K, _, _ in blocks]
    U = np.zeros((mt, k, A))
    KU = np.zeros((mt, k, A))
    tt_t = np.ones((k, A))
    q = np.zeros((k, A))
    used = np.zeros((k, A), dtype=bool)
    for a in range(A):
        scores = []
        for b, (K, f, _) in enumerate(blocks):
            h = f
            if a:
                Ta = T[b][:, :, :a]
                for _ in range(2):  # projection twice: orthogonal to round-off
                    h = h - np.einsum("mka,ka->mk", Ta, np.einsum("mka,mk->ka", Ta, h))
            Kh = K @ h
            nrm2 = np.einsum("mk,mk->k", h, Kh)
            if first[b] is None:
                first[b] = nrm2.copy()
            alive[b] &= (nrm2 > 1e-22 * first[b]) & (nrm2 > 0)
            inv = np.where(alive[b], 1.0 / np.sqrt(np.where(alive[b], nrm2, 1.0)), 0.0)
            t = Kh * inv
            if b == 1:
                U[:, :, a] = h * inv
                KU[:, :, a] = t
            if a:
                Ta = T[b][:, :, :a]
                for _ in range(2):
                    t = t - np.einsum("mka,ka->mk", Ta, np.einsum("mka,mk->ka", Ta, t))
            tt = np.einsum("mk,mk->k", t, t)
            alive[b] &= tt > 1e-20 * trace[b]
            t = t * alive[b]
            tt = np.where(alive[b], tt, 1.0)
            T[b][:, :, a] = t / np.sqrt(tt)
            scores.append((t, tt))
        on = alive[1].copy()
        (ts, tts), (tt_, ttt) = scores
        num = np.einsum("mk,mk->k", ts, blocks[0][1]) + weight * np.einsum("mk,mk->k", tt_, blocks[1][1])
        den = np.where(alive[0], tts, 0.0) + weight * ttt
        qa = np.where(on, num / np.where(on, den, 1.0), 0.0)
        for (K, f, _), (t, _) in zip(blocks, scores):
            f -= qa * t
        U[:, :, a] *= on
        KU[:, :, a] *= on
        tt_t[:, a] = ttt
        q[:, a] = qa
        used[:, a] = on
    # P^T W [a, b] = t_a^T K u_b / t_a^T t_a (T unit: divide by sqrt(tt)); unused: identity rows
    M = np.einsum("mka,mkb->kab", T[1], KU) / np.sqrt(tt_t)[:, :, None]
    M = M + np.eye(A) * (~used)[:, :, None]
    return U, M, q, used


def _recentre(G: np.ndarray, train: np.ndarray, test: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The Gram matrix of the ``train`` rows centred on their own mean (and the ``test`` rows'
    cross products, centred on that same mean), from the Gram ``G`` of rows centred on any vector."""
    Gtt = G[np.ix_(train, train)]
    m = Gtt.mean(axis=1)
    mm = m.mean()
    K = Gtt - m[:, None] - m[None, :] + mm
    if test is None:
        return K, None
    Gx = G[np.ix_(test, train)]
    return K, Gx - Gx.mean(axis=1)[:, None] - m[None, :] + mm


def jypls_cv_predictions(
    source_gram: np.ndarray,
    y_source: np.ndarray,
    target_gram: np.ndarray,
    y_target: np.ndarray,
    source_out: np.ndarray,
    target_out: np.ndarray,
    A: int,
    weight: float = 1.0,
) -> np.ndarray:
    """Predictions (k, A, len(target_out)) of the held-out target rows at every count 1..A, by the
    joint-Y PLS1 fitted without the source rows ``source_out`` and the target rows ``target_out``.

    ``source_gram``, ``target_gram``: Gram matrices of each block's rows centred on any fixed
    vector (every fold re-centres them exactly on its own training rows)."""
    ns, nt = source_gram.shape[0], target_gram.shape[0]
    keep_s = np.setdiff1d(np.arange(ns), source_out)
    keep_t = np.setdiff1d(np.arange(nt), target_out)
    Ks, _ = _recentre(source_gram, keep_s)
    Kt, Kx = _recentre(target_gram, keep_t, np.asarray(target_out, dtype=int))
    ys = y_source[keep_s]
    yt = y_target[keep_t]
    ybar = yt.mean(axis=0)
    U, M, q, _ = jypls1_dual(Ks, ys - ys.mean(axis=0), Kt, yt - ybar, A, weight)
    # row x at count a: ybar + sum_{l <= a} (k_x^T U M^{-1})_l q_l  (M upper triangular)
    G = np.einsum("rm,mka->kra", Kx, U)  # (k, r, A)
    Z = np.linalg.solve(np.swapaxes(M, -1, -2), np.swapaxes(G, -1, -2))  # (k, A, r) = (G M^-1)^T
    return ybar[:, None, None] + np.cumsum(Z * q[:, :, None], axis=1)
