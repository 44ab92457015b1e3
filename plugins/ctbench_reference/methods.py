"""The three reference methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.pls import DEFAULT_MAX_COMPONENTS, PLSCalibration, n_samples


class _PLSBase(TransferMethod):
    """PLS reference rows. Parameters (defaults in brackets):

      max_components [30]: largest latent-variable count the CV tries (ctbench.pls's default).
      cv [10]: CV folds (at most one per sample; replicate spectra of a sample share a fold).
      random_state [0]: seeds the CV folds.
    """

    def __init__(self, max_components: int = DEFAULT_MAX_COMPONENTS, cv: int = 10, random_state: int = 0):
        self.max_components = max_components
        self.cv = cv
        self.random_state = random_state

    def _pls(self) -> PLSCalibration:
        return PLSCalibration(max_components=self.max_components, cv=self.cv, random_state=self.random_state)

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self.model_.predict(X_target)

    def chosen_params(self) -> dict[str, Any]:
        """Latent variables per property (a list in property order), whether the cap bound each
        choice, and the largest count the CV tried."""
        model = getattr(self, "model_", None)
        return {} if model is None else model.chosen_params()

    @classmethod
    def search_space(cls, trial) -> dict:
        return {"max_components": trial.suggest_int("max_components", 2, 20), "cv": trial.suggest_categorical("cv", [5, 10])}


class NoTransfer(_PLSBase):
    """The source model applied to target spectra as they are (the floor)."""

    name = "no_transfer"
    version = "2"
    tags = Tags(min_shots=0, zero_shot=True, reference=True)
    description = "reference: source PLS model on uncorrected target spectra"

    def fit(self, source: SourceData) -> "NoTransfer":
        self.model_ = self._pls().fit(source.X, source.y, groups=source.groups)
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "NoTransfer":
        return self


class TargetOnly(_PLSBase):
    """A PLS model calibrated on the N standards' target spectra alone.

    The CV holds out whole standard samples (leave-one-sample-out up to ``cv`` samples; the
    replicate rows of a sample stay together), and the latent-variable cap is at most the
    number of standard samples - 2.
    """

    name = "target_only"
    version = "2"
    tags = Tags(min_shots=3, reference=True)
    description = "reference: PLS on the N standards' target spectra only"

    def fit(self, source: SourceData) -> "TargetOnly":
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "TargetOnly":
        n = n_samples(standards.groups, standards.n)  # samples, not replicate rows
        self.model_ = PLSCalibration(
            max_components=min(self.max_components, max(1, n - 2)), cv=min(self.cv, n), random_state=self.random_state
        ).fit(standards.X_target, standards.y, groups=standards.groups)
        return self


class FullRecalibration(_PLSBase):
    """A PLS model calibrated on the target spectra of the whole calibration pool (the ceiling)."""

    name = "full_recalibration"
    version = "2"
    tags = Tags(min_shots=0, zero_shot=True, uses_target_calibration=True, reference=True)
    description = "reference: PLS on target spectra of the whole calibration pool (privileged)"

    def fit(self, source: SourceData) -> "FullRecalibration":
        self.model_ = self._pls().fit(source.X, source.y, groups=source.groups)
        return self

    def transfer(self, standards: Standards, unlabelled=None) -> "FullRecalibration":
        return self
