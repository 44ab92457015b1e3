"""Dataset loaders: the built-in real datasets (corn, tablet, wheat, raman), generic CSV / MATLAB
readers for a user's own files, the synthetic demo, and ``load_dataset`` (resolve, verify,
load, memoize per process).

A loader is ``load(paths, options) -> Dataset``: ``paths`` are the verified local paths of the
loader's registered files (empty for the generic loaders, whose files come from ``options``).
Heavy imports (pandas, scipy) stay inside the functions.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.data.registry import DataFile, Dataset, DatasetLoader
from ctbench.data.spectra import AXIS_UNITS, DataError, Spectra

# --- registered files ---------------------------------------------------------------------

CORN_FILES = (
    DataFile(
        "corn/corn.mat",
        "e28fd4be274a54ca57b1f2c67ef5a8bf4981f8314bcc73e4c64836fe658c46b5",
        "http://eigenvector.com/data/Corn/corn.mat",
    ),
)
TABLET_FILES = (
    DataFile(
        "tablet_idrc2002/idrc2002_shootout_tablets_instrument1.csv",
        "a760cf1a72a2268b59ee43a651430d0e30cdadfc9a9923dde5e72bef946aaaea",
    ),
    DataFile(
        "tablet_idrc2002/idrc2002_shootout_tablets_instrument2.csv",
        "36e46b5ff67e46e53c885df83da54c962c56206f3df7c6647a6a41b207dc86f2",
    ),
)
RAMAN_INSTRUMENTS = ("anton532", "anton785", "timegate")
RAMAN_FILES = (
    DataFile(
        "raman_dig4bio/dig4bio_raman_anton_532.csv",
        "796adb3958da7c2c1457aaaa3525545b9b9dbe1b697bb60526df7e14eec59d80",
    ),
    DataFile(
        "raman_dig4bio/dig4bio_raman_anton_785.csv",
        "ad21838bad2aac377d05fbf7d03ad046ce66c900fb3e1107ab6d5cc5e82eb8b2",
    ),
    DataFile(
        "raman_dig4bio/dig4bio_raman_timegate.csv",
        "e8018d92d5ad4e1626c566142f1da5931da1fe94109dd099d813691dd1d47609",
    ),
)

WHEAT_INSTRUMENTS = ("A1", "A2", "A3")
WHEAT_FILES = tuple(
    DataFile(f"wheat_idrc2016/idrc2016_wheat_instrument_{inst}.csv", sha)
    for inst, sha in zip(
        WHEAT_INSTRUMENTS,
        (
            "1f690b8d5c2f1325574faac73ecc0cc1838e5b43e2e98a55ddb5e3a08c6b8280",
            "ab2bab0091976f01e4cd088052c8b70ee47607281b6402510596250b0574936c",
            "7f63d812d4dae1312d122e41420584b940f8405f34327af9fcaa92926acbc3a8",
        ),
    )
)

WHEAT_EXCLUDED = {
    "20140190": "its A2 spectrum is a gross outlier: scored in a 10-component PCA of the other 247 A2 spectra, "
    "its Hotelling T2 is ~2000x the largest of theirs and its Q residual ~1e5x their 99th percentile "
    "(a PLS calibrated without it predicts it ~100 % protein off); its A1 and A3 spectra are ordinary",
}
"""Samples left out of every instrument of the wheat data (so that all wheat tasks keep the same
outer splits), with the reason; the loader option ``keep_outliers: true`` keeps them. Found from
the spectra alone (no reference values), tests/test_wheat.py re-derives it."""

CORN_INSTRUMENTS = ("m5", "mp5", "mp6")
TABLET_PROPERTIES = ("weight", "hardness", "assay")
RAMAN_PROPERTIES = ("glucose", "Na_acetate", "Mg_SO4")
RAMAN_ID_DECIMALS = 3
"""Concentrations (g/L) are rounded to 1 mg/L to name a sample: 2..6 decimals all give the
53 Anton triples shared by both Anton files and 52 shared with the Timegate file."""

# --- small helpers ------------------------------------------------------------------------


def _check_options(loader: str, options: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    from ctbench.names import did_you_mean

    allowed = tuple(allowed)
    options = dict(options or {})
    for key in options:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "(none)"
            raise DataError(
                f"dataset {loader!r}: unknown loader option {key!r}{did_you_mean(str(key), allowed)}; known: {known}"
            )
    return options


def _expect_paths(loader: str, paths: list[Path], files: tuple[DataFile, ...]) -> None:
    if len(paths) != len(files):
        raise DataError(f"dataset {loader!r} needs {len(files)} file(s), got {len(paths)}")


def _registered_shas(files: tuple[DataFile, ...], paths: list[Path]) -> dict[str, str]:
    from ctbench.data.mirror import sha256_file

    return {f.relpath: sha256_file(p) for f, p in zip(files, paths)}


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(3, len(str(n)))
    return np.array([f"{prefix}-{i + 1:0{width}d}" for i in range(n)])


def _check_finite_rows(values: np.ndarray, source: str, ids: np.ndarray, what: str = "data row {row}") -> None:
    """One-line DataError naming the file and the 1-based data row of the first non-finite spectrum."""
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: spectrum in {what.format(row=row + 1)} (sample {ids[row]}) has NaN or inf values "
            f"({int(bad.sum())} bad row(s) in all); fix or remove it"
        )


def _read_csv(path: Path, sep: str = ",") -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path, sep=sep)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path} as CSV: {first}") from None


def _parse_axis_value(name: Any) -> float | None:
    try:
        value = float(str(name).strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _spectral_columns(df: Any, path: Path, decimal: str = ".") -> tuple[list[Any], np.ndarray]:
    """Columns whose header parses as a (finite) number (:func:`csv_axis_value`), and that number
    as the axis."""
    cols, axis = [], []
    for c in df.columns:
        v = csv_axis_value(c, decimal)
        if v is not None:
            cols.append(c)
            axis.append(v)
    if not cols:
        raise DataError(f"{path}: no spectral columns (no column header parses as a number){_unit_header_hint(df.columns)}")
    return cols, np.asarray(axis, dtype=float)


def _numeric(df: Any, cols: list[Any], path: Path, what: str) -> np.ndarray:
    """The columns as floats; a non-number cell is a DataError naming file, data row and column."""
    import pandas as pd

    block = df[cols]
    try:
        return block.to_numpy(dtype=float)
    except (ValueError, TypeError):
        pass
    for c in cols:
        converted = pd.to_numeric(block[c], errors="coerce")
        bad = converted.isna() & block[c].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: {what} column {c!r}, data row {row + 1}: {block[c].iloc[row]!r} is not a number"
            )
    return block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def _missing_column(path: Path, column: str, columns: Iterable[Any], what: str) -> DataError:
    from ctbench.names import did_you_mean

    names = [str(c) for c in columns if _parse_axis_value(c) is None]
    return DataError(
        f"{path}: no {what} column {column!r}{did_you_mean(column, names)}; non-spectral columns: {', '.join(names)}"
    )


# --- corn (MATLAB, PLS_Toolbox dataset objects) ----------------------------------------------


def _mat_parts(obj: Any) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(data, axis of columns or None, column labels or None) of a MATLAB variable.

    PLS_Toolbox ``dataset`` objects carry data under ``data``, the column axis under
    ``axisscale[1, 0]`` and column labels under ``label[1, 0]``; a plain matrix has neither.
    """
    names = getattr(getattr(obj, "dtype", None), "names", None)
    if not names or "data" not in names:
        return np.asarray(obj), None, None
    data = np.asarray(obj["data"][0, 0])
    axis = labels = None
    if "axisscale" in names:
        try:
            a = np.asarray(obj["axisscale"][0, 0][1, 0], dtype=float).ravel()
            axis = a if a.size else None
        except (IndexError, TypeError, ValueError):
            axis = None
    if "label" in names:
        try:
            lab = np.asarray(obj["label"][0, 0][1, 0]).ravel()
            labels = [str(s).strip() for s in lab] if lab.size else None
        except (IndexError, TypeError, ValueError):
            labels = None
    return data, axis, labels


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7 or export CSV") from None
    except Exception as exc:  # scipy raises assorted errors on a non-MATLAB file
        raise DataError(f"cannot read {path} as a MATLAB file: {exc}") from None


