"""How real instruments differ, measured in the instrument simulator's parameter terms.

``measure_pair(axis, X_source, X_target, domain)`` fits, from spectra of the same samples on two
instruments (rows paired), the transformation that turns the source instrument's mean spectrum
into the target's::

    target(g) ~ r(t) * B(source)(g - d(t)) + baseline(t)

with ``d(t) = shift + stretch * t + warp * (t**2 - 1/3)`` (axis units; a positive shift means the
target's bands sit higher on the axis), ``B`` a signed extra Gaussian broadening (positive: the
target is broader; the sharper of the two is blurred), ``r(t) = gain * (1 + response_slope * t +
response_curv * (t**2 - 1/3))`` (reported in the simulator's log-quadratic form
``exp(...)``) and a quadratic additive baseline, ``t`` in [-1, 1] over the axis.
For Raman, shift, broadening and the multiplicative curve are fitted on
high-passed means (a 60 cm-1 FWHM Gaussian smooth removed: fluorescence), the baseline on the raw
means; baselines are then relative to the target's line scale. Shift and broadening come from
least squares over a grid (refined by a parabola), the gain and
baseline terms from the linear fit at the optimum, ``stretch``/``warp`` from shifts fitted in five
windows. Noise is each instrument's white-noise sd relative to each spectrum's peak-to-peak range
(MAD of second differences of what the mean spectrum does not explain). Comparable with
``simulator.difference_range``.

``python -m ctbench_spektron.shifts [--out results/spektron/instrument_shifts.md]`` measures every
unique instrument pair of the benchmark's real tasks and prints a Markdown table with the
simulator's difference range and whether it covers the measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .grid import interp_rows
from .simulator import difference_range, gaussian_blur

_MAD = 1.4826
UNRELIABLE = 0.5
"""fit_rss above which a pair's line-based terms (shift, stretch, warp, bandwidth, response) are
not reported as covered or not: the two instruments' mean spectra share too little structure."""
_LINE_TERMS = {"shift", "stretch", "warp", "bandwidth", "response_slope", "response_curv"}


