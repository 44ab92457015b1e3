"""Named datasets: a loader reads the files of one dataset into Spectra per instrument."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ctbench.data.spectra import DataError, Spectra


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its path inside a mirror folder, its sha256, and where to download it."""

    relpath: str
    sha256: str
    url: str | None = None


@dataclass
class Dataset:
    """Spectra of the same samples on several instruments.

    Rows are paired across instruments by ``Spectra.sample_ids`` (replicates share an id);
    ``sha256`` maps each file read to its checksum, so records can cite the exact data.
    """

    name: str
    instruments: dict[str, Spectra]
    properties: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)
    synthetic: bool = False
    description: str = ""

    def instrument(self, name: str) -> Spectra:
        if name not in self.instruments:
            from ctbench.names import did_you_mean

            raise DataError(
                f"dataset {self.name!r} has no instrument {name!r}{did_you_mean(name, self.instruments)}; "
                f"instruments: {', '.join(self.instruments)}"
            )
        return self.instruments[name]


@dataclass(frozen=True)
class DatasetLoader:
    """A named dataset reader, registered through the ``ctbench_register_loaders`` hook.

    ``load(paths, options)`` receives the resolved, checksum-verified local path of each of
    ``files`` (same order) and the card's loader options, and returns a Dataset.
    """

    name: str
    load: Callable[[list[Path], dict[str, Any]], Dataset]
    files: tuple[DataFile, ...] = ()
    description: str = ""
    citation: str = ""
