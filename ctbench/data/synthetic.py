"""The embedded synthetic two-instrument dataset (deterministic, labelled synthetic).

It needs no files: it is the README's first-run demo and the conformance kit's toy task.
Five pure components (Gaussian bands, two of them overlapping interferents) mix linearly; instrument ``synth_b`` sees the same
samples through a wavelength shift, a band broadening, a gain and a sloped baseline, so a
source calibration applied to it is biased and transfer methods have something to correct.
"""

from __future__ import annotations

import numpy as np

from ctbench.data.registry import Dataset
from ctbench.data.spectra import Spectra

PROPERTIES = ("analyte_a", "analyte_b")


def _bands(axis: np.ndarray, centres: list[float], widths: list[float]) -> np.ndarray:
    return np.stack([np.exp(-0.5 * ((axis - c) / w) ** 2) for c, w in zip(centres, widths)])


def synthetic_dataset(n_samples: int = 120, n_channels: int = 200, seed: int = 0) -> Dataset:
    """Build the synthetic dataset; the same arguments always give the same numbers."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(1000.0, 1398.0, n_channels)
    centres = [1080.0, 1190.0, 1300.0, 1120.0, 1240.0]
    widths = [18.0, 25.0, 30.0, 40.0, 22.0]
    conc = rng.uniform(0.05, 1.0, size=(n_samples, len(centres)))
    pure_a = _bands(axis, centres, widths)
    pure_b = _bands(axis, [c + 4.0 for c in centres], [w * 1.15 for w in widths])
    noise_a = rng.normal(scale=0.01, size=(n_samples, n_channels))
    noise_b = rng.normal(scale=0.015, size=(n_samples, n_channels))
    offsets = rng.normal(scale=0.01, size=(n_samples, 1))
    x = (axis - axis[0]) / (axis[-1] - axis[0])
    src = conc @ pure_a + 0.05 + offsets + noise_a
    tgt = 1.12 * (conc @ pure_b) + 0.09 + 0.06 * x + offsets + noise_b
    y = conc[:, :2] * np.array([10.0, 5.0])
    ids = np.array([f"synth-{i:03d}" for i in range(n_samples)])
    common = dict(axis=axis, axis_unit="nm", sample_ids=ids, y=y, properties=PROPERTIES, synthetic=True)
    return Dataset(
        name="synthetic",
        instruments={
            "synth_a": Spectra(values=src, instrument="synth_a", source=f"synthetic:seed={seed}", **common),
            "synth_b": Spectra(values=tgt, instrument="synth_b", source=f"synthetic:seed={seed}", **common),
        },
        properties=PROPERTIES,
        sha256={},
        synthetic=True,
        description="SYNTHETIC two-instrument demo data (generated, not measured)",
    )
