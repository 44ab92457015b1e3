"""The backbone as a list of stages, token-level readout features, and the ridge regression head.

Stages of a SpektronModel, in order (each maps hidden states (b, 2 + n_tokens, d) to the same):
``embed`` (wavelet tokens + wavenumber encoding + [CLS] [DOMAIN]; takes the spectra), ``mamba1`` ..
``mambaK``, ``moe``, ``tf1`` .. ``tfM``, ``final`` (the closing LayerNorm). Any stage can be the
*readout*: its token states (the n_tokens x d_model matrix, flattened; [CLS] and [DOMAIN]
excluded) plus two intensity statistics of the raw spectrum (mean and log standard deviation:
the network itself sees standardized spectra, so these carry what standardization removed)
are the features of a linear head.

The head is ridge regression fitted in dual form (n samples << features), one penalty per
property chosen by grouped K-fold cross-validation; the readout stage itself can be chosen the
same way. Numpy for the fitting, torch for the differentiable forward used by the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RIDGE_GRID = np.logspace(-5, 1, 19)
"""Ridge penalties tried, relative to the mean eigenvalue of the (centred) kernel."""


# --- stages -------------------------------------------------------------------------------


def stage_names(model: Any) -> list[str]:
    cfg = model.cfg
    return (["embed"] + [f"mamba{i + 1}" for i in range(cfg.n_mamba)] + ["moe"]
            + [f"tf{i + 1}" for i in range(cfg.n_transformer)] + ["final"])


def stage_module(model: Any, name: str) -> Any:
    """The nn.Module of an adaptable stage (mamba / tf), or the MoE / final norm."""
    if name.startswith("mamba"):
        return model.mamba[int(name[5:]) - 1]
    if name.startswith("tf"):
        return model.transformer[int(name[2:]) - 1]
    if name == "moe":
        return model.moe
    if name == "final":
        return model.norm
    raise ValueError(f"stage {name!r} has no module")


def adaptable(name: str) -> bool:
    """Stages that take LoRA adapters (Mamba blocks: state-space projections; Transformer: attention)."""
    return name.startswith("mamba") or name.startswith("tf")


def embed_stage(model: Any, inputs: dict[str, Any]) -> Any:
    """The ``embed`` stage: spectra -> (b, 2 + n_tokens, d) hidden states."""
    import torch

    tok = model.embed(inputs["x"]) + model.pos(inputs["k_tok"], inputs["width"])
    b = tok.shape[0]
    return torch.cat([model.cls_token.expand(b, 1, -1), model.domain_tokens(inputs["domain"])[:, None], tok], dim=1)


def run_stage(model: Any, name: str, h: Any, overrides: dict[str, Any] | None = None) -> Any:
    module = (overrides or {}).get(name) or stage_module(model, name)
    if name == "moe":
        return module(h)[0]
    return module(h)


def run_stages(model: Any, h: Any, names: list[str], overrides: dict[str, Any] | None = None) -> Any:
    for name in names:
        h = run_stage(model, name, h, overrides)
    return h


def tokens(h: Any) -> Any:
    """Readout token matrix (b, n_tokens * d) from hidden states (the 2 leading special tokens dropped)."""
    return h[:, 2:].reshape(h.shape[0], -1)


# --- spectra -> model inputs ----------------------------------------------------------------


@dataclass
class GridSpectra:
    """Spectra on the model grid: standardized network inputs and the intensity statistics."""

    inputs: dict[str, Any]
    stats: np.ndarray
    """(n, 2): mean and log standard deviation of each resampled raw spectrum."""
    grid: np.ndarray


def to_grid(model: Any, X: np.ndarray, axis: np.ndarray, unit: str, domain: str = "auto") -> GridSpectra:
    from .grid import domain_index, guess_domain, resample_to_grid
    from .model import model_inputs

    cfg = model.cfg
    grid, lo, hi = resample_to_grid(np.asarray(X, dtype=float), np.asarray(axis, dtype=float), cfg.grid_points)
    dom = domain_index(guess_domain(lo, hi, unit) if domain == "auto" else domain)
    n = grid.shape[0]
    inputs = model_inputs(grid, np.full(n, lo), np.full(n, hi), unit, np.full(n, dom), cfg)
    g64 = grid.astype(float)
    stats = np.column_stack([g64.mean(1), np.log(np.maximum(g64.std(1, ddof=1) if g64.shape[1] > 1 else 1.0, 1e-12))])
    return GridSpectra(inputs=inputs, stats=stats, grid=grid)


def forward_all(model: Any, gs: GridSpectra, until: str, batch_size: int = 128,
                overrides: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Token features of every stage up to ``until`` (inclusive), without gradients: name -> (n, D)."""
    import torch

    names = stage_names(model)
    stop = names.index(until)
    n = gs.stats.shape[0]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names[: stop + 1]}
    with torch.no_grad():
        for s in range(0, n, batch_size):
            part = {k: v[s:s + batch_size] for k, v in gs.inputs.items()}
            h = embed_stage(model, part)
            out["embed"].append(tokens(h).numpy())
            for name in names[1: stop + 1]:
                h = run_stage(model, name, h, overrides)
                out[name].append(tokens(h).numpy())
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def hidden_until(model: Any, gs: GridSpectra, until: str, overrides: dict[str, Any] | None = None,
                 batch_size: int = 128) -> Any:
    """Hidden states (torch, no grad) after stage ``until`` (``embed`` included)."""
    import torch

    names = stage_names(model)
    chunks = []
    n = gs.stats.shape[0]
    with torch.no_grad():
        for s in range(0, n, batch_size):
            part = {k: v[s:s + batch_size] for k, v in gs.inputs.items()}
            h = embed_stage(model, part)
            h = run_stages(model, h, names[1: names.index(until) + 1], overrides)
            chunks.append(h)
    return torch.cat(chunks) if chunks else None


