"""PLS regression with the number of latent variables chosen by cross-validation.

One PLS1 model per property (NIPALS on mean-centred spectra), each with its own number of
latent variables. A single NIPALS fit to ``max_components`` gives the regression vectors for
every smaller count at once, so cross-validating all counts costs one fit per fold.
The count is chosen with the Haaland-Thomas F-test: the fewest latent variables whose PRESS is
not significantly larger (p > 0.25) than the minimum PRESS.

Replicates: ``PLSCalibration.fit(X, y, groups)`` takes one sample id per row (replicate spectra
of one physical sample share an id). The CV folds then hold out whole samples: with a
replicate of the test sample among the training rows, extra latent variables that memorise
each sample's spectral fingerprint look like skill, and row CV picks too many. The F-test then
counts samples, not rows, as its degrees of freedom. Without groups every row is a sample and
the numbers are those of the version without groups, bit for bit.

The cap: the CV tries up to min(``max_components``, smallest training fold - 1, channels)
latent variables. The default cap is 30: at 15 it bound the choice on corn m5 (1 or 2 of the 4
properties on every outer split, the chosen counts there are 19 to 25); at 30 it binds on none
of the corn, tablet and Raman source pools, and 40 changes no choice. ``cap_binds_`` records
per property whether the chosen count is the largest tried.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np

_FIT_CACHE: dict[str, dict] = {}
_FIT_CACHE_SIZE = 64


def _fit_key(X: np.ndarray, y: np.ndarray, *settings: object) -> str:
    h = hashlib.sha1()
    for a in (X, y):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr(settings).encode())
    return h.hexdigest()


def nipals_pls1_path(X: np.ndarray, y: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit PLS1 and return (B, x_mean, y_mean) where ``B[:, a-1]`` is the regression vector with a LVs."""
    x_mean = X.mean(axis=0)
    y_mean = float(y.mean())
    E = X - x_mean
    f = y - y_mean
    p_dim = X.shape[1]
    W = np.zeros((p_dim, n_components))
    P = np.zeros((p_dim, n_components))
    c = np.zeros(n_components)
    used = 0
    for a in range(n_components):
        w = E.T @ f
        norm = np.linalg.norm(w)
        if norm < 1e-12:
            break
        w /= norm
        t = E @ w
        tt = float(t @ t)
        if tt < 1e-14:
            break
        p = E.T @ t / tt
        c[a] = float(f @ t) / tt
        E = E - np.outer(t, p)
        f = f - c[a] * t
        W[:, a] = w
        P[:, a] = p
        used = a + 1
    B = np.zeros((p_dim, n_components))
    if used:
        W_, P_, c_ = W[:, :used], P[:, :used], c[:used]
        R = W_ @ np.linalg.inv(P_.T @ W_)
        B[:, :used] = np.cumsum(R * c_, axis=1)
        B[:, used:] = B[:, [used - 1]]
    return B, x_mean, y_mean


