"""Orthogonal-projection transfer: EPO, TOP and GLSW.

All three learn, from the paired transfer standards, the spectral directions in which the two
instruments differ, filter those directions out of (or down-weight them in) every spectrum, and
recalibrate the source PLS model on the filtered source calibration. The recalibrated model then
predicts filtered target spectra as measured; no spectrum is mapped from one instrument to the
other. The filter is ``G = I + V diag(h - 1) V^T`` with ``V`` (p, r) orthonormal and ``h`` the
factor kept along each direction (0: projected out, EPO and TOP; between 0 and 1: down-weighted,
GLSW). It is applied as ``X G = X + ((X V) * (h - 1)) V^T``: no p x p matrix is ever formed, and
since ``G`` is symmetric the recalibrated model's coefficients ``b`` fold into one vector
``G b`` in the space of the raw target spectra.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

from ._common import (
    check_max_components,
    is_count,
    is_positive,
    is_positive_grid,
    MAX_COMPONENTS,
    as_spectra,
    fit_source_pls,
    one_blas_thread,
    plain,
    require_fitted,
    sample_folds,
    source_model_params,
    standards_arrays,
)
from .model_update import augmented_components, grouped_folds, keep_calibration, source_rows_of, weighted_pls1_dual

MAX_DIRECTIONS = 5
"""Default largest number of EPO directions the CV tries (g = 0 .. 5)."""

MAX_EXTRA = 4
"""Default largest number of extra (per-sample) TOP directions the CV tries when ``n_extra`` is None."""

GLSW_ALPHAS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
"""Default GLSW strengths the CV tries (relative to the largest squared singular value), weakest
filter first (ties go to the weaker filter)."""

RANK_TOL = 1e-10
"""Singular values at or below this fraction of the largest are treated as zero (no direction)."""


class _OrthogonalTransfer(TransferMethod):
    """Shared machinery: source model, filter application, grouped CV and recalibration.

    Subclasses define ``_check_params``, ``_candidates(n_samples)`` (settings to compare,
    simplest first) and ``_filter(Xs, Xt, candidate)`` -> ``(V, h)``.
    """

    tags = Tags(min_shots=2, multi_target=True)

    # --- the contract ---------------------------------------------------------------------------
    def fit(self, source: SourceData) -> _OrthogonalTransfer:
        self._check_params()
        keep_calibration(self, source)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> _OrthogonalTransfer:
        require_fitted(self, "source_model_", "fit")
        self._check_params()
        Xs, Xt, ys = standards_arrays(standards, self.n_channels_, self.n_properties_, self.tags.min_shots, self.name)
        samples = sample_folds(standards.groups, Xt.shape[0])
        candidates = self._candidates(len(samples))
        with one_blas_thread():
            if len(candidates) > 1 and len(samples) >= 2:
                scores, counts, n_folds = self._cv_scores(Xs, Xt, ys, samples, candidates)
                best = int(np.flatnonzero(scores <= scores.min() * (1 + 1e-9))[0])  # ties: the simplest
                self.cv_scores_ = scores
                self.cv_components_ = counts
            else:
                best, n_folds = 0, 0
                self.cv_scores_ = None
                self.cv_components_ = None
            V, h = self._filter(Xs, Xt, candidates[best])
            if V.shape[1]:
                model = fit_source_pls(
                    _apply(self.X_source_, V, h), self.y_source_, self.max_components, self.random_state,
                    self.source_groups_,
                )
            else:
                model = self.source_model_  # nothing to filter: the source model itself
            self.coef_ = _apply(model.coef_.T, V, h).T  # G b: the model applied to raw spectra
            self.intercept_ = model.intercept_.copy()
        self.model_ = model
        self.candidates_ = candidates
        self.selected_ = dict(candidates[best])
        self.directions_ = V
        self.factors_ = h
        self.n_folds_ = n_folds
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "coef_", "transfer")
        X = as_spectra(X_target, "target spectra", self.n_channels_)
        return X @ self.coef_ + self.intercept_

    def filter_spectra(self, X: np.ndarray) -> np.ndarray:
        """Spectra (either instrument) through the transfer's filter ``G`` (what the recalibrated model sees)."""
        require_fitted(self, "directions_", "transfer")
        return _apply(as_spectra(X, "spectra", self.n_channels_), self.directions_, self.factors_)

    def chosen_params(self) -> dict[str, Any]:
        """The source model's latent variables (per property); after transfer the setting used
        (``selected``), how many directions the filter has, the recalibrated model's latent
        variables and cap, and whether the grouped CV chose the setting (with its candidates,
        scores and the latent variables it held fixed per candidate)."""
        out: dict[str, Any] = {}
        if hasattr(self, "source_model_"):
            out.update(source_model_params(self.source_model_))
        if hasattr(self, "coef_"):
            out["selected"] = plain(self.selected_)
            out["n_directions"] = int(self.directions_.shape[1])
            out.update({f"recalibrated_{k}": v for k, v in self.model_.chosen_params().items()})
            out["selected_by_cv"] = self.cv_scores_ is not None
            out["cv_folds"] = int(self.n_folds_)
            out["cv_candidates"] = plain(self.candidates_)
            out["cv_scores"] = None if self.cv_scores_ is None else plain(self.cv_scores_)
            out["cv_components"] = None if self.cv_components_ is None else plain(self.cv_components_)
        return out

    # --- the grouped CV ---------------------------------------------------------------------------
    def _cv_scores(
        self, Xs: np.ndarray, Xt: np.ndarray, ys: np.ndarray, samples: list[np.ndarray], candidates: list[dict]
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Score of every candidate: grouped CV over the standards' samples (see the class docstrings).

        Latent variables per (candidate, property): the source model's CV (10 folds of whole
        samples, Haaland-Thomas) on the source calibration filtered with the candidate's filter
        learnt from all standards (``augmented_components``); they stay fixed in the folds. A fold
        learns each candidate's filter from its training standards, drops its held-out samples'
        rows from the source calibration (``source_rows_of``: matched by identical source spectra,
        then by sample id), refits the PLS on the rest and predicts the held-out standards from
        their target spectra. Everything is one weighted dual (Gram) PLS per fold
        (``weighted_pls1_dual``): filtering changes a Gram matrix by a rank-r update,
        ``X0 G G X0^T = X0 X0^T + (X0 V) diag(h^2 - 1) (X0 V)^T``.
        """
        n_src, n_std, k = self.X_source_.shape[0], Xt.shape[0], self.n_properties_
        X0 = self.X_source_ - self.x_offset_
        Y0_src = self.y_source_ - self.y_source_.mean(axis=0)
        # latent variables of every candidate, on all standards' filter
        grams = []
        for cand in candidates:
            V, h = self._filter(Xs, Xt, cand)
            grams.append(_filtered_gram(self.source_gram_, X0 @ V, h))
        counts = augmented_components(grams, Y0_src, self.source_codes_, self.max_components, self.random_state)
        # the stack: source rows, then the standards' target rows (weight 0: predicted, never fitted)
        T0 = Xt - self.x_offset_
        cross = T0 @ X0.T
        stack_gram = np.block([[self.source_gram_, cross.T], [cross, T0 @ T0.T]])
        S0 = np.vstack([X0, T0])
        Y0 = np.vstack([self.y_source_, ys]) - self.y_source_.mean(axis=0)
        held_source = source_rows_of(samples, Xs, self.X_source_, self.source_codes_)
        folds = grouped_folds(samples)
        err = np.zeros((len(candidates), n_std, k))
        for fold in folds:
            std_rows = np.concatenate([samples[i] for i in fold])
            src_rows = np.concatenate([held_source[i] for i in fold]).astype(int)
            keep = np.ones(n_std, dtype=bool)
            keep[std_rows] = False
            fold_grams = []
            for cand in candidates:
                V, h = self._filter(Xs[keep], Xt[keep], cand)
                fold_grams.append(_filtered_gram(stack_gram, S0 @ V, h))
            d = np.r_[np.ones(n_src), np.zeros(n_std)]
            d[src_rows] = 0.0
            D = np.tile(d, (len(candidates), 1))
            _, _, pred, _ = weighted_pls1_dual(fold_grams, Y0, D, counts, np.arange(len(candidates)))
            err[:, std_rows] = pred[:, n_src + std_rows] - Y0[n_src + std_rows]
        scores = (np.sqrt((err**2).mean(axis=1)) / self.y_scale_).mean(axis=1)
        return scores, counts, len(folds)

    # --- subclass hooks ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        raise NotImplementedError

    def _candidates(self, n_samples: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _filter(self, Xs: np.ndarray, Xt: np.ndarray, candidate: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _check_common(self) -> None:
        check_max_components(self.name, self.max_components)


class EPO(_OrthogonalTransfer):
    """External parameter orthogonalisation (Roger, Chauchard & Bellon-Maurel 2003) for instrument transfer.

    The "external parameter" is the instrument. ``D`` = target minus source spectra of the N
    paired standards (one row per standard row; replicates are rows of one sample); its first
    ``g`` right singular vectors ``V_g`` span the directions in which the instruments differ. The
    projector ``Q = I - V_g V_g^T`` is applied to the source calibration spectra and the source
    PLS (one PLS1 per property, latent variables by the source model's 10-fold CV of whole
    samples, Haaland-Thomas, at most ``max_components``) is recalibrated on ``X_src Q``; a target
    spectrum ``x`` is predicted by that model from ``x Q``. With ``g = 0`` it is the source model
    (no transfer).

    ``D`` is decomposed *without centring* by default (``center=False``), as in the original EPO
    (an SVD of the difference matrix itself): the systematic part of the instrument difference
    (the mean of ``D``: an offset, a baseline, a band shift common to all samples) is usually its
    largest part and then leads ``V_g``, so it is projected out. Centring ``D`` on its mean
    difference keeps only the sample-to-sample variation of the difference: the mean difference
    stays in the projected target spectra and biases every prediction by ``b^T Q d_mean``; it is
    available as ``center=True``.

    ``g`` (``n_directions=None``) is chosen by grouped CV over the standards' samples
    (leave-one-sample-out up to 6 samples, 6 folds of whole samples dealt round-robin beyond). A
    fold learns ``V_g`` from its training standards only; its held-out samples also leave the
    source calibration (their source rows, matched by identical source spectra and then by
    sample id: the standards are copies of calibration-pool rows, whose reference values would
    otherwise leak into the refit). The held-out standards are predicted from their *target*
    spectra; score = mean over properties of RMSE / SD(y_source), the smallest ``g`` within
    1e-9 of the best wins. To keep it fast the folds hold the latent-variable count of each
    candidate fixed at the count the source model's CV picks for it on all standards' ``V_g``
    (recorded as ``cv_components``); the final model is recalibrated with its own CV. Candidates
    are ``g = 0 .. min(max_directions, samples - 1)``; with one standard sample ``g = 0``.

    Parameters (defaults in brackets):
      n_directions [None]: ``g``; None chooses it by the CV above, an integer >= 0 fixes it
        (capped by the rank of ``D``).
      max_directions [5]: largest ``g`` the CV tries.
      center [False]: centre ``D`` on its mean difference before the SVD (see above).
      max_components [30]: largest latent-variable count of the source and recalibrated PLS.
      random_state [0]: seeds the latent-variable CV folds.

    Why the defaults (a priori, no test set involved): the CV over ``g`` is the usual EPO
    practice; EPO applications need 1 to 4 directions, so 5 bounds the cost (6 candidates x at
    most 6 folds) without cutting a plausible choice; the fold scheme and criterion are
    ModelUpdate's. ``center=False`` is the original method, and keeps the instruments' mean
    difference in the projected subspace (reasoning above).
    """

    name = "epo"
    version = "1"
    description = "external parameter orthogonalisation: source PLS recalibrated orthogonal to the instrument differences"

    def __init__(
        self,
        n_directions: int | None = None,
        max_directions: int = MAX_DIRECTIONS,
        center: bool = False,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.n_directions = n_directions
        self.max_directions = max_directions
        self.center = center
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.n_directions is not None and not is_count(self.n_directions, 0):
            raise ValueError(f"epo: n_directions must be None or an integer >= 0, got {self.n_directions!r}")
        if not is_count(self.max_directions, 0):
            raise ValueError(f"epo: max_directions must be an integer >= 0, got {self.max_directions!r}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise ValueError(f"epo: center must be True or False, got {self.center!r}")
        self._check_common()

    def _candidates(self, n_samples: int) -> list[dict[str, Any]]:
        if self.n_directions is not None:
            return [{"n_directions": int(self.n_directions)}]
        top = max(0, min(int(self.max_directions), n_samples - 1))
        return [{"n_directions": g} for g in range(top + 1)]

    def _filter(self, Xs: np.ndarray, Xt: np.ndarray, candidate: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        g = int(candidate["n_directions"])
        V, _ = _right_singular(Xt - Xs, bool(self.center), _scale(Xs, Xt))
        V = V[:, :g]
        return V, np.zeros(V.shape[1])

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"center": trial.suggest_categorical("center", [False, True])}
        if trial.suggest_categorical("directions_by", ["cv", "fixed"]) == "fixed":
            params["n_directions"] = trial.suggest_int("n_directions", 0, 8)
        else:
            params["max_directions"] = trial.suggest_int("max_directions", 1, 8)
        return params


class TOP(_OrthogonalTransfer):
    """Transfer by orthogonal projection (Andrew & Fearn, Chemometr. Intell. Lab. Syst. 72 (2004) 51-56).

    TOP estimates the between-instrument subspace from the transfer set's *mean spectrum on each
    instrument*: the matrix of the instruments' mean spectra, centred over instruments, is
    decomposed by PCA and its leading loadings are projected out of every spectrum before
    calibration (Andrew & Fearn used several instruments, giving up to one fewer directions than
    instruments). With two instruments the centred matrix has one direction: the difference of the
    means, ``d = mean(X_target) - mean(X_source)`` over the standards' rows. The calibration is
    then built orthogonally to it: ``Q = I - V V^T`` (``V = d / ||d||``) applied to the source
    calibration spectra, the source PLS recalibrated on ``X_src Q`` (as EPO), and target spectra
    predicted from ``x Q``. Unlike EPO, nothing is fitted to the individual standards: a single
    direction estimated from averages (robust at small N, no CV), which removes the systematic
    instrument difference and nothing else.

    Extensions (not the default): ``n_extra`` further directions from the per-sample differences,
    the leading right singular vectors of ``D - 1 d^T`` (target minus source per standard row,
    centred on the mean difference) after projecting out the basis: the sample-dependent part of
    the difference, for two instruments where the means give only one direction. ``basis="means"``
    projects out the span of the two mean spectra themselves (the uncentred reading of the method:
    it also removes the mean spectrum's direction, i.e. a common change of gain).

    ``n_extra=None`` chooses it by EPO's grouped CV (leave-one-sample-out up to 6 samples, 6 folds
    beyond; held-out samples also leave the source calibration; latent variables held at each
    candidate's count on all standards; score = mean over properties of RMSE / SD(y_source) of the
    held-out standards predicted from their target spectra; ties to fewer directions) over
    ``0 .. min(max_extra, samples - 2)``.

    Parameters (defaults in brackets):
      basis ["difference"]: "difference" (the centred PCA of the two instruments' means: their
        difference) or "means" (the span of both mean spectra).
      n_extra [0]: extra per-sample directions; None chooses them by the CV above.
      max_extra [4]: largest ``n_extra`` the CV tries.
      max_components [30]: largest latent-variable count of the source and recalibrated PLS.
      random_state [0]: seeds the latent-variable CV folds.

    Why the defaults (a priori): "difference" with ``n_extra=0`` is the published method for two
    instruments; it estimates one direction from N averaged spectra, so it keeps working with few
    standards, and is what distinguishes TOP from EPO (which fits its directions to the
    individual differences and chooses their number by CV). The formulation above follows the
    paper's abstract and secondary descriptions (the Jchemo and ChemometricsTools documentation:
    "each row of D is the mean spectrum for a given instrument"); the full text was not at hand.
    """

    name = "top"
    version = "1"
    description = "transfer by orthogonal projection: source PLS recalibrated orthogonal to the instruments' mean difference"

    def __init__(
        self,
        basis: str = "difference",
        n_extra: int | None = 0,
        max_extra: int = MAX_EXTRA,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.basis = basis
        self.n_extra = n_extra
        self.max_extra = max_extra
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.basis not in ("difference", "means"):
            raise ValueError(f"top: basis must be 'difference' or 'means', got {self.basis!r}")
        if self.n_extra is not None and not is_count(self.n_extra, 0):
            raise ValueError(f"top: n_extra must be None or an integer >= 0, got {self.n_extra!r}")
        if not is_count(self.max_extra, 0):
            raise ValueError(f"top: max_extra must be an integer >= 0, got {self.max_extra!r}")
        self._check_common()

    def _candidates(self, n_samples: int) -> list[dict[str, Any]]:
        if self.n_extra is not None:
            return [{"n_extra": int(self.n_extra)}]
        top = max(0, min(int(self.max_extra), n_samples - 2))
        return [{"n_extra": e} for e in range(top + 1)]

    def _filter(self, Xs: np.ndarray, Xt: np.ndarray, candidate: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        ms, mt = Xs.mean(axis=0), Xt.mean(axis=0)
        scale = _scale(Xs, Xt)
        rows = [mt - ms] if self.basis == "difference" else [ms, mt]
        V = _orthonormal(np.array(rows), scale)
        extra = int(candidate["n_extra"])
        if extra:
            R = (Xt - Xs) - (mt - ms)
            R = R - (R @ V) @ V.T
            W, _ = _right_singular(R, False, scale)
            V = np.hstack([V, W[:, :extra]])
        return V, np.zeros(V.shape[1])

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"basis": trial.suggest_categorical("basis", ["difference", "means"])}
        if trial.suggest_categorical("extra_by", ["fixed", "cv"]) == "fixed":
            params["n_extra"] = trial.suggest_int("n_extra", 0, 4)
        else:
            params["n_extra"] = None
            params["max_extra"] = trial.suggest_int("max_extra", 1, 6)
        return params


class GLSW(_OrthogonalTransfer):
    """Generalised least-squares weighting (Martens et al. 2003; as in PLS_Toolbox) for instrument transfer.

    ``D`` = target minus source spectra of the paired standards (one row per standard row), with
    SVD ``D = U S V^T``. The filter ``G = V diag(h) V^T + (I - V V^T)``, ``h = 1 / sqrt(s^2 /
    (alpha s_max^2) + 1)``, shrinks each direction of instrument difference by a factor that falls
    with its singular value (a direction as large as ``sqrt(alpha) s_max`` is kept at 1/sqrt(2);
    much larger ones are nearly removed, much smaller ones kept): a soft EPO, the GLS weighting
    ``(C / alpha' + I)^(-1/2)`` of the difference covariance ``C = D^T D``. ``alpha`` is relative
    to the largest squared singular value, so it does not depend on the spectra's scale or on N.
    ``G`` is applied to every spectrum: the source PLS (one PLS1 per property, latent variables by
    the source model's CV) is recalibrated on ``X_src G`` and predicts ``x G`` for a target ``x``.

    ``D`` is not centred by default (``center=False``), for EPO's reason: the instruments' mean
    difference is then the leading (most shrunk) direction instead of passing through the filter
    untouched and biasing the predictions; ``center=True`` centres it.

    ``alpha=None`` chooses it by EPO's grouped CV over the standards' samples (leave-one-sample-out
    up to 6 samples, 6 folds beyond; a fold's filter is learnt from its training standards and its
    held-out samples also leave the source calibration; latent variables held at each candidate's
    count on all standards; score = mean over properties of RMSE / SD(y_source) of the held-out
    standards predicted from their target spectra) over ``alphas``, ties going to the weaker filter
    (larger alpha). With one standard sample the weakest candidate is used.

    Parameters (defaults in brackets):
      alpha [None]: filter strength (> 0, smaller is stronger); None chooses it by the CV above.
      alphas [(1, 1e-1, ..., 1e-8)]: candidates of the CV: a log grid in decades.
      center [False]: centre ``D`` on its mean difference before the SVD.
      max_components [30]: largest latent-variable count of the source and recalibrated PLS.
      random_state [0]: seeds the latent-variable CV folds.

    Why the defaults: the grid spans a filter that barely touches the leading direction (alpha = 1:
    factor 0.71) to one that keeps only 1e-4 of it and removes every direction above 1e-4 of
    ``s_max`` (1e-8), i.e. close to EPO with all directions. Shrinking a direction by ``h`` does
    not take it out of a PLS model with many latent variables (which can scale its coefficient by
    ``1/h``: least squares is invariant to an invertible filter), so a useful filter needs a
    small factor; a grid stopping at 1e-4 (factor 0.01) had the CV on the standards choose its
    edge on corn m5 -> mp6, where the mean difference dominates ``D``. Decade steps because the
    factor changes smoothly in log alpha. The CV and its folds are EPO's.
    """

    name = "glsw"
    version = "1"
    description = "generalised least-squares weighting: source PLS recalibrated on spectra with instrument differences down-weighted"

    def __init__(
        self,
        alpha: float | None = None,
        alphas: tuple[float, ...] = GLSW_ALPHAS,
        center: bool = False,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.alpha = alpha
        self.alphas = alphas
        self.center = center
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.alpha is not None and not is_positive(self.alpha):
            raise ValueError(f"glsw: alpha must be None or a positive number, got {self.alpha!r}")
        if not is_positive_grid(self.alphas):
            raise ValueError(f"glsw: alphas must be a non-empty sequence of positive numbers, got {self.alphas!r}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise ValueError(f"glsw: center must be True or False, got {self.center!r}")
        self._check_common()

    def _candidates(self, n_samples: int) -> list[dict[str, Any]]:
        if self.alpha is not None:
            return [{"alpha": float(self.alpha)}]
        return [{"alpha": a} for a in sorted({float(a) for a in self.alphas}, reverse=True)]

    def _filter(self, Xs: np.ndarray, Xt: np.ndarray, candidate: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        V, s = _right_singular(Xt - Xs, bool(self.center), _scale(Xs, Xt))
        if not s.size:
            return V, s
        h = 1.0 / np.sqrt(s**2 / (float(candidate["alpha"]) * s[0] ** 2) + 1.0)
        return V, h

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"center": trial.suggest_categorical("center", [False, True])}
        if trial.suggest_categorical("alpha_by", ["cv", "fixed"]) == "fixed":
            params["alpha"] = trial.suggest_float("alpha", 1e-5, 10.0, log=True)
        return params


# --- helpers ------------------------------------------------------------------------------------


def _apply(X: np.ndarray, V: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``X G`` with ``G = I + V diag(h - 1) V^T`` (rows of X filtered; no p x p matrix)."""
    if not V.shape[1]:
        return X.copy()
    return X + ((X @ V) * (h - 1.0)) @ V.T


def _filtered_gram(gram: np.ndarray, L: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Gram matrix of filtered rows, ``(X G)(X G)^T``, from ``X X^T`` and ``L = X V``."""
    if not L.shape[1]:
        return gram
    return gram + (L * (h**2 - 1.0)) @ L.T


def _scale(Xs: np.ndarray, Xt: np.ndarray) -> float:
    """Largest absolute value among the standards' spectra (what "negligible" is measured against)."""
    return max(float(np.abs(Xs).max(initial=0.0)), float(np.abs(Xt).max(initial=0.0)))


def _right_singular(D: np.ndarray, center: bool, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Right singular vectors (p, r) and singular values (r,) of ``D`` (centred on its column means
    when ``center``), keeping those above ``RANK_TOL`` of the largest and above ``RANK_TOL`` of the
    spectra's own size (``scale`` times sqrt of D's entries: an all-round-off D gives no direction);
    signs fixed so that each vector's largest entry is positive (deterministic output)."""
    if center:
        D = D - D.mean(axis=0)
    if not D.size:
        return np.zeros((D.shape[1], 0)), np.zeros(0)
    _, s, Vt = np.linalg.svd(D, full_matrices=False)
    floor = RANK_TOL * max(float(s[0]), scale * math.sqrt(D.shape[0] * D.shape[1]))
    keep = s > max(floor, 1e-300)
    Vt, s = Vt[keep], s[keep]
    idx = np.argmax(np.abs(Vt), axis=1)
    sign = np.sign(Vt[np.arange(Vt.shape[0]), idx])
    return (Vt * sign[:, None]).T, s


def _orthonormal(rows: np.ndarray, scale: float) -> np.ndarray:
    """Orthonormal basis (p, r) of the span of ``rows``, dropping directions negligible against ``scale``."""
    V, _ = _right_singular(rows, False, scale)
    return V


