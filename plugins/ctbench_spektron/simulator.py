"""Instrument simulator: what a given spectrometer reports for a set of true spectra (SYNTHETIC).

An *instrument* is a dict of physical parameters (``sample_instrument`` draws one); ``observe``
takes true spectra on a fine ascending axis (absorbance on nm for NIR, Raman intensity on
cm-1 Raman shift for Raman) and returns what that instrument reports on its own grid. The
effects, applied in this order:

1. **Line shape** -- extra Gaussian instrument line shape of FWHM ``bandwidth`` (absolute, in
   axis units: nm for NIR, cm-1 for Raman). NIR is broadened in transmittance ``10**-A`` (the
   optics blur light, not absorbance), Raman in intensity.
2. **Stray light** (NIR) -- ``A' = -log10((10**-A + s) / (1 + s))``: caps high absorbances.
3. **Axis calibration** -- the value reported at nominal grid point ``g`` is the true value at
   ``g - d(t)``, ``d(t) = shift + stretch * t + warp * (t**2 - 1/3)`` with ``t`` in [-1, 1]
   across the grid: a positive ``shift`` moves every band up the axis by ``shift``.
4. **Detector nonlinearity** -- ``A' = A - c * A**2`` (NIR, absorbance units); for Raman
   ``I' = I * (1 - c * I / S)`` with ``S`` the spectrum's scale (saturation).
5. **Detector spectral response** -- multiplicative ``exp(response_slope * t + response_curv * (t**2 - 1/3))``
   (about ``1 + response_slope * t + ...`` for small values; always positive).
6. **Scatter** -- per sample ``x * a_i + b_i * (lambda / lambda_mid) ** -scatter_exponent`` with
   ``a_i = (1 + scatter_mult) * exp(N(0, scatter_jitter))`` and ``b_i ~ N(0, scatter_offset_jitter)``
   (NIR, absorbance units; Raman has the multiplicative part only: laser power / focus).
7. **Baseline** -- ``offset + baseline_slope * t + baseline_curv * (t**2 - 1/3)`` (NIR: absorbance
   units; Raman: in units of the batch's spectrum scale ``S``, before the gain).
8. **Fluorescence** (Raman) -- a broad Gaussian background of height ``fluorescence * S`` centred
   at ``fluorescence_centre`` (in spans from the grid start) and ``fluorescence_width`` spans
   wide, with a per-sample log-normal amplitude (sd 0.3).
9. **Gain** -- overall factor ``10 ** gain_log10`` (Raman: lasers, detectors and count units of
   real instruments differ by orders of magnitude; 0 for NIR, whose scale is absorbance).
10. **Noise** -- white, sd ``noise`` times each spectrum's peak-to-peak range.

``S`` (Raman scale) is the peak-to-peak range of the batch's mean true spectrum. Per-sample
randomness (scatter, fluorescence amplitude, noise) comes from the ``rng`` passed to ``observe``;
everything is deterministic given it. numpy only.
"""

from __future__ import annotations

import numpy as np

from .grid import interp_rows

DOMAINS = ("NIR", "Raman")

# Per-domain ranges: parameter -> (low, high). A parameter a domain does not use is absent here
# and drawn as 0 (no effect). ``_LOG`` marks those drawn log-uniformly (when low > 0).
_DOMAIN_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "NIR": {
        "shift": (-3.0, 3.0),                 # wavelength offset of the whole axis, nm
        "stretch": (-3.0, 3.0),               # linear wavelength-scale error: displacement at the grid ends, nm
        "warp": (-2.5, 2.5),                  # quadratic wavelength error: d(t) term warp*(t^2-1/3), nm
        "bandwidth": (0.0, 12.0),             # extra Gaussian instrument line shape FWHM, nm
        "response_slope": (-0.08, 0.08),      # response: log-linear tilt over the grid (absorbance scale vs wavelength), 1
        "response_curv": (-0.05, 0.05),       # response: log-quadratic curvature, 1
        "offset": (-0.3, 0.3),                # additive baseline, absorbance units (AU)
        "baseline_slope": (-0.15, 0.15),      # additive baseline tilt: change across half the grid, AU
        "baseline_curv": (-0.25, 0.25),       # additive baseline curvature, AU
        "scatter_mult": (-0.15, 0.15),        # instrument-level mean multiplicative scatter a-1 (geometry, path), 1
        "scatter_jitter": (0.0, 0.05),        # per-sample sd of log(a) (repacking, presentation), 1
        "scatter_offset_jitter": (0.0, 0.03), # per-sample sd of the additive scatter offset b, AU
        "scatter_exponent": (0.0, 2.0),       # wavelength dependence of b: b*(lambda/lambda_mid)^-k, 1
        "stray_light": (1e-6, 3e-3),          # stray light as a fraction of the reference intensity, 1 (log-uniform)
        "nonlinearity": (0.0, 0.02),          # detector nonlinearity c in A - c*A^2, 1/AU
        "noise": (1e-5, 2e-3),                # white noise sd / spectrum peak-to-peak, 1 (log-uniform)
    },
    "Raman": {
        "shift": (-8.0, 8.0),                 # Raman-shift offset (laser line / calibration), cm-1
        "stretch": (-10.0, 10.0),             # linear axis-scale error (laser line / dispersion): displacement at the grid ends, cm-1
        "warp": (-3.0, 3.0),                  # quadratic axis error (grating dispersion), cm-1
        "bandwidth": (0.0, 15.0),             # extra Gaussian instrument line shape FWHM, cm-1
        "response_slope": (-1.0, 1.0),        # detector quantum-efficiency / filter tilt, log-linear over the grid, 1
        "response_curv": (-0.8, 0.8),         # detector response curvature, log-quadratic, 1
        "offset": (0.0, 1.0),                 # additive baseline (dark level, cuvette/solvent background), units of S
        "baseline_slope": (-0.5, 0.5),        # baseline tilt, units of S
        "baseline_curv": (-0.5, 0.5),         # baseline curvature, units of S
        "scatter_jitter": (0.0, 0.05),        # per-sample sd of log intensity factor (laser power, focus), 1
        "nonlinearity": (0.0, 0.05),          # detector saturation c in I*(1 - c*I/S), 1
        "noise": (3e-4, 3e-2),                # white (shot+read) noise sd / spectrum peak-to-peak, 1 (log-uniform)
        "gain_log10": (-4.5, 4.5),            # overall intensity gain, log10 (counts vs normalised units), 1
        "fluorescence": (0.0, 30.0),          # background (fluorescence, Rayleigh tail) height, units of S
        "fluorescence_centre": (-1.0, 2.0),   # background maximum position, in spans from the grid start
        "fluorescence_width": (0.15, 2.0),    # background Gaussian sd, in spans
    },
}
_LOG = {"stray_light", "noise"}

