"""Shared fixtures: the dataset mirror, temporary result stores, test-only methods."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("CTBENCH_DATA", REPO.parent / "shared" / "datasets"))

if MIRROR.is_dir():
    os.environ.setdefault("CTBENCH_DATA", str(MIRROR))
os.environ.setdefault("CTBENCH_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_configure(config):
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="mlflow")


@pytest.fixture(scope="module")
def synthetic_transfer():
    """The synthetic task split by hand for direct method tests: (source calibration of 50 samples,
    the first 10 of them as standards, the 30 other samples' target spectra and values)."""
    from ctbench.data.synthetic import synthetic_dataset
    from ctbench.method import SourceData, Standards

    ds = synthetic_dataset(n_samples=80)
    a, b = ds.instruments["synth_a"], ds.instruments["synth_b"]
    cal, std, test = np.arange(0, 50), np.arange(0, 10), np.arange(50, 80)
    source = SourceData(X=a.values[cal], y=a.y[cal], axis=a.axis, axis_unit=a.axis_unit, properties=ds.properties)
    standards = Standards(X_source=a.values[std], X_target=b.values[std], y=a.y[std], axis=a.axis, axis_unit=a.axis_unit,
                          properties=ds.properties)
    return source, standards, b.values[test], b.y[test]


@pytest.fixture
def mirror() -> Path:
    if not MIRROR.is_dir():
        pytest.skip(f"dataset mirror not found at {MIRROR}")
    return MIRROR


@pytest.fixture
def extra_methods(monkeypatch):
    """Register test-only method classes next to the installed ones: ``extra_methods(Cls, ...)``."""
    import ctbench.plugins as plugins
    from ctbench.method import MethodInfo

    real = plugins.load_methods()
    added: dict = {}

    def fake():
        return {**real, **added}

    monkeypatch.setattr(plugins, "load_methods", fake)

    def add(*classes):
        for cls in classes:
            added[cls.name] = MethodInfo(cls=cls, plugin="tests")

    return add


@pytest.fixture
def one_torch_thread():
    """Small networks on a shared CPU run fastest (and steadiest) on one thread."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