def _sample_codes(groups: object, n: int) -> np.ndarray:
    """Sample index per row (0, 1, ... in order of first appearance) from arbitrary sample ids."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must hold one sample id per row ({n}), got shape {g.shape}")
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def n_samples(groups: object, n: int) -> int:
    """Number of physical samples among ``n`` rows (``n`` without groups)."""
    return n if groups is None else int(_sample_codes(groups, n).max()) + 1


def _cv_folds(n: int, n_folds: int, random_state: int, groups: object = None) -> list[np.ndarray]:
    """Row indices of each CV fold: a seeded random assignment of the samples to ``n_folds`` folds.

    Without ``groups`` every row is a sample. With ``groups`` (one sample id per row) the unique
    samples (in order of first appearance) are permuted and dealt to the folds, and each fold
    holds all the rows of its samples, so replicates of one sample never straddle train and
    test. With one distinct id per row in row order the folds are those without groups.
    """
    rng = np.random.default_rng(random_state)
    if groups is None:
        order = rng.permutation(n)
        return [order[i::n_folds] for i in range(n_folds)]
    codes = _sample_codes(groups, n)
    members = _members(codes)
    order = rng.permutation(len(members))
    return [np.concatenate([members[s] for s in order[i::n_folds]]) for i in range(n_folds)]


def _members(codes: np.ndarray) -> list[np.ndarray]:
    """Rows of each sample code (ascending row order)."""
    idx = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[idx])) + 1
    return np.split(idx, bounds)


def _n_folds(cv: int, n_units: int) -> int:
    return max(2, min(cv, n_units))


def _folds_for(n: int, cv: int, random_state: int, groups: object = None) -> list[np.ndarray]:
    """The CV folds of ``n`` rows: ``min(cv, number of samples)`` folds (at least 2) of whole samples."""
    n_units = n_samples(groups, n)
    if n_units < 2:
        raise ValueError("PLS cross-validation needs at least 2 distinct samples")
    return _cv_folds(n, _n_folds(cv, n_units), random_state, groups)


def _cap(max_components: int, folds: list[np.ndarray], n: int, p: int) -> int:
    """Largest latent-variable count the CV tries: the cap, the smallest training fold - 1, channels."""
    max_train = n - max(len(f) for f in folds)
    return max(1, min(max_components, max_train - 1, p))


def _cv_press(
    X: np.ndarray,
    Y: np.ndarray,
    max_components: int,
    cv: int,
    random_state: int,
    groups: object = None,
    folds: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """PRESS of every latent-variable count 1..A for every property (k, A), and the row count n.

    The folds are ``folds`` when given, else ``_cv_folds(n, n_folds, random_state, groups)``
    with ``n_folds = min(cv, number of samples)`` (at least 2): with ``groups`` whole samples
    are held out. A = ``_cap(max_components, folds, n, p)``.

    The same numbers as running :func:`nipals_pls1_path` on each fold's training rows and
    predicting its test rows, computed in the dual (Gram) form for all folds and properties
    at once: with ``u_a`` the deflated y scaled so that ``w_a = X^T u_a``, the NIPALS score is
    ``t_a = (I - Pi_T) K u_a`` (K the fold's centred Gram matrix, Pi_T the projection on the
    earlier scores), the loadings satisfy ``P^T W = diag(1/t^T t) T^T K U`` and a test row
    predicts ``k_x^T U (P^T W)^-1 c``. Only n x n Gram matrices are touched (one n x p
    product in all), which makes the CV of a small calibration (the transfer standards) cheap.
    The stopping rules of ``nipals_pls1_path`` (no weight, no score) are kept per fold.
    """
    n = X.shape[0]
    if folds is None:
        folds = _folds_for(n, cv, random_state, groups)
    n_folds = len(folds)
    A = _cap(max_components, folds, n, X.shape[1])
    k = Y.shape[1]
    Xg = X - X.mean(axis=0)
    G = Xg @ Xg.T  # Gram of the globally centred rows; each fold re-centres it exactly
    m = n - min(len(f) for f in folds)  # largest training set
    q = max(len(f) for f in folds)
    K = np.zeros((n_folds, m, m))
    Kx = np.zeros((n_folds, q, m))
    f0 = np.zeros((n_folds, m, k))
    y_test = np.zeros((n_folds, q, k))
    y_mean = np.zeros((n_folds, 1, k))
    test_mask = np.zeros((n_folds, q, 1))
    everything = np.arange(n)
    for i, test in enumerate(folds):
        train = np.setdiff1d(everything, test)
        nt, ns = len(train), len(test)
        Gtt = G[np.ix_(train, train)]
        a_train = Gtt.mean(axis=1)
        a_all = a_train.mean()
        K[i, :nt, :nt] = Gtt - a_train[:, None] - a_train[None, :] + a_all
        Gxt = G[np.ix_(test, train)]
        Kx[i, :ns, :nt] = Gxt - Gxt.mean(axis=1)[:, None] - a_train[None, :] + a_all
        ym = Y[train].mean(axis=0)
        f0[i, :nt] = Y[train] - ym
        y_test[i, :ns] = Y[test]
        y_mean[i, 0] = ym
        test_mask[i, :ns] = 1.0
    T = np.zeros((n_folds, m, k, A))  # scores, unit length
    U = np.zeros((n_folds, m, k, A))
    tt_all = np.ones((n_folds, k, A))
    c = np.zeros((n_folds, k, A))
    f = f0.copy()
    active = np.ones((n_folds, k), dtype=bool)
    for a in range(A):
        Kf = K @ f  # (F, m, k)
        nrm2 = np.einsum("fmk,fmk->fk", f, Kf)
        active &= nrm2 >= 1e-24  # nipals: ||E^T f|| < 1e-12 stops
        inv = np.where(active, 1.0 / np.sqrt(np.where(active, nrm2, 1.0)), 0.0)
        t = Kf * inv[:, None, :]
        if a:
            Ta = T[..., :a]
            for _ in range(2):  # Gram-Schmidt twice: the scores stay orthogonal to round-off
                t = t - np.einsum("fmka,fka->fmk", Ta, np.einsum("fmka,fmk->fka", Ta, t))
        tt = np.einsum("fmk,fmk->fk", t, t)
        active &= tt >= 1e-14  # nipals: t^T t < 1e-14 stops
        tt = np.where(active, tt, 1.0)
        ca = np.where(active, np.einsum("fmk,fmk->fk", f, t) / tt, 0.0)
        t = t * active[:, None, :]
        # a component stopped by the score rule is unused: no u, so P^T W gets its identity row
        # (a u without its score left a zero row there, a singular matrix)
        U[..., a] = f * (inv * active)[:, None, :]
        T[..., a] = t / np.sqrt(tt)[:, None, :]
        tt_all[..., a] = tt
        c[..., a] = ca
        f = f - ca[:, None, :] * t
    # P^T W = diag(1/tt) T^T K U with T unnormalised; unused components get an identity row.
    KU = np.einsum("fmn,fnka->fmka", K, U)
    M = np.einsum("fmka,fmkb->fkab", T, KU) / np.sqrt(tt_all)[..., None]
    used = np.any(U != 0, axis=1)  # (F, k, A)
    M = M + np.eye(A) * (~used)[..., None]
    Gx = np.einsum("fqm,fmka->fkqa", Kx, U)
    Z = np.linalg.solve(np.swapaxes(M, -1, -2), np.swapaxes(Gx, -1, -2))  # (F,k,A,q): (Gx M^-1)^T
    pred = np.cumsum(np.swapaxes(Z, -1, -2) * c[:, :, None, :], axis=-1)  # (F, k, q, A)
    resid = (pred + np.swapaxes(y_mean, 1, 2)[..., None] - np.swapaxes(y_test, 1, 2)[..., None]) * np.swapaxes(
        test_mask, 1, 2
    )[..., None]
    return (resid**2).sum(axis=(0, 2)), n


def _choose(press: np.ndarray, n: int) -> int:
    """Haaland-Thomas: the fewest latent variables whose PRESS is not significantly above the minimum."""
    from scipy.special import fdtri  # F quantile; much lighter to import than scipy.stats

    best = int(np.argmin(press))
    threshold = fdtri(n, n, 0.75)
    for a in range(best + 1):
        if press[a] / max(press[best], 1e-300) < threshold:
            return a + 1
    return best + 1


def select_components(
    X: np.ndarray,
    y: np.ndarray,
    max_components: int,
    cv: int = 10,
    random_state: int = 0,
    groups: object = None,
) -> tuple[int, np.ndarray]:
    """Choose the latent-variable count for one property; returns (count, RMSECV per count).

    ``groups`` (one sample id per row) makes the CV hold out whole samples.
    """
    X = np.asarray(X, dtype=float)
    Y = np.asarray(y, dtype=float).reshape(len(y), -1)[:, :1]
    press, n = _cv_press(X, Y, max_components, cv, random_state, groups)
    return _choose(press[0], n_samples(groups, n)), np.sqrt(press[0] / n)


DEFAULT_MAX_COMPONENTS = 30
"""Default largest latent-variable count the CV tries (see PLSCalibration)."""


class PLSCalibration:
    """Multi-property PLS: one PLS1 per property, latent variables chosen by CV on the data given.

    The CV tries 1..A latent variables, A = min(``max_components``, smallest training fold - 1,
    channels), with ``cv`` folds (at most one per sample). ``fit(X, y, groups)``: with
    ``groups`` (one sample id per row; replicate spectra of one physical sample share an id)
    the folds hold out whole samples, and the Haaland-Thomas F-test counts samples, not rows,
    as its degrees of freedom. ``n_components`` fixes the count for every property instead
    (no cross-validation).

    Fitted attributes: ``n_components_`` (count per property), ``coef_`` (p, k),
    ``intercept_`` (k,), ``rmsecv_`` (per property: RMSECV of every count tried, or None),
    ``max_components_tried_`` (A; the fixed count when ``n_components`` is set) and
    ``cap_binds_`` (bool per property: the chosen count is A, i.e. the cap may have cut the
    choice short; always False with a fixed count).
    """

    def __init__(
        self,
        max_components: int = DEFAULT_MAX_COMPONENTS,
        cv: int = 10,
        n_components: int | None = None,
        random_state: int = 0,
    ):
        self.max_components = max_components
        self.cv = cv
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, groups: object = None) -> PLSCalibration:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if y.ndim == 1:
            y = y[:, None]
        if X.shape[0] < 2:
            raise ValueError("PLS needs at least 2 samples")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        codes = None if groups is None else _sample_codes(groups, X.shape[0])
        # Fitting is a pure function of (data, settings): several methods of one sweep that
        # calibrate the same source data share one fit per process (the source model is paid once).
        settings: tuple = (self.max_components, self.cv, self.n_components, self.random_state)
        if codes is not None:  # the canonical codes determine the folds; without groups the key is unchanged
            settings += ("groups", hashlib.sha1(codes.tobytes()).hexdigest())
        key = _fit_key(X, y, *settings)
        hit = _FIT_CACHE.get(key)
        if hit is not None:
            for name, value in hit.items():
                setattr(self, name, copy.deepcopy(value))
            return self
        self._fit(X, y, codes)
        if len(_FIT_CACHE) >= _FIT_CACHE_SIZE:
            _FIT_CACHE.pop(next(iter(_FIT_CACHE)))
        _FIT_CACHE[key] = {k: copy.deepcopy(v) for k, v in vars(self).items() if k.endswith("_")}
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray, codes: np.ndarray | None = None) -> None:
        k = y.shape[1]
        self.n_components_ = np.zeros(k, dtype=int)
        self.rmsecv_: list[np.ndarray | None] = []
        self.coef_ = np.zeros((X.shape[1], k))
        self.intercept_ = np.zeros(k)
        self.cap_binds_ = np.zeros(k, dtype=bool)
        if self.n_components is None:
            n = X.shape[0]
            n_units = n_samples(codes, n)
            folds = _folds_for(n, self.cv, self.random_state, codes)
            A = _cap(self.max_components, folds, n, X.shape[1])
            # all properties at once
            press, n = _cv_press(X, y, self.max_components, self.cv, self.random_state, folds=folds)
            self.max_components_tried_ = int(A)
        else:
            self.max_components_tried_ = max(1, min(int(self.n_components), X.shape[0] - 1, X.shape[1]))
        for j in range(k):
            if self.n_components is not None:
                a = self.max_components_tried_
                self.rmsecv_.append(None)
            else:
                a = _choose(press[j], n_units)
                self.rmsecv_.append(np.sqrt(press[j] / n))
                self.cap_binds_[j] = a >= A
            B, xm, ym = nipals_pls1_path(X, y[:, j], a)
            self.coef_[:, j] = B[:, a - 1]
            self.intercept_[j] = ym - xm @ B[:, a - 1]
            self.n_components_[j] = a

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float) @ self.coef_ + self.intercept_

    def chosen_params(self) -> dict:
        """What the fit chose, as plain JSON: latent variables per property (property order),
        whether the cap bound each choice, and the largest count the CV tried."""
        return {
            "components": [int(a) for a in self.n_components_],
            "cap_binds": [bool(b) for b in self.cap_binds_],
            "max_components_tried": int(self.max_components_tried_),
        }
