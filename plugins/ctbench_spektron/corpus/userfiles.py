"""A user's own spectra as a pretraining source: a folder (or one file) of CSV, JCAMP-DX, NPZ or HDF5.

* CSV / TXT: either *wide* (header row of axis values, one spectrum per row; non-numeric columns
  such as ids are ignored) or *long* (first column the axis, each further column a spectrum).
* JCAMP-DX (.jdx, .dx, .jcamp): ``##XYDATA=(X++(Y..Y))`` in AFFN or compressed ASDF
  (SQZ / DIF / DUP) form, or ``##XYPOINTS`` / ``##PEAK TABLE`` (XY..XY); units from ``##XUNITS``.
* NPZ / HDF5 (.h5, .hdf5): arrays ``X`` (or ``spectra``) of shape (n, p) and ``axis`` (or
  ``wavenumbers`` / ``wavelengths``); an optional ``unit`` entry. HDF5 needs the optional h5py.

The axis unit comes from the file when it says (JCAMP ``##XUNITS``, an npz/h5 ``unit``), else from
the ``unit`` option, else a guess: nm when the axis lies within 350-3000, cm-1 otherwise.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.data import DataError

from ..grid import domain_index, guess_domain, resample_to_grid
from .table import SpectralTable

CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
JCAMP_SUFFIXES = {".jdx", ".dx", ".jcamp", ".jcm"}
ARRAY_SUFFIXES = {".npz", ".h5", ".hdf5"}


def guess_unit(axis: np.ndarray) -> str:
    lo, hi = float(np.min(axis)), float(np.max(axis))
    return "nm" if 350.0 <= lo and hi <= 3000.0 else "cm-1"


# --- JCAMP-DX ---------------------------------------------------------------------------------
_SQZ = {c: (i, 1) for i, c in enumerate("@ABCDEFGHI")} | {c: (i + 1, -1) for i, c in enumerate("abcdefghi")}
_DIF = {c: (i, 1) for i, c in enumerate("%JKLMNOPQR")} | {c: (i + 1, -1) for i, c in enumerate("jklmnopqr")}
_DUP = {c: i + 1 for i, c in enumerate("STUVWXYZs")}


def _asdf_tokens(line: str) -> list[tuple[str, float]]:
    """Tokens of one ASDF/AFFN data line: ('abs' | 'dif' | 'dup', value)."""
    tokens: list[tuple[str, float]] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t,;":
            i += 1
            continue
        j = i + 1
        if c in "+-." or c.isdigit():
            while j < n and (line[j].isdigit() or line[j] in ".eE" or (line[j] in "+-" and line[j - 1] in "eE")):
                j += 1
            tokens.append(("abs", float(line[i:j])))
        elif c in _SQZ or c in _DIF or c in _DUP:
            while j < n and (line[j].isdigit() or line[j] == "."):
                j += 1
            rest = line[i + 1:j]
            if c in _DUP:
                tokens.append(("dup", float(str(_DUP[c]) + rest)))
            else:
                digit, sign = _SQZ[c] if c in _SQZ else _DIF[c]
                tokens.append(("abs" if c in _SQZ else "dif", sign * float(str(digit) + rest)))
        else:
            raise ValueError(f"unexpected character {c!r} in JCAMP-DX data line {line!r}")
        i = j
    return tokens


def _decode_xydata(lines: list[str]) -> np.ndarray:
    """Y values of an (X++(Y..Y)) block (the leading X of each line dropped, DIF check values removed)."""
    ys: list[float] = []
    prev_line_dif = False
    for line in lines:
        tokens = _asdf_tokens(line)
        if not tokens:
            continue
        tokens = tokens[1:]  # the abscissa
        vals: list[float] = []
        last_kind = "abs"
        last_dif = 0.0
        for kind, v in tokens:
            if kind == "abs":
                vals.append(v)
                last_kind = "abs"
            elif kind == "dif":
                base = vals[-1] if vals else (ys[-1] if ys else 0.0)
                vals.append(base + v)
                last_kind, last_dif = "dif", v
            else:  # dup: repeat the previous token (count - 1) more times
                for _ in range(int(v) - 1):
                    vals.append(vals[-1] + last_dif if last_kind == "dif" else vals[-1])
        if prev_line_dif and vals and ys:
            vals = vals[1:]  # Y check value repeating the last ordinate of the previous line
        ys.extend(vals)
        prev_line_dif = last_kind == "dif"
    return np.asarray(ys, dtype=float)


def read_jcamp(path: Path) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
    """Spectra of a JCAMP-DX file: [(axis, intensities, unit or None)], one per data block."""
    text = path.read_text(encoding="latin-1")
    out = []
    block: dict[str, str] = {}
    data_kind, data_lines = None, []

    def flush() -> None:
        nonlocal data_kind, data_lines
        if data_kind is None:
            return
        xf = float(block.get("XFACTOR", "1") or 1)
        yf = float(block.get("YFACTOR", "1") or 1)
        if data_kind == "xydata":
            y = _decode_xydata(data_lines) * yf
            npts = int(float(block.get("NPOINTS", len(y))))
            y = y[:npts]
            first, last = float(block["FIRSTX"]), float(block["LASTX"])
            x = np.linspace(first, last, y.size)
        else:
            nums = np.array([float(v) for v in re.split(r"[\s,;]+", " ".join(data_lines).strip()) if v], dtype=float)
            nums = nums[: nums.size - nums.size % 2].reshape(-1, 2)
            x, y = nums[:, 0] * xf, nums[:, 1] * yf
        xunits = block.get("XUNITS", "").upper()
        unit = None
        if "1/CM" in xunits or "CM-1" in xunits or "CM^-1" in xunits:
            unit = "cm-1"
        elif "NANOMETER" in xunits or xunits == "NM":
            unit = "nm"
        elif "MICROMETER" in xunits or xunits in ("UM", "MICRONS"):
            x, unit = x * 1000.0, "nm"
        order = np.argsort(x)
        out.append((x[order], y[order], unit))
        data_kind, data_lines = None, []

    for raw in text.splitlines():
        line = raw.split("$$")[0].strip()
        if not line:
            continue
        if line.startswith("##"):
            if data_kind is not None:
                flush()
            key, _, value = line[2:].partition("=")
            key = re.sub(r"[\s_\-/]", "", key).upper()
            value = value.strip()
            if key == "XYDATA" and "X++" in value.replace(" ", "").upper():
                data_kind, data_lines = "xydata", []
            elif key in ("XYPOINTS", "PEAKTABLE"):
                data_kind, data_lines = "xy", []
            elif key == "END":
                block = {}
            else:
                block[key] = value
        elif data_kind is not None:
            data_lines.append(line)
    flush()
    if not out:
        raise DataError(f"{path}: no ##XYDATA, ##XYPOINTS or ##PEAK TABLE block found")
    return out


# --- CSV, NPZ, HDF5 -----------------------------------------------------------------------------
def _as_float(s: str) -> float | None:
    try:
        return float(str(s).strip())
    except ValueError:
        return None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(axis (p,), spectra (n, p)) from a wide or long CSV."""
    import pandas as pd

    frame = pd.read_csv(path, sep=None, engine="python")
    numeric_cols = [c for c in frame.columns if _as_float(c) is not None]
    if len(numeric_cols) >= 10:  # wide: header is the axis
        axis = np.array([float(c) for c in numeric_cols])
        X = frame[numeric_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    else:  # long: first column the axis (re-read without a header when the header is numeric)
        if all(_as_float(c) is not None for c in frame.columns):
            frame = pd.read_csv(path, sep=None, engine="python", header=None)
        frame = frame.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
        if frame.shape[1] < 2:
            raise DataError(f"{path}: need an axis column and at least one spectrum column")
        frame = frame.dropna(axis=0, how="any")
        axis = frame.iloc[:, 0].to_numpy(dtype=float)
        X = frame.iloc[:, 1:].to_numpy(dtype=float).T
    return axis, X


def _pick(keys: list[str], names: tuple[str, ...], path: Path, what: str) -> str:
    for k in names:
        if k in keys:
            return k
    raise DataError(f"{path}: no {what} array (expected one of {', '.join(names)}; found {', '.join(keys) or 'none'})")


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(axis, spectra, unit or None) from an NPZ or HDF5 file."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    else:
        try:
            import h5py
        except ImportError as exc:
            raise DataError(f"{path}: reading HDF5 needs the optional package h5py (pip install h5py)") from exc
        with h5py.File(path, "r") as f:
            data = {k: np.asarray(f[k]) for k in f.keys() if hasattr(f[k], "shape")}
            data.update({k: np.asarray(v) for k, v in f.attrs.items()})
    keys = sorted(data)
    X = np.atleast_2d(np.asarray(data[_pick(keys, ("X", "spectra", "x", "intensities"), path, "spectra")], dtype=float))
    axis = np.asarray(data[_pick(keys, ("axis", "wavenumbers", "wavelengths", "wavenumber", "wavelength"), path, "axis")], dtype=float).ravel()
    unit = None
    if "unit" in data:
        u = np.asarray(data["unit"]).ravel()[0]
        unit = u.decode() if isinstance(u, bytes) else str(u)
    return axis, X, unit


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder of spectra")
    suffixes = CSV_SUFFIXES | JCAMP_SUFFIXES | ARRAY_SUFFIXES
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"{path}: no CSV, JCAMP-DX, NPZ or HDF5 files found")
    return files


