"""Shared pieces of the classical methods: input checks and the source PLS calibration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.pls import DEFAULT_MAX_COMPONENTS, PLSCalibration

MAX_COMPONENTS = DEFAULT_MAX_COMPONENTS
"""Default ``max_components`` of the classical methods' source models (ctbench.pls's default)."""


def as_spectra(X: np.ndarray, what: str, n_channels: int | None = None) -> np.ndarray:
    """A float copy of ``X`` as a 2-D (samples x channels) array, with a one-line error if it is not one."""
    X = np.array(X, dtype=float, copy=True)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (samples x channels), got shape {X.shape}")
    if n_channels is not None and X.shape[1] != n_channels:
        raise ValueError(f"{what} has {X.shape[1]} channels but the source calibration has {n_channels}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or inf values")
    return X


def as_values(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """A float copy of reference values as (n, k)."""
    y = np.array(y, dtype=float, copy=True)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n}, k), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{what} contains NaN or inf values")
    return y


def source_arrays(source: SourceData) -> tuple[np.ndarray, np.ndarray]:
    """Checked copies of the source calibration spectra and values."""
    X = as_spectra(source.X, "source calibration spectra")
    y = as_values(source.y, X.shape[0], "source calibration values")
    if X.shape[0] < 3:
        raise ValueError(f"the source calibration has {X.shape[0]} samples; at least 3 are needed")
    return X, y


def standards_arrays(
    standards: Standards, n_channels: int, n_properties: int, min_shots: int, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked copies of (X_source, X_target, y) of the transfer standards."""
    n = int(np.asarray(standards.X_target).shape[0]) if np.ndim(standards.X_target) == 2 else 0
    if n < min_shots:
        raise ValueError(f"{method} needs at least {min_shots} transfer standards, got {n}")
    Xs = as_spectra(standards.X_source, "standards' source spectra", n_channels)
    Xt = as_spectra(standards.X_target, "standards' target spectra", n_channels)
    if Xs.shape[0] != Xt.shape[0]:
        raise ValueError(
            f"standards have {Xs.shape[0]} source spectra but {Xt.shape[0]} target spectra; they must be paired"
        )
    y = as_values(standards.y, n, "standards' values")
    if y.shape[1] != n_properties:
        raise ValueError(f"standards have {y.shape[1]} properties but the source calibration has {n_properties}")
    return Xs, Xt, y


def fit_source_pls(
    X: np.ndarray, y: np.ndarray, max_components: int, random_state: int, groups: np.ndarray | None = None
) -> PLSCalibration:
    """The source model: one PLS1 per property, latent variables chosen by 10-fold CV (Haaland-Thomas).

    ``groups`` (the source calibration's sample ids) makes the folds hold out whole samples.
    """
    return PLSCalibration(max_components=max_components, cv=10, random_state=random_state).fit(X, y, groups=groups)


def plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into plain JSON types (lists, int, float, bool)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def source_model_params(model: PLSCalibration) -> dict[str, Any]:
    """What the source PLS model chose: latent variables per property (property order), whether
    the cap bound them, and the largest count its CV tried."""
    return {f"source_{k}": v for k, v in model.chosen_params().items()}


_BLAS = None


def one_blas_thread() -> Any:
    """Context with single-threaded BLAS/LAPACK: the matrices of a transfer are small, and
    threads only contend (badly, on a loaded machine). The runner already runs sweeps this way;
    this covers direct use (tests, notebooks)."""
    global _BLAS
    import contextlib

    try:
        if _BLAS is None:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        return _BLAS.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl missing or unusable
        return contextlib.nullcontext()


def is_count(value: Any, low: int = 0) -> bool:
    """``value`` is an integer (Python or NumPy, not a bool) of at least ``low``."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer)) and value >= low


def is_positive(value: Any) -> bool:
    """``value`` converts to a finite number above 0 (a bool does not count)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


def is_positive_grid(values: Any) -> bool:
    """``values`` is a non-empty sequence of numbers that are each :func:`is_positive` (a grid
    of weights or penalties to choose from)."""
    try:
        items = list(values)
    except TypeError:
        return False
    return bool(items) and all(is_positive(v) for v in items)


def check_max_components(method: str, value: Any) -> None:
    """One-line ValueError unless ``max_components`` is a positive integer."""
    if not is_count(value, 1):
        raise ValueError(f"{method}: max_components must be a positive integer, got {value!r}")


