"""The in-memory pretraining corpus: spectra on the model grid plus their axis, domain, instrument
and specimen (for natural cross-instrument pairs). Numpy only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SpectralTable:
    """N spectra resampled to G points over their own axis range [lo, hi] (``unit``)."""

    values: np.ndarray  # (N, G) float32
    lo: np.ndarray  # (N,)
    hi: np.ndarray  # (N,)
    unit: np.ndarray  # (N,) 'nm' | 'cm-1'
    domain: np.ndarray  # (N,) int, index into config.DOMAINS
    instrument: np.ndarray  # (N,) int, index into ``instruments``
    instruments: list[str]
    group: np.ndarray  # (N,) int specimen id; -1 = none; same id on several instruments = natural pair
    nonneg: np.ndarray  # (N,) bool: intensities are physically non-negative
    source: np.ndarray  # (N,) int, index into ``sources``
    sources: list[str]
    manifest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def content_hash(self) -> str:
        """sha256 of the parsed numbers (what the model is trained on)."""
        h = hashlib.sha256()
        for arr in (self.values, self.lo, self.hi, self.domain, self.instrument, self.group):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    @staticmethod
    def concat(parts: list[SpectralTable]) -> SpectralTable:
        """One table from several (instrument, group and source ids are renumbered)."""
        if not parts:
            raise ValueError("no corpus parts to combine")
        instruments: list[str] = []
        sources: list[str] = []
        inst_ids, group_ids, src_ids = [], [], []
        group_offset = 0
        for p in parts:
            inst_map = np.array([_index(instruments, name) for name in p.instruments], dtype=np.int64)
            src_map = np.array([_index(sources, name) for name in p.sources], dtype=np.int64)
            inst_ids.append(inst_map[p.instrument])
            src_ids.append(src_map[p.source])
            g = p.group.astype(np.int64).copy()
            g[g >= 0] += group_offset
            group_offset = max(group_offset, int(g.max()) + 1 if (g >= 0).any() else group_offset)
            group_ids.append(g)
        return SpectralTable(
            values=np.concatenate([p.values for p in parts]).astype(np.float32),
            lo=np.concatenate([p.lo for p in parts]),
            hi=np.concatenate([p.hi for p in parts]),
            unit=np.concatenate([p.unit for p in parts]),
            domain=np.concatenate([p.domain for p in parts]),
            instrument=np.concatenate(inst_ids),
            instruments=instruments,
            group=np.concatenate(group_ids),
            nonneg=np.concatenate([p.nonneg for p in parts]),
            source=np.concatenate(src_ids),
            sources=sources,
            manifest=[m for p in parts for m in p.manifest],
        )

    def partners(self) -> dict[int, np.ndarray]:
        """For each row with a natural pair: rows of the same specimen on another instrument."""
        out: dict[int, np.ndarray] = {}
        rows = np.flatnonzero(self.group >= 0)
        if rows.size == 0:
            return out
        order = rows[np.argsort(self.group[rows], kind="stable")]
        groups = self.group[order]
        bounds = np.flatnonzero(np.diff(groups)) + 1
        for members in np.split(order, bounds):
            if members.size < 2:
                continue
            insts = self.instrument[members]
            if np.unique(insts).size < 2:
                continue
            for r in members:
                other = members[insts != self.instrument[r]]
                out[int(r)] = other
        return out

    def save_npz(self, path) -> None:
        np.savez(
            path, values=self.values, lo=self.lo, hi=self.hi, unit=self.unit.astype("U5"), domain=self.domain,
            instrument=self.instrument, instruments=np.array(self.instruments, dtype="U64"), group=self.group,
            nonneg=self.nonneg, source=self.source, sources=np.array(self.sources, dtype="U64"),
        )

    @staticmethod
    def load_npz(path, manifest: list[dict[str, Any]]) -> SpectralTable:
        with np.load(path, allow_pickle=False) as z:
            return SpectralTable(
                values=z["values"], lo=z["lo"], hi=z["hi"], unit=z["unit"], domain=z["domain"],
                instrument=z["instrument"], instruments=[str(s) for s in z["instruments"]], group=z["group"],
                nonneg=z["nonneg"], source=z["source"], sources=[str(s) for s in z["sources"]], manifest=manifest,
            )


def _index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)
