"""The ``spektron`` calibration-transfer method: a frozen pretrained backbone + linear heads.

fit:       each source spectrum is resampled to the model grid over its own axis and embedded by
           the frozen backbone (z_chem mean + mean-pooled token states); a PLS (or ridge) head is
           fitted on the embeddings, optionally together with the raw spectra (block-scaled).
transfer:  with the N paired standards, a ridge-regularised affine map moves target features
           toward their source partners (offset + low-rank linear part, dual form since N is
           small), then a bias correction on y from the standards' residuals.
predict:   target spectra -> features -> corrected -> head (+ bias): (n, k).

LoRA adapters and test-time training come in a later version (issue 8). torch is imported
only inside methods, so listing methods stays instant.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

_MODEL_CACHE: dict[tuple[str, float], Any] = {}
_LOCK = threading.Lock()


AUTO_PRETRAIN: dict[str, Any] = {"size": "small", "steps": 150, "batch_size": 16, "num_threads": 1,
                                 "checkpoint_every": 50, "mlflow": False}
"""Settings of the one-off pretraining when no committed weights exist (about 2-4 min on 2 CPU cores)."""
AUTO_CORPUS = "rruff,fermentation,synthetic"


def default_weights(progress: bool = True) -> Path:
    """The default small checkpoint: the committed one, else one trained on first use (cached)."""
    from .checkpoint import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    from .corpus.resolve import cache_dir

    auto = cache_dir() / "auto" / f"spektron-{AUTO_PRETRAIN.get('size', 'small')}.pt"
    if auto.is_file():
        return auto
    print("spektron: no committed weights found; pretraining a small model once (a few minutes on CPU)...",
          file=sys.stderr)
    from ctbench.data import DataError

    from .corpus import build_corpus
    from .pretrain import run_pretraining

    try:
        corpus = build_corpus(AUTO_CORPUS)
    except DataError:  # no dataset mirror on this machine: synthetic spectra only
        corpus = build_corpus("synthetic")
    out = auto.parent / "run"
    size = AUTO_PRETRAIN.get("size", "small")
    resume = (out / "checkpoint-last.pt").exists()  # an interrupted first use continues
    run_pretraining(corpus, AUTO_PRETRAIN | {"out": str(out), "progress": progress, "resume": resume})
    (out / f"spektron-{size}.pt").replace(auto)
    (out / f"spektron-{size}.json").replace(auto.with_suffix(".json"))
    return auto


def load_backbone(path: str | Path | None):
    """The frozen model for a weights path (None: the default), cached per process."""
    from .checkpoint import load_model

    p = Path(path) if path else default_weights()
    key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
    with _LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load_model(p)[0]
        return _MODEL_CACHE[key]


def embed_spectra(model, X: np.ndarray, axis: np.ndarray, unit: str, domain: str = "auto",
                  batch_size: int = 128) -> np.ndarray:
    """Backbone features (n, z_chem + d_model) of spectra X (n, p) on ``axis`` (``unit``)."""
    import torch

    from .grid import domain_index, guess_domain, resample_to_grid
    from .model import model_inputs

    cfg = model.cfg
    grid, lo, hi = resample_to_grid(np.asarray(X, dtype=float), np.asarray(axis, dtype=float), cfg.grid_points)
    dom = domain_index(guess_domain(lo, hi, unit) if domain == "auto" else domain)
    n = grid.shape[0]
    feats = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            part = grid[start:start + batch_size]
            m = part.shape[0]
            inp = model_inputs(part, np.full(m, lo), np.full(m, hi), unit, np.full(m, dom), cfg)
            h, _ = model.encode_tokens(**inp)
            stats = model.bottleneck_stats(h)
            feats.append(torch.cat([stats["mu_chem"], h[:, 2:].float().mean(1)], dim=-1).numpy())
    return np.concatenate(feats).astype(float)


def _affine_correction(F_t: np.ndarray, F_s: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean_t, offset, W) so that F_t -> F_t + offset + (F_t - mean_t) @ W approximates F_s.

    W is the ridge solution in dual form W = C^T (C C^T + lam I)^-1 R with C the centred target
    features and R the centred residuals; lam = strength * trace(C C^T) / N."""
    mean_t = F_t.mean(0)
    offset = (F_s - F_t).mean(0)
    C = F_t - mean_t
    R = (F_s - F_t) - offset
    n = C.shape[0]
    K = C @ C.T
    lam = strength * max(np.trace(K) / max(n, 1), 1e-12)
    W = C.T @ np.linalg.solve(K + lam * np.eye(n), R)
    return mean_t, offset, W


