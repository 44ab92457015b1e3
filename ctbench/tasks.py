"""A task card made concrete: paired source/target spectra, values, and the fixed test split.

Rows pair the same physical sample on both instruments (replicates paired in order); spectra
are aligned onto one axis as the card declares; the test set is fixed per task version and the
rest is the calibration pool from which transfer standards are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def summary(self) -> dict[str, Any]:
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
            "synthetic": self.synthetic,
        }


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
    if mode == "overlap":
        lo = max(src.axis[0], tgt.axis[0])
        hi = min(src.axis[-1], tgt.axis[-1])
        if hi <= lo:
            raise CardError(f"{where}: the two instruments' axes do not overlap")
        step = alignment["step"]
        if step is None:  # the coarser of the two median steps
            step = max(np.median(np.diff(src.axis)), np.median(np.diff(tgt.axis)))
        start = np.ceil(lo / step) * step
        return np.arange(start, hi + 1e-9, step)
    return np.arange(float(alignment["start"]), float(alignment["stop"]) + 1e-9, float(alignment["step"]))


def _test_rows(card: TaskCard, groups: np.ndarray, src: Spectra, src_rows: np.ndarray) -> np.ndarray:
    from ctbench.splits import stable_seed

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
        rows = np.flatnonzero(is_test)
        return rows, np.flatnonzero(keep & ~is_test)
    # random: whole samples (groups) go to the test set, never straddling
    _, first = np.unique(groups, return_index=True)
    uniq = groups[np.sort(first)]
    rng = np.random.default_rng(stable_seed("test-split", card.name, card.version, test["seed"]))
    n_test = int(round(float(test["fraction"]) * len(uniq)))
    test_groups = set(rng.permutation(uniq)[:n_test].tolist())
    is_test = np.array([g in test_groups for g in groups])
    return np.flatnonzero(is_test), np.flatnonzero(~is_test)


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
    if src_rows.size < 4:
        raise DataError(f"{card.path}: only {src_rows.size} samples are measured on both {card.source} and {card.target}")
    new_axis = _aligned_axes(src, tgt, card.alignment, card.path)
    s, t = src.take(src_rows), tgt.take(tgt_rows)
    if new_axis is not None:
        s, t = s.resample(new_axis), t.resample(new_axis)
    if src.y is None:
        raise DataError(f"{card.path}: dataset {card.dataset!r} has no reference values")
    y = s.y[:, cols]
    if t.y is not None and not np.allclose(t.y[:, cols], y, rtol=1e-6, atol=1e-6):
        raise DataError(f"{card.path}: reference values differ between {card.source} and {card.target} for paired rows")
    groups = s.sample_ids
    test_rows, pool_rows = _test_rows(card, groups, src, src_rows)
    if test_rows.size == 0 or pool_rows.size == 0:
        raise CardError(f"{card.path}: the test split leaves an empty test set or calibration pool")
    if set(groups[test_rows]) & set(groups[pool_rows]):
        raise DataError(f"{card.path}: a sample's replicates straddle calibration pool and test set")
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
    )
