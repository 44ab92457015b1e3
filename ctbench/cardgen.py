"""Card inference for ``ctbench tasks new``: look at a user's CSV files and work out a task card.

What is inferred, each with the flag that overrides it:

- the column separator and decimal mark of each file (the csv loader's detection; ``--sep``,
  ``--decimal``);
- the sample-id column (``--id-column``; '' is a blank-headed first column): a blank-headed
  first column, else a column named like an id (``id``, ``sample``, ...) in every file, else a
  first column of distinct text values; none means rows are paired by position;
- the spectral columns (numeric headers) and the unit of their axis (``--axis-unit``): cm-1 when
  the axis reaches above 2600 or below 150, or runs high to low in the file; nm for a regular
  axis inside 350-2600; otherwise it cannot tell;
- the properties (``--properties``): the numeric columns of the references file, or the numeric
  non-spectral columns every instrument file has (integer columns with at most 10 distinct values
  look like labels and are left out);
- source and target (``--source``, ``--target``): the first and second ``--file`` when there are two;
- the alignment (``--alignment``): ``none`` when both instruments share the axis, else ``overlap``;
- the shot grid (``--shots``): 5, 10, 20, 30, 50 below the smallest calibration pool.

What cannot be inferred raises :class:`NeedInput` naming the flag; the command asks for it
instead when it runs on a terminal. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.data.spectra import DataError

DEFAULT_SHOTS = (5, 10, 20, 30, 50)
ID_NAMES = ("id", "sample", "sample_id", "sampleid", "sample id", "sample-id", "sample_name", "samplename",
            "sample name", "name", "code", "sample_code", "label")
"""Column names (case-insensitive) taken for a sample-id column."""
CATEGORICAL_MAX = 10
"""A numeric column of integers with at most this many distinct values looks like a label (fold,
flag, batch), not a property."""


class NeedInput(DataError):
    """Something ``tasks new`` cannot infer: the message names the flag that gives it."""

    def __init__(self, message: str, flag: str, choices: list[str] | None = None) -> None:
        super().__init__(message)
        self.flag = flag
        self.choices = choices or []


@dataclass
class FileInfo:
    """What one CSV file holds."""

    role: str
    """The instrument's name, or 'references'."""
    path: Path
    layout: Any
    rows: int
    columns: list[str]
    axis: Any = None
    """Sorted axis positions of the spectral columns (None: no spectral columns)."""
    descending: bool = False
    numeric: list[str] = field(default_factory=list)
    """Numeric non-spectral columns."""
    text: dict[str, list[str]] = field(default_factory=dict)
    """Non-numeric non-spectral columns -> their distinct values (first 20)."""
    categorical: list[str] = field(default_factory=list)
    """Numeric columns that look like labels."""
    blank_id: bool = False
    """The first column's header is blank and its values can be ids."""
    unique: dict[str, bool] = field(default_factory=dict)
    """Non-spectral column -> whether every row has a distinct value."""

    @property
    def spectral(self) -> int:
        return 0 if self.axis is None else int(self.axis.size)

    def describe_layout(self) -> str:
        lay = self.layout
        how = f"{lay.sep_name}-separated" + (" (detected)" if lay.detected else "")
        if lay.decimal == ",":
            how += ", decimal comma"
        return how


def inspect_file(path: Path, role: str, sep: str = "auto", decimal: str = "auto") -> FileInfo:
    """Read one file and classify its columns."""
    import numpy as np

    from ctbench.data.loaders import csv_axis_value, read_csv_layout, sniff_csv, usable_as_ids

    if not path.is_file():
        raise DataError(f"{role}: file not found: {path}")
    layout = sniff_csv(path, sep, decimal)
    text_cols = [n for n in layout.names if csv_axis_value(n, layout.decimal) is None]
    df = read_csv_layout(layout, text_cols[:1])
    info = FileInfo(role=role, path=path, layout=layout, rows=len(df), columns=[str(c) for c in df.columns])
    positions = []
    from ctbench.data.loaders import _numeric_column

    for c in df.columns:
        v = csv_axis_value(c, layout.decimal)
        if v is not None:
            positions.append(v)
            continue
        col = df[c]
        info.unique[c] = bool(col.notna().all() and not col.astype(str).str.strip().duplicated().any())
        if _numeric_column(df, c, layout.decimal, mostly=True):
            info.numeric.append(c)
            if _looks_categorical(df, c, layout.decimal):
                info.categorical.append(c)
        else:
            info.text[c] = [str(v) for v in col.dropna().astype(str).str.strip().unique()[:20]]
    if positions:
        a = np.asarray(positions, dtype=float)
        info.descending = bool(a.size > 1 and a[0] > a[-1])
        info.axis = np.sort(a)
    first = layout.first_blank
    if first is not None and first in df.columns and usable_as_ids(df, first, layout.decimal):
        info.blank_id = True
    return info


