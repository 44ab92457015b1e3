"""Uncertainty: MC-dropout spread of the head, and split-conformal intervals.

MC dropout: the readout features go through ``n`` dropout masks (rate p, inverted scaling) into
the linear head; the spread (standard deviation over masks) of each prediction is its
uncertainty. Conformal: with calibration residuals r_i and spreads sd_i of held-out samples, the
normalized scores r_i / sd_i give the quantile q = the ceil((n + 1)(1 - alpha))-th smallest
score, and the interval of a new prediction m with spread sd is m +- q sd. Coverage 1 - alpha is
guaranteed when calibration and test samples are exchangeable (see docs/spektron.md for what the
calibration samples are and why exchangeability only holds approximately here).
"""

from __future__ import annotations

import math

import numpy as np


def mc_dropout_spread(F: np.ndarray, W: np.ndarray, rate: float, n_samples: int, seed: int) -> np.ndarray:
    """Standard deviation (n, k) of the linear head F @ W over ``n_samples`` dropout masks on F."""
    if rate <= 0 or n_samples < 2:
        return np.zeros((F.shape[0], W.shape[1]))
    rng = np.random.default_rng(seed)
    keep = 1.0 - rate
    preds = np.empty((n_samples, F.shape[0], W.shape[1]))
    for t in range(n_samples):
        mask = rng.random(F.shape, dtype=np.float32) < keep
        preds[t] = (F * mask) @ W / keep
    return preds.std(0, ddof=1)


def floor_spread(sd: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Spreads floored at 5 % of the reference median per property (no zero-width intervals)."""
    floor = 0.05 * np.maximum(np.median(reference, axis=0), 1e-12)
    return np.maximum(sd, floor)


def conformal_quantile(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Per-property split-conformal quantile of (n, k) scores at level 1 - alpha.

    With fewer than ceil(1 / alpha) - 1 scores the finite-sample quantile is infinite; the
    largest score is returned instead (and ``conformal_valid`` says so)."""
    scores = np.asarray(scores, dtype=float)
    n = scores.shape[0]
    if n == 0:
        return np.full(scores.shape[1], np.inf)
    rank = min(math.ceil((n + 1) * (1 - alpha)), n)
    return np.sort(scores, axis=0)[rank - 1]


def conformal_valid(n: int, alpha: float) -> bool:
    """True when n calibration scores give a finite (1 - alpha) conformal quantile."""
    return math.ceil((n + 1) * (1 - alpha)) <= n