def _mat_var(mat: dict[str, Any], name: str, path: Path) -> Any:
    if name not in mat:
        from ctbench.names import did_you_mean

        known = [k for k in mat if not k.startswith("__")]
        raise DataError(f"{path}: no variable {name!r}{did_you_mean(name, known)}; variables: {', '.join(known)}")
    return mat[name]


def load_corn(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """Eigenvector corn: 80 samples on m5, mp5, mp6 (700 channels, 1100-2498 nm), 4 properties."""
    _check_options("corn", options, ())
    _expect_paths("corn", paths, CORN_FILES)
    path = paths[0]
    mat = _loadmat(path)
    yvals, _, labels = _mat_parts(_mat_var(mat, "propvals", path))
    yvals = np.asarray(yvals, dtype=float)
    properties = tuple(s.strip().lower() for s in (labels or ["moisture", "oil", "protein", "starch"]))
    n = yvals.shape[0]
    ids = _ids("corn", n)
    instruments: dict[str, Spectra] = {}
    for inst in CORN_INSTRUMENTS:
        data, axis, _ = _mat_parts(_mat_var(mat, f"{inst}spec", path))
        data = np.asarray(data, dtype=float)
        if axis is None:
            raise DataError(f"{path}: variable {inst}spec has no wavelength axis")
        if data.shape[0] != n:
            raise DataError(f"{path}: {inst}spec has {data.shape[0]} rows but propvals has {n}")
        _check_finite_rows(data, str(path), ids, what=f"row {{row}} of {inst}spec")
        nbs, _, _ = _mat_parts(mat[f"{inst}nbs"]) if f"{inst}nbs" in mat else (None, None, None)
        meta = {} if nbs is None else {"nbs_standards": np.asarray(nbs, dtype=float)}
        instruments[inst] = Spectra(
            values=data,
            axis=axis,
            axis_unit="nm",
            instrument=inst,
            sample_ids=ids,
            y=yvals,
            properties=properties,
            source=str(path),
            meta=meta,
        )
    return Dataset(
        name="corn",
        instruments=instruments,
        properties=properties,
        sha256=_registered_shas(CORN_FILES, paths),
        description="Eigenvector corn: 80 samples, NIR on m5, mp5, mp6 (1100-2498 nm)",
    )


# --- tablet (IDRC 2002 shoot-out CSVs) ------------------------------------------------------


def load_tablet(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """IDRC 2002 tablets: 655 tablets on instruments '1' and '2' (600-1898 nm), official split in meta."""
    _check_options("tablet", options, ())
    _expect_paths("tablet", paths, TABLET_FILES)
    frames = [_read_csv(p) for p in paths]
    for df, p in zip(frames, paths):
        for col in ("SampleType", *TABLET_PROPERTIES):
            if col not in df.columns:
                raise _missing_column(p, col, df.columns, "tablet")
    a, b = frames
    pa, pb = paths
    if len(a) != len(b):
        raise DataError(f"tablet files disagree: {pa} has {len(a)} rows, {pb} has {len(b)}")
    ya = _numeric(a, list(TABLET_PROPERTIES), pa, "property")
    yb = _numeric(b, list(TABLET_PROPERTIES), pb, "property")
    types = [df["SampleType"].astype(str).str.strip().to_numpy() for df in frames]
    differ = ~((ya == yb) | (np.isnan(ya) & np.isnan(yb))).all(axis=1) | (types[0] != types[1])
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        raise DataError(
            f"tablet files disagree on reference values or SampleType (first at data row {row + 1}): {pa} vs {pb}"
        )
    ids = _ids("tablet", len(a))
    instruments: dict[str, Spectra] = {}
    for inst, df, p, y, st in zip(("1", "2"), frames, paths, (ya, yb), types):
        cols, axis = _spectral_columns(df, p)
        values = _numeric(df, cols, p, "spectral")
        _check_finite_rows(values, str(p), ids)
        instruments[inst] = Spectra(
            values=values,
            axis=axis,
            axis_unit="nm",
            instrument=inst,
            sample_ids=ids,
            y=y,
            properties=TABLET_PROPERTIES,
            source=str(p),
            meta={"sample_type": np.asarray(st, dtype=str)},
        )
    return Dataset(
        name="tablet",
        instruments=instruments,
        properties=TABLET_PROPERTIES,
        sha256=_registered_shas(TABLET_FILES, paths),
        description="IDRC 2002 pharmaceutical tablets: 655 tablets on NIR instruments 1 and 2 (600-1898 nm)",
    )


# --- wheat (IDRC 2016 shoot-out CSVs) -------------------------------------------------------


def load_wheat(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """IDRC 2016 wheat: 248 samples on manufacturer A's instruments A1, A2, A3 (730-1100 nm, 0.5 nm), protein.

    Rows are paired across the files by the ``ID`` column (the sample id), never by row number;
    every file must hold the same ids once each, with the same protein value for an id. The samples
    of ``WHEAT_EXCLUDED`` are left out of every instrument unless ``options["keep_outliers"]``.
    """
    options = _check_options("wheat", options, ("keep_outliers",))
    keep_outliers = options.get("keep_outliers", False)
    if not isinstance(keep_outliers, bool):
        raise DataError(f"dataset 'wheat': loader option keep_outliers must be true or false, got {keep_outliers!r}")
    _expect_paths("wheat", paths, WHEAT_FILES)
    frames = [_read_csv(p) for p in paths]
    for df, p in zip(frames, paths):
        for col in ("ID", "Protein"):
            if col not in df.columns:
                raise _missing_column(p, col, df.columns, "wheat")
    ids0 = None
    protein0 = None
    instruments: dict[str, Spectra] = {}
    for inst, df, p in zip(WHEAT_INSTRUMENTS, frames, paths):
        raw = df["ID"].astype(str).str.strip()
        dup = raw[raw.duplicated()]
        if len(dup):
            raise DataError(f"{p}: sample id {dup.iloc[0]!r} appears more than once; ids must be unique per file")
        order = np.argsort(raw.to_numpy(), kind="stable")  # one order for every file: paired by id
        if not keep_outliers:
            order = order[~np.isin(raw.to_numpy()[order], list(WHEAT_EXCLUDED))]
        ids = np.asarray([f"wheat-{v}" for v in raw.to_numpy()[order]])
        protein = _numeric(df, ["Protein"], p, "property")[order]
        if ids0 is None:
            ids0, protein0 = ids, protein
        else:
            if len(ids) != len(ids0) or (ids != ids0).any():
                missing = sorted(set(ids0.tolist()) ^ set(ids.tolist()))
                raise DataError(
                    f"wheat files disagree on their sample ids: {paths[0]} vs {p} "
                    f"({len(missing)} id(s) in only one of them, e.g. {missing[0] if missing else '?'})"
                )
            differ = ~((protein == protein0) | (np.isnan(protein) & np.isnan(protein0)))[:, 0]
            if differ.any():
                row = int(np.flatnonzero(differ)[0])
                raise DataError(f"wheat files disagree on the protein value of sample {ids[row]}: {paths[0]} vs {p}")
        cols, axis = _spectral_columns(df, p)
        values = _numeric(df, cols, p, "spectral")
        _check_finite_rows(values, str(p), raw.to_numpy())  # file row numbers, before pairing by id
        values = values[order]
        instruments[inst] = Spectra(
            values=values,
            axis=axis,
            axis_unit="nm",
            instrument=inst,
            sample_ids=ids,
            y=protein,
            properties=("protein",),
            source=str(p),
        )
    return Dataset(
        name="wheat",
        instruments=instruments,
        properties=("protein",),
        sha256=_registered_shas(WHEAT_FILES, paths),
        description=f"IDRC 2016 shoot-out wheat: {len(ids0)} samples on NIR instruments A1, A2, A3 (730-1100 nm, 0.5 nm)"
        + ("" if keep_outliers else f"; {len(WHEAT_EXCLUDED)} outlying sample(s) left out (ctbench.data.loaders.WHEAT_EXCLUDED)"),
    )


# --- raman (Dig4Bio) ----------------------------------------------------------------------


def raman_sample_id(glucose: float, acetate: float, mgso4: float, decimals: int = RAMAN_ID_DECIMALS) -> str:
    """The id of a Raman sample: its concentration triple (g/L), rounded."""
    parts = [f"{round(float(v), decimals) + 0.0:.{decimals}f}" for v in (glucose, acetate, mgso4)]
    return "raman-" + "_".join(parts)


def load_raman(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """Dig4Bio Raman on anton532, anton785, timegate; samples named by their concentration triple."""
    _check_options("raman", options, ())
    _expect_paths("raman", paths, RAMAN_FILES)
    instruments: dict[str, Spectra] = {}
    for inst, p in zip(RAMAN_INSTRUMENTS, paths):
        df = _read_csv(p)
        for col in RAMAN_PROPERTIES:
            if col not in df.columns:
                raise _missing_column(p, col, df.columns, "concentration")
        y = _numeric(df, list(RAMAN_PROPERTIES), p, "property")
        ids = np.array([raman_sample_id(*row) for row in y])
        exact = len({tuple(row) for row in y})
        if len(set(ids)) != exact:
            raise DataError(
                f"{p}: rounding concentrations to {RAMAN_ID_DECIMALS} decimals merges distinct samples "
                f"({exact} triples -> {len(set(ids))} ids)"
            )
        cols, axis = _spectral_columns(df, p)
        values = _numeric(df, cols, p, "spectral")
        _check_finite_rows(values, str(p), ids)
        meta = {c: df[c].to_numpy() for c in ("MSM_present", "fold_idx") if c in df.columns}
        instruments[inst] = Spectra(
            values=values,
            axis=axis,
            axis_unit="cm-1",
            instrument=inst,
            sample_ids=ids,
            y=y,
            properties=RAMAN_PROPERTIES,
            source=str(p),
            meta=meta,
        )
    return Dataset(
        name="raman",
        instruments=instruments,
        properties=RAMAN_PROPERTIES,
        sha256=_registered_shas(RAMAN_FILES, paths),
        description="Dig4Bio Raman (bioprocess analytes, g/L) on Anton Paar 532 nm, 785 nm and a time-gated device",
    )


# --- generic loaders for a user's own files ---------------------------------------------


_FILES_READ: set[str] = set()


def files_read() -> list[str]:
    """Every user data file (csv / mat loaders) read in this process: the isolated workers
    cannot read these files' folders."""
    return sorted(_FILES_READ)


def _user_path(value: Any, base_dir: Any, loader: str, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(str(base_dir)).expanduser() / path
    if not path.is_file():
        raise DataError(f"dataset {loader!r}: {what} file not found: {path}")
    _FILES_READ.add(str(path.resolve()))
    return path


def _instrument_files(loader: str, options: dict[str, Any]) -> dict[str, Any]:
    files = options.get("files")
    if not isinstance(files, Mapping) or not files:
        raise DataError(
            f"dataset {loader!r}: option 'files' must map instrument names to file paths, "
            f"e.g. files: {{instA: a.{loader}, instB: b.{loader}}}"
        )
    return {str(k): v for k, v in files.items()}


def _axis_unit(loader: str, options: dict[str, Any]) -> str:
    unit = str(options.get("axis_unit", "nm"))
    if unit not in AXIS_UNITS:
        raise DataError(f"dataset {loader!r}: axis_unit {unit!r} is not one of {', '.join(AXIS_UNITS)}")
    return unit


def _string_list(loader: str, options: dict[str, Any], key: str) -> list[str] | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"dataset {loader!r}: option {key!r} must be a list of names")
    return [str(v) for v in value]


def _finish_generic(
    loader: str, options: dict[str, Any], instruments: dict[str, Spectra], properties: tuple[str, ...], shas: dict
) -> Dataset:
    return Dataset(
        name=str(options.get("name", loader)),
        instruments=instruments,
        properties=properties,
        sha256=shas,
        description=str(options.get("description", f"user data read by the {loader} loader")),
    )


CSV_OPTIONS = (
    "files", "references", "references_id_column", "properties", "axis_unit", "id_column", "spectral_columns",
    "sep", "decimal", "base_dir", "name", "description",
)

CSV_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "whitespace": "whitespace"}
"""The column separators the csv loader reads (detected in this order of preference: tab,
semicolon, comma, then runs of whitespace), by their names in messages."""
_SEP_ALIASES = {
    "auto": "auto", ",": ",", "comma": ",", ";": ";", "semicolon": ";", "\t": "\t", "\\t": "\t", "tab": "\t",
    " ": "whitespace", "\\s+": "whitespace", "space": "whitespace", "whitespace": "whitespace",
}
_SNIFF_LINES = 20
"""Data lines (after the header) the separator and the decimal mark are judged on."""
_SNIFF_BYTES = 16 * 1024 * 1024
"""At most this much of a file's start is read to judge them (wide spectra make long lines)."""
_UNIT_HEADER = None  # compiled lazily: a header like '1100 nm' (not read as an axis position)


@dataclass(frozen=True)
class CsvLayout:
    """How a user's CSV file is laid out: separator, decimal mark, encoding and column names.

    ``names`` are the header's names, stripped; a blank header becomes ``Unnamed: i`` (as pandas
    names it), and a header one field shorter than the data rows gets a blank-headed first column
    (R's ``write.table`` writes row names that way)."""

    path: Path
    sep: str
    """',', ';', '\\t' or 'whitespace'."""
    decimal: str
    encoding: str
    names: tuple[str, ...]
    blank: tuple[bool, ...]
    """Which columns had a blank header."""
    skip: int
    """Lines of the file before the first data line."""
    detected: bool
    """Whether the separator was detected (``sep: auto``) rather than given."""

    @property
    def sep_name(self) -> str:
        return CSV_SEPARATORS[self.sep]

    @property
    def first_blank(self) -> str | None:
        """Name of the first column when its header is blank, else None."""
        return self.names[0] if self.blank and self.blank[0] else None


def _csv_choice(value: Any, key: str, allowed: Mapping[str, str], shown: str) -> str:
    if isinstance(value, str) and value in allowed:
        return allowed[value]
    if isinstance(value, str) and value.strip().lower() in allowed:
        return allowed[value.strip().lower()]
    raise DataError(f"dataset 'csv': option {key!r} must be {shown}, got {value!r}")


def _sep_option(value: Any) -> str:
    return _csv_choice(value, "sep", _SEP_ALIASES, "auto, ',', ';', tab or whitespace")


def _decimal_option(value: Any) -> str:
    return _csv_choice(value, "decimal", {"auto": "auto", ".": ".", ",": ","}, "auto, '.' or ','")


def _split_line(line: str, sep: str) -> list[str]:
    import csv

    if sep == "whitespace":
        return [f.strip('"') for f in line.split()]
    try:
        return next(csv.reader([line], delimiter=sep))
    except (csv.Error, StopIteration):
        return [line]


def _fit(header: str, rows: list[str], sep: str) -> str | None:
    """How the separator splits the header and the data lines: 'exact' (same number of fields,
    at least 2), 'short' (the header one field short: a blank-headed first column), 'trailing'
    (each data line ends with a separator the header lacks), or None (it does not fit)."""
    n_header = len(_split_line(header, sep))
    fields = [_split_line(r, sep) for r in rows]
    counts = {len(f) for f in fields}
    if len(counts) != 1:
        return None
    n = counts.pop()
    if n < 2:
        return None
    if n == n_header:
        return "exact"
    if n == n_header + 1:
        return "trailing" if all(not f[-1].strip() for f in fields) else "short"
    return None


_COMMA_NUMBER = r"^[+-]?\d+,\d+(?:[eE][+-]?\d+)?$"
_POINT_NUMBER = r"^[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?$"


def _guess_decimal(rows: list[str], sep: str) -> str:
    """',' when the data cells write numbers with a decimal comma (``1,23``) more often than with
    a point; a comma-separated file always uses '.'."""
    import re

    if sep == ",":
        return "."
    comma = point = 0
    for r in rows:
        for f in _split_line(r, sep):
            f = f.strip()
            if re.match(_COMMA_NUMBER, f):
                comma += 1
            elif re.match(_POINT_NUMBER, f):
                point += 1
    return "," if comma > point else "."


def _head_lines(path: Path) -> tuple[list[tuple[int, str]], str]:
    """The file's first non-blank lines with their 0-based line numbers, and its encoding."""
    try:
        with open(path, "rb") as f:
            chunks: list[bytes] = []
            size = newlines = 0
            at_end = False
            while size < _SNIFF_BYTES and newlines <= 4 * _SNIFF_LINES:  # blank lines count too
                chunk = f.read(min(1 << 16, _SNIFF_BYTES - size))
                if not chunk:
                    at_end = True
                    break
                chunks.append(chunk)
                size += len(chunk)
                newlines += chunk.count(b"\n")
            data = b"".join(chunks)
            at_end = at_end or not f.read(1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if not at_end and b"\n" in data:
        data = data[: data.rindex(b"\n")]  # complete lines only
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8-sig"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    if "\x00" in text:
        raise DataError(f"{path}: not a text file (it holds NUL bytes); export the data as CSV text")
    lines: list[tuple[int, str]] = []
    for i, line in enumerate(text.split("\n")):
        line = line.rstrip("\r")
        if line.strip():
            lines.append((i, line))
            if len(lines) > _SNIFF_LINES:
                break
    return lines, encoding


def sniff_csv(path: Path, sep: str = "auto", decimal: str = "auto") -> CsvLayout:
    """Read a CSV file's first lines and tell its layout (separator, decimal mark, column names).

    ``sep`` 'auto' tries tab, semicolon, comma and whitespace, in that order, and takes the first
    that splits the header and the first data lines into the same number of fields (or the header
    one short: a blank-headed first column); ``decimal`` 'auto' reads a decimal comma (``1,23``)
    when a file that is not comma-separated writes its numbers that way. One-line DataError when
    no separator fits."""
    import re

    sep = _sep_option(sep)
    decimal = _decimal_option(decimal)
    lines, encoding = _head_lines(path)
    if lines and re.fullmatch(r"sep=(.)", lines[0][1].strip()):  # Excel's separator line
        named = lines[0][1].strip()[4:]
        sep = sep if sep != "auto" else _SEP_ALIASES.get(named, "auto")
        lines = lines[1:]
    if not lines:
        raise DataError(f"{path}: the file is empty")
    (header_line, header), rows = lines[0], [line for _, line in lines[1:]]
    if not rows:
        raise DataError(f"{path}: only a header line, no data rows")
    detected = sep == "auto"
    fit: str | None = None
    if detected:
        for candidate in ("\t", ";", ",", "whitespace"):
            fit = _fit(header, rows, candidate)
            if fit is not None:
                sep = candidate
                break
        else:
            raise DataError(
                f"{path}: cannot tell the column separator: neither tab, semicolon, comma nor whitespace splits the "
                f"header and the first data lines into the same number of columns; give loader option sep "
                f"(or --sep), or check the file's first lines"
            )
    else:
        fit = _fit(header, rows, sep) or "exact"  # pandas reports rows that do not fit
    if decimal == "," and sep == ",":
        raise DataError(f"{path}: a comma-separated file cannot use a decimal comma; give sep ';' (or tab)")
    if decimal == "auto":
        decimal = _guess_decimal(rows, sep)
    raw = [f.strip() for f in _split_line(header, sep)]
    if fit == "short":
        raw = ["", *raw]
    elif fit == "trailing":
        raw = [*raw, ""]
    names = tuple(f if f else f"Unnamed: {i}" for i, f in enumerate(raw))
    seen: dict[str, int] = {}
    for i, f in enumerate(raw):
        if f and f in seen:
            raise DataError(
                f"{path}: column {f!r} appears twice in the header (columns {seen[f] + 1} and {i + 1}); "
                f"give each column its own name"
            )
        seen.setdefault(f, i)
    return CsvLayout(
        path=path,
        sep=sep,
        decimal=decimal,
        encoding=encoding,
        names=names,
        blank=tuple(not f for f in raw),
        skip=header_line + 1,
        detected=detected,
    )


def read_csv_layout(layout: CsvLayout, text_columns: Iterable[str] = ()) -> Any:
    """The file's data rows as a DataFrame with the layout's column names; ``text_columns`` are
    read as text (sample ids: ``007`` stays ``007``). Blank-headed columns with no value at all
    (a trailing separator) are dropped."""
    import pandas as pd

    text = {layout.names.index(c): str for c in text_columns if c in layout.names}
    kwargs: dict[str, Any] = dict(
        sep=r"\s+" if layout.sep == "whitespace" else layout.sep,
        decimal=layout.decimal,
        header=None,
        skiprows=layout.skip,
        dtype=text or None,
        low_memory=False,
    )
    path = layout.path
    try:
        try:
            df = pd.read_csv(path, encoding=layout.encoding, **kwargs)
        except UnicodeDecodeError:
            df = pd.read_csv(path, encoding="latin-1", **kwargs)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: only a header line, no data rows") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path} as CSV ({layout.sep_name}-separated): {first}") from None
    if df.shape[1] != len(layout.names):
        raise DataError(
            f"{path}: the header names {len(layout.names)} columns but the first data row has {df.shape[1]} "
            f"({layout.sep_name}-separated); check the separator (loader option sep)"
        )
    df.columns = list(layout.names)
    empty = [c for c, b in zip(layout.names, layout.blank) if b and df[c].isna().all()]
    return df.drop(columns=empty) if empty else df


def csv_axis_value(name: Any, decimal: str = ".") -> float | None:
    """A column header as a position on the axis (``1100``, ``1100.5``; ``1100,5`` with a decimal
    comma), or None. A unit after the number (``1100 nm``) is not read: give plain numbers."""
    text = str(name).strip()
    if decimal == "," and text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    return _parse_axis_value(text)


def _unit_header_hint(names: Iterable[str]) -> str:
    import re

    global _UNIT_HEADER
    if _UNIT_HEADER is None:
        _UNIT_HEADER = re.compile(r"^[+-]?\d+(?:[.,]\d+)?\s*(?:nm|cm-1|cm\^-1|cm⁻¹|1/cm|um|µm)$", re.IGNORECASE)
    for n in names:
        if _UNIT_HEADER.match(str(n).strip()):
            return (f"; headers like {str(n).strip()!r} carry a unit: write the plain number (e.g. "
                    f"{re.match(r'[+-]?[0-9.,]+', str(n).strip()).group(0)}) and give the unit with axis_unit")
    return ""


def _csv_numeric(df: Any, cols: list[str], path: Path, what: str, decimal: str) -> np.ndarray:
    """The columns as floats; missing cells (empty, NA, NaN) are NaN, a cell that is not a number
    is a DataError naming file, data row and column, and so is an infinite value."""
    import pandas as pd

    block = df[cols]
    try:
        out = block.to_numpy(dtype=float)
    except (ValueError, TypeError):
        converted = {}
        for c in cols:
            col = block[c]
            if pd.api.types.is_numeric_dtype(col):
                converted[c] = col.astype(float)
                continue
            present = col.notna().to_numpy()
            text = np.array([str(v).strip() if ok else "" for v, ok in zip(col.to_numpy(dtype=object), present)],
                            dtype=object)
            plain = np.char.replace(text.astype(str), ",", ".") if decimal == "," else text.astype(str)
            number = pd.to_numeric(pd.Series(np.where(text == "", None, plain), index=col.index), errors="coerce")
            bad = number.isna().to_numpy() & (text != "")
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{path}: {what} column {c!r}, data row {row + 1}: {col.iloc[row]!r} is not a number")
            converted[c] = number.astype(float)
        out = pd.DataFrame(converted, columns=cols).to_numpy(dtype=float)
    inf = np.isinf(out)
    if inf.any():
        row, j = (int(v[0]) for v in np.nonzero(inf))
        raise DataError(f"{path}: {what} column {cols[j]!r}, data row {row + 1}: the value is infinite")
    return out


def _numeric_share(df: Any, column: str, decimal: str) -> tuple[int, int]:
    """(cells with a value, cells whose value is a number) of a column."""
    import pandas as pd

    col = df[column]
    if pd.api.types.is_bool_dtype(col):
        return int(col.notna().sum()), 0
    if pd.api.types.is_numeric_dtype(col):
        n = int(col.notna().sum())
        return n, n
    text = col.dropna().astype(str).str.strip()
    text = text[text != ""]
    if decimal == ",":
        text = text.str.replace(",", ".", regex=False)
    return int(len(text)), int(pd.to_numeric(text, errors="coerce").notna().sum())


def _numeric_column(df: Any, column: str, decimal: str, mostly: bool = False) -> bool:
    """Whether the column's values are numbers (at least one value; missing cells allowed);
    ``mostly``: more than half of them (a stray text cell is then an error naming it)."""
    n, numeric = _numeric_share(df, column, decimal)
    return n > 0 and (2 * numeric > n if mostly else numeric == n)


def usable_as_ids(df: Any, column: str, decimal: str = ".") -> bool:
    """A blank-headed first column is taken for sample ids when every row has a value and the
    values are not numbers, or are all different (a numeric column with repeats is data)."""
    col = df[column]
    if col.isna().any():
        return False
    values = col.astype(str).str.strip()
    if (values == "").any():
        return False
    return not _numeric_column(df, column, decimal) or not values.duplicated().any()


def _column_label(name: str | None, blank: bool) -> str:
    return "the blank-headed first column" if blank else repr(name)


def _resolve_id_column(layout: CsvLayout, wanted: str | None, what: str, option: str) -> str | None:
    """The column holding sample ids: ``wanted`` by name, '' for the blank-headed column, None
    for the blank-headed first column if any (checked on its values later)."""
    if wanted is None:
        return layout.first_blank
    if wanted == "":
        for n, b in zip(layout.names, layout.blank):
            if b:
                return n
        raise DataError(
            f"{layout.path}: {option} '' means the column with a blank header, but every column of the {what} "
            f"has a name (first: {layout.names[0]!r}); name the id column"
        )
    if wanted not in layout.names:
        from ctbench.names import did_you_mean

        others = [n for n in layout.names if csv_axis_value(n, layout.decimal) is None]
        raise DataError(
            f"{layout.path}: no sample-id column {wanted!r}{did_you_mean(wanted, others)} (option {option}); "
            f"non-spectral columns: {', '.join(others) or '(none)'}"
        )
    return wanted


def _sample_ids(df: Any, column: str, path: Path, blank: bool) -> np.ndarray:
    ids = df[column].astype(object).where(df[column].notna(), "").astype(str).str.strip().to_numpy()
    empty = np.flatnonzero(ids == "")
    if empty.size:
        raise DataError(
            f"{path}: data row {int(empty[0]) + 1} has no sample id in {_column_label(column, blank)} "
            f"({empty.size} row(s) without one)"
        )
    return ids


@dataclass
class CsvReport:
    """What the csv loader found, for ``ctbench tasks new`` to print."""

    layouts: dict[str, CsvLayout] = field(default_factory=dict)
    """Instrument name (and 'references') -> the file's layout."""
    id_columns: dict[str, str | None] = field(default_factory=dict)
    """Instrument name (and 'references') -> its sample-id column (None: paired by row)."""
    properties_from: dict[str, str] = field(default_factory=dict)
    """Property -> 'references' or 'instrument files'."""
    reference_rows: int = 0
    unmatched_references: int = 0
    """Rows of the references file whose sample id has no spectrum in any instrument file (ignored)."""
    without_reference: dict[str, int] = field(default_factory=dict)
    """Instrument -> spectra whose sample id has no row in the references file (NaN references)."""


def load_csv(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """A user's CSV files, one per instrument (``files: {inst: path}``), optionally with a separate
    references file joined by sample id (``references: path``).

    Separators (comma, semicolon, tab, whitespace) and a decimal comma are detected unless
    ``sep`` / ``decimal`` are given. Spectral columns are those whose header parses as a number
    (the axis), unless ``spectral_columns`` lists them; ``properties`` names the reference
    columns (with a references file: by default every numeric column of it); ``id_column`` names
    the sample-id column ('' or left out: a first column with a blank header), else rows are
    paired by position and all files need the same row count. A missing reference value (empty
    cell, NA, NaN; or no row in the references file) is NaN. Every other column is kept in
    ``Spectra.meta`` under its name.
    """
    return read_csv_dataset(options)[0]


def read_csv_dataset(options: Mapping[str, Any]) -> tuple[Dataset, CsvReport]:
    """:func:`load_csv`, and a report of what it found (layouts, id columns, join counts)."""
    from ctbench.data.mirror import sha256_file

    options = _check_options("csv", options, CSV_OPTIONS)
    files = _instrument_files("csv", options)
    unit = _axis_unit("csv", options)
    props_opt = _string_list("csv", options, "properties")
    chosen = _string_list("csv", options, "spectral_columns")
    id_opt = _optional_name(options, "id_column")
    sep = _sep_option(options.get("sep", "auto"))
    decimal = _decimal_option(options.get("decimal", "auto"))
    base = options.get("base_dir")
    report = CsvReport()
    shas: dict[str, str] = {}
    frames: dict[str, tuple[Path, CsvLayout, Any]] = {}
    ids_of: dict[str, np.ndarray | None] = {}
    for inst, value in files.items():
        p = _user_path(value, base, "csv", f"instrument {inst!r}")
        layout = sniff_csv(p, sep, decimal)
        id_col = _resolve_id_column(layout, id_opt, "file", "id_column")
        df = read_csv_layout(layout, [id_col] if id_col else [])
        if id_col is not None and id_opt is None and not usable_as_ids(df, id_col, layout.decimal):
            id_col = None  # a blank-headed numeric column with repeats: data, not ids
        ids_of[inst] = None if id_col is None else _sample_ids(df, id_col, p, layout.blank[layout.names.index(id_col)])
        frames[inst] = (p, layout, df)
        report.layouts[inst] = layout
        report.id_columns[inst] = id_col
        shas[str(value)] = sha256_file(p)
    with_ids = [inst for inst, ids in ids_of.items() if ids is not None]
    without = [inst for inst, ids in ids_of.items() if ids is None]
    refs_value = options.get("references")
    if with_ids and without:
        raise DataError(
            f"{frames[without[0]][0]}: no sample-id column, while {frames[with_ids[0]][0]} has one "
            f"({_column_label(report.id_columns[with_ids[0]], id_opt is None)}); name the id column of every "
            f"file with id_column"
        )
    if refs_value is not None and without:
        raise DataError(
            f"dataset 'csv': with a references file every instrument file needs a sample-id column: name it "
            f"with id_column, or leave the first column's header blank ({frames[without[0]][0]} has none)"
        )
    if without:
        counts = {inst: len(df) for inst, (_, _, df) in frames.items()}
        if len(set(counts.values())) > 1:
            raise DataError(
                "dataset 'csv': files have different row counts "
                f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); name the sample-id column with id_column"
            )
        ids_of = {inst: _ids("row", len(df)) for inst, (_, _, df) in frames.items()}

    refs = None
    if refs_value is not None:
        refs = _read_references(refs_value, options, id_opt, sep, decimal, report)
        shas[str(refs_value)] = sha256_file(refs[0])
    properties = _csv_properties(props_opt, refs, frames, report)

    all_ids: set[str] = set()
    instruments: dict[str, Spectra] = {}
    for inst, (p, layout, df) in frames.items():
        ids = ids_of[inst]
        assert ids is not None
        all_ids.update(ids.tolist())
        cols, axis = _csv_spectral(df, layout, chosen, p)
        values = _csv_numeric(df, cols, p, "spectral", layout.decimal)
        order = np.argsort(axis, kind="stable")
        if np.any(np.diff(axis[order]) == 0):
            raise DataError(f"{p}: two spectral columns name the same axis position")
        if not np.all(order == np.arange(order.size)):
            axis, values = axis[order], values[:, order]
        _check_finite_rows(values, str(p), ids)
        y = None
        used = set(cols) | ({report.id_columns[inst]} if report.id_columns[inst] else set())
        meta: dict[str, Any] = {}
        if properties:
            y = np.full((len(df), len(properties)), np.nan)
            ref_rows = None
            if refs is not None:
                index = refs[2]
                ref_rows = np.array([index.get(s, -1) for s in ids], dtype=int)
                report.without_reference[inst] = int((ref_rows < 0).sum())
            for j, prop in enumerate(properties):
                if report.properties_from[prop] == "references":
                    assert refs is not None and ref_rows is not None
                    hit = ref_rows >= 0
                    y[hit, j] = refs[3][prop][ref_rows[hit]]
                else:
                    y[:, j] = _csv_numeric(df, [prop], p, "property", layout.decimal)[:, 0]
                    used.add(prop)
            if refs is not None:
                assert ref_rows is not None
                for c, vals in refs[4].items():
                    if c not in df.columns:
                        meta[c] = _take_meta(vals, ref_rows)
        meta = {**{c: df[c].to_numpy() for c in df.columns if c not in used}, **meta}
        instruments[inst] = Spectra(
            values=values,
            axis=axis,
            axis_unit=unit,
            instrument=inst,
            sample_ids=ids,
            y=y,
            properties=properties,
            source=str(p),
            meta=meta,
        )
    if refs is not None:
        report.reference_rows = len(refs[2])
        report.unmatched_references = len(set(refs[2]) - all_ids)
        if "description" not in options:
            notes = []
            if report.unmatched_references:
                notes.append(f"{report.unmatched_references} reference row(s) match no spectrum (ignored)")
            missing = sum(report.without_reference.values())
            if missing:
                notes.append(f"{missing} spectra have no reference row")
            if notes:
                options["description"] = f"user data read by the csv loader; references {refs_value}: " + "; ".join(notes)
    return _finish_generic("csv", options, instruments, properties, shas), report


def _optional_name(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"dataset 'csv': option {key!r} must be a column name, got {value!r}")
    return str(value).strip()


def _take_meta(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    hit = rows >= 0
    if values.dtype.kind in "fiub":
        out = np.full(rows.shape, np.nan)
        out[hit] = values[rows[hit]]
        return out
    out = np.full(rows.shape, "", dtype=object)
    out[hit] = values[rows[hit]]
    return out


def _read_references(
    value: Any, options: Mapping[str, Any], id_opt: str | None, sep: str, decimal: str, report: CsvReport
) -> tuple[Path, CsvLayout, dict[str, int], dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    """(path, layout, sample id -> row, numeric columns by name, other columns by name, frame)."""
    p = _user_path(value, options.get("base_dir"), "csv", "references")
    layout = sniff_csv(p, sep, decimal)
    ref_opt = _optional_name(options, "references_id_column")
    if ref_opt is None:
        ref_opt = id_opt
    if ref_opt is None and layout.first_blank is None:
        raise DataError(
            f"{p}: cannot tell which column of the references file holds the sample ids (its first column, "
            f"{layout.names[0]!r}, has a header); name it with references_id_column"
        )
    option = ("references_id_column" if options.get("references_id_column") is not None
              else "id_column; name the references file's own with references_id_column")
    id_col = _resolve_id_column(layout, ref_opt, "references file", option)
    assert id_col is not None
    df = read_csv_layout(layout, [id_col])
    ids = _sample_ids(df, id_col, p, layout.blank[layout.names.index(id_col)])
    index: dict[str, int] = {}
    for row, sid in enumerate(ids.tolist()):
        if sid in index:
            raise DataError(
                f"{p}: sample id {sid!r} is in data rows {index[sid] + 1} and {row + 1}; a references file has one "
                f"row per sample"
            )
        index[sid] = row
    report.layouts["references"] = layout
    report.id_columns["references"] = id_col
    numeric: dict[str, np.ndarray] = {}
    other: dict[str, np.ndarray] = {}
    for c in df.columns:
        if c == id_col:
            continue
        if _numeric_column(df, c, layout.decimal, mostly=True):
            numeric[c] = _csv_numeric(df, [c], p, "reference", layout.decimal)[:, 0]
        else:
            other[c] = df[c].astype(object).where(df[c].notna(), "").to_numpy()
    return p, layout, index, numeric, other, df


def _csv_properties(props_opt: list[str] | None, refs: Any, frames: dict[str, tuple[Path, CsvLayout, Any]],
                    report: CsvReport) -> tuple[str, ...]:
    """The properties and where each comes from: the references file when it has the column,
    else every instrument file."""
    from ctbench.names import did_you_mean

    if props_opt is None:
        if refs is None:
            return ()
        p, layout, _, numeric, other, _ = refs
        if not numeric:
            raise DataError(
                f"{p}: no numeric reference column besides the sample ids; non-numeric columns: "
                f"{', '.join(other) or '(none)'} (a cell that is not a number keeps a column out: list the "
                f"properties with 'properties' to see which)"
            )
        for c in numeric:
            report.properties_from[c] = "references"
        return tuple(numeric)
    for prop in props_opt:
        if refs is not None and prop in refs[5].columns:
            if prop not in refs[3]:
                # not numeric: let the cell error name the row
                _csv_numeric(refs[5], [prop], refs[0], "reference", refs[1].decimal)
                raise DataError(f"{refs[0]}: reference column {prop!r} has no values")
            report.properties_from[prop] = "references"
            continue
        for p, layout, df in frames.values():
            if prop not in df.columns:
                names = [n for n in df.columns if csv_axis_value(n, layout.decimal) is None]
                if refs is not None:
                    names += [n for n in refs[5].columns if n not in names]
                where = f"{p} (nor in {refs[0]})" if refs is not None else str(p)
                raise DataError(
                    f"{where}: no property column {prop!r}{did_you_mean(prop, names)}; non-spectral columns: "
                    f"{', '.join(names) or '(none)'}"
                )
        report.properties_from[prop] = "instrument files"
    return tuple(props_opt)


def _csv_spectral(df: Any, layout: CsvLayout, chosen: list[str] | None, p: Path) -> tuple[list[str], np.ndarray]:
    if chosen is None:
        return _spectral_columns(df, p, layout.decimal)
    for c in chosen:
        if c not in df.columns:
            raise _missing_column(p, c, df.columns, "spectral")
    parsed = [csv_axis_value(c, layout.decimal) for c in chosen]
    if any(v is None for v in parsed):
        bad = chosen[[v is None for v in parsed].index(True)]
        raise DataError(f"{p}: spectral column {bad!r} does not name a position on the axis (not a number)")
    return list(chosen), np.asarray(parsed, dtype=float)


MAT_OPTIONS = (
    "file", "files", "spectra", "y", "properties", "axis", "axis_unit", "ids", "base_dir", "name", "description"
)


def load_mat(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """A user's MATLAB (v5/v7) files.

    Either one ``file`` holding every instrument (``spectra: {inst: variable}``) or ``files:
    {inst: path}`` with the same ``spectra: variable`` in each. ``y`` names the reference matrix
    (``properties`` its column names, else the labels of a PLS_Toolbox dataset), ``axis`` a
    variable or a list of numbers (else the dataset's axisscale), ``ids`` a sample-id variable
    (else rows are paired by position).
    """
    from ctbench.data.mirror import sha256_file

    options = _check_options("mat", options, MAT_OPTIONS)
    unit = _axis_unit("mat", options)
    base = options.get("base_dir")
    spectra_opt = options.get("spectra")
    shas: dict[str, str] = {}
    # instrument -> (path, variable name)
    plan: dict[str, tuple[Path, str]] = {}
    if options.get("file") is not None and options.get("files") is not None:
        raise DataError("dataset 'mat': give either 'file' or 'files', not both")
    if options.get("file") is not None:
        p = _user_path(options["file"], base, "mat", "MATLAB")
        shas[str(options["file"])] = sha256_file(p)
        if not isinstance(spectra_opt, Mapping) or not spectra_opt:
            raise DataError("dataset 'mat': with 'file', option 'spectra' must map instrument names to variables")
        plan = {str(inst): (p, str(var)) for inst, var in spectra_opt.items()}
    else:
        files = _instrument_files("mat", options)
        if not isinstance(spectra_opt, str):
            raise DataError("dataset 'mat': with 'files', option 'spectra' must name the spectra variable")
        for inst, value in files.items():
            p = _user_path(value, base, "mat", f"instrument {inst!r}")
            shas[str(value)] = sha256_file(p)
            plan[inst] = (p, spectra_opt)
    loaded: dict[Path, dict[str, Any]] = {}
    properties_opt = _string_list("mat", options, "properties")
    instruments: dict[str, Spectra] = {}
    properties: tuple[str, ...] = ()
    for inst, (p, var) in plan.items():
        mat = loaded.setdefault(p, _loadmat(p))
        values, axis, _ = _mat_parts(_mat_var(mat, var, p))
        values = np.asarray(values, dtype=float)
        if values.ndim != 2:
            raise DataError(f"{p}: variable {var!r} is not a 2-D matrix (shape {values.shape})")
        axis_opt = options.get("axis")
        if isinstance(axis_opt, str):
            axis = np.asarray(_mat_parts(_mat_var(mat, axis_opt, p))[0], dtype=float).ravel()
        elif axis_opt is not None:
            axis = np.asarray(axis_opt, dtype=float).ravel()
        if axis is None:
            raise DataError(f"{p}: variable {var!r} has no axis; give option 'axis' (a variable or a list of numbers)")
        if options.get("ids") is not None:
            raw = np.asarray(_mat_parts(_mat_var(mat, str(options["ids"]), p))[0]).ravel()
            ids = np.array([str(v).strip() for v in raw])
        else:
            ids = _ids("row", values.shape[0])
        _check_finite_rows(values, str(p), ids, what=f"row {{row}} of variable {var!r}")
        y = None
        if options.get("y") is not None:
            yv, _, labels = _mat_parts(_mat_var(mat, str(options["y"]), p))
            y = np.asarray(yv, dtype=float)
            y = y[:, None] if y.ndim == 1 else y
            names = properties_opt or labels
            if not names:
                raise DataError(f"{p}: give option 'properties' (names of the columns of {options['y']!r})")
            properties = tuple(names)
        instruments[inst] = Spectra(
            values=values,
            axis=axis,
            axis_unit=unit,
            instrument=inst,
            sample_ids=ids,
            y=y,
            properties=properties if y is not None else (),
            source=str(p),
        )
    if options.get("ids") is None:
        counts = {inst: s.n for inst, s in instruments.items()}
        if len(set(counts.values())) > 1:
            raise DataError(
                "dataset 'mat': instruments have different row counts "
                f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); name a sample-id variable with 'ids'"
            )
    return _finish_generic("mat", options, instruments, properties, shas)


# --- synthetic ----------------------------------------------------------------------------


def load_synthetic(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """The embedded synthetic two-instrument demo (options: n_samples, n_channels, seed)."""
    from ctbench.data.synthetic import synthetic_dataset

    options = _check_options("synthetic", options, ("n_samples", "n_channels", "seed"))
    kwargs: dict[str, int] = {}
    for k, v in options.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise DataError(f"dataset 'synthetic': option {k!r} must be an integer, got {v!r}")
        try:
            f = float(v)
            ok = f.is_integer()
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise DataError(f"dataset 'synthetic': option {k!r} must be an integer, got {v!r}")
        kwargs[k] = int(f)
    low = {"n_samples": 8, "n_channels": 2, "seed": 0}
    high = {"n_samples": SYNTHETIC_MAX_SAMPLES, "n_channels": SYNTHETIC_MAX_CHANNELS, "seed": 2**63 - 1}
    for k, v in kwargs.items():
        if not low[k] <= v <= high[k]:
            raise DataError(f"dataset 'synthetic': option {k!r} must be between {low[k]} and {high[k]}, got {v}")
    n, p = kwargs.get("n_samples", 120), kwargs.get("n_channels", 200)
    if n * p > SYNTHETIC_MAX_VALUES:
        raise DataError(
            f"dataset 'synthetic': n_samples x n_channels = {n * p} values per instrument, at most {SYNTHETIC_MAX_VALUES}"
        )
    return synthetic_dataset(**kwargs)


SYNTHETIC_MAX_SAMPLES = 100_000
SYNTHETIC_MAX_CHANNELS = 100_000
SYNTHETIC_MAX_VALUES = 5_000_000
"""Bounds of the synthetic demo's size (5 M values per instrument: 40 MB per array)."""


# --- resolve + load, memoized per process --------------------------------------------------

_loaded: dict[tuple[str, tuple[str, ...], str], Dataset] = {}
_loaded_lock = threading.Lock()


def _freeze(dataset: Dataset) -> None:
    """Mark the arrays read-only: a memoized Dataset is shared by every task that uses it."""
    for s in dataset.instruments.values():
        for arr in (s.values, s.axis, s.sample_ids, s.y, *s.meta.values()):
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False


def load_dataset(
    loader: DatasetLoader, data_dir: str | os.PathLike[str] | None = None, options: Mapping[str, Any] | None = None
) -> Dataset:
    """Resolve and verify each of the loader's files, then load; memoized per process by
    (name, paths, options), so tasks sharing a file read it once. Arrays come back read-only."""
    from ctbench.data.mirror import resolve

    options = dict(options or {})
    paths = [resolve(f, data_dir) for f in loader.files]
    key = (loader.name, tuple(str(p) for p in paths), _options_key(loader.name, options))
    with _loaded_lock:
        if key in _loaded:
            return _loaded[key]
    dataset = loader.load(paths, options)
    if not isinstance(dataset, Dataset):
        raise DataError(f"dataset loader {loader.name!r} returned {type(dataset).__name__}, not a Dataset")
    if not dataset.sha256 and loader.files:
        dataset.sha256 = _registered_shas(loader.files, paths)
    _freeze(dataset)
    with _loaded_lock:
        return _loaded.setdefault(key, dataset)


MAX_OPTION_VALUES = 100_000
"""Most values (counted with repeats) loader options may hold: options are a card's plain data."""


def _options_key(loader: str, options: Mapping[str, Any]) -> str:
    """The options as canonical JSON (the memo key), refusing in one line options too large to be
    a card's (such as a structure sharing its parts many times over, or referring to itself)."""
    count, stack = 0, [options]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_OPTION_VALUES:
            raise DataError(
                f"dataset {loader!r}: loader options hold more than {MAX_OPTION_VALUES} values "
                f"(or refer to themselves); give plain, small options"
            )
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
    try:
        return json.dumps(options, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset {loader!r}: loader options are not plain data ({exc})") from None


def clear_loaded() -> None:
    """Forget the memoized datasets (tests; a long-lived process whose files changed)."""
    with _loaded_lock:
        _loaded.clear()