def _looks_categorical(df: Any, column: str, decimal: str) -> bool:
    import numpy as np
    import pandas as pd

    col = df[column]
    if not pd.api.types.is_numeric_dtype(col):
        text = col.dropna().astype(str).str.strip()
        col = pd.to_numeric(text.str.replace(",", ".", regex=False) if decimal == "," else text, errors="coerce")
    values = col.dropna().to_numpy(dtype=float)
    return bool(values.size) and bool(np.all(values == np.round(values))) and len(np.unique(values)) <= CATEGORICAL_MAX


# --- the inferences -------------------------------------------------------------------------


def infer_id_column(files: dict[str, FileInfo]) -> tuple[str | None, str]:
    """(the loader's id_column: '' for a blank-headed first column, None for pairing by row; why)."""
    infos = list(files.values())
    if all(f.blank_id for f in infos):
        return "", ""
    common = set(infos[0].columns).intersection(*(set(f.columns) for f in infos[1:]))
    for want in ID_NAMES:
        for c in infos[0].columns:
            if c in common and c.strip().lower() == want:
                return c, "named like a sample id"
    first = infos[0].columns[0]
    if first in common and all(first in f.text and f.unique.get(first) for f in infos):
        return first, "the first column, distinct text values"
    return None, "none found"


def infer_references_id(refs: FileInfo, id_column: str | None) -> tuple[str | None, str]:
    """(references_id_column to write, or None when id_column applies as it is; why)."""
    if id_column == "" and refs.blank_id:
        return None, ""
    if id_column and id_column in refs.columns:
        return None, ""
    if refs.blank_id:
        return "", ""
    for want in ID_NAMES:
        for c in refs.columns:
            if c.strip().lower() == want and refs.unique.get(c):
                return c, "named like a sample id"
    first = refs.columns[0]
    if refs.unique.get(first) and first not in refs.numeric:
        return first, "the first column, distinct values"
    raise NeedInput(
        f"{refs.path}: cannot tell which column of the references file holds the sample ids; "
        f"give --references-id-column (columns: {', '.join(refs.columns[:12])})",
        "--references-id-column",
        refs.columns,
    )


def infer_unit(files: dict[str, FileInfo]) -> tuple[str | None, str]:
    """(axis unit or None when it cannot tell, why)."""
    import numpy as np

    infos = [f for f in files.values() if f.axis is not None]
    lo = min(float(f.axis[0]) for f in infos)
    hi = max(float(f.axis[-1]) for f in infos)
    span = f"{lo:g}-{hi:g}"
    if any(f.descending for f in infos):
        return "cm-1", f"the spectral columns run from high to low ({span}), as wavenumbers usually do"
    if hi > 2600:
        return "cm-1", f"the axis reaches {hi:g}, beyond NIR wavelengths in nm"
    if lo < 150:
        return "cm-1", f"the axis starts at {lo:g}, below any wavelength in nm"
    regular = all(f.axis.size < 3 or np.ptp(np.diff(f.axis)) <= 0.01 * np.median(np.diff(f.axis)) for f in infos)
    if lo >= 350 and regular:
        return "nm", f"a regular axis {span} looks like wavelengths in nm (Vis/NIR)"
    return None, f"the axis {span} could be nm or cm-1"


def infer_properties(files: dict[str, FileInfo], refs: FileInfo | None, id_column: str | None,
                     references_id: str | None) -> tuple[list[str], list[str]]:
    """(properties, notes)."""
    notes: list[str] = []
    if refs is not None:
        skip = {references_id if references_id is not None else id_column}
        if refs.blank_id:
            skip.add(refs.layout.first_blank)
        props = [c for c in refs.numeric if c not in skip and c not in refs.categorical]
        left = [c for c in refs.numeric if c not in skip and c in refs.categorical]
        if left:
            notes.append(f"left out of the properties (few distinct integers: labels?): {', '.join(left)}")
        ids = {id_column} | {f.layout.first_blank for f in files.values() if f.blank_id}
        extra = sorted({c for f in files.values() for c in f.numeric if c not in ids} - set(props))
        if extra:
            notes.append(f"numeric columns of the instrument files not used as properties: {', '.join(extra)}")
        return props, notes
    infos = list(files.values())
    props, left, partial = [], [], []
    ids = {id_column} | {f.layout.first_blank for f in infos if f.blank_id}
    for c in infos[0].numeric:
        if c in ids:
            continue
        if not all(c in f.numeric for f in infos):
            partial.append(c)
        elif any(c in f.categorical for f in infos):
            left.append(c)
        else:
            props.append(c)
    for f in infos[1:]:
        partial += [c for c in f.numeric if c not in infos[0].numeric and c not in ids]
    if left:
        notes.append(f"left out of the properties (few distinct integers: labels?): {', '.join(left)}")
    if partial:
        notes.append(f"numeric columns not in every file, not used: {', '.join(sorted(set(partial)))}")
    return props, notes


