"""Physics-based synthetic spectra (SYNTHETIC: generated, never measured), unlimited.

A *sample* is a set of bands (pseudo-Voigt lines: Lorentzian-Gaussian mixtures) typical of its
domain: narrow Raman lines on a fluorescence background, mid-IR absorption bands, broad NIR
overtone/combination bands with scatter offsets. Each sample is "measured" on two simulated
instruments that differ in wavelength calibration (shift), resolution (extra Gaussian
broadening, added in quadrature to the line widths), spectral response (smooth gain curve),
baseline and detector noise, so every draw is a natural cross-instrument pair on one axis.
Draws are deterministic in the numpy Generator given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DOMAINS

GENERATOR_VERSION = 1

# domain: (unit, axis low range, axis high range, bands (min, max), width range, fraction Lorentzian)
_DOMAINS: dict[str, dict[str, Any]] = {
    "Raman": dict(unit="cm-1", lo=(80.0, 400.0), hi=(1200.0, 3400.0), bands=(4, 30), width=(2.0, 15.0), eta=(0.5, 1.0)),
    "IR": dict(unit="cm-1", lo=(400.0, 1000.0), hi=(1800.0, 4000.0), bands=(6, 35), width=(4.0, 40.0), eta=(0.2, 0.8)),
    "NIR": dict(unit="nm", lo=(850.0, 1150.0), hi=(1700.0, 2500.0), bands=(3, 12), width=(15.0, 90.0), eta=(0.0, 0.4)),
}


@dataclass(frozen=True)
class SyntheticSpectra:
    """Generator of paired synthetic spectra on a grid of ``grid_points``."""

    grid_points: int = 2048
    domains: tuple[str, ...] = ("Raman", "IR", "NIR")

    @property
    def instruments(self) -> list[str]:
        return [f"synthetic_{d.lower()}_{v}" for d in self.domains for v in ("a", "b")]

    def manifest(self) -> dict[str, Any]:
        return {"name": "synthetic", "synthetic": True, "generator_version": GENERATOR_VERSION,
                "domains": list(self.domains), "n_spectra": "unlimited (drawn per step from the run seed)",
                "description": "SYNTHETIC pseudo-Voigt band spectra seen through two simulated instruments"}

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """n samples, each on two instruments: values_a/values_b (n, G), lo, hi, unit, domain,
        instrument_a/instrument_b (indices into ``instruments``), nonneg."""
        dom_idx = rng.integers(0, len(self.domains), size=n)
        G = self.grid_points
        out = {k: [] for k in ("values_a", "values_b", "lo", "hi", "unit", "domain", "instrument_a", "instrument_b", "nonneg")}
        for i in range(n):
            name = self.domains[int(dom_idx[i])]
            spec = _DOMAINS[name]
            lo = rng.uniform(*spec["lo"])
            hi = rng.uniform(*spec["hi"])
            axis = np.linspace(lo, hi, G)
            n_bands = int(rng.integers(spec["bands"][0], spec["bands"][1] + 1))
            centres = rng.uniform(lo, hi, n_bands)
            widths = np.exp(rng.uniform(np.log(spec["width"][0]), np.log(spec["width"][1]), n_bands))
            heights = rng.lognormal(0.0, 0.8, n_bands)
            eta = rng.uniform(*spec["eta"], n_bands)
            views = []
            for _ in range(2):
                inst = _instrument(rng, name, lo, hi)
                views.append(_measure(axis, centres, widths, heights, eta, inst, rng, name))
            base = 2 * int(dom_idx[i])
            out["values_a"].append(views[0])
            out["values_b"].append(views[1])
            out["lo"].append(lo)
            out["hi"].append(hi)
            out["unit"].append(spec["unit"])
            out["domain"].append(DOMAINS.index(name))
            out["instrument_a"].append(base)
            out["instrument_b"].append(base + 1)
            out["nonneg"].append(True)
        return {
            "values_a": np.asarray(out["values_a"], dtype=np.float32),
            "values_b": np.asarray(out["values_b"], dtype=np.float32),
            "lo": np.asarray(out["lo"]), "hi": np.asarray(out["hi"]),
            "unit": np.asarray(out["unit"], dtype="U5"), "domain": np.asarray(out["domain"], dtype=np.int64),
            "instrument_a": np.asarray(out["instrument_a"], dtype=np.int64),
            "instrument_b": np.asarray(out["instrument_b"], dtype=np.int64),
            "nonneg": np.asarray(out["nonneg"], dtype=bool),
        }


def _instrument(rng: np.random.Generator, domain: str, lo: float, hi: float) -> dict[str, float]:
    span = hi - lo
    return {
        "shift": rng.normal(0.0, 0.002 * span),
        "resolution": rng.uniform(0.0, 0.004 * span),
        "gain_slope": rng.uniform(-0.3, 0.3),
        "gain_curve": rng.uniform(-0.2, 0.2),
        "offset": rng.uniform(0.0, 0.3),
        "slope": rng.uniform(-0.2, 0.2),
        "fluorescence": rng.uniform(0.0, 2.0) if domain == "Raman" else 0.0,
        "noise": rng.uniform(0.002, 0.02),
    }


def _measure(axis: np.ndarray, centres: np.ndarray, widths: np.ndarray, heights: np.ndarray, eta: np.ndarray,
             inst: dict[str, float], rng: np.random.Generator, domain: str) -> np.ndarray:
    """One instrument's view: pseudo-Voigt bands broadened and shifted, gain, baseline, noise."""
    w = np.sqrt(widths**2 + inst["resolution"] ** 2)[:, None]
    d = (axis[None, :] - (centres[:, None] + inst["shift"])) / w
    lorentz = 1.0 / (1.0 + d**2)
    gauss = np.exp(-np.log(2.0) * d**2)  # same half width at half maximum as the Lorentzian
    bands = (heights[:, None] * (eta[:, None] * lorentz + (1 - eta[:, None]) * gauss)).sum(0)
    t = np.linspace(-1.0, 1.0, axis.size)
    gain = 1.0 + inst["gain_slope"] * t + inst["gain_curve"] * (t**2 - 1 / 3)
    scale = bands.max() if bands.max() > 0 else 1.0
    baseline = scale * (inst["offset"] + inst["slope"] * (t + 1))
    if domain == "Raman":  # broad fluorescence background, rising towards low shifts
        baseline = baseline + scale * inst["fluorescence"] * np.exp(-(t + 1) * rng.uniform(0.5, 2.0))
    noise = rng.normal(0.0, inst["noise"] * scale, axis.size)
    return np.clip(bands * gain, 0.0, None) + baseline + noise