PARAMETERS: tuple[str, ...] = tuple(dict.fromkeys(k for r in _DOMAIN_RANGES.values() for k in r))
# Union over domains (axis-unit parameters: nm for NIR, cm-1 for Raman; see the per-domain comments above).
RANGES: dict[str, tuple[float, float]] = {
    k: (min(r[k][0] for r in _DOMAIN_RANGES.values() if k in r), max(r[k][1] for r in _DOMAIN_RANGES.values() if k in r))
    for k in PARAMETERS
}
# Parameter whose inter-instrument difference is a signed quadrature difference (see difference_range).
_SIGNED_QUADRATURE = {"bandwidth"}
_BACKGROUND = {"offset", "baseline_slope", "baseline_curv"}


def domain_ranges(domain: str) -> dict[str, tuple[float, float]]:
    """The ranges ``sample_instrument`` draws from for ``domain`` (unused parameters are 0)."""
    if domain not in _DOMAIN_RANGES:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return dict(_DOMAIN_RANGES[domain])


def sample_instrument(rng: np.random.Generator, domain: str) -> dict[str, float]:
    """One instrument: every parameter of ``PARAMETERS``, drawn in the domain's range (0 if unused)."""
    ranges = domain_ranges(domain)
    out: dict[str, float] = {}
    for name in PARAMETERS:  # fixed order: deterministic given rng
        if name not in ranges:
            out[name] = 0.0
            continue
        lo, hi = ranges[name]
        if name in _LOG and lo > 0:
            out[name] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            out[name] = float(rng.uniform(lo, hi))
    return out


def difference_range(name: str, domain: str | None = None) -> tuple[float, float]:
    """Range of the difference of parameter ``name`` between two independently drawn instruments.

    A plain difference (instrument B minus instrument A) for every parameter, except
    ``bandwidth``: the signed quadrature difference ``sign(b_B - b_A) * sqrt(|b_B**2 - b_A**2|)``
    (the extra Gaussian FWHM that turns the sharper instrument into the broader one), and
    ``scatter_mult``: the log10 ratio ``log10((1 + m_B) / (1 + m_A))`` (the NIR overall gain).
    ``gain_log10`` is itself a log, so its difference is the log10 of the gain ratio. For Raman the
    quadratic baseline terms (offset, baseline_slope, baseline_curv) a pair differs by also hold the
    two fluorescence backgrounds, so their range is widened by the largest fluorescence height. With
    ``domain=None`` the union over domains is returned.
    """
    doms = [domain] if domain is not None else list(DOMAINS)
    lo_all, hi_all = np.inf, -np.inf
    for d in doms:
        r = domain_ranges(d)
        lo, hi = r.get(name, (0.0, 0.0))
        if name in _SIGNED_QUADRATURE:
            w = float(np.sqrt(hi**2 - lo**2))
            a, b = -w, w
        elif name == "scatter_mult":
            a, b = float(np.log10((1 + lo) / (1 + hi))), float(np.log10((1 + hi) / (1 + lo)))
        else:
            a, b = lo - hi, hi - lo
        if d == "Raman" and name in _BACKGROUND:  # the fluorescence background adds up to its height
            f = _DOMAIN_RANGES["Raman"]["fluorescence"][1]
            a, b = a - f, b + f
        lo_all, hi_all = min(lo_all, a), max(hi_all, b)
    if name not in PARAMETERS:
        raise KeyError(f"unknown simulator parameter {name!r}; known: {', '.join(PARAMETERS)}")
    return float(lo_all), float(hi_all)


