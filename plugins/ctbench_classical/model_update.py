"""Model updating: the source PLS calibration refitted with the transfer standards' target spectra added."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.pls import _cap, _choose, _cv_folds, _n_folds, _sample_codes

from ._common import (
    check_max_components,
    is_positive,
    is_positive_grid,
    MAX_COMPONENTS,
    as_spectra,
    fit_source_pls,
    one_blas_thread,
    plain,
    require_fitted,
    sample_folds,
    source_arrays,
    source_model_params,
    standards_arrays,
)

WEIGHT_GRID = (1, 2, 4, 8, 16, 32)
"""Default candidate weights of a standard row (a row of weight w counts as w source rows)."""

MAX_WEIGHT_RATIO = 16.0
"""Default cap on the standards' total weight, as a multiple of the source calibration's rows."""

GAIN_TOLERANCE = math.log(1.1)
"""With ``gain_correction="auto"`` the gain-corrected options are tried only when the gain differs
from 1 by more than 10 % (below that they are the plain options, barely rescaled)."""

MAX_FOLDS = 6
"""Most cross-validation folds over the standards: leave-one-sample-out up to 6 samples, 6 folds
of whole samples (dealt round-robin in order of appearance) beyond."""

COMPONENT_CV_FOLDS = 10
"""Folds of the latent-variable CV on the augmented calibration (as the source model's)."""


class ModelUpdate(TransferMethod):
    """Model updating: PLS refitted on the source calibration plus the standards' weighted target spectra.

    ``fit`` calibrates the source model (one PLS1 per property; latent variables by 10-fold CV
    holding out whole samples, at most ``max_components``, Haaland-Thomas F-test) and keeps the
    source calibration. ``transfer`` stacks the source spectra and values with the N standards'
    *target* spectra and values, each standard row weighted ``w`` (it counts as ``w`` source rows),
    and refits one PLS1 per property on the stack; ``predict`` applies that updated model to target
    spectra as measured. The weighting is a weighted PLS: weighted column means for centring, then
    every row scaled by sqrt(its weight) before NIPALS, which for an integer ``w`` is exactly the
    PLS of the stack with every standard row replicated ``w`` times.

    Everything is chosen from the source calibration and the standards, never from test data:

    * **Latent variables** (``components="augmented"``): per property by the source model's CV
      (10 folds of whole samples, Haaland-Thomas) run again on the stack with ``w = 1``; a standard's
      target rows share the fold of its source rows. ``"source"`` keeps the source model's counts.
    * **Weight** (``weight=None``): grouped CV over the standards' samples (leave-one-sample-out up
      to ``MAX_FOLDS`` = 6 samples, 6 folds of whole samples beyond, so the cost stays bounded). A
      fold's held-out samples leave the calibration altogether: their target rows and their rows in
      the source calibration (matched by identical source spectra, then by sample id), which would
      otherwise hand the model their reference values. The rest is fitted with each candidate
      weight and the held-out standards are predicted from their target spectra. Score = mean over
      properties of RMSE / SD(y_source); the lowest wins, ties go to the smaller weight. With fewer
      than 2 standard samples the smallest weight is used.
    * **Gain** (``gain_correction="auto"``): when the instruments' intensity scales differ (the
      time-gated Raman device reads ~1e6 times weaker than the Anton Paar ones), the stack is
      meaningless and the updated model explodes; the gain ``g`` = ratio of the standards' spectral
      spread (Frobenius norm about their mean) on target and source, and the options "target
      spectra divided by g" join the weight CV (ties go to no correction). Skipped when ``g`` is
      within 10 % of 1.

    All candidates and folds are one batched weighted PLS in the dual (Gram) form
    (``weighted_pls1_dual``): a fold is a weight vector with zeros on its held-out rows.

    Parameters (defaults in brackets):
      weight [None]: the standards' row weight; None chooses it by the CV above, a positive number
        fixes it (no weight CV, no cap).
      weights [(1, 2, 4, 8, 16, 32)]: candidate weights (powers of 2: the error changes smoothly in
        log w; 1 is plain pooling).
      max_weight_ratio [16.0]: candidates whose total standards' weight w * (standard rows) exceeds
        this multiple of the source calibration's row count are dropped (the smallest candidate is
        always kept); None keeps them all. It bounds the cost at large N (64 source samples: all
        six candidates up to N = 32, w <= 16 at N = 50) more than it changes the choice.
      gain_correction ["auto"]: "auto" (above), "always" (always divide by g), "never".
      components ["augmented"]: "augmented" or "source" (above).
      max_components [30]: largest latent-variable count tried by either CV (ctbench.pls's default).
      random_state [0]: seeds the CV folds of the source model and of the augmented calibration.

    How the defaults were chosen: on validation splits carved from the calibration pools of every
    outer split (``ctbench.splits.validation_splits`` on ``task.outer(k)``; test sets never used),
    6 corn tasks x N = 5..30 (40) x 5 pools x 3-4 splits, and the 2 tablet and 6 Raman tasks x
    N = 5, 10, 20 x 3 splits; error = mean over properties of RMSE / SD, compared per split as
    log-ratios. "augmented" components beat "source" (corn -1.0 %, Wilcoxon p = 0.08; tablet and
    Raman -10 %, p = 1e-16). The CV-chosen weight matched w = 1 on corn and beat it on
    tablet/Raman (-1.3 %, p = 6e-4). "auto" gain beat "never" on tablet/Raman ("never" explodes,
    errors up to ~1e4 SD at N = 5, on the tasks with the time-gated device as source) and was
    level with "always" (-1.7 %, p = 0.4), for +0.4 % on corn (where g rarely leaves 1 +- 10 %).
    The weight cap barely matters (caps 4, 8, 16 and none within 0.7 %, none and
    16 best); the grid and the fold counts were set a priori.
    """

    name = "model_update"
    version = "1"
    tags = Tags(min_shots=2, multi_target=True)
    description = "model updating: source PLS refitted on source calibration + weighted target standards"

    def __init__(
        self,
        weight: float | None = None,
        weights: tuple[float, ...] = WEIGHT_GRID,
        max_weight_ratio: float | None = MAX_WEIGHT_RATIO,
        gain_correction: str = "auto",
        components: str = "augmented",
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.weight = weight
        self.weights = weights
        self.max_weight_ratio = max_weight_ratio
        self.gain_correction = gain_correction
        self.components = components
        self.max_components = max_components
        self.random_state = random_state

    # --- parameters ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.weight is not None and not is_positive(self.weight):
            raise ValueError(f"model_update: weight must be None or a positive number, got {self.weight!r}")
        if not is_positive_grid(self.weights):
            raise ValueError(
                f"model_update: weights must be a non-empty sequence of positive numbers, got {self.weights!r}"
            )
        if self.max_weight_ratio is not None and not is_positive(self.max_weight_ratio):
            raise ValueError(
                f"model_update: max_weight_ratio must be None or a positive number, got {self.max_weight_ratio!r}"
            )
        if self.gain_correction not in ("auto", "always", "never"):
            raise ValueError(
                f"model_update: gain_correction must be 'auto', 'always' or 'never', got {self.gain_correction!r}"
            )
        if self.components not in ("augmented", "source"):
            raise ValueError(f"model_update: components must be 'augmented' or 'source', got {self.components!r}")
        check_max_components("model_update", self.max_components)

    def candidate_weights(self, n_standard_rows: int, n_source_rows: int) -> list[float]:
        """The weights the CV compares (ascending), or the fixed weight."""
        if self.weight is not None:
            return [float(self.weight)]
        grid = sorted({float(w) for w in self.weights})
        if self.max_weight_ratio is None:
            return grid
        cap = float(self.max_weight_ratio) * n_source_rows / max(n_standard_rows, 1)
        return [w for w in grid if w <= cap * (1 + 1e-12)] or grid[:1]

    # --- the contract ---------------------------------------------------------------------------
    def fit(self, source: SourceData) -> ModelUpdate:
        self._check_params()
        keep_calibration(self, source)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> ModelUpdate:
        require_fitted(self, "source_model_", "fit")
        self._check_params()
        Xs, Xt, ys = standards_arrays(standards, self.n_channels_, self.n_properties_, self.tags.min_shots, self.name)
        n_src, n_std, k = self.X_source_.shape[0], Xt.shape[0], self.n_properties_
        samples = sample_folds(standards.groups, n_std)  # rows of each standard sample
        held_source = source_rows_of(samples, Xs, self.X_source_, self.source_codes_)
        gain = target_gain(Xs, Xt)
        if self.gain_correction == "never" or (self.gain_correction == "auto" and abs(math.log(gain)) <= GAIN_TOLERANCE):
            gains = [1.0]
        elif self.gain_correction == "always":
            gains = [gain]
        else:
            gains = [1.0, gain]
        options = [(gi, w) for gi in range(len(gains)) for w in self.candidate_weights(n_std, n_src)]
        cv = len(options) > 1 and len(samples) >= 2
        with one_blas_thread():
            X0_src = self.X_source_ - self.x_offset_
            X0_std = [Xt / g - self.x_offset_ for g in gains]
            grams = []
            for Z in X0_std:
                cross = Z @ X0_src.T
                grams.append(np.block([[self.source_gram_, cross.T], [cross, Z @ Z.T]]))
            Y0 = np.vstack([self.y_source_, ys]) - self.y_offset_
            # latent variables per property, per gain
            if self.components == "augmented":
                codes = np.r_[self.source_codes_, _standard_codes(samples, held_source, self.source_codes_, n_std)]
                counts = augmented_components(grams, Y0, codes, self.max_components, self.random_state)
            else:
                counts = np.tile(np.asarray(self.source_model_.n_components_, dtype=int), (len(gains), 1))
            # one weighted PLS per (option, fold): first the full fit of every option, then the folds
            rows = [np.r_[np.ones(n_src), np.full(n_std, w)] for _, w in options]
            folds: list[np.ndarray] = []
            if cv:
                for fold in grouped_folds(samples):
                    std_rows = np.concatenate([samples[i] for i in fold])
                    src_rows = np.concatenate([held_source[i] for i in fold]).astype(int)
                    folds.append(std_rows)
                    for _, w in options:
                        d = np.r_[np.ones(n_src), np.full(n_std, w)]
                        d[src_rows] = 0.0
                        d[n_src + std_rows] = 0.0
                        rows.append(d)
            which = np.array([gi for gi, _ in options] * (1 + len(folds)))
            beta, ybar, pred, v = weighted_pls1_dual(grams, Y0, np.array(rows), counts[which], which)
            n_opt = len(options)
            if cv:
                err = np.zeros((n_opt, n_std, k))
                for f, std_rows in enumerate(folds):
                    for o in range(n_opt):
                        b = n_opt * (1 + f) + o
                        err[o, std_rows] = pred[b, n_src + std_rows] - Y0[n_src + std_rows]
                scores = (np.sqrt((err**2).mean(axis=1)) / self.y_scale_).mean(axis=1)
                best = int(np.flatnonzero(scores <= scores.min() * (1 + 1e-9))[0])  # ties: the first option
                self.cv_scores_ = scores
            else:
                best = 0
                self.cv_scores_ = None
            gi, w = options[best]
            X0 = np.vstack([X0_src, X0_std[gi]])
            mean = v[best] @ X0
            coef = (X0 - mean).T @ beta[best]
        self.options_ = [(float(gains[g]), float(ww)) for g, ww in options]
        self.n_folds_ = len(folds)
        self.weight_ = float(w)
        self.gain_ = float(gains[gi])
        self.n_components_ = counts[gi].copy()
        self.coef_ = coef / self.gain_  # the model sees target spectra divided by the gain
        self.intercept_ = self.y_offset_ + ybar[best] - (self.x_offset_ + mean) @ coef
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "coef_", "transfer")
        X = as_spectra(X_target, "target spectra", self.n_channels_)
        return X @ self.coef_ + self.intercept_

    def chosen_params(self) -> dict[str, Any]:
        """The source model's latent variables; after transfer the updated model's (per property),
        the standards' weight, the gain applied to target spectra, and the CV's options and scores."""
        out: dict[str, Any] = {}
        if hasattr(self, "source_model_"):
            out.update(source_model_params(self.source_model_))
        if hasattr(self, "weight_"):
            out["components"] = plain(self.n_components_)
            out["weight"] = self.weight_
            out["gain"] = self.gain_
            out["selected_by_cv"] = self.cv_scores_ is not None
            out["cv_folds"] = self.n_folds_
            out["cv_options"] = [{"gain": g, "weight": w} for g, w in self.options_]
            out["cv_scores"] = None if self.cv_scores_ is None else plain(self.cv_scores_)
        return out

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"components": trial.suggest_categorical("components", ["augmented", "source"])}
        if trial.suggest_categorical("weight_by", ["cv", "fixed"]) == "fixed":
            params["weight"] = trial.suggest_float("weight", 0.5, 64.0, log=True)
        else:
            params["max_weight_ratio"] = trial.suggest_float("max_weight_ratio", 0.5, 16.0, log=True)
        return params