def require_fitted(method: object, attr: str, step: str) -> None:
    if not hasattr(method, attr):
        name = getattr(method, "name", type(method).__name__)
        raise RuntimeError(f"{name}: call {step} first")


class SpectralStandardization(TransferMethod):
    """Base of the methods that map target spectra into the source space (DS, PDS, CCA).

    ``fit`` calibrates the source PLS model. ``transfer`` learns the map from the paired
    standards; when a complexity parameter is left at None, its value is chosen by
    leave-one-out over the standards (see ``select_by_loo``). ``predict`` is the source model
    applied to the mapped spectra. Subclasses implement ``_candidates``, ``_fit_maps`` and
    ``_apply_map``.
    """

    tags = Tags(min_shots=2, zero_shot=False, transductive=False, multi_target=True, corrects_spectra=True)

    def fit(self, source: SourceData) -> SpectralStandardization:
        self._check_params()
        X, y = source_arrays(source)
        self.source_model_ = fit_source_pls(X, y, self.max_components, self.random_state, source.groups)
        self.n_channels_ = X.shape[1]
        self.n_properties_ = y.shape[1]
        sd = y.std(axis=0)
        self.y_scale_ = np.where(sd > 0, sd, 1.0)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> SpectralStandardization:
        require_fitted(self, "source_model_", "fit")
        Xs, Xt, _ = standards_arrays(standards, self.n_channels_, self.n_properties_, self.tags.min_shots, self.name)
        n = Xs.shape[0]
        candidates = self._candidates(n)
        folds = sample_folds(standards.groups, n)
        with one_blas_thread():
            if len(candidates) > 1 and len(folds) >= LOO_MIN_SHOTS:
                self.loo_scores_ = self._loo_scores(Xs, Xt, candidates, folds)
                best = candidates[int(np.argmin(self.loo_scores_))]
            else:
                self.loo_scores_ = None
                best = candidates[0]
            self.selected_ = dict(best)
            self.map_ = self._fit_maps(Xs, Xt, [best])[0]
        return self

    def transform_target(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "map_", "transfer")
        return self._apply_map(self.map_, as_spectra(X_target, "target spectra", self.n_channels_))

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self.source_model_.predict(self.transform_target(X_target))

    def chosen_params(self) -> dict[str, Any]:
        """The source model's latent variables (per property) and, after transfer, the map's
        setting (``selected``: rank / alpha / canonical pairs) and whether leave-one-out chose it."""
        out: dict[str, Any] = {}
        if hasattr(self, "source_model_"):
            out.update(source_model_params(self.source_model_))
        if hasattr(self, "selected_"):
            out["selected"] = plain(self.selected_)
            out["selected_by_loo"] = getattr(self, "loo_scores_", None) is not None
        return out

    def _loo_scores(
        self, Xs: np.ndarray, Xt: np.ndarray, candidates: list[dict[str, Any]], folds: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """Leave-one-standard-out error of every candidate, through the source model.

        For held-out standard i, each candidate map (learnt on the other standards) sends its
        target spectrum to the source space; the error is the source model's prediction of
        that spectrum minus its prediction of the standard's measured source spectrum (the
        transfer error alone, without the model's own error, and no reference values needed).
        Score = mean over properties of RMSE / SD(y_source); lower is better. A standard is a
        physical sample: its replicate spectra (rows with the same group id) are held out
        together (``folds``, one per sample; see ``sample_folds``), since a replicate left in
        the training rows would let an over-fitted map look perfect.

        The source model is linear, so the error is ``(mapped - x_s) @ coef``: subclasses
        compute it in closed form in ``_loo_errors`` (DS, PDS, CCA do, without forming any
        p x p map); the fallback refits every candidate on every fold.
        """
        n = Xs.shape[0]
        if folds is None:
            folds = [np.array([i]) for i in range(n)]
        err = self._loo_errors(Xs, Xt, candidates, folds)  # (candidates, n, properties)
        return (np.sqrt((err**2).sum(axis=1) / n) / self.y_scale_).mean(axis=1)

    def _loo_errors(
        self, Xs: np.ndarray, Xt: np.ndarray, candidates: list[dict[str, Any]], folds: list[np.ndarray]
    ) -> np.ndarray:
        """Held-out transfer errors (candidates, n, properties) of every candidate (reference loop)."""
        n = Xs.shape[0]
        coef = self.source_model_.coef_
        err = np.zeros((len(candidates), n, self.n_properties_))
        for rows in folds:
            keep = np.ones(n, dtype=bool)
            keep[rows] = False
            maps = self._fit_maps(Xs[keep], Xt[keep], candidates)
            for c, m in enumerate(maps):
                err[c, rows] = (self._apply_map(m, Xt[rows]) - Xs[rows]) @ coef
        return err

    def _check_params(self) -> None:
        """Raise a one-line error for an invalid parameter (called by fit)."""

    def _candidates(self, n_standards: int) -> list[dict[str, Any]]:
        """Settings to try, simplest first; one entry when the parameters are fixed."""
        raise NotImplementedError

    def _fit_maps(self, X_source: np.ndarray, X_target: np.ndarray, candidates: list[dict[str, Any]]) -> list[Any]:
        raise NotImplementedError

    def _apply_map(self, state: Any, X_target: np.ndarray) -> np.ndarray:
        raise NotImplementedError


LOO_MIN_SHOTS = 4
"""Fewest standards (samples) for leave-one-out selection; below it the simplest candidate is used."""


def sample_folds(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Leave-one-sample-out folds over n standard rows: the rows of each sample id, in order of appearance.

    Without ids (or with one id per row) every row is its own fold.
    """
    if groups is None:
        return [np.array([i]) for i in range(n)]
    g = np.asarray(groups)
    if g.shape[0] != n:
        raise ValueError(f"standards have {n} rows but {g.shape[0]} sample ids")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first)  # samples in order of first appearance
    return [np.flatnonzero(inverse == u) for u in order]


def stacked_folds(
    folds: list[np.ndarray], *arrays: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The leave-group-out folds of each array stacked for batched SVDs.

    Returns, per array, ``train`` (F, m_max, c): each fold's training rows centred on their mean,
    padded with rows of zeros to the largest fold (zero rows change no singular value, right
    singular vector or ``U^T y``); ``held`` (F, g_max, c): the held-out rows centred on that same
    mean; ``means`` (F, c); and ``mask`` (F, g_max), True on the real held-out rows.
    """
    n = arrays[0].shape[0]
    F = len(folds)
    m_max = max(n - len(f) for f in folds)
    g_max = max(len(f) for f in folds)
    train = [np.zeros((F, m_max, a.shape[1])) for a in arrays]
    held = [np.zeros((F, g_max, a.shape[1])) for a in arrays]
    means = [np.zeros((F, a.shape[1])) for a in arrays]
    mask = np.zeros((F, g_max), dtype=bool)
    for f, rows in enumerate(folds):
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        m, g = n - len(rows), len(rows)
        for a, tr, he, mu in zip(arrays, train, held, means):
            mu[f] = a[keep].mean(axis=0)
            tr[f, :m] = a[keep] - mu[f]
            he[f, :g] = a[rows] - mu[f]
        mask[f, :g] = True
    return train, held, means, mask


def row_coordinates(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, V) with X = L V^T and V (p, r) orthonormal, r = min(n, p): the rows' coordinates in an
    orthonormal basis of their row space (an exact rotation; QR, cheaper than an SVD)."""
    if X.shape[0] >= X.shape[1]:
        return X.copy(), np.eye(X.shape[1])
    V, R = np.linalg.qr(X.T)
    return R.T, V


def svd_filter(s: np.ndarray, regularization: str, rank: int, alpha: float, rtol: float = 1e-10) -> np.ndarray:
    """Filter factors ``f(s)`` so that ``V diag(f) U^T`` is a regularized pseudo-inverse.

    Works on the last axis (batched). "tsvd": 1/s for the first ``rank`` singular values above
    ``rtol * s_max``, 0 beyond; "ridge": s / (s^2 + alpha * s_max^2), i.e. ``alpha`` is relative to
    the largest squared singular value, so it does not depend on the spectra's scale.
    """
    s_max = s[..., :1]
    keep = s > rtol * np.maximum(s_max, 1e-300)
    if regularization == "tsvd":
        idx = np.arange(s.shape[-1])
        keep = keep & (idx < rank)
        return np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    if regularization == "ridge":
        lam = alpha * s_max**2
        return np.where(keep, s / (s**2 + lam), 0.0)
    raise ValueError(f"unknown regularization {regularization!r}; use 'tsvd' or 'ridge'")
