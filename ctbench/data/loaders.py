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


def _spectral_columns(df: Any, path: Path) -> tuple[list[Any], np.ndarray]:
    """Columns whose header parses as a (finite) number, and that number as the axis."""
    cols, axis = [], []
    for c in df.columns:
        v = _parse_axis_value(c)
        if v is not None:
            cols.append(c)
            axis.append(v)
    if not cols:
        raise DataError(f"{path}: no spectral columns (no column header parses as a number)")
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
    "files", "properties", "axis_unit", "id_column", "spectral_columns", "sep", "base_dir", "name", "description"
)


def load_csv(paths: list[Path], options: dict[str, Any]) -> Dataset:
    """A user's CSV files, one per instrument (``files: {inst: path}``).

    Spectral columns are those whose header parses as a number (the axis), unless
    ``spectral_columns`` lists them; ``properties`` names the reference columns; ``id_column``
    names the sample-id column (else rows are paired by position and all files need the same
    row count). Every other column is kept in ``Spectra.meta`` under its name.
    """
    from ctbench.data.mirror import sha256_file

    options = _check_options("csv", options, CSV_OPTIONS)
    files = _instrument_files("csv", options)
    unit = _axis_unit("csv", options)
    properties = tuple(_string_list("csv", options, "properties") or ())
    chosen = _string_list("csv", options, "spectral_columns")
    id_column = options.get("id_column")
    sep = str(options.get("sep", ","))
    frames: dict[str, tuple[Path, Any]] = {}
    shas: dict[str, str] = {}
    for inst, value in files.items():
        p = _user_path(value, options.get("base_dir"), "csv", f"instrument {inst!r}")
        frames[inst] = (p, _read_csv(p, sep=sep))
        shas[str(value)] = sha256_file(p)
    if id_column is None:
        counts = {inst: len(df) for inst, (_, df) in frames.items()}
        if len(set(counts.values())) > 1:
            raise DataError(
                "dataset 'csv': files have different row counts "
                f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); name the sample-id column with id_column"
            )
    instruments: dict[str, Spectra] = {}
    for inst, (p, df) in frames.items():
        df.columns = [str(c).strip() for c in df.columns]
        if chosen is None:
            cols, axis = _spectral_columns(df, p)
        else:
            for c in chosen:
                if c not in df.columns:
                    raise _missing_column(p, c, df.columns, "spectral")
            cols = list(chosen)
            parsed = [_parse_axis_value(c) for c in cols]
            if any(v is None for v in parsed):
                bad = cols[[v is None for v in parsed].index(True)]
                raise DataError(f"{p}: spectral column {bad!r} does not name a position on the axis (not a number)")
            axis = np.asarray(parsed, dtype=float)
        for c in properties:
            if c not in df.columns:
                raise _missing_column(p, c, df.columns, "property")
        if id_column is not None:
            if str(id_column) not in df.columns:
                raise _missing_column(p, str(id_column), df.columns, "sample-id")
            ids = df[str(id_column)].astype(str).str.strip().to_numpy()
        else:
            ids = _ids("row", len(df))
        values = _numeric(df, cols, p, "spectral")
        order = np.argsort(axis, kind="stable")
        if np.any(np.diff(axis[order]) == 0):
            raise DataError(f"{p}: two spectral columns name the same axis position")
        if not np.all(order == np.arange(order.size)):
            axis, values = axis[order], values[:, order]
        _check_finite_rows(values, str(p), ids)
        y = _numeric(df, list(properties), p, "property") if properties else None
        if y is not None:
            ybad = ~np.isfinite(y).all(axis=1)
            if ybad.any():
                row = int(np.flatnonzero(ybad)[0])
                raise DataError(
                    f"{p}: reference values in data row {row + 1} (sample {ids[row]}) are missing or not finite"
                )
        used = set(cols) | set(properties) | ({str(id_column)} if id_column is not None else set())
        meta = {c: df[c].to_numpy() for c in df.columns if c not in used}
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
    return _finish_generic("csv", options, instruments, properties, shas)


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
