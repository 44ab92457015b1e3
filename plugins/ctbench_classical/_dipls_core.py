"""The numerical core of the di-PLS family: diPLSlib 2.5.0's algorithms, batched, in a small basis.

``fit_batch`` fits B models at once that share their domains but not their calibration rows
or regularization (the folds x l-values of a cross-validation, or one final model). It follows
diPLSlib's ``dipals`` step by step (weight ``w = (I + l / (y^T y) D)^-1 X^T y``, normalised;
scores, loadings, deflation of x and y; ``b = W (P^T W)^-1 C``) with three changes that do not
change the numbers beyond round-off:

* the discrepancy matrix D is never formed: the domains live in an orthonormal basis of their
  own row space (r <= rows of the domains), D's eigen-decomposition is an r x r one, and the
  weight follows from ``(I + c V mu V^T)^-1 v = v - V (c mu / (1 + c mu)) V^T v``;
* the target domain is deflated whenever its score is non-zero (diPLSlib 2.5.0 tests
  ``np.sum(xt) != 0``, which for centred xt is rounding noise: see the dipls module);
* a zero score (a domain or calibration without variance left) stops that deflation instead
  of producing 0/0.

Modes: ``"dipls"`` (D = |Cov(xs) - Cov(xt)| of the deflated domains, recomputed each latent
variable; several target domains sum their relaxations; b from the calibration loadings),
``"mdipls"`` (the same, b from the first target domain's loadings, diPLSlib's
``target_domain=1`` with per-LV l), ``"gct"`` (D = xs^T xs / N fixed, xs = pair differences,
domains not deflated).
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-10
"""Singular values below RTOL x the largest are treated as zero (basis of a row space)."""


def row_space_basis(*blocks: np.ndarray) -> np.ndarray:
    """Orthonormal basis (p, m) of the row space of the stacked blocks."""
    M = np.vstack([b for b in blocks if b.size])
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    keep = s > RTOL * max(float(s[0]), 1e-300) if s.size else np.zeros(0, dtype=bool)
    return Vt[keep].T


def extend_basis(Q: np.ndarray, rows: np.ndarray, scale: float) -> np.ndarray:
    """Orthonormal columns spanning ``rows`` outside the span of the orthonormal ``Q``.

    ``scale`` is the largest singular value of everything the basis must hold: directions
    weaker than RTOL x scale are dropped, as ``row_space_basis`` of the whole stack would.
    """
    if rows.size == 0:
        return np.zeros((Q.shape[0], 0))
    R = rows - (rows @ Q) @ Q.T
    R = R - (R @ Q) @ Q.T  # twice: the residual is orthogonal to Q to round-off
    _, s, Vt = np.linalg.svd(R, full_matrices=False)
    keep = s > RTOL * max(scale, float(s[0]) if s.size else 0.0, 1e-300)
    return Vt[keep].T


def relaxed_discrepancy_norm(xs: np.ndarray, xts: list[np.ndarray]) -> float:
    """||D||_2 of diPLSlib's convex relaxation sum_z |Cov(xs) - Cov(xt_z)| (undeflated domains)."""
    basis = row_space_basis(xs, *xts)
    if basis.shape[1] == 0:
        return 0.0
    mu, _ = _relaxation(xs @ basis, [x @ basis for x in xts], xs.shape[0], [x.shape[0] for x in xts])
    return float(mu.max())