def gaussian_blur(axis: np.ndarray, X: np.ndarray, fwhm: float) -> np.ndarray:
    """Rows of X convolved with a Gaussian of FWHM ``fwhm`` (axis units; axis ~uniform), edges
    extended with the end values (FFT, vectorised over rows)."""
    X = np.asarray(X, dtype=np.float64)
    if fwhm <= 0:
        return X.copy()
    step = float(np.median(np.diff(axis)))
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step  # in samples
    p = X.shape[-1]
    pad = int(min(np.ceil(4 * sigma) + 1, 4 * p))
    Xp = np.concatenate([np.repeat(X[..., :1], pad, -1), X, np.repeat(X[..., -1:], pad, -1)], axis=-1)
    m = Xp.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(m)))
    f = np.fft.rfftfreq(nfft)
    kern = np.exp(-2.0 * (np.pi * f * sigma) ** 2)  # Fourier transform of a unit-area Gaussian
    Y = np.fft.irfft(np.fft.rfft(Xp, nfft, axis=-1) * kern, nfft, axis=-1)[..., :m]
    return Y[..., pad:pad + p]


def observe(axis: np.ndarray, spectra: np.ndarray, instrument: dict[str, float], grid: np.ndarray,
            rng: np.random.Generator, domain: str) -> np.ndarray:
    """What ``instrument`` reports on ``grid`` for true ``spectra`` (n, p) on the fine ``axis``.

    Returns (n, len(grid)) float64. See the module docstring for the effects and their order.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    axis = np.asarray(axis, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    X = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    p_ = {k: float(instrument.get(k, 0.0)) for k in PARAMETERS}
    n = X.shape[0]
    nir = domain == "NIR"
    scale = 1.0
    if not nir:
        mean = X.mean(0)
        scale = float(mean.max() - mean.min()) or 1.0

    # 1-2. line shape (and stray light, NIR) on the fine axis
    if nir:
        T = 10.0 ** (-np.clip(X, -3.0, 12.0))
        T = gaussian_blur(axis, T, p_["bandwidth"])
        s = p_["stray_light"]
        T = (np.clip(T, 1e-15, None) + s) / (1.0 + s)
        X = -np.log10(T)
    else:
        X = gaussian_blur(axis, X, p_["bandwidth"])

    # 3. axis calibration: reported at g is the truth at g - d(t)
    t = 2.0 * (grid - grid[0]) / (grid[-1] - grid[0]) - 1.0 if grid.size > 1 else np.zeros_like(grid)
    q = t**2 - 1.0 / 3.0
    d = p_["shift"] + p_["stretch"] * t + p_["warp"] * q
    Y = interp_rows(axis, X, grid - d)

    # 4. detector nonlinearity
    c = p_["nonlinearity"]
    if c:
        Y = Y - c * Y**2 if nir else Y * (1.0 - c * np.clip(Y / scale, 0.0, None))

    # 5. detector spectral response (log-quadratic: always positive, ratios of two are of the same form)
    Y = Y * np.exp(p_["response_slope"] * t + p_["response_curv"] * q)

    # 6. scatter (per sample)
    a = (1.0 + p_["scatter_mult"]) * np.exp(rng.normal(0.0, 1.0, n) * p_["scatter_jitter"])
    Y = Y * a[:, None]
    if nir:
        b = rng.normal(0.0, 1.0, n) * p_["scatter_offset_jitter"]
        mid = 0.5 * (grid[0] + grid[-1])
        Y = Y + b[:, None] * (np.clip(grid, 1e-9, None) / mid)[None, :] ** (-p_["scatter_exponent"])

    # 7. baseline
    base = p_["offset"] + p_["baseline_slope"] * t + p_["baseline_curv"] * q
    Y = Y + (base if nir else scale * base)[None, :]

    # 8. fluorescence (Raman)
    if not nir and p_["fluorescence"]:
        span = grid[-1] - grid[0]
        centre = grid[0] + p_["fluorescence_centre"] * span
        width = max(p_["fluorescence_width"], 1e-3) * span
        shape = np.exp(-0.5 * ((grid - centre) / width) ** 2)
        amp = p_["fluorescence"] * scale * np.exp(0.3 * rng.normal(0.0, 1.0, n))
        Y = Y + amp[:, None] * shape[None, :]

    # 9. gain
    Y = Y * 10.0 ** p_["gain_log10"]

    # 10. white noise relative to each spectrum's peak-to-peak range
    ptp = Y.max(1) - Y.min(1)
    ptp = np.where(ptp > 0, ptp, 1.0)
    Y = Y + rng.normal(0.0, 1.0, Y.shape) * (p_["noise"] * ptp)[:, None]
    return Y
