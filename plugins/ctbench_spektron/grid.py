"""The model's fixed grid: each spectrum is resampled to G points over its own native axis range.

The native axis is kept as (lo, hi, unit); tokens get their centre wavenumber in cm-1
(nm are converted with 1e7 / nm) for the positional encoding. Numpy only (no torch).
"""

from __future__ import annotations

import numpy as np

from .config import DOMAINS


def to_wavenumber(axis: np.ndarray, unit: str) -> np.ndarray:
    """Axis values in cm-1 (``unit`` is 'cm-1' or 'nm')."""
    axis = np.asarray(axis, dtype=float)
    if unit == "cm-1":
        return axis
    if unit == "nm":
        return 1e7 / np.clip(axis, 1e-6, None)
    raise ValueError(f"axis unit must be 'nm' or 'cm-1', got {unit!r}")


def resample_to_grid(values: np.ndarray, axis: np.ndarray, n_points: int) -> tuple[np.ndarray, float, float]:
    """Linear interpolation of spectra (n, p) on an increasing axis to ``n_points`` evenly spaced
    points over [axis[0], axis[-1]]. Returns (grid_values float32 (n, n_points), lo, hi)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    axis = np.asarray(axis, dtype=float)
    if axis.ndim != 1 or axis.size != values.shape[1] or axis.size < 2:
        raise ValueError(f"axis of {axis.size} points does not match spectra with {values.shape[1]} channels")
    if not np.all(np.diff(axis) > 0):
        order = np.argsort(axis, kind="stable")
        axis, values = axis[order], values[:, order]
        keep = np.concatenate([[True], np.diff(axis) > 0])
        axis, values = axis[keep], values[:, keep]
    lo, hi = float(axis[0]), float(axis[-1])
    return interp_rows(axis, values, np.linspace(lo, hi, n_points)).astype(np.float32), lo, hi


def interp_rows(axis: np.ndarray, X: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Linear interpolation of every row of X (n, p) on the ascending ``axis`` (p,) at ``points``
    (clamped to the axis range): np.interp row by row, vectorised."""
    pts = np.clip(points, axis[0], axis[-1])
    i = np.clip(np.searchsorted(axis, pts, side="right") - 1, 0, axis.size - 2)
    w = (pts - axis[i]) / (axis[i + 1] - axis[i])
    return X[:, i] * (1.0 - w) + X[:, i + 1] * w


def token_positions(lo: np.ndarray, hi: np.ndarray, unit: np.ndarray | str, n_points: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre wavenumber (cm-1) and width (cm-1) of every token, for spectra with axes [lo, hi].

    lo, hi: (n,); unit: one unit or one per spectrum. Returns two (n, n_points // patch) float32 arrays.
    """
    lo = np.atleast_1d(np.asarray(lo, dtype=float))
    hi = np.atleast_1d(np.asarray(hi, dtype=float))
    units = np.broadcast_to(np.asarray(unit), lo.shape)
    n_tok = n_points // patch
    step = (hi - lo) / (n_points - 1)
    edges = lo[:, None] + step[:, None] * (np.arange(n_tok + 1)[None, :] * patch - 0.5)
    centre_native = 0.5 * (edges[:, :-1] + edges[:, 1:])
    centre = np.empty_like(centre_native)
    width = np.empty_like(centre_native)
    for u in np.unique(units):
        rows = units == u
        k_edges = to_wavenumber(edges[rows], str(u))
        centre[rows] = to_wavenumber(centre_native[rows], str(u))
        width[rows] = np.abs(np.diff(k_edges, axis=1))
    return centre.astype(np.float32), np.maximum(width, 1e-3).astype(np.float32)


def domain_index(domain: str) -> int:
    """Index of a domain name among DOMAINS (case-insensitive; anything else is 'unknown')."""
    lookup = {d.lower(): i for i, d in enumerate(DOMAINS)}
    aliases = {"mir": "ir", "ftir": "ir", "raman": "raman", "nir": "nir"}
    key = aliases.get(domain.lower(), domain.lower())
    return lookup.get(key, DOMAINS.index("unknown"))


def guess_domain(lo: float, hi: float, unit: str) -> str:
    """A best guess of the domain from the axis: nm in 700-2600 -> NIR; cm-1 above 4000 -> NIR."""
    if unit == "nm":
        return "NIR" if hi > 1000 else "unknown"
    if lo >= 3800:
        return "NIR"
    return "unknown"