# --- helpers ------------------------------------------------------------------------------------


def keep_calibration(method: Any, source: SourceData) -> None:
    """``fit`` of the methods that recalibrate on the source calibration (model_update, jypls, epo,
    top, glsw): the source PLS model, and the calibration kept for ``transfer``: its spectra and
    values (``X_source_``, ``y_source_``), sample ids and codes, centring offsets, Gram matrix of
    the centred spectra, channel and property counts, and the values' SD (``y_scale_``)."""
    X, y = source_arrays(source)
    groups = None if source.groups is None else np.asarray(source.groups)
    if groups is not None and (groups.ndim != 1 or groups.shape[0] != X.shape[0]):
        raise ValueError(f"the source calibration has {X.shape[0]} rows but {groups.size} sample ids")
    with one_blas_thread():
        method.source_model_ = fit_source_pls(X, y, method.max_components, method.random_state, groups)
        method.x_offset_ = X.mean(axis=0)
        method.y_offset_ = y.mean(axis=0)
        X0 = X - method.x_offset_
        method.source_gram_ = X0 @ X0.T
    method.X_source_ = X
    method.y_source_ = y
    method.source_groups_ = groups
    method.source_codes_ = _codes(groups, X.shape[0])
    method.n_channels_ = X.shape[1]
    method.n_properties_ = y.shape[1]
    sd = y.std(axis=0)
    method.y_scale_ = np.where(sd > 0, sd, 1.0)


