"""Running a method on groups of properties: one property at a time, or around missing references.

Two cases need a method fitted more than once per work package:

- a method tagged ``multi_target=False`` is run one property at a time, as its tag asks;
- a task whose reference values are missing for some samples (NaN in ``y``, read from a user's
  files) leaves each such sample out of *that property only*: the properties are grouped by
  their pattern of missing values, and each group is fitted on the rows that have all of its
  references (calibration rows and standards alike). A method never sees a NaN reference.

:class:`PropertyGroups` holds one fitted copy per group and puts the predictions back in the
task's property order. The runner's workers and the tuner wrap a method with :func:`wrap`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np


def property_groups(y: np.ndarray, multi_target: bool = True) -> list[list[int]] | None:
    """Column groups a method is run on, or None when it can take every column at once.

    ``y`` is every reference row the method's package holds (calibration and standards).
    Columns with the same pattern of missing values form one group, in column order; a method
    tagged ``multi_target=False`` gets one group per column."""
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    k = y.shape[1]
    missing = np.isnan(y)
    if not multi_target and k > 1:
        return [[j] for j in range(k)]
    if not missing.any():
        return None
    groups: dict[bytes, list[int]] = {}
    for j in range(k):
        groups.setdefault(missing[:, j].tobytes(), []).append(j)
    return sorted(groups.values(), key=lambda g: g[0])


def restrict(data: Any, columns: list[int]) -> Any:
    """``data`` (SourceData or Standards) restricted to ``columns`` of ``y`` and to the rows
    that have every one of those references."""
    y = np.asarray(data.y, dtype=float)[:, columns]
    keep = ~np.isnan(y).any(axis=1)
    props = tuple(data.properties[j] for j in columns)
    changes: dict[str, Any] = {"y": y[keep], "properties": props}
    for name in ("X", "X_source", "X_target", "groups"):
        value = getattr(data, name, None)
        if value is not None:
            changes[name] = np.asarray(value)[keep]
    return replace(data, **changes)


class PropertyGroups:
    """A method fitted once per group of properties (see the module docstring); predictions
    come back side by side in the task's property order."""

    def __init__(self, make: Callable[[], Any], name: str, groups: list[list[int]], min_shots: int = 0,
                 fresh: Callable[[Any], Any] | None = None):
        self.make, self.name, self.groups, self.min_shots = make, name, groups, int(min_shots)
        self.fresh = fresh or (lambda v: v)
        self.models: list[Any] = []
        self._callback: Any = None

    @property
    def _report_callback(self) -> Any:
        return self._callback

    @_report_callback.setter
    def _report_callback(self, cb: Any) -> None:
        """A tuning trial's callback reaches every copy (iterative methods report through it)."""
        self._callback = cb
        for m in self.models:
            m._report_callback = cb

    def _label(self, g: list[int]) -> str:
        return ",".join(self.properties[j] for j in g)

    def fit(self, source: Any) -> "PropertyGroups":
        self.properties = tuple(source.properties)
        self.k = len(self.properties)
        for g in self.groups:
            part = restrict(source, g)
            if part.y.shape[0] == 0:
                raise ValueError(f"method {self.name!r}: no calibration sample has a reference value for "
                                 f"{self._label(g)}")
            m = self.make()
            m._report_callback = self._callback
            m = m.fit(self.fresh(part))
            if m is None:
                raise TypeError(f"method {self.name!r}: fit() must return self")
            self.models.append(m)
        return self

    def transfer(self, standards: Any, unlabelled: Any = None) -> "PropertyGroups":
        for g, m in zip(self.groups, self.models):
            part = restrict(standards, g)
            if part.y.shape[0] < self.min_shots:
                raise ValueError(
                    f"method {self.name!r}: only {part.y.shape[0]} of the {standards.y.shape[0]} standards have a "
                    f"reference value for {self._label(g)}; the method needs at least {self.min_shots}"
                )
            if m.transfer(self.fresh(part), unlabelled) is None:
                raise TypeError(f"method {self.name!r}: transfer() must return self")
        return self

    def _side_by_side(self, parts: list[Any], n: int) -> np.ndarray:
        out = np.full((n, self.k), np.nan)
        for g, p in zip(self.groups, parts):
            out[:, g] = np.asarray(p, dtype=float).reshape(n, len(g))
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._side_by_side([m.predict(X) for m in self.models], len(X))

    def transform_target(self, X: np.ndarray) -> np.ndarray:
        """A spectral correction is learnt from spectra; the first group's copy gives it."""
        return self.models[0].transform_target(X)

    def __getattr__(self, attr: str) -> Any:
        models = self.__dict__.get("models")
        if attr in ("predict_interval", "chosen_params", "record_extras") and models:
            if not all(callable(getattr(m, attr, None)) for m in models):
                raise AttributeError(attr)
            if attr == "predict_interval":
                def interval(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    parts = [m.predict_interval(X) for m in models]
                    return (self._side_by_side([lo for lo, _ in parts], len(X)),
                            self._side_by_side([hi for _, hi in parts], len(X)))
                return interval
            return lambda: {self._label(g): getattr(m, attr)() for g, m in zip(self.groups, models)}
        raise AttributeError(attr)


def wrap(cls: Any, kwargs_factory: Callable[[], dict[str, Any]], name: str, y: np.ndarray,
         fresh: Callable[[Any], Any] | None = None) -> Any:
    """An instance of ``cls``, or a :class:`PropertyGroups` of them when its tag or the missing
    references in ``y`` (every reference row the method will be given) ask for groups."""
    groups = property_groups(y, getattr(cls.tags, "multi_target", True))
    if groups is None:
        return cls(**kwargs_factory())
    return PropertyGroups(lambda: cls(**kwargs_factory()), name, groups, getattr(cls.tags, "min_shots", 0), fresh)
