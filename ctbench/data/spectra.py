"""The Spectra container: spectra of one instrument, their axis, sample ids and reference values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

AXIS_UNITS = ("nm", "cm-1")


class DataError(ValueError):
    """Bad or missing input data; the message is a one-line explanation for the user."""


@dataclass(frozen=True)
class Spectra:
    """Spectra measured on one instrument.

    values: (n, p) intensities; axis: (p,) increasing, in ``axis_unit`` (nm or cm-1);
    sample_ids: (n,) one id per row (replicates of a physical sample share it);
    y: (n, k) reference values for ``properties`` (None when unlabelled); NaN marks a missing
    reference value (that sample is left out of that property only; see ``ctbench.tasks``).
    """

    values: np.ndarray
    axis: np.ndarray
    axis_unit: str
    instrument: str
    sample_ids: np.ndarray
    y: np.ndarray | None = None
    properties: tuple[str, ...] = ()
    source: str = ""
    """Where the spectra came from (file path or 'synthetic:...'), for error messages."""
    synthetic: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=float)
        axis = np.asarray(self.axis, dtype=float)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "sample_ids", np.asarray(self.sample_ids).astype(str))
        where = self.source or self.instrument
        if values.ndim != 2:
            raise DataError(f"{where}: spectra must be a 2-D array (samples x channels), got shape {values.shape}")
        if axis.shape != (values.shape[1],):
            raise DataError(f"{where}: axis has {axis.size} points but spectra have {values.shape[1]} channels")
        if self.axis_unit not in AXIS_UNITS:
            raise DataError(f"{where}: axis unit {self.axis_unit!r} is not one of {AXIS_UNITS}")
        if self.sample_ids.shape != (values.shape[0],):
            raise DataError(f"{where}: {self.sample_ids.size} sample ids for {values.shape[0]} spectra")
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: spectrum in row {row} (sample {self.sample_ids[row]}) has NaN or inf values "
                f"({int(bad.sum())} bad row(s) in all)"
            )
        if self.y is not None:
            y = np.asarray(self.y, dtype=float)
            if y.ndim == 1:
                y = y[:, None]
            object.__setattr__(self, "y", y)
            if y.shape[0] != values.shape[0]:
                raise DataError(f"{where}: {y.shape[0]} reference rows for {values.shape[0]} spectra")
            if len(self.properties) != y.shape[1]:
                raise DataError(f"{where}: {y.shape[1]} reference columns but {len(self.properties)} property names")
            ybad = np.isinf(y).any(axis=1)
            if ybad.any():
                row = int(np.flatnonzero(ybad)[0])
                raise DataError(f"{where}: reference values in row {row} are infinite")
        if axis.size > 1 and not np.all(np.diff(axis) > 0):
            raise DataError(f"{where}: axis must be strictly increasing")

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def p(self) -> int:
        return int(self.values.shape[1])

    def take(self, rows: np.ndarray) -> Spectra:
        """The spectra of the given rows (and their values)."""
        rows = np.asarray(rows, dtype=int)
        return replace(
            self,
            values=self.values[rows],
            sample_ids=self.sample_ids[rows],
            y=None if self.y is None else self.y[rows],
        )

    def resample(self, new_axis: np.ndarray) -> Spectra:
        """Linear interpolation onto ``new_axis`` (which must lie within this axis)."""
        new_axis = np.asarray(new_axis, dtype=float)
        lo, hi = self.axis[0], self.axis[-1]
        if new_axis[0] < lo - 1e-9 or new_axis[-1] > hi + 1e-9:
            raise DataError(
                f"{self.source or self.instrument}: cannot resample to [{new_axis[0]}, {new_axis[-1]}] "
                f"outside the measured range [{lo}, {hi}] {self.axis_unit}"
            )
        if new_axis.shape == self.axis.shape and np.allclose(new_axis, self.axis):
            return self
        values = np.empty((self.n, new_axis.size))
        for i in range(self.n):
            values[i] = np.interp(new_axis, self.axis, self.values[i])
        return replace(self, values=values, axis=new_axis)
