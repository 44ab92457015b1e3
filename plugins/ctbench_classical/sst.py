"""Spectral space transformation (SST): the paired standards' joint principal components."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import MAX_COMPONENTS, SpectralStandardization, require_fitted, row_coordinates, stacked_folds

MAX_RANK = 30
"""Largest joint rank tried when n_components is None (those up to N - 2 with centring, N - 1 without)."""
RTOL = 1e-10
"""Singular values (joint SVD) and triangular pivots (target loadings) below RTOL x the largest end the rank."""


def _usable(diag: np.ndarray, limit: np.ndarray | int) -> np.ndarray:
    """How many leading entries of ``diag`` (last axis) exceed RTOL x its largest, stopping at the first
    that does not, capped at ``limit``."""
    a = np.abs(diag)
    if a.shape[-1] == 0:
        return np.minimum(np.zeros(a.shape[:-1], dtype=int), limit)
    ok = a > RTOL * np.maximum(a.max(axis=-1, keepdims=True), 1e-300)
    lead = np.cumprod(ok, axis=-1).sum(axis=-1)
    return np.minimum(lead, limit)


class SST(SpectralStandardization):
    """Spectral space transformation: correct a target spectrum along the standards' joint components.

    The paired standards' spectra, centred on each instrument's standard mean (``m_s``,
    ``m_t``), are put side by side, ``[X_src[S] - m_s | X_tgt[S] - m_t]`` (N x 2p), and a rank-k
    SVD of that joint matrix gives loadings ``P = [P_s | P_t]`` (k x 2p, orthonormal rows): each
    joint component says how one direction of chemical variation looks on the source (``P_s``)
    and on the target (``P_t``). A target spectrum ``x`` gets its scores from the target
    loadings by least squares, ``t = (x - m_t) P_t^+``, and the instrument difference of those
    components is added::

        x_src = m_s + (x - m_t) + t (P_s - P_t)

    so the part of ``x`` the target loadings explain, ``t P_t``, is replaced by its source
    counterpart ``t P_s`` and the rest of ``x`` (variation outside the standards' span) is kept
    as it is (Du, Chen, Zhong et al., Anal. Chim. Acta 690, 2011, 64-70). With k = N - 1 (all
    joint components) the standards themselves are mapped exactly and the within-span part of
    the map is DS's minimum-norm map; unlike DS, the out-of-span part passes through instead of
    being dropped. ``P_t^+`` is applied through a thin QR of ``P_t^T`` (k x k triangular solve),
    the map is kept as two thin factors (p x k, k x p), never as p x p. Predictions are the
    source PLS model (latent variables by CV) on the corrected spectra.

    Parameters (defaults in brackets):
      n_components [None]: joint rank k, capped at N - 1 (N without centring). None: chosen at
        transfer by leave-one-out over the standards among 1 .. min(30, N - 2) (N - 1 without
        centring; see ``SpectralStandardization._loo_scores``); with fewer than 4 standards, 1.
        Joint components with a singular value below 1e-10 of the largest, and target loadings
        that are (numerically) combinations of the earlier ones, end the rank early.
      center [True]: centre both sides on the standards' means and add the mean offset (the
        target standards' mean maps to the source standards' mean). ``False`` is the paper's
        form on raw spectra (as in the ``pynir`` implementation): the first joint component
        then mostly carries the mean spectrum, and an offset between the instruments is
        corrected only through it.
      max_components [30]: largest latent-variable count tried by the source model's CV
        (which holds out whole samples: replicate rows share a fold).
      random_state [0]: seeds the CV folds of the source model.
    Why the defaults: centring is chosen a priori, as in DS, PDS and CCA: it spends no
    component on the mean spectrum and corrects a constant offset exactly. The rank is SST's
    only setting and its good value grows with N and differs between datasets, so it is
    chosen on the standards themselves (never on test spectra); the choice is in
    ``selected_``. The cap of 30 directions is a priori (beyond it the standards' joint
    spectra are noise at the N the benchmark uses); the leave-one-out is in closed form (one
    batched SVD and QR of N x N matrices for all folds), so the cap is not about speed.
    """

    name = "sst"
    version = "1"
    description = "spectral space transformation (joint SVD of paired standards, centred, with offset)"

    def __init__(
        self,
        n_components: int | None = None,
        center: bool = True,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.center = center
        self.max_components = max_components
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.n_components is not None and int(self.n_components) < 1:
            raise ValueError(f"sst: n_components must be >= 1 or None, got {self.n_components}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise ValueError(f"sst: center must be True or False, got {self.center!r}")

    def _candidates(self, n_standards: int) -> list[dict[str, Any]]:
        lost = 1 if self.center else 0  # centring costs one dimension
        if self.n_components is not None:
            return [{"n_components": max(1, min(int(self.n_components), n_standards - lost))}]
        top = max(1, min(MAX_RANK, n_standards - 1 - lost))
        return [{"n_components": k} for k in range(1, top + 1)]

    def _fit_maps(self, X_source: np.ndarray, X_target: np.ndarray, candidates: list[dict[str, Any]]) -> list[Any]:
        p = X_source.shape[1]
        if self.center:
            source_mean, target_mean = X_source.mean(axis=0), X_target.mean(axis=0)
        else:
            source_mean, target_mean = np.zeros(p), np.zeros(p)
        joint = np.hstack([X_source - source_mean, X_target - target_mean])
        _, s, Wt = np.linalg.svd(joint, full_matrices=False)
        k_max = int(_usable(s, max(c["n_components"] for c in candidates)))
        P_s, P_t = Wt[:k_max, :p], Wt[:k_max, p:]
        # P_t = R^T Q^T (thin QR of P_t^T); the first k rows of P_t are R[:k,:k]^T Q[:, :k]^T, so
        # t_k = x Q[:, :k] R[:k,:k]^{-T} for every k from one factorisation
        if k_max:
            Q, R = np.linalg.qr(P_t.T)
            k_max = int(_usable(np.diag(R), k_max))
        else:
            Q, R = np.zeros((p, 0)), np.zeros((0, 0))
        maps = []
        for c in candidates:
            k = min(c["n_components"], k_max)
            Rk = R[:k, :k]
            right = np.linalg.solve(Rk.T, P_s[:k] - P_t[:k]) if k else np.zeros((0, p))
            maps.append((target_mean, source_mean, np.ascontiguousarray(Q[:, :k]), right))
        return maps

    def _apply_map(self, state: Any, X_target: np.ndarray) -> np.ndarray:
        target_mean, source_mean, left, right = state
        Xc = X_target - target_mean
        return Xc + (Xc @ left) @ right + source_mean

    def _loo_errors(
        self, Xs: np.ndarray, Xt: np.ndarray, candidates: list[dict[str, Any]], folds: list[np.ndarray]
    ) -> np.ndarray:
        """Held-out errors of every rank from one batched SVD and one batched QR of n x n matrices.

        The joint spectra are replaced by their coordinates ``L`` in an orthonormal basis ``V`` of
        their row space (``[Xs | Xt] = L V^T``, an exact rotation), so a fold's joint loadings are
        ``W V^T`` with W from the SVD of its n x n coordinates. The target loadings are
        ``W V_t^T = (W R_t^T) Q_t^T`` with ``V_t = Q_t R_t`` (thin QR of the basis' target half),
        so their pseudo-inverse is an n x n problem too, and the LQ factors of ``W R_t^T`` give
        every rank's scores at once (leading triangular blocks). Only ``(P_s - P_t) coef`` and
        the identity part enter the error through the source model, ``(V_t - V_s)^T coef``.
        """
        n = Xs.shape[0]
        p = Xs.shape[1]
        coef = self.source_model_.coef_
        kp = coef.shape[1]
        L, V = row_coordinates(np.hstack([Xs, Xt]))  # (n, r), (2p, r)
        Vs, Vt = V[:p], V[p:]
        Qt, Rt = np.linalg.qr(Vt)  # Vt = Qt Rt, (p, r), (r, r)
        Cd = (Vs - Vt).T @ coef  # (r, kp): source minus target loadings through the model
        F = len(folds)
        if self.center:
            (T,), (held,), _, mask = stacked_folds(folds, L)
        else:
            m_max = max(n - len(f) for f in folds)
            g_max = max(len(f) for f in folds)
            T = np.zeros((F, m_max, L.shape[1]))
            held = np.zeros((F, g_max, L.shape[1]))
            mask = np.zeros((F, g_max), dtype=bool)
            for f, rows in enumerate(folds):
                keep = np.ones(n, dtype=bool)
                keep[rows] = False
                T[f, : n - len(rows)] = L[keep]
                held[f, : len(rows)] = L[rows]
                mask[f, : len(rows)] = True
        k_top = max(c["n_components"] for c in candidates)
        _, s, W = np.linalg.svd(T, full_matrices=False)  # W (F, K, r)
        K = min(k_top, W.shape[1])
        W = W[:, :K]
        k_eff = _usable(s[:, :K], K)  # (F,)
        M = np.einsum("fkr,sr->fks", W, Rt)  # W R_t^T: target loadings in Q_t coordinates
        Q2, R2 = np.linalg.qr(np.swapaxes(M, 1, 2))  # M^T = Q2 R2, (F, r, K), (F, K, K)
        diag = np.einsum("fkk->fk", R2)
        k_eff = np.array([_usable(diag[f, : k_eff[f]], k_eff[f]) if k_eff[f] else 0 for f in range(F)])
        # rows beyond a fold's usable rank: unit pivots and no coupling, so the solve stays finite
        idx = np.arange(K)
        beyond = idx[None, :] >= k_eff[:, None]  # (F, K)
        Lo = np.swapaxes(R2, 1, 2).copy()  # lower triangular, P_t = Lo Q2^T
        Lo[beyond] = 0.0
        Lo[:, idx, idx] = np.where(beyond, 1.0, diag)
        D = np.einsum("fkr,rj->fkj", W, Cd)  # (P_s - P_t) coef per fold, (F, K, kp)
        Y = np.linalg.solve(Lo, D)  # (F, K, kp)
        Y[beyond] = 0.0
        # held-out target part, in Q2 coordinates: (h V_t^T) Q_t Q2 = h R_t^T Q2
        z = np.einsum("fgr,sr,fsk->fgk", held, Rt, Q2)  # (F, g, K)
        base = -np.einsum("fgr,rj->fgj", held, Cd)  # mean offset and identity part
        contrib = np.cumsum(z[..., None] * Y[:, None], axis=2)  # (F, g, K, kp): rank 1 .. K
        ranks = np.array([c["n_components"] for c in candidates])
        pick = np.minimum(ranks[None, :], k_eff[:, None])  # (F, C)
        err = np.zeros((len(candidates), n, kp))
        flat = np.concatenate(folds)
        for c in range(len(candidates)):
            k_f = pick[:, c]
            pred = base + np.where(
                (k_f > 0)[:, None, None], contrib[np.arange(F), :, np.maximum(k_f - 1, 0)], 0.0
            )
            err[c, flat] = pred[mask]
        return err

    @property
    def transfer_matrix_(self) -> np.ndarray:
        """The p x p matrix F with ``x_src = (x - m_t) F + m_s`` (built on demand)."""
        require_fitted(self, "map_", "transfer")
        _, _, left, right = self.map_
        return np.eye(left.shape[0]) + left @ right

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "n_components": trial.suggest_int("n_components", 1, MAX_RANK),
            "center": trial.suggest_categorical("center", [True, False]),
        }
