"""On-line MIR fermentation spectra (chemotools package data): 1629 spectra x 1047 channels.

Only 900-1780 cm-1 is kept: below ~880 cm-1 and at 1794-1796 cm-1 the file holds artefacts (values in
the hundreds / thousands) and the last channels are zeros; rows that are constant or still hold
such values are dropped. No natural pairs (a single instrument).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DOMAINS
from ..grid import resample_to_grid
from .resolve import resolve_file
from .table import SpectralTable

RELPATH = "chemotools/fermentation_spectra.csv"
SHA256 = "31a68d3103f49728098056c4a145f4394a9d03e89df261792e5bdffef8fdb499"
WINDOW = (900.0, 1780.0)
MAX_ABS = 10.0


def load_fermentation(data_dir: str | Path | None = None, grid_points: int = 2048) -> SpectralTable:
    """The fermentation MIR spectra on the grid."""
    import pandas as pd

    path = resolve_file(RELPATH, SHA256, data_dir)
    frame = pd.read_csv(path)
    axis = frame.columns.astype(float).to_numpy()
    X = frame.to_numpy(dtype=float)
    keep_cols = (axis >= WINDOW[0]) & (axis <= WINDOW[1])
    axis, X = axis[keep_cols], X[:, keep_cols]
    good = np.isfinite(X).all(1) & (np.abs(X).max(1) < MAX_ABS) & (X.std(1) > 1e-6)
    X = X[good]
    values, lo, hi = resample_to_grid(X, axis, grid_points)
    n = values.shape[0]
    table = SpectralTable(
        values=values, lo=np.full(n, lo), hi=np.full(n, hi), unit=np.full(n, "cm-1", dtype="U5"),
        domain=np.full(n, DOMAINS.index("IR"), dtype=np.int64),
        instrument=np.zeros(n, dtype=np.int64), instruments=["fermentation_mir"],
        group=np.full(n, -1, dtype=np.int64), nonneg=np.ones(n, dtype=bool),
        source=np.zeros(n, dtype=np.int64), sources=["fermentation"],
    )
    table.manifest = [{
        "name": "fermentation", "file": RELPATH, "sha256": SHA256, "domain": "IR", "n_spectra": n,
        "n_dropped": int((~good).sum()), "window_cm-1": list(WINDOW), "instruments": {"fermentation_mir": n},
        "synthetic": False, "content_sha256": table.content_hash(), "grid_points": grid_points,
    }]
    return table