def _relaxation(Ls: np.ndarray, Lts: list[np.ndarray], ns: int, nts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition (mu, V) of sum_z |Ls^T Ls / ns - Lt_z^T Lt_z / nt_z| (batched over leading axes)."""
    Ms = np.einsum("...ir,...is->...rs", Ls, Ls) / ns
    total = None
    for Lt, nt in zip(Lts, nts):
        lam, V = np.linalg.eigh(Ms - np.einsum("...ir,...is->...rs", Lt, Lt) / nt)
        if len(Lts) == 1:
            return np.abs(lam), V
        D = np.einsum("...rk,...k,...sk->...rs", V, np.abs(lam), V)
        total = D if total is None else total + D
    mu, V = np.linalg.eigh(total)
    return np.abs(mu), V  # positive semi-definite: clear round-off signs


class _DeflatedDomain:
    """One domain's rows (B copies) deflated by their own scores, through an orthonormal score basis.

    diPLSlib deflates ``x <- x - t t^T x / t^T t`` with ``t = x w``. Consecutive scores are
    orthogonal, so after a latent variables x is ``(I - Q Q^T) x_0`` with Q an orthonormal
    basis of the scores; keeping Q orthonormal (Gram-Schmidt twice) makes an exhausted
    domain (more latent variables than its rank) exactly zero instead of round-off noise
    that the regularization would then amplify. The rows are centred, so every score sums
    to zero: Q starts with the constant vector, which keeps the scores in that subspace even
    when a score is small next to the data (its round-off would otherwise leak out of it). A
    score below RTOL x ||x_0|| is an exhausted direction: it is not deflated and its loading
    is zero.
    """

    def __init__(self, L0: np.ndarray, batch: int):
        L0 = L0 - L0.mean(axis=0)  # centred already; this clears the centring's round-off
        self.L = np.repeat(L0[None], batch, axis=0)  # (B, n, r)
        n = L0.shape[0]
        self.Q: list[np.ndarray] = [np.full((batch, n), 1.0 / np.sqrt(n))] if n else []
        self.floor = RTOL * max(float(np.linalg.norm(L0)), 1e-300)

    def deflate(self, w_r: np.ndarray) -> np.ndarray:
        """Deflate by the scores on w_r (B, r); returns the loadings (B, r) (0 where exhausted)."""
        t = np.einsum("bir,br->bi", self.L, w_r)
        for _ in range(2):
            for q in self.Q:
                t = t - q * np.einsum("bi,bi->b", q, t)[:, None]
        norm = np.linalg.norm(t, axis=1)
        ok = norm > self.floor
        q = t / np.where(ok, norm, 1.0)[:, None] * ok[:, None]
        qL = np.einsum("bi,bir->br", q, self.L)
        self.L = self.L - q[:, :, None] * qL[:, None, :]
        self.Q.append(q)
        return qL / np.where(ok, norm, 1.0)[:, None]  # x^T t / t^T t


def fit_batch(
    X: np.ndarray,
    y: np.ndarray,
    n_components: int,
    l_abs: np.ndarray,
    xs: np.ndarray,
    xts: list[np.ndarray],
    mode: str = "dipls",
) -> np.ndarray:
    """Regression vectors (B, m) of B di-PLS / md-PLS / GCT-PLS fits sharing their domains.

    X (B, n, m) and y (B, n) are centred (rows of zeros pad smaller calibrations: they change
    nothing), ``l_abs`` (B,) the absolute regularization of each fit; xs (ns, m) and xts
    (list of (nt, m)) are the centred domains (for "gct": xs the pair differences, xts empty),
    in the same coordinates as X.
    """
    if mode not in ("dipls", "mdipls", "gct"):
        raise ValueError(f"unknown mode {mode!r}")
    X = np.array(X, dtype=float)
    y = np.array(y, dtype=float)
    B, _, m = X.shape
    A = int(n_components)
    l_abs = np.broadcast_to(np.asarray(l_abs, dtype=float), (B,))
    reg = l_abs > 0
    W = np.zeros((B, m, A))
    P = np.zeros((B, m, A))
    C = np.zeros((B, A))
    dead = np.zeros((B, A), dtype=bool)
    if mode == "gct":
        _, s, Vt = np.linalg.svd(xs, full_matrices=False)
        keep = s > RTOL * max(float(s[0]), 1e-300) if s.size else np.zeros(0, dtype=bool)
        V_gct, mu_gct = Vt[keep].T, s[keep] ** 2 / max(xs.shape[0], 1)
    else:
        basis = row_space_basis(xs, *xts)
        ns, nts = xs.shape[0], [x.shape[0] for x in xts]
        source = _DeflatedDomain(xs @ basis, B)
        targets = [_DeflatedDomain(x @ basis, B) for x in xts]
    for a in range(A):
        v = np.einsum("bnm,bn->bm", X, y)
        yy = np.einsum("bn,bn->b", y, y)
        w = v.copy()
        active = reg & (yy > 0)
        if active.any():
            c = l_abs[active] / yy[active]
            if mode == "gct":
                V, mu = V_gct, mu_gct
                if V.shape[1]:
                    g = c[:, None] * mu[None, :]
                    w[active] -= ((v[active] @ V) * (g / (1.0 + g))) @ V.T
            elif basis.shape[1]:
                mu, E = _relaxation(source.L[active], [d.L[active] for d in targets], ns, nts)
                g = c[:, None] * mu
                u = np.einsum("brk,br->bk", E, v[active] @ basis)
                w[active] -= np.einsum("brk,bk->br", E, u * (g / (1.0 + g))) @ basis.T
        norm = np.linalg.norm(w, axis=1)
        w = w / np.where(norm > 0, norm, 1.0)[:, None]
        t = np.einsum("bnm,bm->bn", X, w)
        tt = np.einsum("bn,bn->b", t, t)
        inv_tt = np.where(tt > 0, 1.0 / np.where(tt > 0, tt, 1.0), 0.0)
        ca = np.einsum("bn,bn->b", y, t) * inv_tt
        p = np.einsum("bnm,bn->bm", X, t) * inv_tt[:, None]
        X -= t[:, :, None] * p[:, None, :]
        y -= ca[:, None] * t
        W[:, :, a] = w
        C[:, a] = ca
        dead[:, a] = tt <= 0
        if mode == "gct":
            P[:, :, a] = p
            continue
        w_r = w @ basis
        source.deflate(w_r)
        for z, d in enumerate(targets):
            pt = d.deflate(w_r)
            if mode == "mdipls" and z == 0:
                P[:, :, a] = pt @ basis.T
        if mode == "dipls":
            P[:, :, a] = p
    PtW = np.einsum("bma,bmc->bac", P, W) + np.eye(A) * dead[:, :, None]  # a dead component adds nothing
    r = np.linalg.solve(PtW, C[:, :, None])[:, :, 0]
    return np.einsum("bma,ba->bm", W, r)