class Spektron(TransferMethod):
    """Spektron foundation model, frozen, with linear heads and a feature-space standards correction."""

    name = "spektron"
    version = "1"
    tags = Tags(min_shots=2, multi_target=True)
    description = "Spektron (wavelet-Mamba-MoE-Transformer, self-supervised) embeddings + PLS head, standards-based feature correction"

    def __init__(self, checkpoint: str | None = None, features: str = "embedding+raw", head: str = "pls",
                 max_components: int = 15, ridge_alpha: float | None = None, correction: str = "linear",
                 correction_strength: float = 1.0, y_bias: bool = True, domain: str = "auto", random_state: int = 0):
        self.checkpoint = checkpoint
        self.features = features
        self.head = head
        self.max_components = max_components
        self.ridge_alpha = ridge_alpha
        self.correction = correction
        self.correction_strength = correction_strength
        self.y_bias = y_bias
        self.domain = domain
        self.random_state = random_state

    # --- helpers ---
    def _check_params(self) -> None:
        if self.features not in ("embedding", "embedding+raw"):
            raise ValueError(f"spektron: features must be 'embedding' or 'embedding+raw', got {self.features!r}")
        if self.head not in ("pls", "ridge"):
            raise ValueError(f"spektron: head must be 'pls' or 'ridge', got {self.head!r}")
        if self.correction not in ("linear", "offset", "none"):
            raise ValueError(f"spektron: correction must be 'linear', 'offset' or 'none', got {self.correction!r}")

    def _embed(self, X: np.ndarray, axis: np.ndarray, unit: str) -> np.ndarray:
        import torch

        torch.manual_seed(self.random_state)
        return embed_spectra(load_backbone(self.checkpoint), X, axis, unit, self.domain)

    def _blocks(self, E: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Block-scaled feature matrix: each block (embedding, raw) has unit total variance."""
        Fe = (E - self.e_mean_) / self.e_scale_
        if self.features == "embedding":
            return Fe
        Fx = (X - self.x_mean_) / self.x_scale_
        return np.hstack([Fe, Fx])

    def _head_predict(self, F: np.ndarray) -> np.ndarray:
        if self.head == "pls":
            return F @ self.coef_ + self.intercept_
        return self.ridge_.predict(F).reshape(F.shape[0], -1)

    def _correct(self, E: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not getattr(self, "transferred_", False) or self.correction == "none":
            return E, X
        E = E + self.e_offset_ + ((E - self.e_tmean_) @ self.e_W_ if self.e_W_ is not None else 0.0)
        X = X + self.x_offset_ + ((X - self.x_tmean_) @ self.x_W_ if self.x_W_ is not None else 0.0)
        return E, X

    # --- the contract ---
    def fit(self, source: SourceData) -> Spektron:
        self._check_params()
        X = np.array(source.X, dtype=float, copy=True)
        y = np.array(source.y, dtype=float, copy=True)
        y = y[:, None] if y.ndim == 1 else y
        self.axis_ = np.array(source.axis, dtype=float, copy=True)
        self.axis_unit_ = source.axis_unit
        E = self._embed(X, self.axis_, self.axis_unit_)
        self.e_mean_, self.x_mean_ = E.mean(0), X.mean(0)
        self.e_scale_ = max(float(np.sqrt(((E - self.e_mean_) ** 2).sum(1).mean())), 1e-12)
        self.x_scale_ = max(float(np.sqrt(((X - self.x_mean_) ** 2).sum(1).mean())), 1e-12)
        F = self._blocks(E, X)
        if self.head == "pls":
            from ctbench.pls import PLSCalibration

            pls = PLSCalibration(max_components=self.max_components, random_state=self.random_state).fit(F, y)
            self.coef_, self.intercept_ = pls.coef_, pls.intercept_
            self.n_components_ = pls.n_components_
        else:
            from sklearn.linear_model import Ridge, RidgeCV

            self.ridge_ = (Ridge(alpha=self.ridge_alpha) if self.ridge_alpha is not None
                           else RidgeCV(alphas=np.logspace(-4, 3, 15))).fit(F, y)
        self.n_targets_ = y.shape[1]
        self.transferred_ = False
        self.bias_ = np.zeros(self.n_targets_)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> Spektron:
        if not hasattr(self, "e_mean_"):
            raise RuntimeError("spektron: call fit() before transfer()")
        self._check_params()
        Xs = np.array(standards.X_source, dtype=float, copy=True)
        Xt = np.array(standards.X_target, dtype=float, copy=True)
        ys = np.array(standards.y, dtype=float, copy=True)
        ys = ys[:, None] if ys.ndim == 1 else ys
        self.target_axis_ = np.array(standards.axis, dtype=float, copy=True)
        self.target_unit_ = standards.axis_unit
        if self.target_axis_.shape != self.axis_.shape or not np.allclose(self.target_axis_, self.axis_):
            raise ValueError("spektron: standards must be on the source calibration's axis (resample them first)")
        Es = self._embed(Xs, self.target_axis_, self.target_unit_)
        Et = self._embed(Xt, self.target_axis_, self.target_unit_)
        self.e_W_ = self.x_W_ = None
        self.e_tmean_, self.x_tmean_ = Et.mean(0), Xt.mean(0)
        self.e_offset_ = (Es - Et).mean(0)
        self.x_offset_ = (Xs - Xt).mean(0)
        if self.correction == "linear" and Xt.shape[0] >= 2:
            self.e_tmean_, self.e_offset_, self.e_W_ = _affine_correction(Et, Es, self.correction_strength)
            self.x_tmean_, self.x_offset_, self.x_W_ = _affine_correction(Xt, Xs, self.correction_strength)
        self.transferred_ = True
        self.bias_ = np.zeros(self.n_targets_)
        if self.y_bias:
            Ec, Xc = self._correct(Et, Xt)
            self.bias_ = (ys - self._head_predict(self._blocks(Ec, Xc))).mean(0)
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        if not hasattr(self, "e_mean_"):
            raise RuntimeError("spektron: call fit() before predict()")
        X = np.array(X_target, dtype=float, copy=True)
        axis = getattr(self, "target_axis_", self.axis_)
        unit = getattr(self, "target_unit_", self.axis_unit_)
        if X.ndim != 2 or X.shape[1] != axis.size:
            raise ValueError(f"spektron: expected spectra with {axis.size} channels, got shape {X.shape}")
        E = self._embed(X, axis, unit)
        E, X = self._correct(E, X)
        return self._head_predict(self._blocks(E, X)) + self.bias_

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "features": trial.suggest_categorical("features", ["embedding", "embedding+raw"]),
            "correction": trial.suggest_categorical("correction", ["linear", "offset"]),
            "correction_strength": trial.suggest_float("correction_strength", 0.01, 10.0, log=True),
            "max_components": trial.suggest_int("max_components", 4, 20),
        }

    @classmethod
    def pretrain(cls, corpus: Any, config: dict[str, Any]) -> dict[str, Any]:
        """Self-supervised pretraining (see ctbench_spektron.pretrain.run_pretraining)."""
        from .pretrain import run_pretraining

        return run_pretraining(corpus, config)