# --- features and the ridge head --------------------------------------------------------------


@dataclass
class FeatureScaling:
    """Block scaling fitted on the source calibration: token block to unit total variance, each
    statistic to unit variance (times ``stats_weight``)."""

    token_mean: np.ndarray
    token_scale: float
    stats_mean: np.ndarray
    stats_scale: np.ndarray
    stats_weight: float = 1.0

    @classmethod
    def fit(cls, Z: np.ndarray, S: np.ndarray, stats_weight: float = 1.0) -> FeatureScaling:
        mean = Z.mean(0)
        scale = float(np.sqrt(((Z - mean) ** 2).sum(1).mean()))
        sd = S.std(0)
        return cls(mean.astype(np.float32), max(scale, 1e-12), S.mean(0), np.where(sd > 1e-12, sd, 1.0), stats_weight)

    def stats(self, S: np.ndarray) -> np.ndarray:
        return (S - self.stats_mean) / self.stats_scale * self.stats_weight

    def apply(self, Z: np.ndarray, S: np.ndarray) -> np.ndarray:
        return np.hstack([(Z - self.token_mean) / self.token_scale, self.stats(S)])

    def torch_tokens(self, Z: Any) -> Any:
        import torch

        return (Z - torch.as_tensor(self.token_mean)) / self.token_scale


def group_folds(n: int, groups: np.ndarray | None, k: int, seed: int) -> list[np.ndarray]:
    """Validation index sets of a K-fold split that keeps replicate groups together (seeded)."""
    ids = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    uniq = np.unique(ids)
    k = max(2, min(k, uniq.size))
    order = np.random.default_rng(seed).permutation(uniq)
    fold_of = np.empty(uniq.max() + 1, dtype=int)
    fold_of[order] = np.arange(order.size) % k
    f = fold_of[ids]
    return [np.flatnonzero(f == j) for j in range(k)]


def _dual_ridge_paths(F_tr: np.ndarray, y_tr: np.ndarray, F_ev: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Predictions (len(grid), n_ev, k) of centred dual ridge for every relative penalty in grid."""
    fm, ym = F_tr.mean(0), y_tr.mean(0)
    A = F_tr - fm
    K = A @ A.T
    s, U = np.linalg.eigh(K)
    s = np.clip(s, 0, None)
    lam = grid * max(s.mean(), 1e-12)
    Uty = U.T @ (y_tr - ym)  # (n, k)
    Kev = (F_ev - fm) @ A.T  # (n_ev, n)
    KevU = Kev @ U
    preds = np.stack([KevU @ (Uty / (s + l)[:, None]) for l in lam]) + ym
    return preds


def ridge_solution(F: np.ndarray, y: np.ndarray, rel_penalty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W (D, k), b (k,)) of centred ridge with one relative penalty per property."""
    fm, ym = F.mean(0), y.mean(0)
    A = F - fm
    K = A @ A.T
    s, U = np.linalg.eigh(K)
    s = np.clip(s, 0, None)
    W = np.empty((F.shape[1], y.shape[1]))
    for j in range(y.shape[1]):
        lam = rel_penalty[j] * max(s.mean(), 1e-12)
        alpha = U @ ((U.T @ (y[:, j] - ym[j])) / (s + lam))
        W[:, j] = A.T @ alpha
    b = ym - fm @ W
    return W, b


@dataclass
class RidgeCV:
    """Cross-validated ridge: penalty per property, out-of-fold predictions, relative CV error."""

    penalty: np.ndarray
    oof: np.ndarray
    score: float
    per_property: np.ndarray


def ridge_cv(F: np.ndarray, y: np.ndarray, folds: list[np.ndarray], grid: np.ndarray = RIDGE_GRID) -> RidgeCV:
    n, k = y.shape
    paths = np.zeros((len(grid), n, k))
    for val in folds:
        tr = np.setdiff1d(np.arange(n), val)
        paths[:, val] = _dual_ridge_paths(F[tr], y[tr], F[val], grid)
    mse = ((paths - y[None]) ** 2).mean(1)  # (grid, k)
    best = mse.argmin(0)
    sd = np.where(y.std(0) > 0, y.std(0), 1.0)
    rel = np.sqrt(mse[best, np.arange(k)]) / sd
    oof = paths[best, :, np.arange(k)].T
    return RidgeCV(penalty=grid[best], oof=oof, score=float(rel.mean()), per_property=rel)


def weighted_ridge_solution(F: np.ndarray, y: np.ndarray, w: np.ndarray, rel_penalty: np.ndarray,
                            eig_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with sample weights ``w`` and absolute penalties rel_penalty * eig_mean (dual form)."""
    w = np.asarray(w, dtype=float)
    fm = (w[:, None] * F).sum(0) / w.sum()
    ym = (w[:, None] * y).sum(0) / w.sum()
    r = np.sqrt(w)[:, None]
    A = (F - fm) * r
    K = A @ A.T
    s, U = np.linalg.eigh(K)
    s = np.clip(s, 0, None)
    W = np.empty((F.shape[1], y.shape[1]))
    for j in range(y.shape[1]):
        alpha = U @ ((U.T @ ((y[:, j] - ym[j]) * r[:, 0])) / (s + rel_penalty[j] * eig_mean))
        W[:, j] = A.T @ alpha
    return W, ym - fm @ W
