"""Canonical-correlation-based standardization (CCA) between paired transfer standards."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import SpectralStandardization


def _pca(Xc: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin PCA of centred data: (whitened scores U_r (n, r), singular values s_r, loadings V_r (p, r))."""
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = s[:r] > 1e-10 * max(float(s[0]), 1e-300)
    r = int(keep.sum())
    return U[:, :r], s[:r], Vt[:r].T


class CCA(SpectralStandardization):
    """CCA standardization: target PCA scores -> canonical variates -> source PCA scores -> spectra.

    The paired standards are centred on each instrument's standard mean and reduced by PCA to
    ``n_components`` scores per instrument (CCA on raw spectra is singular when p > N). CCA of
    the two whitened score sets (SVD of ``Z_t^T Z_s = A diag(rho) B^T``) gives canonical
    pairs with correlations rho. A target spectrum is projected on the target PCs, turned into
    canonical variates ``u = z_t A_q``, mapped to the expected source variates ``v = rho_q * u``
    (the least-squares regression of unit-variance variates is their correlation), and brought
    back to a source spectrum ``m_s + (v B_q^T) diag(s_s) V_s^T``.

    This is the canonical-correlation standardization of Fan et al. (Anal. Chim. Acta 623,
    2008, F = W_t W_s^+ built from the canonical weights), made well-posed by the PCA step and
    with the correlations kept in the map (Fan's version maps variates one-to-one, which
    over-trusts weakly correlated pairs). Keeping only the ``n_canonical`` most correlated
    pairs is what distinguishes it from DS: with every pair kept (q = r) the map equals a
    least-squares regression of source PC scores on target PC scores (DS on PCA scores).

    Parameters (defaults in brackets):
      n_components [None]: PCs per instrument, r; None uses N - 2 (capped at 20) so the CCA is
        not trivially perfect (with r = N - 1 every canonical correlation is 1). Capped at N - 1.
      n_canonical [None]: canonical pairs kept, q <= r; None keeps those with rho >= min_corr.
      min_corr [0.5]: correlation threshold used when n_canonical is None.
      max_components [15]: largest latent-variable count tried by the source model's CV.
      random_state [0]: seeds the CV folds of the source model.
    min_shots = 3 (two PCs are needed for N - 2 >= 1; with N = 2 there is one direction only
    and r = 1, q = 1, which works but is a one-dimensional map).
    """

    name = "cca"
    version = "1"
    description = "canonical correlation standardization on PCA-reduced paired standards"

    def __init__(
        self,
        n_components: int | None = None,
        n_canonical: int | None = None,
        min_corr: float = 0.5,
        max_components: int = 15,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.n_canonical = n_canonical
        self.min_corr = min_corr
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.n_components is not None and int(self.n_components) < 1:
            raise ValueError(f"cca: n_components must be >= 1 or None, got {self.n_components}")
        if self.n_canonical is not None and int(self.n_canonical) < 1:
            raise ValueError(f"cca: n_canonical must be >= 1 or None, got {self.n_canonical}")
        if not 0.0 <= float(self.min_corr) < 1.0:
            raise ValueError(f"cca: min_corr must be in [0, 1), got {self.min_corr}")

    def _learn_map(self, X_source: np.ndarray, X_target: np.ndarray) -> None:
        n = X_target.shape[0]
        if self.n_components is None:
            r = max(1, min(n - 2, 20))
        else:
            r = max(1, min(int(self.n_components), n - 1))
        self.target_mean_ = X_target.mean(axis=0)
        self.source_mean_ = X_source.mean(axis=0)
        Zt, st, Vt_ = _pca(X_target - self.target_mean_, r)
        Zs, ss, Vs = _pca(X_source - self.source_mean_, r)
        A, rho, Bt = np.linalg.svd(Zt.T @ Zs, full_matrices=False)
        rho = np.clip(rho, 0.0, 1.0)
        if self.n_canonical is None:
            q = max(1, int((rho >= float(self.min_corr)).sum()))
        else:
            q = max(1, min(int(self.n_canonical), rho.size))
        self.canonical_correlations_ = rho
        self.n_canonical_ = q
        # x -> (x - m_t) V_t diag(1/s_t) A_q diag(rho_q) B_q^T diag(s_s) V_s^T + m_s, stored as two factors.
        self.left_ = (Vt_ / st) @ (A[:, :q] * rho[:q])
        self.right_ = (Bt[:q] * ss) @ Vs.T

    def _map(self, X_target: np.ndarray) -> np.ndarray:
        return ((X_target - self.target_mean_) @ self.left_) @ self.right_ + self.source_mean_

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"n_components": trial.suggest_int("n_components", 1, 25)}
        if trial.suggest_categorical("select_pairs_by", ["correlation", "count"]) == "count":
            params["n_canonical"] = trial.suggest_int("n_canonical", 1, 25)
        else:
            params["min_corr"] = trial.suggest_float("min_corr", 0.0, 0.99)
        return params
