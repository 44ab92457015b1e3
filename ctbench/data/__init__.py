"""Data: the Spectra container, named dataset loaders, mirror / cache / download with sha256."""

from ctbench.data.registry import DataFile, Dataset, DatasetLoader
from ctbench.data.spectra import DataError, Spectra

__all__ = ["DataError", "DataFile", "Dataset", "DatasetLoader", "Spectra"]
