"""The numerical core of the di-PLS family: diPLSlib 2.5.0's algorithms, batched, in small bases.

``fit_batch`` fits B models at once that share their domains but not their calibration rows
or regularization (the folds x l-values of a cross-validation, or one final model). It follows
diPLSlib's ``dipals`` step by step (weight ``w = (I + l / (y^T y) D)^-1 X^T y``, normalised;
scores, loadings, deflation of x and y; ``b = W (P^T W)^-1 C``) with changes that do not
change the numbers beyond round-off:

* the discrepancy matrix D is never formed: the domains live in an orthonormal basis of their
  own row space (r <= rows of the domains), D's eigen-decomposition is an r x r one, and the
  weight follows from ``(I + c V mu V^T)^-1 v = v - V (c mu / (1 + c mu)) V^T v``; the
  domains' covariances are downdated by one rank-one term per latent variable instead of
  being recomputed from the deflated rows;
* the domains are deflated through an orthonormal basis of their scores (see
  ``_DeflatedDomain``), so a domain with fewer rows than latent variables is exhausted to
  zero instead of to round-off noise; the target domain is deflated whenever its score is
  non-zero (diPLSlib 2.5.0 tests ``np.sum(xt) != 0``, rounding noise for centred xt);
* a zero score stops that deflation instead of producing 0/0.

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
    if M.size == 0:
        return np.zeros((blocks[0].shape[1], 0))
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    keep = s > RTOL * max(float(s[0]), 1e-300) if s.size else np.zeros(0, dtype=bool)
    return Vt[keep].T


def extend_basis(Q: np.ndarray, rows: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal columns E spanning ``rows`` outside the span of the orthonormal ``Q``.

    Returns (E, rows @ Q, rows @ E): the rows' coordinates come with the basis. ``scale`` is
    the largest singular value of everything the basis must hold: directions weaker than
    RTOL x scale are dropped, as ``row_space_basis`` of the whole stack would.
    """
    if rows.size == 0:
        return np.zeros((Q.shape[0], 0)), np.zeros((0, Q.shape[1])), np.zeros((0, 0))
    cq = rows @ Q
    R = rows - cq @ Q.T
    c2 = R @ Q
    R = R - c2 @ Q.T  # twice: the residual is orthogonal to Q to round-off
    cq = cq + c2
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    keep = s > RTOL * max(scale, float(s[0]) if s.size else 0.0, 1e-300)
    return Vt[keep].T, cq, U[:, keep] * s[keep]


