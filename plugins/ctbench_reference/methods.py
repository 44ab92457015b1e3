"""The three reference methods."""

from __future__ import annotations

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.pls import PLSCalibration


class _PLSBase(TransferMethod):
    def __init__(self, max_components: int = 15, cv: int = 10, random_state: int = 0):
        self.max_components = max_components
        self.cv = cv
        self.random_state = random_state

    def _pls(self) -> PLSCalibration:
        return PLSCalibration(max_components=self.max_components, cv=self.cv, random_state=self.random_state)

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self.model_.predict(X_target)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {"max_components": trial.suggest_int("max_components", 2, 20), "cv": trial.suggest_categorical("cv", [5, 10])}


class NoTransfer(_PLSBase):
    """The source model applied to target spectra as they are (the floor)."""

    name = "no_transfer"
    version = "1"
    tags = Tags(min_shots=0, zero_shot=True, reference=True)
    description = "reference: source PLS model on uncorrected target spectra"

    def fit(self, source: SourceData) -> "NoTransfer":
        self.model_ = self._pls().fit(source.X, source.y)
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "NoTransfer":
        return self


class TargetOnly(_PLSBase):
    """A PLS model calibrated on the N standards' target spectra alone (LVs by leave-one-out)."""

    name = "target_only"
    version = "1"
    tags = Tags(min_shots=3, reference=True)
    description = "reference: PLS on the N standards' target spectra only"

    def fit(self, source: SourceData) -> "TargetOnly":
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "TargetOnly":
        n = standards.n
        self.model_ = PLSCalibration(
            max_components=min(self.max_components, max(1, n - 2)), cv=min(self.cv, n), random_state=self.random_state
        ).fit(standards.X_target, standards.y)
        return self


class FullRecalibration(_PLSBase):
    """A PLS model calibrated on the target spectra of the whole calibration pool (the ceiling)."""

    name = "full_recalibration"
    version = "1"
    tags = Tags(min_shots=0, zero_shot=True, uses_target_calibration=True, reference=True)
    description = "reference: PLS on target spectra of the whole calibration pool (privileged)"

    def fit(self, source: SourceData) -> "FullRecalibration":
        self.model_ = self._pls().fit(source.X, source.y)
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "FullRecalibration":
        return self
