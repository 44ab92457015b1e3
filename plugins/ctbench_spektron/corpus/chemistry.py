"""Physically grounded SYNTHETIC sample spectra (generated, never measured): NIR and Raman.

NIR (``nir_samples``): absorbance of mixtures by Beer-Lambert, ``A = L * sum_c x_c * eps_c(lambda)
+ scatter``. Each constituent's absorptivity ``eps_c`` is a sum of Gaussian-Lorentzian bands at
literature overtone / combination positions (third overtones 900-1000 nm, C-H 2nd overtone ~1200,
C-H combinations ~1390/1410, O-H 1st overtone ~1450, N-H 1st overtone ~1510, C-H 1st overtone
1700-1770, O-H combination ~1940, N-H combinations ~2050/2180, C-H combinations 2300-2350).
Every call draws a *material family*: band positions (+-6 nm), widths (x0.8-1.25) and relative
intensities (log-normal, sd 0.2) jittered, and Dirichlet concentration weights. Per sample:
concentrations (fractions, summing to 1), path length ``L`` (log-normal), particle size giving a
multiplicative scatter factor and an additive ``b * (lambda / 1000 nm) ** -k`` scatter baseline,
and temperature shifting the water bands (-0.4 nm/K around 25 C, hydrogen bonding weakens).
Properties: the constituent fractions and the derived energy density (kJ/g, 17 protein + 17
carbohydrate + 37 lipid).

Raman (``raman_samples``): a family of 2-6 constituents, each with 3-12 narrow pseudo-Voigt lines
(FWHM 5-20 cm-1) at typical group frequencies (ring breathing ~1000, sulfate ~981, C-O ~1100,
CH2 ~1450, C=C ~1600, C=O ~1650-1750, C-H ~2900, ...) or random positions, intensities linear in
concentration, in a water solvent (broad bending band ~1640, stretch ~3200-3400). Properties:
the solute concentrations. Deterministic given the numpy Generator; numpy only.
"""

from __future__ import annotations

import numpy as np

# constituent -> [(centre nm, FWHM nm, relative absorptivity)]; approximate literature positions
NIR_BANDS: dict[str, list[tuple[float, float, float]]] = {
    "water": [(760, 40, 0.01), (970, 60, 0.05), (1190, 70, 0.07), (1450, 90, 0.55), (1940, 110, 1.0)],
    "protein": [(910, 40, 0.015), (1020, 50, 0.04), (1200, 50, 0.06), (1510, 60, 0.3), (1730, 50, 0.2),
                (1980, 60, 0.3), (2050, 60, 0.5), (2180, 50, 0.55), (2300, 45, 0.35)],
    "lipid": [(930, 35, 0.04), (1040, 35, 0.02), (1210, 35, 0.15), (1390, 35, 0.12), (1410, 35, 0.1),
              (1725, 35, 0.6), (1760, 35, 0.5), (2140, 35, 0.2), (2310, 40, 1.0), (2345, 40, 0.8)],
    "starch": [(980, 50, 0.05), (1200, 60, 0.08), (1450, 80, 0.4), (1580, 70, 0.25), (1930, 80, 0.5),
               (2100, 70, 0.8), (2280, 50, 0.4), (2320, 50, 0.4), (2480, 60, 0.5)],
    "cellulose": [(1200, 60, 0.07), (1490, 70, 0.35), (1780, 50, 0.2), (1930, 80, 0.45), (2090, 70, 0.7),
                  (2270, 45, 0.4), (2340, 45, 0.45)],
    "sugar": [(1440, 70, 0.4), (1690, 50, 0.15), (1960, 80, 0.4), (2080, 60, 0.75), (2270, 50, 0.4)],
}
_ENERGY = {"protein": 17.0, "lipid": 37.0, "starch": 17.0, "cellulose": 0.0, "sugar": 17.0, "water": 0.0}
_WATER_TEMP_NM_PER_K = -0.4

# group frequencies (cm-1) Raman lines are drawn near
_RAMAN_GROUPS = np.array([450, 520, 620, 780, 850, 981, 1000, 1030, 1050, 1100, 1130, 1250, 1300, 1340, 1380,
                          1450, 1580, 1600, 1650, 1720, 2250, 2850, 2900, 2940, 3060])