class Domains:
    """The domains of one transfer, prepared once for all its fits (in the working coordinates).

    xs (ns, m) and xts (list of (nt, m)) are centred rows; for mode "gct" xs holds the pair
    differences and xts is empty. Keeps an orthonormal basis of their row space (m, r), the
    rows' coordinates in it and their covariances.
    """

    def __init__(self, xs: np.ndarray, xts: list[np.ndarray], mode: str):
        if mode not in ("dipls", "mdipls", "gct"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.n_channels = xs.shape[1]
        if mode == "gct":
            _, s, Vt = np.linalg.svd(xs, full_matrices=False)
            keep = s > RTOL * max(float(s[0]), 1e-300) if s.size else np.zeros(0, dtype=bool)
            self.basis, self.mu = Vt[keep].T, s[keep] ** 2 / max(xs.shape[0], 1)
            return
        self.basis = row_space_basis(xs, *xts)
        self.L0 = [x @ self.basis for x in [xs, *xts]]  # source first, then the target domains
        self.L0 = [L - L.mean(axis=0) for L in self.L0]  # centred already; clears the centring's round-off
        self.sizes = [L.shape[0] for L in self.L0]
        self.cov0 = [L.T @ L / max(n, 1) for L, n in zip(self.L0, self.sizes)]
        self._first: tuple[np.ndarray, np.ndarray] | None = None

    def first_relaxation(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, V) of the undeflated domains' relaxation: the same for every fit of the transfer."""
        if self._first is None:
            self._first = _relaxation(self.cov0[0], self.cov0[1:])
        return self._first

    def norm(self) -> float:
        """||D||_2 of the first latent variable's discrepancy (the unit of the relative l)."""
        if self.mode == "gct":
            return float(self.mu[0]) if self.mu.size else 0.0
        if self.basis.shape[1] == 0:
            return 0.0
        return float(self.first_relaxation()[0].max())


def relaxed_discrepancy_norm(xs: np.ndarray, xts: list[np.ndarray]) -> float:
    """||D||_2 of diPLSlib's convex relaxation sum_z |Cov(xs) - Cov(xt_z)| (undeflated domains)."""
    return Domains(xs, list(xts), "dipls").norm()


def _relaxation(Ms: np.ndarray, Mts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition (mu, V) of sum_z |Ms - Mt_z| (batched over leading axes)."""
    total = None
    for Mt in Mts:
        lam, V = np.linalg.eigh(Ms - Mt)
        if len(Mts) == 1:
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
    is zero. The covariance ``x^T x / n`` is downdated alongside (one rank-one term).
    """

    def __init__(self, L0: np.ndarray, cov0: np.ndarray, batch: int, n_components: int):
        n = L0.shape[0]
        self.n = max(n, 1)
        self.L = np.repeat(L0[None], batch, axis=0)  # (B, n, r)
        self.cov = np.repeat(cov0[None], batch, axis=0)  # (B, r, r)
        self.Q = np.zeros((batch, n, n_components + 1))  # orthonormal score basis, column 0 constant
        self.used = 0
        if n:
            self.Q[:, :, 0] = 1.0 / np.sqrt(n)
            self.used = 1
        self.floor = RTOL * max(float(np.linalg.norm(L0)), 1e-300)

    def deflate(self, w_r: np.ndarray) -> np.ndarray:
        """Deflate by the scores on w_r (B, r); returns the loadings (B, r) (0 where exhausted)."""
        t = np.einsum("bir,br->bi", self.L, w_r)
        Q = self.Q[:, :, : self.used]
        for _ in range(2):
            t = t - np.einsum("bia,ba->bi", Q, np.einsum("bia,bi->ba", Q, t))
        norm = np.linalg.norm(t, axis=1)
        ok = norm > self.floor
        q = t * (ok / np.where(ok, norm, 1.0))[:, None]
        qL = np.einsum("bi,bir->br", q, self.L)  # = x^T t / |t| (zero where exhausted)
        self.L -= q[:, :, None] * qL[:, None, :]
        self.cov -= qL[:, :, None] * qL[:, None, :] / self.n
        if self.used < self.Q.shape[2]:
            self.Q[:, :, self.used] = q
            self.used += 1
        return qL / np.where(ok, norm, 1.0)[:, None]  # x^T t / t^T t


def fit_batch(X: np.ndarray, y: np.ndarray, n_components: int, l_abs: np.ndarray, domains: Domains) -> np.ndarray:
    """Regression vectors (B, m) of B di-PLS / md-PLS / GCT-PLS fits sharing their domains.

    X (B, n, k) and y (B, n) are centred calibrations (rows of zeros pad smaller ones: they
    change nothing) in the first k <= m working coordinates (the calibration's own basis; the
    domains may add directions beyond it, where X is zero); ``l_abs`` (B,) is the absolute
    regularization of each fit.
    """
    mode = domains.mode
    X = np.array(X, dtype=float)
    y = np.array(y, dtype=float)
    B, _, k = X.shape
    m = domains.n_channels
    A = int(n_components)
    l_abs = np.broadcast_to(np.asarray(l_abs, dtype=float), (B,))
    reg = l_abs > 0
    basis = domains.basis
    W = np.zeros((B, m, A))
    P = np.zeros((B, m, A))
    C = np.zeros((B, A))
    dead = np.zeros((B, A), dtype=bool)
    if mode != "gct":
        parts = [_DeflatedDomain(L0, cov0, B, A) for L0, cov0 in zip(domains.L0, domains.cov0)]
    for a in range(A):
        v = np.zeros((B, m))
        v[:, :k] = np.einsum("bnk,bn->bk", X, y)
        yy = np.einsum("bn,bn->b", y, y)
        w = v
        active = reg & (yy > 0)
        if active.any() and basis.shape[1]:
            c = l_abs[active] / yy[active]
            if mode == "gct":
                mu, E = domains.mu, None
            elif a == 0:
                mu, E = domains.first_relaxation()  # the undeflated domains: shared by every fit
                mu, E = np.broadcast_to(mu, (int(active.sum()),) + mu.shape), np.broadcast_to(E, (int(active.sum()),) + E.shape)
            else:
                mu, E = _relaxation(parts[0].cov[active], [d.cov[active] for d in parts[1:]])
            g = c[:, None] * mu
            u = v[active] @ basis
            if E is None:
                u = u * (g / (1.0 + g))
            else:
                u = np.einsum("brk,bk->br", E, np.einsum("brk,br->bk", E, u) * (g / (1.0 + g)))
            w = v.copy()
            w[active] -= u @ basis.T
        norm = np.linalg.norm(w, axis=1)
        w = w / np.where(norm > 0, norm, 1.0)[:, None]
        t = np.einsum("bnk,bk->bn", X, w[:, :k])
        tt = np.einsum("bn,bn->b", t, t)
        inv_tt = np.where(tt > 0, 1.0 / np.where(tt > 0, tt, 1.0), 0.0)
        ca = np.einsum("bn,bn->b", y, t) * inv_tt
        p = np.einsum("bnk,bn->bk", X, t) * inv_tt[:, None]
        X -= t[:, :, None] * p[:, None, :]
        y -= ca[:, None] * t
        W[:, :, a] = w
        C[:, a] = ca
        dead[:, a] = tt <= 0
        if mode != "mdipls":
            P[:, :k, a] = p
        if mode == "gct":
            continue
        w_r = w @ basis
        parts[0].deflate(w_r)
        for z, d in enumerate(parts[1:]):
            pt = d.deflate(w_r)
            if mode == "mdipls" and z == 0:
                P[:, :, a] = pt @ basis.T
    PtW = np.einsum("bma,bmc->bac", P, W) + np.eye(A) * dead[:, :, None]  # a dead component adds nothing
    r = np.linalg.solve(PtW, C[:, :, None])[:, :, 0]
    return np.einsum("bma,ba->bm", W, r)