def _codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Sample index per row (0, 1, ... in order of first appearance); one per row without groups."""
    return np.arange(n) if groups is None else _sample_codes(groups, n)


def _standard_codes(
    samples: list[np.ndarray], held_source: list[np.ndarray], source_codes: np.ndarray, n: int
) -> np.ndarray:
    """Sample codes of the standard rows in the stack: a standard found in the source calibration
    shares its code (so a CV fold holds out both its rows), any other gets a new one."""
    out = np.zeros(n, dtype=int)
    fresh = int(source_codes.max()) + 1 if source_codes.size else 0
    for rows, src in zip(samples, held_source):
        if src.size:
            out[rows] = source_codes[src[0]]
        else:
            out[rows] = fresh
            fresh += 1
    return out


def target_gain(X_source: np.ndarray, X_target: np.ndarray) -> float:
    """The target instrument's intensity scale relative to the source's, from the paired standards:
    the ratio of the standards' spectral spread (Frobenius norm about their mean) on the two
    instruments; the ratio of their plain norms when a spread is zero; 1 when that is zero too."""
    for centre in (True, False):
        s = X_source - X_source.mean(axis=0) if centre else X_source
        t = X_target - X_target.mean(axis=0) if centre else X_target
        ns, nt = float(np.linalg.norm(s)), float(np.linalg.norm(t))
        if ns > 0 and nt > 0 and math.isfinite(nt / ns):
            return nt / ns
    return 1.0


def grouped_folds(samples: list[np.ndarray], max_folds: int = MAX_FOLDS) -> list[list[int]]:
    """Indices of the standard samples in each CV fold: one sample per fold with up to
    ``max_folds`` samples, else ``max_folds`` folds with the samples dealt round-robin in order."""
    n = len(samples)
    if n <= max_folds:
        return [[s] for s in range(n)]
    return [list(range(f, n, max_folds)) for f in range(max_folds)]


def source_rows_of(
    samples: list[np.ndarray], X_std_source: np.ndarray, X_source: np.ndarray, source_codes: np.ndarray | None
) -> list[np.ndarray]:
    """For each standard sample, its rows in the source calibration (empty when it is not there).

    A source row belongs to the sample when it equals one of the sample's source spectra exactly
    (standards are drawn from the calibration pool, so their source spectra are copies of pool
    rows); with sample codes, every source row sharing a code with a matched row belongs too.
    """
    index: dict[bytes, list[int]] = {}
    for i, row in enumerate(np.ascontiguousarray(X_source)):
        index.setdefault(row.tobytes(), []).append(i)
    std = np.ascontiguousarray(X_std_source)
    out = []
    for rows in samples:
        hit = sorted({i for r in rows for i in index.get(std[r].tobytes(), ())})
        if hit and source_codes is not None:
            hit = np.flatnonzero(np.isin(source_codes, source_codes[hit])).tolist()
        out.append(np.asarray(hit, dtype=int))
    return out


def augmented_components(
    grams: list[np.ndarray], Y: np.ndarray, codes: np.ndarray, max_components: int, random_state: int
) -> np.ndarray:
    """Latent variables per property (gains, k) chosen on the stacked calibration with unit weights:
    ``COMPONENT_CV_FOLDS`` folds of whole samples (``ctbench.pls._cv_folds``), PRESS of every count
    from one batched dual PLS, Haaland-Thomas (``ctbench.pls._choose``) with samples as degrees of
    freedom; the same CV as the source model's, on the stack. One row per Gram matrix (gain)."""
    n = Y.shape[0]
    n_units = int(codes.max()) + 1
    folds = _cv_folds(n, _n_folds(COMPONENT_CV_FOLDS, n_units), random_state, codes)
    A = _cap(int(max_components), folds, n, n)  # the dual form has no channel bound
    D = np.ones((len(folds), n))
    for f, rows in enumerate(folds):
        D[f, rows] = 0.0
    F = len(folds)
    which = np.repeat(np.arange(len(grams)), F)
    pred = weighted_pls1_dual(grams, Y, np.tile(D, (len(grams), 1)), np.full(Y.shape[1], A), which, all_counts=True)
    held = np.tile(1.0 - D, (len(grams), 1))  # (B, n): 1 on each fold's held-out rows
    press = np.einsum("bkan,bn->bka", (pred - Y.T[None, :, None, :]) ** 2, held)  # (B, k, A)
    press = press.reshape(len(grams), F, Y.shape[1], A).sum(axis=1)
    return np.array([[_choose(press[g, j], n_units) for j in range(Y.shape[1])] for g in range(len(grams))], dtype=int)


