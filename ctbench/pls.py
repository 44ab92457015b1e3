"""PLS regression with the number of latent variables chosen by cross-validation.

One PLS1 model per property (NIPALS on mean-centred spectra), each with its own number of
latent variables. A single NIPALS fit to ``max_components`` gives the regression vectors for
every smaller count at once, so cross-validating all counts costs one fit per fold.
The count is chosen with the Haaland-Thomas F-test: the fewest latent variables whose PRESS is
not significantly larger (p > 0.25) than the minimum PRESS.
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


def _cv_folds(n: int, n_folds: int, random_state: int) -> list[np.ndarray]:
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n)
    return [order[i::n_folds] for i in range(n_folds)]


def select_components(
    X: np.ndarray, y: np.ndarray, max_components: int, cv: int = 10, random_state: int = 0
) -> tuple[int, np.ndarray]:
    """Choose the latent-variable count for one property; returns (count, RMSECV per count)."""
    from scipy.special import fdtri  # F quantile; much lighter to import than scipy.stats

    n = X.shape[0]
    n_folds = max(2, min(cv, n))
    folds = _cv_folds(n, n_folds, random_state)
    max_train = n - max(len(f) for f in folds)
    A = max(1, min(max_components, max_train - 1, X.shape[1]))
    press = np.zeros(A)
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        B, xm, ym = nipals_pls1_path(X[train], y[train], A)
        pred = (X[test] - xm) @ B + ym
        press += ((pred - y[test, None]) ** 2).sum(axis=0)
    best = int(np.argmin(press))
    threshold = fdtri(n, n, 0.75)
    chosen = best
    for a in range(best + 1):
        if press[a] / max(press[best], 1e-300) < threshold:
            chosen = a
            break
    return chosen + 1, np.sqrt(press / n)


class PLSCalibration:
    """Multi-property PLS: one PLS1 per property, latent variables chosen by CV on the data given.

    ``n_components`` fixes the count for every property instead (no cross-validation).
    """

    def __init__(self, max_components: int = 15, cv: int = 10, n_components: int | None = None, random_state: int = 0):
        self.max_components = max_components
        self.cv = cv
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> PLSCalibration:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        if y.ndim == 1:
            y = y[:, None]
        if X.shape[0] < 2:
            raise ValueError("PLS needs at least 2 samples")
        # Fitting is a pure function of (data, settings): several methods of one sweep that
        # calibrate the same source data share one fit per process (the source model is paid once).
        key = _fit_key(X, y, self.max_components, self.cv, self.n_components, self.random_state)
        hit = _FIT_CACHE.get(key)
        if hit is not None:
            for name, value in hit.items():
                setattr(self, name, copy.deepcopy(value))
            return self
        self._fit(X, y)
        if len(_FIT_CACHE) >= _FIT_CACHE_SIZE:
            _FIT_CACHE.pop(next(iter(_FIT_CACHE)))
        _FIT_CACHE[key] = {k: copy.deepcopy(v) for k, v in vars(self).items() if k.endswith("_")}
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        k = y.shape[1]
        self.n_components_ = np.zeros(k, dtype=int)
        self.rmsecv_: list[np.ndarray | None] = []
        self.coef_ = np.zeros((X.shape[1], k))
        self.intercept_ = np.zeros(k)
        for j in range(k):
            if self.n_components is not None:
                a = max(1, min(int(self.n_components), X.shape[0] - 1, X.shape[1]))
                self.rmsecv_.append(None)
            else:
                a, rmsecv = select_components(X, y[:, j], self.max_components, self.cv, self.random_state)
                self.rmsecv_.append(rmsecv)
            B, xm, ym = nipals_pls1_path(X, y[:, j], a)
            self.coef_[:, j] = B[:, a - 1]
            self.intercept_[j] = ym - xm @ B[:, a - 1]
            self.n_components_[j] = a

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=float) @ self.coef_ + self.intercept_
