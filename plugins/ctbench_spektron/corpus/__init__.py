"""Pretraining corpora: RRUFF Raman, fermentation MIR, physics-based synthetic, and a user's files.

``build_corpus(["rruff", "fermentation", "synthetic", "files:/my/folder?unit=nm"])`` returns a
``PretrainCorpus``: a table of measured spectra on the model grid plus, when asked for, the
unlimited synthetic generator; its ``manifest()`` (sources, counts, hashes) goes into every
checkpoint. Benchmark-task spectra (corn, tablet, wheat, dig4bio) are deliberately not sources here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ctbench.data import DataError

from .synthetic import SyntheticSpectra
from .table import SpectralTable


@dataclass(frozen=True)
class CorpusSource:
    """A named pretraining source (also offered through the ``ctbench_register_corpora`` hook)."""

    name: str
    description: str
    load: Callable[..., Any]


def _rruff(data_dir, grid_points, **_):
    from .rruff import load_rruff

    return load_rruff(data_dir, grid_points)


def _fermentation(data_dir, grid_points, **_):
    from .fermentation import load_fermentation

    return load_fermentation(data_dir, grid_points)


SOURCES: dict[str, CorpusSource] = {
    "rruff": CorpusSource("rruff", "RRUFF excellent_unoriented Raman spectra (5471, 4 lasers, natural cross-laser pairs)", _rruff),
    "fermentation": CorpusSource("fermentation", "chemotools on-line MIR fermentation spectra (900-1780 cm-1)", _fermentation),
    "synthetic": CorpusSource("synthetic", "SYNTHETIC physics-based spectra, unlimited, paired across simulated instruments", lambda **_: SyntheticSpectra()),
    "files": CorpusSource("files", "your own spectra: files:PATH[?unit=nm|cm-1&domain=NIR|IR|Raman&instrument=NAME]", lambda **_: None),
}


@dataclass
class PretrainCorpus:
    """Measured spectra (``table``, may be None) and the synthetic generator (may be None)."""

    table: SpectralTable | None
    synthetic: SyntheticSpectra | None
    spec: tuple[str, ...]

    def manifest(self) -> dict[str, Any]:
        sources = list(self.table.manifest) if self.table is not None else []
        if self.synthetic is not None:
            sources.append(self.synthetic.manifest())
        return {
            "spec": list(self.spec),
            "sources": sources,
            "n_measured_spectra": 0 if self.table is None else self.table.n,
            "measured_content_sha256": None if self.table is None else self.table.content_hash(),
            "includes_synthetic": self.synthetic is not None,
        }


def parse_spec(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'rruff,fermentation,synthetic' -> ('rruff', 'fermentation', 'synthetic'), names checked."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise DataError("empty corpus: name at least one of " + ", ".join(SOURCES))
    for item in items:
        name = item.split(":", 1)[0]
        if name not in SOURCES:
            from ctbench.names import did_you_mean

            raise DataError(f"unknown corpus source {name!r}{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
        if name == "files" and ":" not in item:
            raise DataError("corpus source 'files' needs a path: files:/path/to/folder")
    return tuple(items)


def build_corpus(spec: str | list[str] | tuple[str, ...], data_dir: str | Path | None = None,
                 grid_points: int = 2048) -> PretrainCorpus:
    """Load the named sources (cached where parsing is slow)."""
    items = parse_spec(spec)
    tables: list[SpectralTable] = []
    synthetic = None
    for item in items:
        name = item.split(":", 1)[0]
        if name == "synthetic":
            synthetic = SyntheticSpectra(grid_points=grid_points)
        elif name == "files":
            from .userfiles import load_user_files, parse_options

            path, opts = parse_options(item)
            tables.append(load_user_files(path, grid_points, **opts))
        else:
            tables.append(SOURCES[name].load(data_dir=data_dir, grid_points=grid_points))
    table = SpectralTable.concat(tables) if tables else None
    return PretrainCorpus(table=table, synthetic=synthetic, spec=items)


__all__ = ["CorpusSource", "PretrainCorpus", "SOURCES", "SpectralTable", "SyntheticSpectra", "build_corpus", "parse_spec"]