def weighted_pls1_dual(
    grams: np.ndarray | list[np.ndarray],
    Y: np.ndarray,
    D: np.ndarray,
    counts: np.ndarray,
    which: np.ndarray | None = None,
    all_counts: bool = False,
) -> Any:
    """Weighted PLS1 of every property for a batch of row-weight vectors, in the dual (Gram) form.

    ``grams``: the Gram matrix ``X0 X0^T`` (n, n) of the stacked rows (centred on any fixed
    vector), or a list of them with ``which`` (B,) naming each weight vector's; ``Y`` (n, k) the
    rows' values; ``D`` (B, n) non-negative row weights (a zero drops the row); ``counts`` (k,) or
    (B, k) the latent variables per property. For weights ``d``: ``v = d / sum(d)``, the weighted
    means ``m = v^T X0`` and ``ybar = v^T Y``, and the PLS1 is NIPALS on
    ``E = diag(sqrt d) (X0 - 1 m^T)`` and ``f = diag(sqrt d) (y - ybar)``: for integer weights, the
    PLS of the rows replicated d times. Only products with ``K = E E^T = diag(sqrt d) C diag(sqrt d)``
    are needed, where ``C = (X0 - 1 m^T)(X0 - 1 m^T)^T = (I - 1 v^T) G (I - v 1^T)``, so
    ``C x = G x - g (1^T x) - 1 (g^T x) + (v^T g)(1^T x)`` with ``g = G v``: one matrix product
    with the shared G for the whole batch, no (B, n, n) array.

    NIPALS in this form (as ``ctbench.pls._cv_press``): with ``u_a`` the deflated f over
    ``||E^T f||``, the weight vector is ``E^T u_a``, the score ``t_a = (I - P_T) K u_a``, ``P^T W =
    diag(1/t^T t) T^T K U`` (upper triangular) and the regression vector with a latent variables is
    ``E^T U_a (P_a^T W_a)^{-1} c_a``. Stopping rules as ``nipals_pls1_path``'s, relative to the
    problem's scale: no weight (``||E^T f||`` below 1e-11 of its first value) or no score (``t^T t``
    below 1e-20 of trace K); later components stay empty (the vector stops changing).

    Returns ``(beta, ybar, pred, v)``: ``beta`` (B, n, k) with the regression vector
    ``(X0 - 1 m^T)^T beta[b, :, j]`` at ``counts[j]`` latent variables, and ``pred`` (B, n, k) the
    prediction of every row of the stack (zero-weight rows are predicted, not fitted). With
    ``all_counts``: the predictions of every row at every count 1..max(counts), (B, k, A, n).
    """
    Gs = [grams] if isinstance(grams, np.ndarray) else list(grams)
    Bt, n = D.shape
    k = Y.shape[1]
    which = np.zeros(Bt, dtype=int) if which is None else np.asarray(which, dtype=int)
    groups = [np.flatnonzero(which == i) for i in range(len(Gs))]
    counts = np.broadcast_to(np.asarray(counts, dtype=int), (Bt, k))
    A = int(max(1, counts.max()))
    v = D / D.sum(axis=1)[:, None]
    g = np.empty((Bt, n))
    diag = np.empty((Bt, n))
    for G, sel in zip(Gs, groups):
        g[sel] = v[sel] @ G  # G is symmetric
        diag[sel] = np.diag(G)
    s = np.einsum("bi,bi->b", v, g)

    def c_times(X: np.ndarray) -> np.ndarray:
        """C X for every weight vector: X (B, m, n) -> (B, m, n)."""
        out = np.empty_like(X)
        for G, sel in zip(Gs, groups):
            if sel.size:
                out[sel] = (X[sel].reshape(-1, n) @ G).reshape(sel.size, -1, n)
        sx = X.sum(axis=-1)  # (B, m)
        gx = np.einsum("bmn,bn->bm", X, g)
        return out - g[:, None, :] * sx[..., None] + (s[:, None] * sx - gx)[..., None]

    r = np.sqrt(D)
    trace = np.einsum("bn,bn->b", D, diag - 2 * g + s[:, None])[:, None]  # trace K
    ybar = v @ Y  # (B, k)
    # work arrays are (B, k, ., n), so that every product is a batched BLAS matmul
    f = r[:, None, :] * (Y.T[None, :, :] - ybar[:, :, None])  # (B, k, n)
    T = np.zeros((Bt, k, A, n))  # unit scores
    U = np.zeros((Bt, k, A, n))
    KU = np.zeros((Bt, k, A, n))  # K u_a
    CU = np.zeros((Bt, k, A, n))  # C (sqrt d * u_a): predicts every row
    tt_all = np.ones((Bt, k, A))
    c = np.zeros((Bt, k, A))
    used = np.zeros((Bt, k, A), dtype=bool)
    active = np.ones((Bt, k), dtype=bool)
    first = None
    for a in range(A):
        Cf = c_times(r[:, None, :] * f)
        Kf = r[:, None, :] * Cf
        nrm2 = np.einsum("bkn,bkn->bk", f, Kf)
        if first is None:
            first = nrm2.copy()
        active &= (nrm2 > 1e-22 * first) & (nrm2 > 0)
        inv = np.where(active, 1.0 / np.sqrt(np.where(active, nrm2, 1.0)), 0.0)
        t = Kf * inv[:, :, None]
        KU[:, :, a] = t
        if a:
            Ta = T[:, :, :a]
            for _ in range(2):  # Gram-Schmidt twice: the scores stay orthogonal to round-off
                t = t - (np.swapaxes(Ta @ t[..., None], -1, -2) @ Ta)[:, :, 0]
        tt = np.einsum("bkn,bkn->bk", t, t)
        active &= tt > 1e-20 * trace
        tt = np.where(active, tt, 1.0)
        ca = np.where(active, np.einsum("bkn,bkn->bk", f, t) / tt, 0.0)
        t = t * active[:, :, None]
        scale = (inv * active)[:, :, None]
        U[:, :, a] = f * scale
        CU[:, :, a] = Cf * scale
        T[:, :, a] = t / np.sqrt(tt)[:, :, None]
        tt_all[..., a] = tt
        c[..., a] = ca
        used[..., a] = active
        f = f - ca[:, :, None] * t
    # P^T W [a, b] = t_a^T K u_b / t_a^T t_a; an unused component gets an identity row (and c = 0)
    M = (T @ np.swapaxes(KU, -1, -2)) / np.sqrt(tt_all)[..., None]
    M = M + np.eye(A) * (~used)[..., None]
    if all_counts:  # row i at count a: ybar + sum_{l <= a} c_l (M^-T CU)[l, i]
        Z = np.linalg.solve(np.swapaxes(M, -1, -2), CU)
        return ybar[:, :, None, None] + np.cumsum(c[..., None] * Z, axis=2)
    c = c * (np.arange(A)[None, None, :] < counts[:, :, None])
    z = np.swapaxes(np.linalg.solve(M, c[..., None]), -1, -2)  # (B, k, 1, A); M upper triangular: zeros in c stay
    beta = r[:, :, None] * np.swapaxes((z @ U)[:, :, 0], 1, 2)  # (B, n, k)
    pred = ybar[:, None, :] + np.swapaxes((z @ CU)[:, :, 0], 1, 2)
    return beta, ybar, pred, v
