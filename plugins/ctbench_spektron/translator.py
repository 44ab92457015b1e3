"""Spektron's instrument translator: a pretrained network that infers, from a few paired transfer
standards, how the target instrument differs from the source one, in physical terms.

* ``trunk``: a dilated 1-D convolution stack over [spectrum, position] -> per-point features, on a
  working grid of ``points`` values over the task's own axis range (each instrument normalised by
  its own scalar mean and standard deviation over the standards).
* ``pair encoder``: the trunk features of each standard's source and target views and their
  difference, pooled per segment of the axis (so it sees *where* the instruments differ), averaged
  over the standards -> a latent ``z`` (``z_dim``) -> ``theta``, the instrument difference in
  ``THETA`` terms: axis shift, stretch and warp, signed line broadening, log gain, response slope
  and curvature, baseline offset, slope and curvature (amortised inference, in the spirit of
  neural processes / prior-fitted networks).
* ``transform(x, theta)``: the differentiable forward model those parameters define - what the
  target instrument would have measured for a source spectrum. It works on any ascending axis
  at its own resolution (parameters are in units of the axis span), so at transfer it is applied
  to the source calibration on the task's grid, where PLS needs every detail kept.
* ``chem`` head (z_chem, pretraining only): pooled trunk features, trained to agree across the two
  views of a sample; ``inst`` head (pretraining only): ``z`` -> the simulator's parameter
  differences.

Pretraining is in ``ctbench_spektron.translator_pretrain``; the transfer method that uses it is
``ctbench_spektron.translate_method``. torch is imported at module import: import this module only
inside functions of cheap modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FORMAT = "spektron-translator/1"


@dataclass(frozen=True)
class TranslatorConfig:
    points: int = 256
    width: int = 32
    trunk_depth: int = 4
    segments: int = 8
    z_dim: int = 32
    chem_dim: int = 64
    n_inst: int = 16  # outputs of the instrument head (simulator parameter differences), padded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranslatorConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _Block(nn.Module):
    """Residual dilated convolution block."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 5, padding=2 * dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 1)
        self.norm = nn.GroupNorm(4, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.gelu(self.norm(self.conv1(F.gelu(h)))))


