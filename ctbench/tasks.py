"""A task card made concrete: paired source/target spectra, values, and the fixed test split.

Rows pair the same physical sample on both instruments (replicates paired in order); spectra
are aligned onto one axis as the card declares; the test set is fixed per task version and the
rest is the calibration pool from which transfer standards are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from ctbench.cards import CardError, TaskCard
from ctbench.data.spectra import DataError, Spectra


@dataclass(frozen=True)
class Task:
    card: TaskCard
    X_source: np.ndarray
    X_target: np.ndarray
    y: np.ndarray
    axis: np.ndarray
    axis_unit: str
    groups: np.ndarray
    """Sample id per row; replicates of one physical sample share it."""
    pool_rows: np.ndarray
    test_rows: np.ndarray
    properties: tuple[str, ...]
    data_sha256: dict[str, str]
    synthetic: bool
    outer_splits: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    """Every outer split of the task as (pool rows, test rows); ``pool_rows`` and ``test_rows``
    are those of split ``outer_index``."""
    outer_index: int = 0
    native: "NativeAxes | None" = None
    """Each instrument's own spectra and axis (card ``alignment: native``), row for row with
    ``X_source`` / ``X_target``, for methods tagged ``native_axes``."""
    dropped_unlabelled: int = 0
    """Paired rows left out because they have no reference value for any of the task's properties."""

    @property
    def n_outer(self) -> int:
        """How many outer splits the task has (1 for an official or single random test set)."""
        return max(1, len(self.outer_splits))

    def outer(self, k: int) -> "Task":
        """The task seen through outer split ``k``: its calibration pool and test set."""
        if not self.outer_splits:
            if k != 0:
                raise IndexError(f"task {self.name!r} has one outer split, not {k + 1}")
            return self
        views = self._outer_views
        if k not in views:
            if not 0 <= k < len(self.outer_splits):
                raise IndexError(f"task {self.name!r} has {len(self.outer_splits)} outer splits; {k} requested")
            pool, test = self.outer_splits[k]
            views[k] = self if k == self.outer_index else replace(self, pool_rows=pool, test_rows=test, outer_index=k)
        return views[k]

    def outer_of_rep(self, rep: int) -> tuple[int, int]:
        """(outer split, standards draw) of repetition ``rep``: reps cycle through the outer splits."""
        return rep % self.n_outer, rep // self.n_outer

    @cached_property
    def _outer_views(self) -> dict[int, "Task"]:
        return {}

    @cached_property
    def outer_hash(self) -> str:
        """A hash of every outer split's pool and test rows (what the standards orderings depend on)."""
        from ctbench.splits import hash_indices

        parts = [p for pool, test in (self.outer_splits or ((self.pool_rows, self.test_rows),)) for p in (pool, [-1], test, [-2])]
        return hash_indices(np.concatenate(parts))

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @cached_property
    def pool_groups(self) -> np.ndarray:
        """Sample ids of the calibration pool, in first-appearance order."""
        _, first = np.unique(self.groups[self.pool_rows], return_index=True)
        return self.groups[self.pool_rows][np.sort(first)]

    @property
    def n_pool_samples(self) -> int:
        return int(len(self.pool_groups))

    @cached_property
    def _pool_rows_by_group(self) -> dict[str, list[int]]:
        by_group: dict[str, list[int]] = {}
        for r in self.pool_rows:
            by_group.setdefault(str(self.groups[r]), []).append(int(r))
        return by_group

    def rows_of(self, groups: np.ndarray) -> np.ndarray:
        """Rows (in the pool) of the given sample ids, in the order of ``groups``."""
        by_group = self._pool_rows_by_group
        out: list[int] = []
        for g in groups:
            out.extend(by_group[str(g)])
        return np.asarray(out, dtype=int)

    @cached_property
    def missing_references(self) -> dict[str, int]:
        """Property -> how many samples have no reference value for it (left out of that
        property's training and metrics only); only properties with missing values."""
        return {p: n for p, n in self.missing_in(np.arange(self.y.shape[0])).items() if n}

    def missing_in(self, rows: np.ndarray) -> dict[str, int]:
        """Property -> how many samples among ``rows`` have no reference value for it."""
        rows = np.asarray(rows, dtype=int)
        return {p: int(len(np.unique(self.groups[rows][np.isnan(self.y[rows, j])])))
                for j, p in enumerate(self.properties)}

    def summary(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.missing_references:
            extra["missing_references"] = dict(self.missing_references)
        if self.dropped_unlabelled:
            extra["dropped_unlabelled_rows"] = int(self.dropped_unlabelled)
        if self.native is not None:
            extra["native_axes"] = {
                inst: f"{a[0]:g}-{a[-1]:g} {self.axis_unit} ({a.size} points)"
                for inst, a in ((self.card.source, self.native.axis_source), (self.card.target, self.native.axis_target))
            }
        return {
            "name": self.name,
            "version": self.version,
            "dataset": self.card.dataset,
            "source": self.card.source,
            "target": self.card.target,
            "properties": list(self.properties),
            "axis": f"{self.axis[0]:g}-{self.axis[-1]:g} {self.axis_unit} ({self.axis.size} points)",
            "rows": int(self.y.shape[0]),
            "pool_samples": self.n_pool_samples,
            "pool_rows": int(self.pool_rows.size),
            "test_samples": int(len(np.unique(self.groups[self.test_rows]))),
            "test_rows": int(self.test_rows.size),
            "outer_splits": self.n_outer,
            "outer_index": self.outer_index,
            "synthetic": self.synthetic,
            **extra,
        }


@dataclass(frozen=True)
class NativeAxes:
    """Both instruments' spectra on their own axes (rows as in the task)."""

    X_source: np.ndarray
    axis_source: np.ndarray
    X_target: np.ndarray
    axis_target: np.ndarray


def _pair_rows(src: Spectra, tgt: Spectra) -> tuple[np.ndarray, np.ndarray]:
    """Row indices pairing the two instruments: same sample id, replicates paired in order."""
    tgt_rows: dict[str, list[int]] = {}
    for i, sid in enumerate(tgt.sample_ids):
        tgt_rows.setdefault(sid, []).append(i)
    seen: dict[str, int] = {}
    a, b = [], []
    for i, sid in enumerate(src.sample_ids):
        k = seen.get(sid, 0)
        if sid in tgt_rows and k < len(tgt_rows[sid]):
            a.append(i)
            b.append(tgt_rows[sid][k])
        seen[sid] = k + 1
    return np.asarray(a, dtype=int), np.asarray(b, dtype=int)


def _aligned_axes(src: Spectra, tgt: Spectra, alignment: dict[str, Any], where: str) -> np.ndarray | None:
    mode = alignment["mode"]
    if mode == "none":
        if src.axis.shape != tgt.axis.shape or not np.allclose(src.axis, tgt.axis):
            raise CardError(
                f"{where}: instruments {src.instrument!r} and {tgt.instrument!r} have different axes; "
                f"declare alignment mode 'overlap' or 'grid' in the card"
            )
        return None
    if mode in ("overlap", "native"):
        lo = max(src.axis[0], tgt.axis[0])
        hi = min(src.axis[-1], tgt.axis[-1])
        if hi <= lo:
            raise CardError(f"{where}: the two instruments' axes do not overlap")
        step = alignment["step"]
        if step is None:  # the coarser of the two median steps
            step = max(np.median(np.diff(src.axis)), np.median(np.diff(tgt.axis)))
        start = np.ceil(lo / step) * step
        _check_grid_size(float(start), float(hi), float(step), where)
        return np.arange(start, hi + 1e-9, step)
    start, stop, step = float(alignment["start"]), float(alignment["stop"]), float(alignment["step"])
    _check_grid_size(start, stop, step, where)
    return np.arange(start, stop + 1e-9, step)


def _check_grid_size(start: float, stop: float, step: float, where: str) -> None:
    """Refuse (one line) a common axis that would not fit in memory, before it is made."""
    from ctbench.cards import MAX_GRID_POINTS, grid_points

    n = grid_points(start, stop, step) if step > 0 else float("inf")
    if not n <= MAX_GRID_POINTS:
        raise CardError(
            f"{where}: the common axis {start:g}..{stop:g} with step {step:g} would have {n:.3g} points, at most "
            f"{MAX_GRID_POINTS} are allowed; declare a larger alignment.step"
        )


def _dataset_sample_order(card: TaskCard, dataset: Any) -> dict[str, int]:
    """Each sample id of the dataset (all instruments) -> its position in a seeded permutation.

    The permutation depends only on the dataset's name, the card's test seed and the dataset's
    sample ids, so every task of a dataset sees the same outer partition.
    """
    from ctbench.splits import stable_seed

    ids = sorted({str(s) for sp in dataset.instruments.values() for s in sp.sample_ids})
    rng = np.random.default_rng(stable_seed("outer-split", card.dataset, card.test["seed"]))
    return {ids[i]: pos for pos, i in enumerate(rng.permutation(len(ids)))}


def _outer_splits(
    card: TaskCard, groups: np.ndarray, src: Spectra, src_rows: np.ndarray, dataset: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The task's outer splits as [(pool rows, test rows)], whole samples only.

    - ``kfold``: K grouped folds; sample s is in the test set of fold ``position(s) % K`` where
      position is its place in the dataset-level permutation (shared by all tasks of the dataset).
    - ``random``: one split; the test set is the task's samples among the first ``fraction`` of
      the dataset-level permutation.
    - ``official``: one split, the dataset's own test set (metadata ``meta_key``).
    """
    test = card.test
    if test["strategy"] == "official":
        key = test["meta_key"]
        if key not in src.meta:
            raise CardError(f"{card.path}: test strategy 'official' needs metadata {key!r}, which dataset lacks")
        labels = np.asarray(src.meta[key]).astype(str)[src_rows]
        is_test = np.isin(labels, [str(v) for v in test["test_values"]])
        if test["pool_values"] is not None:
            in_pool = np.isin(labels, [str(v) for v in test["pool_values"]])
            is_test &= ~in_pool
            keep = is_test | in_pool
        else:
            keep = np.ones_like(is_test)
        return [(np.flatnonzero(keep & ~is_test), np.flatnonzero(is_test))]
    position = _dataset_sample_order(card, dataset)
    pos = np.array([position[str(g)] for g in groups])
    if test["strategy"] == "random":
        n_test = int(round(float(test["fraction"]) * len(position)))
        is_test = pos < n_test
        return [(np.flatnonzero(~is_test), np.flatnonzero(is_test))]
    k = int(test["folds"])
    fold = pos % k
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


_BUILT: dict[tuple[str, str, str, str | None], Task] = {}


def build_task(card: TaskCard, data_dir: str | None = None) -> Task:
    """Load the card's dataset and make the paired, aligned, split task (cached per process)."""
    key = (card.name, card.sha256, card.path, data_dir)
    if key not in _BUILT:
        _BUILT[key] = _build(card, data_dir)
    return _BUILT[key]


def _build(card: TaskCard, data_dir: str | None) -> Task:
    from ctbench.data.loaders import load_dataset
    from ctbench.plugins import get_loader

    loader = get_loader(card.dataset)
    options = dict(card.loader_options)
    if card.dataset in ("csv", "mat") and "base_dir" not in options and card.path:
        from pathlib import Path

        options["base_dir"] = str(Path(card.path).resolve().parent)  # relative paths: next to the card
    dataset = load_dataset(loader, data_dir=data_dir, options=options)
    src = dataset.instrument(card.source)
    tgt = dataset.instrument(card.target)
    props = card.properties or dataset.properties
    missing = [p for p in props if p not in dataset.properties]
    if missing:
        raise CardError(f"{card.path}: dataset {card.dataset!r} has no property {missing[0]!r}; it has {dataset.properties}")
    cols = [dataset.properties.index(p) for p in props]
    src_rows, tgt_rows = _pair_rows(src, tgt)
    if src.y is None:
        raise DataError(f"{card.path}: dataset {card.dataset!r} has no reference values")
    y, labelled = _paired_references(card, src, tgt, src_rows, tgt_rows, cols)
    dropped = int((~labelled).sum())
    src_rows, tgt_rows, y = src_rows[labelled], tgt_rows[labelled], y[labelled]
    if src_rows.size < 4:
        raise DataError(f"{card.path}: only {src_rows.size} samples are measured on both {card.source} and {card.target}"
                        + (f" with a reference value ({dropped} paired rows have none)" if dropped else ""))
    new_axis = _aligned_axes(src, tgt, card.alignment, card.path)
    s, t = src.take(src_rows), tgt.take(tgt_rows)
    native = None
    if card.alignment["mode"] == "native":
        native = NativeAxes(s.values, s.axis, t.values, t.axis)
    if new_axis is not None:
        s, t = s.resample(new_axis), t.resample(new_axis)
    groups = s.sample_ids
    outer = _outer_splits(card, groups, src, src_rows, dataset)
    for k, (pool_rows, test_rows) in enumerate(outer):
        where = f"{card.path}: outer split {k}" if len(outer) > 1 else f"{card.path}: the test split"
        if test_rows.size == 0 or pool_rows.size == 0:
            raise CardError(f"{where} leaves an empty test set or calibration pool")
        if set(groups[test_rows]) & set(groups[pool_rows]):
            raise DataError(f"{where}: a sample's replicates straddle calibration pool and test set")
        _check_references_per_split(y, groups, pool_rows, test_rows, tuple(props), where)
    pool_rows, test_rows = outer[0]
    return Task(
        card=card,
        X_source=s.values,
        X_target=t.values,
        y=y,
        axis=s.axis,
        axis_unit=s.axis_unit,
        groups=groups,
        pool_rows=pool_rows,
        test_rows=test_rows,
        properties=tuple(props),
        data_sha256=dict(dataset.sha256),
        synthetic=bool(dataset.synthetic or card.synthetic),
        outer_splits=tuple(outer),
        native=native,
        dropped_unlabelled=dropped,
    )


def _paired_references(card: TaskCard, src: Spectra, tgt: Spectra, src_rows: np.ndarray, tgt_rows: np.ndarray,
                       cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(reference values of the paired rows, which rows have at least one).

    NaN marks a missing value (user files); where one instrument's file lacks a value the
    other's is used; where both have one they must agree."""
    y = np.array(src.y[src_rows][:, cols], dtype=float)
    if tgt.y is not None:
        ty = np.asarray(tgt.y[tgt_rows][:, cols], dtype=float)
        both = ~np.isnan(y) & ~np.isnan(ty)
        if not np.allclose(ty[both], y[both], rtol=1e-6, atol=1e-6):
            raise DataError(f"{card.path}: reference values differ between {card.source} and {card.target} for paired rows")
        y = np.where(np.isnan(y), ty, y)
    return y, ~np.isnan(y).all(axis=1)


MIN_REFERENCED = 2
"""Fewest samples with a reference value a property needs in every calibration pool and test set."""


def _check_references_per_split(y: np.ndarray, groups: np.ndarray, pool_rows: np.ndarray, test_rows: np.ndarray,
                                 props: tuple[str, ...], where: str) -> None:
    """A property whose references are missing for (nearly) every sample of a test set or pool
    cannot be scored or learnt there: one line naming it, before anything runs."""
    if not np.isnan(y).any():
        return
    for part, rows in (("test set", test_rows), ("calibration pool", pool_rows)):
        for j, p in enumerate(props):
            n = len(np.unique(groups[rows][~np.isnan(y[rows, j])]))
            if n < MIN_REFERENCED:
                raise DataError(f"{where}: only {n} sample(s) of the {part} have a reference value for {p!r} "
                                f"(at least {MIN_REFERENCED} needed); leave the property out or use fewer folds")
