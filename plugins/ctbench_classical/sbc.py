"""Slope/bias correction (SBC) of the source model's predictions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

from ._common import (
    MAX_COMPONENTS,
    as_spectra,
    fit_source_pls,
    require_fitted,
    source_arrays,
    source_model_params,
    standards_arrays,
)


class SBC(TransferMethod):
    """Slope/bias correction: ``y = a + b * yhat_source(x_target)``, fitted per property on the standards.

    The source model is a PLS1 per property calibrated on the source spectra (latent variables by
    10-fold CV holding out whole samples, at most ``max_components``). At transfer it predicts
    the standards' *target* spectra and, for each property, regresses the standards' reference
    values on those predictions (ordinary least squares); the line is then applied to every
    target prediction.
    The correction acts on predictions only, never on spectra.

    Parameters (defaults in brackets):
      mode ["slope_bias"]: "slope_bias" fits intercept and slope, "bias" only the intercept
        (slope fixed at 1).
      min_slope_shots [3]: with fewer standards than this, or when the predictions of the
        standards have (almost) no spread, only the bias is corrected; a slope fitted through 1
        or 2 points is exact and meaningless, so N = 1 and N = 2 give a bias correction (hence
        ``min_shots = 1``). 3 is the fewest points that leave a residual degree of freedom.
      max_components [30]: largest latent-variable count tried by the source model's CV.
      random_state [0]: seeds the CV folds of the source model.
    Version 2: the source model's CV holds out whole samples (replicates together) and tries
    up to 30 latent variables (15 bound the choice on corn m5).
    """

    name = "sbc"
    version = "2"
    tags = Tags(min_shots=1, zero_shot=False, transductive=False, multi_target=True)
    description = "slope/bias correction of the source PLS model's predictions"

    def __init__(
        self,
        mode: str = "slope_bias",
        min_slope_shots: int = 3,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.mode = mode
        self.min_slope_shots = min_slope_shots
        self.max_components = max_components
        self.random_state = random_state

    def fit(self, source: SourceData) -> SBC:
        if self.mode not in ("slope_bias", "bias"):
            raise ValueError(f"sbc: mode must be 'slope_bias' or 'bias', got {self.mode!r}")
        X, y = source_arrays(source)
        self.source_model_ = fit_source_pls(X, y, self.max_components, self.random_state, source.groups)
        self.n_channels_ = X.shape[1]
        self.n_properties_ = y.shape[1]
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> SBC:
        require_fitted(self, "source_model_", "fit")
        _, Xt, y = standards_arrays(standards, self.n_channels_, self.n_properties_, self.tags.min_shots, self.name)
        yhat = self.source_model_.predict(Xt)
        k = y.shape[1]
        slope = np.ones(k)
        intercept = np.zeros(k)
        modes = ["bias"] * k
        use_slope = self.mode == "slope_bias" and Xt.shape[0] >= max(2, int(self.min_slope_shots))
        for j in range(k):
            h = yhat[:, j]
            hc = h - h.mean()
            sxx = float(hc @ hc)
            scale = max(float(np.abs(h).max()), 1e-12)
            if use_slope and sxx > (1e-9 * scale) ** 2 * len(h):
                slope[j] = float(hc @ (y[:, j] - y[:, j].mean())) / sxx
                modes[j] = "slope_bias"
            intercept[j] = float(y[:, j].mean() - slope[j] * h.mean())
        self.slope_ = slope
        self.intercept_ = intercept
        self.modes_ = modes
        return self

    def chosen_params(self) -> dict[str, Any]:
        """Source latent variables per property and, after transfer, the correction used per
        property ("slope_bias", or "bias" when the slope could not be fitted) with its slope and bias."""
        out: dict[str, Any] = {}
        if hasattr(self, "source_model_"):
            out.update(source_model_params(self.source_model_))
        if hasattr(self, "modes_"):
            out["mode_used"] = list(self.modes_)
            out["slope"] = [float(v) for v in self.slope_]
            out["bias"] = [float(v) for v in self.intercept_]
        return out

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "slope_", "transfer")
        X = as_spectra(X_target, "target spectra", self.n_channels_)
        return self.intercept_ + self.slope_ * self.source_model_.predict(X)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        mode = trial.suggest_categorical("mode", ["slope_bias", "bias"])
        params: dict[str, Any] = {"mode": mode}
        if mode == "slope_bias":
            params["min_slope_shots"] = trial.suggest_int("min_slope_shots", 3, 10)
        return params
