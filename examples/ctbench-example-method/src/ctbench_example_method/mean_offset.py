"""Spectral mean-offset correction: shift target spectra by the standards' mean difference.

With N paired standards measured on both instruments, the offset vector

    d = mean(X_source[S]) - mean(X_target[S])            (one value per channel)

is added to every target spectrum, which moves it into the source instrument's space; the
source calibration (a PLS model on the source spectra) then predicts it. It corrects additive
differences (baseline, offset, a constant band shift's average effect) and is the simplest
standardisation there is: a useful floor for any method that claims to do better.
``smoothing`` > 1 smooths d with a moving average over that many channels, which reduces the
noise of d when N is small.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.pls import PLSCalibration


def _as_spectra(X: Any, what: str, n_channels: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (samples x channels), got shape {X.shape}")
    if n_channels is not None and X.shape[1] != n_channels:
        raise ValueError(f"{what} has {X.shape[1]} channels, the source calibration had {n_channels}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or inf")
    return X


def moving_average(v: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of a 1-D vector (edges: the window shrinks), window 1 = unchanged."""
    if window <= 1:
        return v.copy()
    half = window // 2
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(v.size)
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, v.size)
    return (c[hi] - c[lo]) / (hi - lo)


class MeanOffset(TransferMethod):
    """Add the standards' mean source-minus-target difference to target spectra; source PLS model."""

    name = "mean_offset"
    version = "1"
    tags = Tags(min_shots=1, zero_shot=False, transductive=False, multi_target=True, corrects_spectra=True)
    description = "example plugin: spectral mean-offset correction + source PLS"

    def __init__(self, max_components: int = 15, cv: int = 10, smoothing: int = 1, random_state: int = 0):
        self.max_components = max_components
        self.cv = cv
        self.smoothing = smoothing
        self.random_state = random_state

    def fit(self, source: SourceData) -> MeanOffset:
        """Calibrate the source PLS model (latent variables by cross-validation)."""
        if int(self.smoothing) < 1:
            raise ValueError(f"smoothing must be >= 1 channel, got {self.smoothing}")
        X = _as_spectra(source.X, "source spectra")
        self.model_ = PLSCalibration(
            max_components=int(self.max_components), cv=int(self.cv), random_state=int(self.random_state)
        ).fit(X, source.y)
        self.n_channels_ = X.shape[1]
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> MeanOffset:
        """Learn the offset vector from the paired standards."""
        if not hasattr(self, "model_"):
            raise RuntimeError("mean_offset: call fit(source) before transfer")
        Xs = _as_spectra(standards.X_source, "standards' source spectra", self.n_channels_)
        Xt = _as_spectra(standards.X_target, "standards' target spectra", self.n_channels_)
        if Xs.shape[0] == 0 or Xs.shape[0] != Xt.shape[0]:
            raise ValueError(f"mean_offset needs N >= 1 paired standards, got {Xs.shape[0]} source / {Xt.shape[0]} target")
        self.offset_ = moving_average(Xs.mean(axis=0) - Xt.mean(axis=0), int(self.smoothing))
        return self

    def transform_target(self, X_target: np.ndarray) -> np.ndarray:
        if not hasattr(self, "offset_"):
            raise RuntimeError("mean_offset: call transfer(standards) before predict")
        return _as_spectra(X_target, "target spectra", self.n_channels_) + self.offset_

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self.model_.predict(self.transform_target(X_target))

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "max_components": trial.suggest_int("max_components", 2, 20),
            "smoothing": trial.suggest_categorical("smoothing", [1, 3, 5, 9, 15]),
        }
