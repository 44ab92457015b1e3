"""CORAL: target spectra re-coloured so that their covariance matches the source's."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import MAX_COMPONENTS, SpectralStandardization, require_fitted, row_coordinates, stacked_folds

ALPHA_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3)
"""Ridge strengths (relative to each side's mean variance) tried when alpha is None, most regularized first."""
RTOL = 1e-10
"""Principal directions with a singular value below RTOL x the largest are left to the ridge."""
SOURCE_COVARIANCES = ("standards", "calibration")


def _ridge(total_variance: np.ndarray, alpha: float, p: int) -> np.ndarray:
    """The ridge ``alpha * trace / p`` of a covariance (1 where there is no variance at all)."""
    tv = np.asarray(total_variance, dtype=float)
    return np.where(tv > 0, alpha * tv / p, 1.0)


def _spectrum(s: np.ndarray, dof: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvalues, kept, trace) of the covariance of centred data with singular values ``s`` (last axis)."""
    dof = np.asarray(dof, dtype=float)[..., None] if np.ndim(dof) else float(dof)
    e = s**2 / np.maximum(dof, 1.0)
    kept = s > RTOL * np.maximum(s[..., :1], 1e-300)
    return np.where(kept, e, 0.0), kept, e.sum(axis=-1)


def _covariance_factors(Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(V (p, r), eigenvalues (r,), trace) of the sample covariance of centred rows ``Xc``, thin."""
    _, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    e, kept, tr = _spectrum(s, Xc.shape[0] - 1)
    return np.ascontiguousarray(Vt[kept].T), e[kept], float(tr)


class CORAL(SpectralStandardization):
    """CORAL-aligned PLS: whiten target spectra with the target covariance, re-colour with the source's.

    With means ``m_t``, ``m_s`` and regularized covariances ``C_t``, ``C_s``, a target spectrum
    ``x`` (a row) becomes::

        x_src = m_s + (x - m_t) C_t^{-1/2} C_s^{1/2},   C = Cov + alpha * (trace(Cov) / p) * I

    (Sun, Feng & Saenko, "Return of frustratingly easy domain adaptation", AAAI 2016, applied
    to the target side so that the source PLS model can be used as it is). The ridge is
    relative to each side's own mean variance, so a pure gain between the instruments
    (target = g * source + offset) gives ``C_t = g^2 C_s`` and is undone exactly, whatever
    alpha; an identical instrument gives the identity. Both covariances are low rank plus the
    ridge, so the symmetric square roots act through thin eigen-decompositions,
    ``C^{+-1/2} = c^{+-1/2} I + V diag((e + c)^{+-1/2} - c^{+-1/2}) V^T``, and no p x p matrix
    is formed. Directions outside the target standards' span are scaled by the ratio of the
    ridges, ``sqrt(trace_s / trace_t)`` (a global gain). Predictions are the source PLS model
    (latent variables by CV) on the re-coloured spectra.

    Parameters (defaults in brackets):
      alpha [None]: the ridge lambda, relative to each side's mean variance trace / p. None:
        chosen at transfer by leave-one-out over the standards among 10, 1, 0.1, 0.01, 0.001
        (see ``SpectralStandardization._loo_scores``); with fewer than 4 standards, 10.
      source_covariance ["standards"]: where ``C_s`` comes from. "standards": the standards'
        source spectra, the same samples as ``C_t``'s target spectra, so the two covariances
        differ only by the instrument. "calibration": the whole source calibration (better
        estimated, as in the original unsupervised CORAL, but of another sample set, so a
        difference in the samples' spread is "corrected" too). The means are always the
        standards' (``m_t`` maps to ``m_s``): the offset is what the paired standards estimate
        best, and the calibration's mean is that of other samples.
      max_components [30]: largest latent-variable count tried by the source model's CV
        (which holds out whole samples: replicate rows share a fold).
      random_state [0]: seeds the CV folds of the source model.
    Why the defaults: paired statistics are chosen a priori, because the benchmark gives
    paired standards and only then is the covariance difference the instrument's alone.
    The ridge decides how far the standards' few principal directions are trusted (with
    N standards each covariance has rank N - 1), which depends on N and the data, so it is
    chosen on the standards (never on test spectra); the choice is in ``selected_``. The
    grid is a priori: 1 is the paper's (identity added to unit-variance features); 10 is
    close to a pure gain-and-offset correction; 0.001 trusts the standards' covariance
    nearly fully. Below 4 standards the most regularized value (the covariances have rank
    1 or 2 there).
    """

    name = "coral"
    version = "1"
    description = "CORAL covariance alignment of target spectra (paired standards' statistics, ridge)"

    def __init__(
        self,
        alpha: float | None = None,
        source_covariance: str = "standards",
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.alpha = alpha
        self.source_covariance = source_covariance
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"coral: alpha must be > 0 or None, got {self.alpha}")
        if self.source_covariance not in SOURCE_COVARIANCES:
            raise ValueError(
                f"coral: source_covariance must be 'standards' or 'calibration', got {self.source_covariance!r}"
            )

    def fit(self, source: Any) -> CORAL:
        super().fit(source)
        if self.source_covariance == "calibration":
            X = np.asarray(source.X, dtype=float)
            self.calibration_covariance_ = _covariance_factors(X - X.mean(axis=0))
        return self

    def _source_covariance(self, Xs_centred: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if self.source_covariance == "calibration":
            require_fitted(self, "calibration_covariance_", "fit with source_covariance='calibration'")
            return self.calibration_covariance_
        return _covariance_factors(Xs_centred)

    def _candidates(self, n_standards: int) -> list[dict[str, Any]]:
        if self.alpha is not None:
            return [{"alpha": float(self.alpha)}]
        return [{"alpha": a} for a in ALPHA_GRID]

    def _fit_maps(self, X_source: np.ndarray, X_target: np.ndarray, candidates: list[dict[str, Any]]) -> list[Any]:
        p = X_source.shape[1]
        target_mean = X_target.mean(axis=0)
        source_mean = X_source.mean(axis=0)
        Vt, et, trt = _covariance_factors(X_target - target_mean)
        Vs, es, trs = self._source_covariance(X_source - source_mean)
        maps = []
        for c in candidates:
            ct = float(_ridge(trt, c["alpha"], p))
            cs = float(_ridge(trs, c["alpha"], p))
            a = 1.0 / np.sqrt(et + ct) - 1.0 / np.sqrt(ct)  # C_t^{-1/2} = ct^{-1/2} I + Vt diag(a) Vt^T
            b = np.sqrt(es + cs) - np.sqrt(cs)  # C_s^{1/2} = cs^{1/2} I + Vs diag(b) Vs^T
            maps.append((target_mean, source_mean, Vt, a, 1.0 / np.sqrt(ct), Vs, b, np.sqrt(cs)))
        return maps

    def _apply_map(self, state: Any, X_target: np.ndarray) -> np.ndarray:
        target_mean, source_mean, Vt, a, gt, Vs, b, gs = state
        xc = X_target - target_mean
        white = gt * xc + ((xc @ Vt) * a) @ Vt.T
        return gs * white + ((white @ Vs) * b) @ Vs.T + source_mean

    def _loo_errors(
        self, Xs: np.ndarray, Xt: np.ndarray, candidates: list[dict[str, Any]], folds: list[np.ndarray]
    ) -> np.ndarray:
        """Held-out errors of every alpha from one batched SVD per instrument of n x n matrices.

        Each instrument's spectra are replaced by their coordinates in an orthonormal basis of
        their row space (``Xt = Lt Qt^T``, ``Xs = Ls Qs^T``; an exact rotation), so every fold's
        covariance eigenvectors are ``Qt W_t^T`` / ``Qs W_s^T`` with W from a batched SVD of the
        folds' n x n coordinates. The whitened held-out spectrum stays in ``Qt``'s span, the
        re-colouring needs it only through ``Qt^T Qs``, and the source model only through
        ``Qt^T coef`` and ``Qs^T coef``.
        """
        n, p = Xs.shape
        coef = self.source_model_.coef_
        kp = coef.shape[1]
        Lt, Qt = row_coordinates(Xt)
        Ls, Qs = row_coordinates(Xs)
        (Tt, Ts), (ht, hs), _, mask = stacked_folds(folds, Lt, Ls)
        dof = np.array([n - len(rows) - 1 for rows in folds])
        _, st, Wt = np.linalg.svd(Tt, full_matrices=False)  # (F, K), (F, K, rt)
        et, kt, trt = _spectrum(st, dof)
        coef_t = Qt.T @ coef  # (rt, kp)
        if self.source_covariance == "calibration":
            require_fitted(self, "calibration_covariance_", "fit with source_covariance='calibration'")
            Vc, ec, trc = self.calibration_covariance_
            F = len(folds)
            cross = np.broadcast_to(Qt.T @ Vc, (F,) + (Qt.shape[1], Vc.shape[1]))  # target coords -> source directions
            coef_s = np.broadcast_to(Vc.T @ coef, (F, Vc.shape[1], kp))
            es, ks, trs = ec[None], np.ones((1, ec.size), dtype=bool), np.array([trc])
        else:
            _, ss, Ws = np.linalg.svd(Ts, full_matrices=False)
            es, ks, trs = _spectrum(ss, dof)
            cross = np.einsum("ts,fks->ftk", Qt.T @ Qs, Ws)  # Qt^T Vs per fold
            coef_s = np.einsum("fks,sj->fkj", Ws, Qs.T @ coef)  # Vs^T coef per fold
        zt = np.einsum("fgr,fkr->fgk", ht, Wt)  # held-out target along the fold's directions
        base = -np.einsum("fgs,sj->fgj", hs, Qs.T @ coef)  # fold's source mean minus the held-out source
        err = np.zeros((len(candidates), n, kp))
        flat = np.concatenate(folds)
        for c, cand in enumerate(candidates):
            ct = _ridge(trt, cand["alpha"], p)[:, None]  # (F, 1)
            cs = _ridge(trs, cand["alpha"], p)[:, None]
            a = np.where(kt, 1.0 / np.sqrt(et + ct) - 1.0 / np.sqrt(ct), 0.0)
            b = np.where(ks, np.sqrt(es + cs) - np.sqrt(cs), 0.0)
            white = ht / np.sqrt(ct)[:, :, None] + np.einsum("fgk,fkr->fgr", zt * a[:, None, :], Wt)  # in Qt coords
            along = np.einsum("fgr,frk->fgk", white, cross) * b[:, None, :]
            pred = (
                np.sqrt(cs)[:, :, None] * np.einsum("fgr,rj->fgj", white, coef_t)
                + np.einsum("fgk,fkj->fgj", along, coef_s)
                + base
            )
            err[c, flat] = pred[mask]
        return err

    @property
    def transfer_matrix_(self) -> np.ndarray:
        """The p x p matrix ``C_t^{-1/2} C_s^{1/2}`` with ``x_src = (x - m_t) F + m_s`` (built on demand)."""
        require_fitted(self, "map_", "transfer")
        target_mean = self.map_[0]
        eye = np.eye(target_mean.size)
        return self._apply_map(self.map_, eye + target_mean) - self.map_[1]

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "alpha": trial.suggest_float("alpha", 1e-4, 100.0, log=True),
            "source_covariance": trial.suggest_categorical("source_covariance", list(SOURCE_COVARIANCES)),
        }