def official_split_hint(files: dict[str, FileInfo], refs: FileInfo | None) -> tuple[str, list[str], list[str]] | None:
    """(column, its test values, its other values) of a text column that looks like a given split."""
    infos = list(files.values()) + ([refs] if refs is not None else [])
    for f in infos:
        for c, values in f.text.items():
            tests = [v for v in values if v.strip().lower() in ("test", "testing", "test set", "val_test")]
            if tests and len(values) <= 10:
                return c, tests, [v for v in values if v not in tests]
    return None


def default_shots(min_pool: int) -> list[int]:
    shots = [n for n in DEFAULT_SHOTS if n < min_pool]
    return shots or [max(1, min_pool - 1)]


# --- the card text --------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def yaml_scalar(value: Any) -> str:
    """A value as a YAML flow scalar: plain when safe, else JSON (a valid YAML double-quoted
    string); numbers as numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "null"
    s = str(value)
    if _PLAIN.fullmatch(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s, ensure_ascii=False)


def yaml_flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_scalar(k)}: {yaml_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_flow(v) for v in value) + "]"
    return yaml_scalar(value)


@dataclass
class CardSpec:
    """Everything a written card says."""

    name: str
    description: str
    source: str
    target: str
    properties: list[str]
    loader_options: dict[str, Any]
    test: dict[str, Any]
    alignment: dict[str, Any]
    shots: list[int]
    standards: str = "kennard_stone"
    comments: dict[str, str] = field(default_factory=dict)
    """Top-level key -> a comment written after it."""

    def text(self) -> str:
        def line(key: str, value: str) -> str:
            note = self.comments.get(key)
            return f"{key}: {value}" + (f"  # {note}" if note else "")

        out = [
            "# Written by `ctbench tasks new`; edit freely (docs/your-data.md lists every key).",
            line("name", yaml_scalar(self.name)),
            line("version", '"1"'),
            line("description", yaml_scalar(self.description)),
            line("dataset", "csv"),
            "loader_options:",
        ]
        for k, v in self.loader_options.items():
            out.append(f"  {yaml_scalar(k)}: {yaml_flow(v)}")
        out += [
            line("source", yaml_scalar(self.source)),
            line("target", yaml_scalar(self.target)),
            line("properties", yaml_flow(self.properties)),
            "test:",
            *[f"  {k}: {yaml_flow(v)}" for k, v in self.test.items()],
            "standards:",
            f"  strategy: {self.standards}",
            "alignment:",
            *[f"  {k}: {yaml_flow(v)}" for k, v in self.alignment.items()],
            line("shots", yaml_flow(self.shots)),
        ]
        return "\n".join(out) + "\n"


def card_path_value(data_file: Path, card_dir: Path) -> str:
    """How the card names a data file: relative to the card's folder when the file lies inside
    it (the card and its data move together), else absolute."""
    data_file, card_dir = data_file.resolve(), card_dir.resolve()
    try:
        return data_file.relative_to(card_dir).as_posix()
    except ValueError:
        return str(data_file)


def paired_counts(src: Any, tgt: Any) -> tuple[int, int]:
    """(samples measured on both instruments, rows paired: replicates in order)."""
    from collections import Counter

    a, b = Counter(src.sample_ids.tolist()), Counter(tgt.sample_ids.tolist())
    shared = set(a) & set(b)
    return len(shared), sum(min(a[s], b[s]) for s in shared)


def missing_per_property(src: Any, tgt: Any) -> dict[str, int]:
    """Property -> paired samples without a reference value (on either instrument's row)."""
    import numpy as np

    if src.y is None:
        return {}
    shared = set(src.sample_ids.tolist()) & set(tgt.sample_ids.tolist())
    out: dict[str, int] = {}
    for j, prop in enumerate(src.properties):
        have: set[str] = set()
        for spec in (src, tgt):
            if spec.y is None or prop not in spec.properties:
                continue
            col = spec.y[:, list(spec.properties).index(prop)]
            have |= {str(s) for s, v in zip(spec.sample_ids, col) if not np.isnan(v)}
        out[prop] = len(shared - have)
    return out


def default_out(name: str) -> Path:
    """Where a new card goes without --out: the first $CTBENCH_TASKS folder, else the current one."""
    env = os.environ.get("CTBENCH_TASKS")
    if env:
        for folder in env.split(os.pathsep):
            if folder:
                return Path(folder) / f"{name}.yaml"
    return Path(f"{name}.yaml")
