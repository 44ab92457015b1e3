"""Preprocessing as transfer: SNV and a Savitzky-Golay derivative on every spectrum, then slope/bias correction."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags

from ._common import (
    MAX_COMPONENTS,
    as_spectra,
    check_max_components,
    fit_source_pls,
    is_count,
    one_blas_thread,
    require_fitted,
    source_arrays,
)
from .sbc import SBC

WINDOW_GRID = (7, 11, 15, 21, 31)
"""Default candidate Savitzky-Golay windows (channels) compared by the source model's CV."""


def snv(X: np.ndarray) -> np.ndarray:
    """Standard normal variate: every spectrum centred on its own mean and divided by its own SD
    (a constant spectrum is only centred)."""
    Xc = X - X.mean(axis=1, keepdims=True)
    sd = np.sqrt((Xc**2).mean(axis=1, keepdims=True))
    return Xc / np.where(sd > 0, sd, 1.0)


def preprocess(X: np.ndarray, snv_first: bool, window: int, polyorder: int, deriv: int) -> np.ndarray:
    """SNV (when ``snv_first``) then a Savitzky-Golay filter along the channels (``window`` odd,
    ``polyorder``, derivative order ``deriv``; scipy's default "interp" edges, unit channel step)."""
    from scipy.signal import savgol_filter

    Z = snv(X) if snv_first else X
    return savgol_filter(Z, int(window), int(polyorder), deriv=int(deriv), axis=1)


