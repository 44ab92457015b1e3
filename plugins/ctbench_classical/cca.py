"""Canonical-correlation-based standardization (CCA) between paired transfer standards."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import MAX_COMPONENTS, SpectralStandardization, require_fitted, row_coordinates, stacked_folds

PC_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25)
"""PCA dimensions tried when n_components is None (those up to N - 2)."""


def _pca(Xc: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin PCA of centred data: (whitened scores U_r (n, r), singular values s_r, loadings V_r (p, r))."""
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = s[:r] > 1e-10 * max(float(s[0]), 1e-300)
    r = int(keep.sum())
    return U[:, :r], s[:r], Vt[:r].T


class CCA(SpectralStandardization):
    """CCA standardization: target PCA scores -> canonical variates -> source PCA scores -> spectra.

    The paired standards are centred on each instrument's standard mean and reduced by PCA to
    r = ``n_components`` whitened scores per instrument (CCA of raw spectra is singular when
    p > N). CCA of the two whitened score sets, the SVD ``Z_t^T Z_s = A diag(rho) B^T``, gives
    r canonical pairs with correlations rho. A target spectrum is projected on the target PCs,
    turned into canonical variates ``u = z_t A_q`` (the q = ``n_canonical`` most correlated
    pairs), mapped to the expected source variates ``v = rho_q * u`` and brought back to a
    source spectrum ``m_s + (v B_q^T) diag(s_s) V_s^T``.

    This is the canonical-correlation standardization of Fan et al. (Anal. Chim. Acta 623,
    2008: F = W_t W_s^+ from the canonical weights), made well-posed by the PCA step. With
    ``shrink=True`` (default) each canonical variate is multiplied by its correlation, which is
    the least-squares prediction of a unit-variance variate from its partner; ``shrink=False``
    maps variates one to one as Fan et al. do (then, with q = r, the map is the orthogonal
    Procrustes rotation between the whitened score spaces). With ``shrink=True`` and q = r the
    map equals the least-squares regression of source PC scores on target PC scores (DS on PCA
    scores); the CCA-specific regularization is keeping q < r pairs. Note that when 2r > N - 1
    at least 2r - N + 1 correlations are exactly 1 (the two score spaces must intersect), which
    is why the PCA step and q matter.

    Parameters (defaults in brackets):
      n_components [None]: PCs per instrument r, capped at N - 1. None: chosen at transfer
        with n_canonical by leave-one-out over the standards (r in 1, 2, 3, 4, 5, 6, 8, 10, 12,
        15, 20, 25 up to N - 2; see ``SpectralStandardization._loo_scores``); below 4
        standards r = 1.
      n_canonical [None]: canonical pairs kept q, capped at r. None: chosen with r by the same
        leave-one-out among q = r/4, r/2, 3r/4, r.
      shrink [True]: weight the canonical variates by their correlations (see above).
      max_components [30]: largest latent-variable count tried by the source model's CV
        (which holds out whole samples: replicate rows share a fold).
      random_state [0]: seeds the CV folds of the source model.
    Why the defaults: r and q decide everything and their good values scale with N, so they
    are chosen on the standards (never on test spectra); the choice is in ``selected_``.
    min_shots = 2 (one PCA direction, one canonical pair).
    Version 2: the leave-one-out holds out one standard *sample* at a time (all its
    replicate rows; ``sample_folds``), and runs in closed form (in the standards' own row
    spaces, all folds batched). Without replicates (corn, tablet, most Raman pairs) the
    choice is that of version 1 to round-off.
    Version 3: the source model's CV holds out whole samples (replicates together) and tries
    up to 30 latent variables (15 bound the choice on corn m5).
    Known limitations: like DS, the map goes through the standards' (PCA) subspace, so with
    5 standards it can be worse than no transfer (same cases as DS). Keeping q < r pairs is
    ill-posed when canonical correlations tie (all of them are 1 when 2r > N - 1, and nearly
    so when the instruments are close to a linear map of each other): the pairs kept are
    then decided by round-off, in the leave-one-out as in the final map.
    """

    name = "cca"
    version = "3"
    description = "canonical correlation standardization on PCA-reduced paired standards"

    def __init__(
        self,
        n_components: int | None = None,
        n_canonical: int | None = None,
        shrink: bool = True,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.n_canonical = n_canonical
        self.shrink = shrink
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.n_components is not None and int(self.n_components) < 1:
            raise ValueError(f"cca: n_components must be >= 1 or None, got {self.n_components}")
        if self.n_canonical is not None and int(self.n_canonical) < 1:
            raise ValueError(f"cca: n_canonical must be >= 1 or None, got {self.n_canonical}")

    def _candidates(self, n_standards: int) -> list[dict[str, Any]]:
        top = max(1, n_standards - 1)
        if self.n_components is not None:
            rs = [max(1, min(int(self.n_components), top))]
        else:
            rs = sorted({r for r in PC_GRID if r <= max(1, n_standards - 2)} | {1})
        out = []
        for r in rs:
            if self.n_canonical is not None:
                qs = [max(1, min(int(self.n_canonical), r))]
            else:
                qs = sorted({max(1, round(r * f)) for f in (0.25, 0.5, 0.75, 1.0)})
            out += [{"n_components": r, "n_canonical": q} for q in qs]
        return out

    def _fit_maps(self, X_source: np.ndarray, X_target: np.ndarray, candidates: list[dict[str, Any]]) -> list[Any]:
        target_mean = X_target.mean(axis=0)
        source_mean = X_source.mean(axis=0)
        r_max = max(c["n_components"] for c in candidates)
        Zt_all, st_all, Vt_all = _pca(X_target - target_mean, r_max)
        Zs_all, ss_all, Vs_all = _pca(X_source - source_mean, r_max)
        by_r: dict[int, tuple[np.ndarray, ...]] = {}
        maps = []
        for c in candidates:
            r = min(c["n_components"], Zt_all.shape[1], Zs_all.shape[1])
            if r not in by_r:
                Zt, st, Vt_ = Zt_all[:, :r], st_all[:r], Vt_all[:, :r]
                Zs, ss, Vs = Zs_all[:, :r], ss_all[:r], Vs_all[:, :r]
                A, rho, Bt = np.linalg.svd(Zt.T @ Zs)
                rho = np.clip(rho, 0.0, 1.0)
                # x -> (x - m_t) V_t diag(1/s_t) A diag(rho) | B^T diag(s_s) V_s^T + m_s
                weight = rho if self.shrink else np.ones_like(rho)
                by_r[r] = ((Vt_ / st) @ (A * weight), (Bt * ss) @ Vs.T, rho)
            left, right, rho = by_r[r]
            q = max(1, min(c["n_canonical"], rho.size))
            maps.append((target_mean, source_mean, left[:, :q], right[:q], rho))
        return maps

    def _loo_errors(
        self, Xs: np.ndarray, Xt: np.ndarray, candidates: list[dict[str, Any]], folds: list[np.ndarray]
    ) -> np.ndarray:
        """Held-out errors of every (r, q): all folds' PCAs and canonical SVDs in a few batched calls.

        Each instrument's spectra are replaced by their coordinates in an orthonormal basis of
        their row space (n numbers instead of p; an exact rotation, so the PCAs, canonical
        correlations and maps are the same), and the source side is only needed through the
        source model's coefficients, ``V_s^T coef``. The folds are stacked (rows of zeros pad
        the smaller ones: they change no singular value or right singular vector), so every
        fold's PCA is one batched SVD, and every PCA dimension r one batched r x r SVD.
        """
        n = Xs.shape[0]
        coef = self.source_model_.coef_
        k = coef.shape[1]
        Lt, _ = row_coordinates(Xt)  # Xt = Lt Vt^T
        Ls, Vs0 = row_coordinates(Xs)  # Xs = Ls Vs0^T
        Ys = Xs @ coef
        coef_s = Vs0.T @ coef  # (r, k): the model's coefficients in the source coordinates
        r_max = max(c["n_components"] for c in candidates)
        F = len(folds)
        (Tt, Ts), (held, _), (_, ms), mask = stacked_folds(folds, Lt, Ls)
        g_max = mask.shape[1]
        base = np.zeros((F, g_max, k))
        for f, rows in enumerate(folds):
            base[f, : len(rows)] = ms[f] @ coef_s - Ys[rows]
        Zt, st_f, Vht = np.linalg.svd(Tt, full_matrices=False)
        Zs, ss_f, Vhs = np.linalg.svd(Ts, full_matrices=False)
        R = min(r_max, Zt.shape[2])
        # PCA dimensions each fold supports (the _pca rule: singular values above 1e-10 of the largest)
        rank_t = (st_f[:, :R] > 1e-10 * np.maximum(st_f[:, :1], 1e-300)).sum(axis=1)
        rank_s = (ss_f[:, :R] > 1e-10 * np.maximum(ss_f[:, :1], 1e-300)).sum(axis=1)
        inv_st = np.where(st_f[:, :R] > 0, 1.0 / np.where(st_f[:, :R] > 0, st_f[:, :R], 1.0), 0.0)
        zt = np.einsum("fgn,fan->fga", held, Vht[:, :R]) * inv_st[:, None, :]  # held-out whitened target scores
        proj_s = np.einsum("fan,nk->fak", Vhs[:, :R], coef_s) * ss_f[:, :R, None]  # diag(s_s) V_s^T coef
        flat_rows = np.concatenate(folds)
        err = np.zeros((len(candidates), n, k))
        by_r: dict[int, list[int]] = {}
        for c, cand in enumerate(candidates):
            by_r.setdefault(cand["n_components"], []).append(c)
        for r_c, cs in by_r.items():
            r_eff = np.minimum(np.minimum(r_c, rank_t), rank_s)
            preds = np.zeros((len(cs), F, g_max, k))
            for r in np.unique(r_eff):
                sel = np.flatnonzero(r_eff == r)
                if r == 0:  # no direction at all (degenerate fold): nothing mapped beyond the mean
                    preds[:, sel] = base[sel]
                    continue
                A, rho, Bt = np.linalg.svd(np.einsum("fma,fmb->fab", Zt[sel, :, :r], Zs[sel, :, :r]))
                weight = np.clip(rho, 0.0, 1.0) if self.shrink else np.ones_like(rho)
                u = np.einsum("fga,fab->fgb", zt[sel, :, :r], A * weight[:, None, :])
                right = np.einsum("fab,fbk->fak", Bt, proj_s[sel, :r])
                for i, c in enumerate(cs):
                    q = max(1, min(candidates[c]["n_canonical"], r))
                    preds[i, sel] = np.einsum("fgb,fbk->fgk", u[:, :, :q], right[:, :q]) + base[sel]
            for i, c in enumerate(cs):
                err[c, flat_rows] = preds[i][mask]
        return err

    def _apply_map(self, state: Any, X_target: np.ndarray) -> np.ndarray:
        target_mean, source_mean, left, right, _ = state
        return ((X_target - target_mean) @ left) @ right + source_mean

    @property
    def canonical_correlations_(self) -> np.ndarray:
        """Canonical correlations of the selected PCA dimension (all pairs, largest first)."""
        require_fitted(self, "map_", "transfer")
        return self.map_[4]

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        r = trial.suggest_int("n_components", 1, 25)
        return {
            "n_components": r,
            "n_canonical": max(1, round(r * trial.suggest_float("canonical_fraction", 0.1, 1.0))),
            "shrink": trial.suggest_categorical("shrink", [True, False]),
        }
