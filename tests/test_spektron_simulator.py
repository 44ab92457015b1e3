"""Spektron instrument simulator, SYNTHETIC chemistry generators and the real-shift measurement."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctbench_spektron import simulator as S
from ctbench_spektron.corpus.chemistry import nir_samples, raman_samples
from ctbench_spektron.shifts import covered, measure_pair

MIRROR = Path(os.environ.get("CTBENCH_DATA") or "/work/shared/datasets")
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"dataset mirror {MIRROR} absent")

NIR_AXIS = np.linspace(1000.0, 2500.0, 2048)
NIR_GRID = np.arange(1100.0, 2400.0, 2.0)
RAMAN_AXIS = np.linspace(100.0, 3300.0, 4096)
RAMAN_GRID = np.linspace(200.0, 3200.0, 1000)


def _neutral(**kw) -> dict[str, float]:
    p = dict.fromkeys(S.PARAMETERS, 0.0)
    p.update(kw)
    return p


def _band(axis, centre, fwhm, height=1.0):
    return height * np.exp(-4 * np.log(2) * ((axis - centre) / fwhm) ** 2)[None, :]


def test_sample_instrument_within_ranges_and_deterministic():
    for domain in S.DOMAINS:
        ranges = S.domain_ranges(domain)
        for seed in range(30):
            inst = S.sample_instrument(np.random.default_rng(seed), domain)
            assert set(inst) == set(S.PARAMETERS)
            for k, v in inst.items():
                lo, hi = S.RANGES[k]
                if k in ranges:
                    assert ranges[k][0] <= v <= ranges[k][1] and lo <= v <= hi
                else:
                    assert v == 0.0
        assert S.sample_instrument(np.random.default_rng(1), domain) == S.sample_instrument(np.random.default_rng(1), domain)
    assert S.domain_ranges("NIR").keys() - {"gain_log10", "fluorescence"} == S.domain_ranges("NIR").keys()


def test_observe_shapes_and_determinism():
    A, _, _ = nir_samples(np.random.default_rng(0), 64, NIR_AXIS)
    inst = S.sample_instrument(np.random.default_rng(2), "NIR")
    a = S.observe(NIR_AXIS, A, inst, NIR_GRID, np.random.default_rng(3), "NIR")
    b = S.observe(NIR_AXIS, A, inst, NIR_GRID, np.random.default_rng(3), "NIR")
    assert a.shape == (64, NIR_GRID.size) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    I, _, _ = raman_samples(np.random.default_rng(0), 8, RAMAN_AXIS)
    r = S.observe(RAMAN_AXIS, I, S.sample_instrument(np.random.default_rng(4), "Raman"), RAMAN_GRID,
                  np.random.default_rng(5), "Raman")
    assert r.shape == (8, RAMAN_GRID.size) and np.isfinite(r).all()


def test_shift_moves_the_peak():
    X = _band(NIR_AXIS, 1700.0, 30.0, 0.3)
    grid = np.arange(1500.0, 1900.0, 0.25)
    for shift in (-2.5, 1.5):
        Y = S.observe(NIR_AXIS, X, _neutral(shift=shift), grid, np.random.default_rng(0), "NIR")[0]
        assert abs(grid[np.argmax(Y)] - (1700.0 + shift)) <= 0.3


def test_broadening_lowers_the_peak_and_keeps_the_area():
    X = _band(RAMAN_AXIS, 1000.0, 8.0)
    Y0 = S.observe(RAMAN_AXIS, X, _neutral(), RAMAN_AXIS, np.random.default_rng(0), "Raman")[0]
    Y1 = S.observe(RAMAN_AXIS, X, _neutral(bandwidth=10.0), RAMAN_AXIS, np.random.default_rng(0), "Raman")[0]
    assert Y1.max() < 0.7 * Y0.max()
    assert abs(np.trapezoid(Y1, RAMAN_AXIS) / np.trapezoid(Y0, RAMAN_AXIS) - 1) < 1e-3
    # resulting FWHM is the quadrature sum
    above = RAMAN_AXIS[Y1 >= Y1.max() / 2]
    assert abs((above[-1] - above[0]) - np.hypot(8.0, 10.0)) < 2 * (RAMAN_AXIS[1] - RAMAN_AXIS[0])


def test_stray_light_caps_high_absorbance_and_nonlinearity():
    X = _band(NIR_AXIS, 1700.0, 80.0, 3.0) + 0.1
    Y = S.observe(NIR_AXIS, X, _neutral(stray_light=1e-3), NIR_GRID, np.random.default_rng(0), "NIR")[0]
    Y0 = S.observe(NIR_AXIS, X, _neutral(), NIR_GRID, np.random.default_rng(0), "NIR")[0]
    assert Y.max() < Y0.max() - 0.3 and Y.max() <= 3.0 + 1e-9   # -log10(s/(1+s)) ~ 3
    low = NIR_GRID < 1300
    np.testing.assert_allclose(Y[low], Y0[low], atol=2e-3)       # low absorbance barely affected
    Yn = S.observe(NIR_AXIS, X, _neutral(nonlinearity=0.02), NIR_GRID, np.random.default_rng(0), "NIR")[0]
    np.testing.assert_allclose(Yn, Y0 - 0.02 * Y0**2, rtol=1e-10)


def test_noise_level_and_raman_gain():
    X = _band(RAMAN_AXIS, 1000.0, 10.0)
    rng = np.random.default_rng(0)
    Xn = np.repeat(X, 50, 0)
    clean = S.observe(RAMAN_AXIS, Xn, _neutral(), RAMAN_GRID, rng, "Raman")
    noisy = S.observe(RAMAN_AXIS, Xn, _neutral(noise=0.01), RAMAN_GRID, np.random.default_rng(0), "Raman")
    ptp = np.ptp(clean, 1)
    assert abs(np.std(noisy - clean) / ptp.mean() - 0.01) < 0.001
    big = S.observe(RAMAN_AXIS, X, _neutral(gain_log10=3.0), RAMAN_GRID, np.random.default_rng(0), "Raman")
    np.testing.assert_allclose(big, 1000.0 * clean[:1], rtol=1e-10)
    fl = S.observe(RAMAN_AXIS, X, _neutral(fluorescence=5.0, fluorescence_centre=0.5, fluorescence_width=0.3),
                   RAMAN_GRID, np.random.default_rng(0), "Raman")
    assert fl[0, RAMAN_GRID.size // 2] - clean[0, RAMAN_GRID.size // 2] > 2.0   # broad background added


def test_difference_range():
    lo, hi = S.difference_range("shift", "NIR")
    assert lo == -hi == -(S.domain_ranges("NIR")["shift"][1] - S.domain_ranges("NIR")["shift"][0])
    assert S.difference_range("bandwidth", "Raman") == (-15.0, 15.0)
    assert S.difference_range("gain_log10", "NIR") == (0.0, 0.0)
    lo, hi = S.difference_range("gain_log10")
    assert lo < -6 and hi > 6
    with pytest.raises(KeyError):
        S.difference_range("nope")


def test_nir_samples_bands():
    rng = np.random.default_rng(0)
    A, y, names = nir_samples(rng, 200, NIR_AXIS)
    assert A.shape == (200, NIR_AXIS.size) and y.shape == (200, len(names)) and np.isfinite(A).all()
    np.testing.assert_allclose(y[:, :-1].sum(1), 1.0)
    w = names.index("water")
    at = lambda nm: A[:, np.argmin(abs(NIR_AXIS - nm))]  # noqa: E731
    # the 1940 nm O-H combination band grows with water (relative to a band-free point)
    assert np.corrcoef(y[:, w], at(1940) - at(1850))[0, 1] > 0.6
    lip = names.index("lipid")
    assert np.corrcoef(y[:, lip], at(2310) - at(2230))[0, 1] > 0.5
    # a pure-water family peaks near 1940 nm (a local maximum within 1850-2050)
    A2, y2, _ = nir_samples(np.random.default_rng(1), 300, NIR_AXIS)
    i = int(np.argmax(y2[:, w]))
    sel = (NIR_AXIS > 1850) & (NIR_AXIS < 2050)
    assert abs(NIR_AXIS[sel][np.argmax(A2[i, sel])] - 1940) < 30
    again, _, _ = nir_samples(np.random.default_rng(0), 200, NIR_AXIS)
    np.testing.assert_array_equal(A, again)


def test_raman_samples_linear_in_concentration():
    I, c, names = raman_samples(np.random.default_rng(3), 40, RAMAN_AXIS)
    assert I.shape == (40, RAMAN_AXIS.size) and c.shape == (40, len(names)) and (I >= 0).all()
    Z = np.column_stack([c, np.ones(len(c))])
    coef, *_ = np.linalg.lstsq(Z, I, rcond=None)
    np.testing.assert_allclose(Z @ coef, I, atol=1e-8 * I.max())


def test_measure_pair_recovers_simulated_shift_gain_broadening():
    rng = np.random.default_rng(0)
    axis = np.linspace(1000.0, 2500.0, 3000)
    grid = np.arange(1100.0, 2400.0, 2.0)
    A, _, _ = nir_samples(rng, 40, axis)
    src = S.observe(axis, A, _neutral(noise=1e-4), grid, np.random.default_rng(1), "NIR")
    tgt_inst = _neutral(shift=1.6, bandwidth=8.0, scatter_mult=0.1, offset=0.05, noise=3e-4)
    tgt = S.observe(axis, A, tgt_inst, grid, np.random.default_rng(2), "NIR")
    m = measure_pair(grid, src, tgt, "NIR")
    assert abs(m["shift"] - 1.6) < 0.2
    assert abs(m["bandwidth"] - 8.0) < 2.5  # NIR bands are broad and blurred in transmittance: ~25% low
    assert abs(m["gain_log10"] - np.log10(1.1)) < 0.02
    assert abs(m["offset"] - 0.05) < 0.03
    assert m["noise_target"] > m["noise_source"]
    m2 = measure_pair(grid, tgt, src, "NIR")   # the reverse pair: opposite signs
    assert abs(m2["shift"] + 1.6) < 0.2 and abs(m2["bandwidth"] + 8.0) < 2.5
    # Raman: a large gain ratio
    I, _, _ = raman_samples(np.random.default_rng(4), 30, RAMAN_AXIS)
    a = S.observe(RAMAN_AXIS, I, _neutral(noise=1e-3), RAMAN_GRID, np.random.default_rng(5), "Raman")
    b = S.observe(RAMAN_AXIS, I, _neutral(shift=-4.0, gain_log10=-3.0, noise=1e-3), RAMAN_GRID,
                  np.random.default_rng(6), "Raman")
    mr = measure_pair(RAMAN_GRID, a, b, "Raman")
    assert abs(mr["shift"] + 4.0) < 0.6 and abs(mr["gain_log10"] + 3.0) < 0.05


@needs_mirror
def test_real_instrument_differences_are_covered(monkeypatch):
    monkeypatch.setenv("CTBENCH_DATA", str(MIRROR))
    monkeypatch.setenv("CTBENCH_OFFLINE", "1")
    from ctbench_spektron.shifts import MEASURED, measure_tasks

    rows = measure_tasks()
    assert {r["domain"] for r in rows} == {"NIR", "Raman"} and len(rows) >= 10
    checked = 0
    for r in rows:
        for k in MEASURED:
            c = covered(k, r[k], r["domain"], r["fit_rss"])
            assert c is not False, f"{r['task']}: {k} = {r[k]:.4g} outside {S.difference_range(k, r['domain'])}"
            checked += c is True
    assert checked >= 80