class PrepSBC(SBC):
    """Preprocessing as transfer: SNV + Savitzky-Golay derivative on every spectrum, then slope/bias correction.

    Every spectrum (source calibration, standards on both instruments, spectra to predict) is
    preprocessed the same way: SNV (each spectrum centred on its mean and divided by its SD), then
    a Savitzky-Golay filter (``scipy.signal.savgol_filter``, polynomial of order ``polyorder`` over
    ``window`` channels, derivative ``deriv``). SNV removes an additive offset and a multiplicative
    gain per spectrum exactly; the derivative removes what is left of a baseline offset (first
    derivative) or slope (second). The source PLS (one PLS1 per property, latent variables by
    10-fold CV holding out whole samples, as SBC's) is calibrated on the preprocessed source
    spectra; the transfer is then SBC's slope/bias correction (``ctbench_classical.sbc.SBC``, all
    of its logic reused), fitted on the standards' preprocessed *target* spectra.

    Window (``window=None``): chosen on the source calibration alone, before any standard is seen:
    for each window of ``windows`` (odd, above ``polyorder``, at most the channel count) the source
    PLS is calibrated on the preprocessed source spectra, and its CV error at the count it chose,
    RMSECV / SD(y_source), summed over properties, is compared; the lowest wins (ties: the smaller
    window). No test data and no standards enter the choice, so it is fixed for all N and repetitions.

    Parameters (defaults in brackets):
      window [None]: Savitzky-Golay window in channels (odd, > polyorder); None chooses it (above).
      windows [(7, 11, 15, 21, 31)]: the candidate windows.
      deriv [1]: derivative order, 0 (smoothing only), 1 or 2 (at most ``polyorder``).
      polyorder [2]: order of the local polynomial.
      snv [True]: apply SNV before the filter.
      mode ["slope_bias"], min_slope_shots [3]: SBC's (see ``SBC``).
      max_components [30]: largest latent-variable count tried by the source model's CV.
      random_state [0]: seeds the source model's CV folds (the window's CV uses the same folds).

    Why the defaults: a priori, the textbook NIR pipeline: SNV then a first derivative by a
    second-order Savitzky-Golay polynomial (SNV for scatter and gain, the first derivative for
    baseline offsets; the second derivative amplifies noise more and is left to tuning). The
    window grid spans narrow to broad smoothing for spectra of a few hundred to ~2000 channels;
    the window is then chosen on the calibration by its own CV, never on test results. SBC's
    defaults are SBC's.
    """

    name = "prep_sbc"
    version = "1"
    tags = Tags(min_shots=1, zero_shot=False, transductive=False, multi_target=True)
    description = "SNV + Savitzky-Golay derivative on every spectrum, source PLS on them, then slope/bias correction"

    def __init__(
        self,
        window: int | None = None,
        windows: tuple[int, ...] = WINDOW_GRID,
        deriv: int = 1,
        polyorder: int = 2,
        snv: bool = True,
        mode: str = "slope_bias",
        min_slope_shots: int = 3,
        max_components: int = MAX_COMPONENTS,
        random_state: int = 0,
    ):
        self.window = window
        self.windows = windows
        self.deriv = deriv
        self.polyorder = polyorder
        self.snv = snv
        super().__init__(
            mode=mode, min_slope_shots=min_slope_shots, max_components=max_components, random_state=random_state
        )

    # --- parameters ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.mode not in ("slope_bias", "bias"):
            raise ValueError(f"prep_sbc: mode must be 'slope_bias' or 'bias', got {self.mode!r}")
        if not isinstance(self.snv, (bool, np.bool_)):
            raise ValueError(f"prep_sbc: snv must be True or False, got {self.snv!r}")
        if not is_count(self.polyorder, 0) or self.polyorder > 5:
            raise ValueError(f"prep_sbc: polyorder must be an integer from 0 to 5, got {self.polyorder!r}")
        if not is_count(self.deriv, 0) or self.deriv > min(2, self.polyorder):
            raise ValueError(
                f"prep_sbc: deriv must be 0, 1 or 2 and at most polyorder ({self.polyorder}), got {self.deriv!r}"
            )
        if self.window is not None and not _valid_window(self.window, self.polyorder):
            raise ValueError(
                f"prep_sbc: window must be None or an odd integer above polyorder ({self.polyorder}), "
                f"got {self.window!r}"
            )
        try:
            grid = list(self.windows)
        except TypeError:
            grid = []
        if self.window is None and (not grid or not all(_valid_window(w, self.polyorder) for w in grid)):
            raise ValueError(
                f"prep_sbc: windows must be a non-empty sequence of odd integers above polyorder "
                f"({self.polyorder}), got {self.windows!r}"
            )
        check_max_components("prep_sbc", self.max_components)

    def candidate_windows(self, n_channels: int) -> list[int]:
        """The windows compared (ascending, at most ``n_channels``), or the fixed one."""
        if self.window is not None:
            return [int(self.window)]
        return sorted({int(w) for w in self.windows if int(w) <= n_channels})

    # --- the contract ---------------------------------------------------------------------------
    def fit(self, source: SourceData) -> PrepSBC:
        self._check_params()
        X, y = source_arrays(source)
        candidates = self.candidate_windows(X.shape[1])
        if self.window is not None and self.window > X.shape[1]:
            raise ValueError(f"prep_sbc: window {self.window} exceeds the {X.shape[1]} channels; give a smaller one")
        if not candidates:
            raise ValueError(
                f"prep_sbc: every window of {tuple(self.windows)!r} exceeds the {X.shape[1]} channels; "
                "give smaller ones"
            )
        groups = source.groups
        sd = y.std(axis=0)
        scale = np.where(sd > 0, sd, 1.0)
        scores = []
        with one_blas_thread():
            if len(candidates) > 1:
                for w in candidates:
                    model = fit_source_pls(self._prep(X, w), y, self.max_components, self.random_state, groups)
                    rmsecv = np.array([r[a - 1] for r, a in zip(model.rmsecv_, model.n_components_)])
                    scores.append(float((rmsecv / scale).sum()))
                best = int(np.argmin(scores))
            else:
                best = 0
            self.window_ = candidates[best]
            self.window_candidates_ = candidates
            self.window_scores_ = scores or None
            # SBC's fit on the preprocessed source (PLSCalibration's cache: the chosen window is not refitted)
            super().fit(dataclasses.replace(source, X=self._prep(X, self.window_)))
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> PrepSBC:
        require_fitted(self, "window_", "fit")
        Xs = as_spectra(standards.X_source, "standards' source spectra", self.n_channels_)
        Xt = as_spectra(standards.X_target, "standards' target spectra", self.n_channels_)
        if Xs.shape[0] != Xt.shape[0]:
            raise ValueError(
                f"standards have {Xs.shape[0]} source spectra but {Xt.shape[0]} target spectra; they must be paired"
            )
        if Xt.shape[0] < self.tags.min_shots:
            raise ValueError(f"{self.name} needs at least {self.tags.min_shots} transfer standards, got {Xt.shape[0]}")
        prepped = dataclasses.replace(standards, X_source=self._prep(Xs), X_target=self._prep(Xt))
        with one_blas_thread():
            return super().transfer(prepped, unlabelled)

    def preprocess(self, X: np.ndarray) -> np.ndarray:
        """The spectra as the source model sees them (SNV, then the chosen Savitzky-Golay filter)."""
        require_fitted(self, "window_", "fit")
        return self._prep(as_spectra(X, "spectra", self.n_channels_))

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        require_fitted(self, "slope_", "transfer")
        X = as_spectra(X_target, "target spectra", self.n_channels_)
        return super().predict(self._prep(X))

    def chosen_params(self) -> dict[str, Any]:
        """SBC's (source latent variables; slope and bias per property after transfer), plus the
        Savitzky-Golay window, whether the source CV chose it, and the candidates' CV scores."""
        out = super().chosen_params()
        if hasattr(self, "window_"):
            out["window"] = int(self.window_)
            out["window_by_cv"] = self.window_scores_ is not None
            out["window_candidates"] = [int(w) for w in self.window_candidates_]
            out["window_scores"] = self.window_scores_
        return out

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "snv": trial.suggest_categorical("snv", [True, False]),
            "deriv": trial.suggest_int("deriv", 0, 2),
        }
        if trial.suggest_categorical("window_by", ["cv", "fixed"]) == "fixed":
            params["window"] = trial.suggest_categorical("window", [5, 7, 11, 15, 21, 31, 41])
        params["mode"] = trial.suggest_categorical("mode", ["slope_bias", "bias"])
        return params

    # --- helpers ------------------------------------------------------------------------------
    def _prep(self, X: np.ndarray, window: int | None = None) -> np.ndarray:
        return preprocess(X, bool(self.snv), self.window_ if window is None else window, self.polyorder, self.deriv)


def _valid_window(w: Any, polyorder: Any) -> bool:
    return is_count(w, polyorder + 1) and w % 2 == 1