def _pv(axis: np.ndarray, centre: np.ndarray, fwhm: np.ndarray, eta: float | np.ndarray) -> np.ndarray:
    """Unit-height pseudo-Voigt lines: rows of ``centre``/``fwhm`` (n, 1) on ``axis`` -> (n, p)."""
    d = (axis[None, :] - centre) / (0.5 * fwhm)
    return eta / (1.0 + d**2) + (1.0 - eta) * np.exp(-np.log(2.0) * d**2)


def nir_samples(rng: np.random.Generator, n: int, axis_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, p) SYNTHETIC absorbance on ``axis_nm``, (n, c) properties, property names (see module doc)."""
    axis = np.asarray(axis_nm, dtype=np.float64)
    names = list(NIR_BANDS)
    k = len(names)
    # material family (per call): which constituents matter, band jitter
    alpha = np.exp(rng.uniform(np.log(0.3), np.log(4.0), k))
    x = rng.dirichlet(alpha, n)                       # (n, k) fractions
    temp = rng.uniform(15.0, 40.0, n)                 # sample temperature, C
    path = np.exp(rng.normal(0.0, 0.15, n)) * rng.uniform(0.6, 1.4)   # effective path length (family level x sample)
    particle = np.exp(rng.normal(0.0, 0.3, n))        # relative particle size
    A = np.zeros((n, axis.size))
    for j, name in enumerate(names):
        eps = np.zeros((n, axis.size))
        for centre, fwhm, rel in NIR_BANDS[name]:
            c = centre + rng.uniform(-6.0, 6.0) + rng.normal(0.0, 0.8, n)
            if name == "water":
                c = c + _WATER_TEMP_NM_PER_K * (temp - 25.0)
            w = fwhm * rng.uniform(0.8, 1.25)
            h = rel * np.exp(rng.normal(0.0, 0.2))
            eps += h * _pv(axis, c[:, None], np.full((n, 1), w), rng.uniform(0.0, 0.3))
        A += x[:, j:j + 1] * eps
    A *= 1.2 * path[:, None]
    # scatter: larger particles -> longer effective path (multiplicative) and more additive offset,
    # with a wavelength dependence lambda^-k (k smaller for large particles)
    expo = np.clip(2.0 - particle, 0.0, 2.0)
    b = 0.15 * particle * np.exp(rng.normal(0.0, 0.3, n))
    A = A * (particle ** 0.3)[:, None] + b[:, None] * (np.clip(axis, 1.0, None)[None, :] / 1000.0) ** -expo[:, None]
    energy = x @ np.array([_ENERGY[nm] for nm in names])
    y = np.column_stack([x, energy])
    return A, y, names + ["energy_kJ_per_g"]


def raman_samples(rng: np.random.Generator, n: int, axis_cm1: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, p) SYNTHETIC Raman intensities on ``axis_cm1``, (n, c) solute concentrations, names."""
    axis = np.asarray(axis_cm1, dtype=np.float64)
    k = int(rng.integers(2, 7))
    conc = rng.uniform(0.0, 1.0, (n, k)) * np.exp(rng.uniform(-1.0, 1.0, k))[None, :]
    I = np.zeros((n, axis.size))
    for j in range(k):
        m = int(rng.integers(3, 13))
        typical = rng.random(m) < 0.6
        pos = np.where(typical, rng.choice(_RAMAN_GROUPS, m) + rng.normal(0.0, 8.0, m), rng.uniform(200.0, 3200.0, m))
        fwhm = rng.uniform(5.0, 20.0, m)
        h = rng.lognormal(0.0, 0.8, m)
        eta = rng.uniform(0.5, 1.0, m)
        spec = (h[:, None] * _pv(axis, pos[:, None], fwhm[:, None], eta[:, None])).sum(0)
        I += conc[:, j:j + 1] * spec[None, :]
    water = rng.uniform(0.2, 1.0) * (0.3 * _pv(axis, np.array([[1640.0]]), np.array([[60.0]]), 0.3)
                                     + _pv(axis, np.array([[3250.0]]), np.array([[300.0]]), 0.3)
                                     + 0.6 * _pv(axis, np.array([[3420.0]]), np.array([[200.0]]), 0.3))
    I += water
    return I, conc, [f"solute_{j}" for j in range(k)]
