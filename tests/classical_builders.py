"""Builders shared by the classical methods' tests: band spectra, SourceData / Standards on a plain
channel axis, read-only arrays, and single-threaded BLAS for a test module."""

from __future__ import annotations

import numpy as np
import pytest

from ctbench.method import SourceData, Standards

PROPS = ("a", "b")


def bands(axis: np.ndarray, centres, widths) -> np.ndarray:
    """Gaussian bands (one row per centre) on ``axis``."""
    return np.stack([np.exp(-0.5 * ((axis - c) / w) ** 2) for c, w in zip(centres, widths)])


def readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def source_data(X: np.ndarray, y: np.ndarray, groups=None) -> SourceData:
    return SourceData(X=X, y=y, axis=np.arange(X.shape[1], dtype=float), axis_unit="nm", properties=PROPS,
                      groups=groups)


def standards(Xs: np.ndarray, Xt: np.ndarray, y: np.ndarray, groups=None) -> Standards:
    return Standards(X_source=Xs, X_target=Xt, y=y, axis=np.arange(Xs.shape[1], dtype=float), axis_unit="nm",
                     properties=PROPS, groups=groups)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """The whole test module on one BLAS thread (as the runner's workers run)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