class _Stack(nn.Module):
    def __init__(self, c_in: int, width: int, depth: int):
        super().__init__()
        self.stem = nn.Conv1d(c_in, width, 7, padding=3)
        self.blocks = nn.ModuleList([_Block(width, 2 ** (i % 6)) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return h


class TranslatorModel(nn.Module):
    def __init__(self, cfg: TranslatorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.register_buffer("position", torch.linspace(-1.0, 1.0, cfg.points), persistent=False)
        self.trunk = _Stack(2, w, cfg.trunk_depth)
        self.pair = nn.Sequential(nn.Conv1d(3 * w, w, 1), nn.GELU())
        self.pair_out = nn.Sequential(nn.Linear(w * (cfg.segments + 1), 4 * cfg.z_dim), nn.GELU(),
                                      nn.Linear(4 * cfg.z_dim, 2 * cfg.z_dim))
        self.z_out = nn.Sequential(nn.GELU(), nn.Linear(2 * cfg.z_dim, cfg.z_dim))
        self.theta = nn.Linear(cfg.z_dim, len(THETA))
        nn.init.zeros_(self.theta.weight)  # an untrained network proposes no difference at all
        nn.init.zeros_(self.theta.bias)
        self.chem = nn.Sequential(nn.Linear(2 * w, 2 * cfg.chem_dim), nn.GELU(), nn.Linear(2 * cfg.chem_dim, cfg.chem_dim))
        self.inst = nn.Linear(cfg.z_dim, cfg.n_inst)

    def _with_position(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, self.position.expand_as(x)], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, points) -> (n, width, points) trunk features."""
        return self.trunk(self._with_position(x))

    def encode(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """z of the instrument pair from standards: a, b (E, N, points) source and target views;
        mask (E, N) 1 for a real standard. Returns (E, z_dim)."""
        E, N, P = a.shape
        ha = self.features(a.reshape(E * N, P))
        hb = self.features(b.reshape(E * N, P))
        h = self.pair(torch.cat([ha, hb, hb - ha], dim=1))  # (E*N, w, P)
        seg = F.adaptive_avg_pool1d(h, self.cfg.segments).flatten(1)
        e = self.pair_out(torch.cat([seg, h.mean(-1)], dim=1)).reshape(E, N, -1)
        if mask is None:
            pooled = e.mean(1)
        else:
            m = mask.unsqueeze(-1).to(e.dtype)
            pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.z_out(pooled)

    def infer_theta(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, theta) of the instrument pair from the standards (see ``encode``)."""
        z = self.encode(a, b, mask)
        return z, self.theta(z)

    def embed_chem(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.chem(torch.cat([h.mean(-1), h.amax(-1)], dim=1))


THETA = ("shift", "stretch", "warp", "broadening", "log_gain", "response_slope", "response_curv", "offset",
         "baseline_slope", "baseline_curv")
"""The instrument difference (target relative to source). With t in [-1, 1] over the axis and
q = t^2 - 1/3: the target reports at t the source's value at t - d(t), d = 2e-3 (shift + stretch t +
warp q) (so 1 unit of shift = 1/1000 of the span), blurred (or sharpened) to first order by the signed
variance c = 1e-5 broadening in t units (x + c/2 x''; 1 unit ~ a Gaussian of sd 1/630 of the span), times exp(log_gain + response_slope t +
response_curv q), plus offset + baseline_slope t + baseline_curv q, all on spectra normalised by each
instrument's scalar mean and standard deviation."""

AXIS_UNIT = 2e-3
THETA_LIMIT = torch.tensor([200.0, 200.0, 200.0, 400.0, 25.0, 5.0, 5.0, 50.0, 50.0, 50.0])
"""Soft bounds of theta (tanh): an axis error of 20 % of the span, a gain of e^25, and so on -
far beyond any real instrument pair, so they only keep an untrained or diverging fit finite."""
BROADENING_UNIT = 1e-5


def _second_derivative(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d2x/dt2 on an ascending (possibly uneven) grid t; the ends copy their neighbours."""
    h1 = (t[1:-1] - t[:-2])
    h2 = (t[2:] - t[1:-1])
    inner = 2 * (x[:, 2:] * h1 - x[:, 1:-1] * (h1 + h2) + x[:, :-2] * h2) / (h1 * h2 * (h1 + h2))
    return torch.cat([inner[:, :1], inner, inner[:, -1:]], dim=1)


def _interp(x: torch.Tensor, t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Row-wise linear interpolation of x (n, P) on grid t (P,) at positions at (n, P); clamped ends."""
    at = at.clamp(t[0], t[-1])
    idx = torch.searchsorted(t, at.contiguous()).clamp(1, t.numel() - 1)
    t0, t1 = t[idx - 1], t[idx]
    w = (at - t0) / (t1 - t0)
    return torch.gather(x, 1, idx - 1) * (1 - w) + torch.gather(x, 1, idx) * w


def transform(x: torch.Tensor, theta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the target instrument reports for normalised source spectra x (n, P) on the grid
    t (P,) in [-1, 1], given theta (n, 10) or (10,) (see THETA)."""
    if theta.dim() == 1:
        theta = theta.expand(x.shape[0], -1)
    limit = THETA_LIMIT.to(theta.dtype)
    th = (limit * torch.tanh(theta / limit)).unsqueeze(-1)  # soft bounds: the identity well inside them
    q = t**2 - 1.0 / 3.0
    d = AXIS_UNIT * (th[:, 0] + th[:, 1] * t + th[:, 2] * q)
    c = th[:, 3] * BROADENING_UNIT
    at = t.unsqueeze(0) - d
    xb = _interp(x, t, at) + 0.5 * c * _interp(_second_derivative(x, t), t, at)
    gain = torch.exp(th[:, 4] + th[:, 5] * t + th[:, 6] * q)
    return gain * xb + th[:, 7] + th[:, 8] * t + th[:, 9] * q


def new_model(cfg: TranslatorConfig | None = None, seed: int = 0) -> TranslatorModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TranslatorModel(cfg or TranslatorConfig())


def save(model: TranslatorModel, path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Weights-only file + JSON manifest beside it (sha256, size)."""
    from .checkpoint import write_weights

    return write_weights(path, {"format": FORMAT, "config": model.cfg.to_dict()}, model, manifest)


def load(path) -> tuple[TranslatorModel, dict[str, Any]]:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Spektron translator weights not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Spektron translator weights file (format {blob.get('format') if isinstance(blob, dict) else None!r})")
    model = TranslatorModel(TranslatorConfig.from_dict(blob["config"]))
    model.load_state_dict(blob["state_dict"])
    from .checkpoint import sha256_of

    return model.eval(), dict(blob.get("manifest", {}), weights_sha256=sha256_of(path))


# --- numpy helpers shared by pretraining and transfer ------------------------------------------


def resample(axis: np.ndarray, X: np.ndarray, points: int) -> np.ndarray:
    """(n, p) on ascending ``axis`` -> (n, points) on ``points`` equally spaced positions over it."""
    from .grid import interp_rows

    return interp_rows(axis, X, np.linspace(axis[0], axis[-1], points))


def scalar_stats(X: np.ndarray) -> tuple[float, float]:
    """One instrument's normalisation: mean and standard deviation of every value (sd > 0)."""
    m = float(np.mean(X))
    s = float(np.std(X))
    return m, (s if s > 0 and np.isfinite(s) else 1.0)