def _uniform(axis: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axis = np.asarray(axis, dtype=np.float64)
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    d = np.diff(axis)
    if np.allclose(d, d.mean(), rtol=1e-3, atol=0):
        return axis, X
    u = np.linspace(axis[0], axis[-1], axis.size)
    return u, interp_rows(axis, X, u)


def _design(src: np.ndarray, t: np.ndarray, quad: bool = True) -> np.ndarray:
    q = t**2 - 1.0 / 3.0
    cols = [src, src * t, src * q, np.ones_like(t), t, q] if quad else [src, src * t, np.ones_like(t), t]
    return np.stack(cols, axis=1)


def _transform(u, Xs, Xt, shift, bw):
    """(source rows broadened if bw > 0 and shifted, target rows broadened if bw < 0)."""
    src = gaussian_blur(u, Xs, bw) if bw > 0 else Xs
    tgt = gaussian_blur(u, Xt, -bw) if bw < 0 else Xt
    return interp_rows(u, src, u - shift), tgt


def _fit(u, ms, mt, t, sel, shift, bw, quad=True):
    """(normalised residual sum of squares, coefficients) of the model at (shift, signed bw)."""
    src, tgt = _transform(u, ms[None], mt[None], shift, bw)
    src, tgt = src[0], tgt[0]
    A = _design(src[sel], t[sel], quad)
    y = tgt[sel]
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ coef
    return float(r @ r / max(((y - y.mean()) ** 2).sum(), 1e-300)), coef


def _search(f, grid: np.ndarray) -> float:
    """Argmin of f over grid, refined by a parabola through the best point and its neighbours."""
    vals = np.array([f(x) for x in grid])
    k = int(np.argmin(vals))
    if 0 < k < grid.size - 1:
        y0, y1, y2 = vals[k - 1], vals[k], vals[k + 1]
        den = y0 - 2 * y1 + y2
        if den > 0:
            return float(grid[k] + 0.5 * (y0 - y2) / den * (grid[1] - grid[0]))
    return float(grid[k])


def _noise(X: np.ndarray, mean: np.ndarray) -> float:
    """Median over rows of the white-noise sd relative to the row's peak-to-peak range."""
    A = np.stack([np.ones_like(mean), mean], 1)
    coef, *_ = np.linalg.lstsq(A, X.T, rcond=None)
    R = X - (A @ coef).T
    d2 = R[:, 2:] - 2 * R[:, 1:-1] + R[:, :-2]
    sd = _MAD * np.median(np.abs(d2 - np.median(d2, 1, keepdims=True)), 1) / np.sqrt(6.0)
    ptp = np.ptp(X, 1)
    return float(np.median(sd / np.where(ptp > 0, ptp, 1.0)))


def measure_pair(axis: np.ndarray, X_source: np.ndarray, X_target: np.ndarray, domain: str,
                 max_shift: float | None = None, max_bandwidth: float | None = None) -> dict[str, float]:
    """Fit how the target instrument differs from the source (see the module docstring).

    Returns shift, stretch, warp, bandwidth (signed quadrature FWHM, axis units), gain_log10,
    response_slope, response_curv, offset, baseline_slope, baseline_curv (NIR: target units;
    Raman: relative to the target's line scale), noise_source, noise_target, noise (target - source),
    residual (median relative RMS of each target row minus the transformed source row) and fit_rss
    (1 - R^2 of the mean-spectrum fit; above ``UNRELIABLE`` the band-alignment terms are not trusted; warp is NaN (not measurable) when fewer
    than four of the five windows have bands, stretch too when fewer than three)."""
    u, Xs = _uniform(axis, X_source)
    _, Xt = _uniform(axis, X_target)
    step = float(u[1] - u[0])
    span = float(u[-1] - u[0])
    raman = domain == "Raman"
    smax = max_shift if max_shift is not None else (25.0 if raman else 12.0)
    bmax = max_bandwidth if max_bandwidth is not None else (30.0 if raman else 30.0)
    ms, mt = Xs.mean(0), Xt.mean(0)
    if raman:  # fit the lines only: remove broad backgrounds (fluorescence) with a 60 cm-1 high-pass
        fs, ft = ms - gaussian_blur(u, ms[None], 60.0)[0], mt - gaussian_blur(u, mt[None], 60.0)[0]
    else:
        fs, ft = ms, mt
    # a common light blur (3 steps FWHM) against noise; Gaussian widths add in quadrature, so the
    # relative broadening between the two is unchanged
    fs, ft = gaussian_blur(u, fs[None], 3 * step)[0], gaussian_blur(u, ft[None], 3 * step)[0]
    t = 2.0 * (u - u[0]) / span - 1.0
    edge = int(np.ceil((smax + bmax) / step)) + 2
    edge = min(edge, u.size // 6)
    sel = np.zeros(u.size, bool)
    sel[edge:u.size - edge] = True

    sstep = min(step / 4.0, smax / 40.0)
    bstep = max(step / 2.0, bmax / 60.0)
    shift, bw = 0.0, 0.0
    for it in range(2):
        lo = -smax if it == 0 else shift - 4 * step
        hi = smax if it == 0 else shift + 4 * step
        shift = _search(lambda s: _fit(u, fs, ft, t, sel, s, bw)[0], np.arange(lo, hi + 1e-9, sstep))
        bw = _search(lambda b: _fit(u, fs, ft, t, sel, shift, b)[0], np.arange(-bmax, bmax + 1e-9, bstep))
    rss, coef = _fit(u, fs, ft, t, sel, shift, bw)
    c0, c1, c2 = (float(c) for c in coef[:3])
    q = t**2 - 1.0 / 3.0
    r = c0 + c1 * t + c2 * q  # multiplicative curve; its log-quadratic form is the simulator's response
    src_m, tgt_m = _transform(u, ms[None], mt[None], shift, bw)
    if raman:  # baseline from the raw means, with the multiplicative curve fixed
        B = np.stack([np.ones_like(t), t, q], 1)
        d0, d1, d2 = (float(c) for c in np.linalg.lstsq(B[sel], (tgt_m[0] - r * src_m[0])[sel], rcond=None)[0])
    else:
        d0, d1, d2 = (float(c) for c in coef[3:])
    rpos = np.abs(r[sel]) + 1e-300
    lg = np.linalg.lstsq(np.stack([np.ones(sel.sum()), t[sel], q[sel]], 1), np.log(rpos), rcond=None)[0]

    # stretch and warp: shifts fitted in five windows, then d(t) = a + b t + c (t^2 - 1/3)
    idx = np.flatnonzero(sel)
    centres, local, weight = [], [], []
    for w in np.array_split(idx, 5):
        wsel = np.zeros(u.size, bool)
        wsel[w] = True
        grid = np.arange(shift - smax / 2, shift + smax / 2 + 1e-9, sstep)
        local.append(_search(lambda s: _fit(u, fs, ft, t, wsel, s, bw, quad=False)[0], grid))
        centres.append(float(t[w].mean()))
        dd = np.diff(fs[w])  # how much structure (bands) the window has to align on
        weight.append(float(np.sqrt(dd @ dd)))
    tc, loc, wt = np.asarray(centres), np.asarray(local), np.asarray(weight)
    keep = wt >= 0.2 * wt.max()  # windows without bands cannot be aligned
    basis = np.stack([np.ones_like(tc), tc, tc**2 - 1.0 / 3.0], 1)[keep]
    if keep.sum() >= 4:  # a quadratic needs more windows than parameters to be trusted
        coef_d = np.linalg.lstsq(basis * wt[keep, None], loc[keep] * wt[keep], rcond=None)[0]
    elif keep.sum() == 3:
        coef_d = np.r_[np.linalg.lstsq(basis[:, :2] * wt[keep, None], loc[keep] * wt[keep], rcond=None)[0], np.nan]
    else:
        coef_d = np.array([np.nan, np.nan, np.nan])

    # per-row residual of the fitted transformation
    src, tgt = _transform(u, Xs, Xt, shift, bw)
    pred = src * r + (d0 + d1 * t + d2 * q)
    scale_t = float(np.ptp(ft[sel])) or 1.0
    resid = np.sqrt(np.mean((pred - tgt)[:, sel] ** 2, 1)) / scale_t

    base_scale = 1.0 if not raman else scale_t
    ns, nt = _noise(Xs, ms), _noise(Xt, mt)
    return {
        "shift": shift,
        "stretch": float(coef_d[1]),
        "warp": float(coef_d[2]),
        "bandwidth": bw,
        "gain_log10": float(lg[0] / np.log(10.0)),
        "response_slope": float(lg[1]),
        "response_curv": float(lg[2]),
        "offset": d0 / base_scale,
        "baseline_slope": d1 / base_scale,
        "baseline_curv": d2 / base_scale,
        "noise_source": ns,
        "noise_target": nt,
        "noise": nt - ns,
        "residual": float(np.median(resid)),
        "fit_rss": rss,
    }


# measured key -> simulator parameter whose difference_range it is compared with, per domain
MEASURED = ("shift", "stretch", "warp", "bandwidth", "gain_log10", "response_slope", "response_curv",
            "offset", "baseline_slope", "baseline_curv", "noise", "residual")


def simulator_parameter(key: str, domain: str) -> str | None:
    """The simulator parameter a measured quantity is compared with (None: a diagnostic only)."""
    if key == "residual":
        return None
    if key == "gain_log10" and domain == "NIR":
        return "scatter_mult"  # the NIR instrument-level multiplicative factor (log10 ratio)
    return key


def real_pairs() -> list[tuple[str, str]]:
    """(task name, domain) of one task per unique unordered instrument pair of the real tasks."""
    from ctbench.cards import SuiteCard, TaskCard, all_card_names, load_card

    seen: set = set()
    out = []
    for name in all_card_names():
        card = load_card(name)
        if isinstance(card, SuiteCard) or not isinstance(card, TaskCard) or card.synthetic or card.dataset == "synthetic":
            continue
        key = (card.dataset, frozenset((card.source, card.target)))
        if key in seen:
            continue
        seen.add(key)
        out.append((name, "Raman" if card.dataset == "raman" else "NIR"))
    return out


def measure_tasks(tasks: list[tuple[str, str]] | None = None, data_dir: str | None = None) -> list[dict]:
    """measure_pair for every task's source/target pair: [{task, domain, source, target, unit, **measured}]."""
    from ctbench.tuning import load_task

    rows = []
    for name, domain in tasks if tasks is not None else real_pairs():
        task = load_task(name, data_dir)
        m = measure_pair(task.axis, task.X_source, task.X_target, domain)
        rows.append({"task": name, "domain": domain, "source": task.card.source, "target": task.card.target,
                     "unit": task.axis_unit, **m})
    return rows


def covered(key: str, value: float, domain: str, fit_rss: float = 0.0) -> bool | None:
    """Whether the simulator's difference range holds ``value`` (None: not comparable)."""
    par = simulator_parameter(key, domain)
    if par is None or not np.isfinite(value) or (fit_rss > UNRELIABLE and key in _LINE_TERMS):
        return None
    lo, hi = difference_range(par, domain)
    return bool(lo <= value <= hi)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| pair | domain | parameter | measured (target vs source) | simulator difference range | covered |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        pair = f"{r['task']} ({r['source']} -> {r['target']})"
        for key in MEASURED:
            par = simulator_parameter(key, r["domain"])
            v = r[key]
            if par is None:
                rng_s, cov = "n/a (diagnostic: what the fitted model leaves)", "n/a"
            else:
                lo, hi = difference_range(par, r["domain"])
                rng_s = f"[{lo:.4g}, {hi:.4g}]" + (f" ({par})" if par != key else "")
                c = covered(key, v, r["domain"], r["fit_rss"])
                cov = "yes" if c else ("NO" if c is False else "n/a (too few windows with bands)" if not np.isfinite(v)
                                       else f"n/a (fit 1-R^2 = {r['fit_rss']:.2f}: no shared bands)")
            lines.append(f"| {pair} | {r['domain']} | {key} | {v:.4g} | {rng_s} | {cov} |")
    n = sum(1 for r in rows for k in MEASURED if covered(k, r[k], r["domain"], r["fit_rss"]) is not None)
    ok = sum(1 for r in rows for k in MEASURED if covered(k, r[k], r["domain"], r["fit_rss"]))
    lines.append("")
    lines.append(f"{ok} of {n} measured differences lie inside the simulator's difference ranges. Units: axis units "
                 "(nm NIR, cm-1 Raman) for shift/stretch/warp/bandwidth (signed quadrature FWHM, + = target broader); "
                 "gain_log10 = log10 of the target/source multiplicative factor; response_* relative; NIR baselines in "
                 "absorbance units, Raman baselines relative to the target's scale; noise = difference of relative "
                 "white-noise sd (target - source); residual = median relative RMS of target minus transformed source.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctbench_spektron.shifts",
                                 description="Measure real inter-instrument differences in simulator terms.")
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: $CTBENCH_DATA)")
    args = ap.parse_args(argv)
    md = markdown(measure_tasks(data_dir=args.data_dir))
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Measured inter-instrument differences vs the Spektron simulator\n\n"
                       "Generated by `python -m ctbench_spektron.shifts`.\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
