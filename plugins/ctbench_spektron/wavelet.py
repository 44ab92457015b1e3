"""Wavelet multi-scale embedding: fixed DWT filters (PyWavelets) applied as strided convolutions.

``dwt_level`` equals ``pywt.dwt(x, wavelet, mode='periodization')`` (a test holds it to that),
so the embedding is differentiable, runs on GPU and stays an orthogonal multi-scale transform.
Each token of ``patch`` grid points gets the detail coefficients of levels 1..log2(patch) that
fall inside it plus its level-log2(patch) approximation (``patch`` numbers in all), and the
approximations of ``context_levels`` coarser levels broadcast over the tokens they cover.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dwt_filters(wavelet: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2, 1, L) conv1d weights: low-pass and high-pass decomposition filters, reversed."""
    import pywt

    w = pywt.Wavelet(wavelet)
    lo = torch.tensor(w.dec_lo[::-1], dtype=dtype)
    hi = torch.tensor(w.dec_hi[::-1], dtype=dtype)
    return torch.stack([lo, hi])[:, None, :]


def dwt_level(x: torch.Tensor, filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One periodized DWT level of x (b, n) with even n: returns (approximation, detail), each (b, n/2)."""
    L = filters.shape[-1]
    xp = F.pad(x[:, None, :], (L // 2 - 1, L // 2), mode="circular")[:, 0]
    # strided convolution written as windows @ filters (a matmul: much faster than conv1d on CPU)
    y = xp.unfold(-1, L, 2) @ filters[:, 0, :].to(x.dtype).T  # (b, n/2, 2)
    return y[..., 0], y[..., 1]


def wavedec(x: torch.Tensor, filters: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Multi-level DWT like ``pywt.wavedec(..., mode='periodization')``: [cA_n, cD_n, ..., cD_1]."""
    details = []
    a = x
    for _ in range(levels):
        a, d = dwt_level(a, filters)
        details.append(d)
    return [a] + details[::-1]


class WaveletEmbedding(nn.Module):
    """(b, G) spectra -> (b, G / patch, d_model) token embeddings."""

    def __init__(self, grid_points: int, patch: int, wavelet: str, context_levels: int, d_model: int):
        super().__init__()
        self.levels = int(math.log2(patch))
        self.n_tokens = grid_points // patch
        self.context_levels = max(0, min(context_levels, int(math.log2(self.n_tokens))))
        self.register_buffer("filters", dwt_filters(wavelet), persistent=False)
        self.n_features = patch + self.context_levels
        self.proj = nn.Linear(self.n_features, d_model)
        self.norm = nn.LayerNorm(d_model)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token wavelet coefficients (b, n_tokens, n_features)."""
        b = x.shape[0]
        feats = []
        a = x
        for _ in range(self.levels):
            a, d = dwt_level(a, self.filters)
            feats.append(d.reshape(b, self.n_tokens, -1))
        feats.append(a.reshape(b, self.n_tokens, 1))
        for j in range(1, self.context_levels + 1):
            a, _ = dwt_level(a, self.filters)
            feats.append(a.repeat_interleave(2**j, dim=1)[:, :, None] / 2 ** (j / 2))
        return torch.cat(feats, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.features(x)))