def load_user_files(path: str | Path, grid_points: int = 2048, unit: str | None = None, domain: str | None = None,
                    instrument: str | None = None) -> SpectralTable:
    """Spectra from a user's folder or file, on the grid."""
    root = Path(path).expanduser()
    if unit not in (None, "nm", "cm-1"):
        raise DataError(f"unit must be 'nm' or 'cm-1', got {unit!r}")
    rows, los, his, units, doms = [], [], [], [], []
    digest = hashlib.sha256()
    per_file: dict[str, int] = {}
    for f in _files(root):
        digest.update(f.read_bytes())
        suffix = f.suffix.lower()
        try:
            if suffix in JCAMP_SUFFIXES:
                items = read_jcamp(f)
            elif suffix in ARRAY_SUFFIXES:
                axis, X, u = read_arrays(f)
                items = [(axis, x, u) for x in X]
            else:
                axis, X = read_csv(f)
                items = [(axis, x, None) for x in X]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{f}: cannot read spectra ({exc})") from exc
        count = 0
        for axis, y, u in items:
            ok = np.isfinite(axis) & np.isfinite(y)
            if ok.sum() < 16:
                continue
            u = u if u in ("nm", "cm-1") else (unit or guess_unit(axis[ok]))
            values, lo, hi = resample_to_grid(y[ok][None], axis[ok], grid_points)
            rows.append(values[0])
            los.append(lo)
            his.append(hi)
            units.append(u)
            doms.append(domain_index(domain or guess_domain(lo, hi, u)))
            count += 1
        per_file[str(f.relative_to(root)) if root.is_dir() else f.name] = count
    if not rows:
        raise DataError(f"{root}: no usable spectra (each needs at least 16 finite points)")
    n = len(rows)
    name = instrument or f"user_{root.stem}"
    table = SpectralTable(
        values=np.stack(rows).astype(np.float32), lo=np.array(los), hi=np.array(his), unit=np.array(units, dtype="U5"),
        domain=np.array(doms, dtype=np.int64), instrument=np.zeros(n, dtype=np.int64), instruments=[name],
        group=np.full(n, -1, dtype=np.int64), nonneg=np.zeros(n, dtype=bool), source=np.zeros(n, dtype=np.int64),
        sources=[f"files:{root}"],
    )
    table.manifest = [{"name": "files", "path": str(root), "sha256_of_files": digest.hexdigest(), "n_spectra": n,
                       "files": per_file, "instruments": {name: n}, "synthetic": False,
                       "content_sha256": table.content_hash(), "grid_points": grid_points}]
    return table


def parse_options(spec: str) -> tuple[str, dict[str, Any]]:
    """'files:/path?unit=nm&domain=NIR' -> ('/path', {'unit': 'nm', 'domain': 'NIR'})."""
    body = spec.split(":", 1)[1] if ":" in spec else spec
    path, _, query = body.partition("?")
    opts: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        if k not in ("unit", "domain", "instrument"):
            raise DataError(f"unknown option {k!r} in corpus source {spec!r} (valid: unit, domain, instrument)")
        opts[k] = v
    return path, opts
