"""Instrument-like augmentations and masks for pretraining (batched torch, on the model grid).

Each augmentation imitates a difference between spectrometers: noise, baseline drift, a
wavelength (axis) shift, an intensity gain / tilt, and a resolution change (Gaussian blur).
Masks hide 15-25 % of the tokens: contiguous blocks, scattered tokens, or blocks on peaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def shift(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Shift each spectrum by a fractional number of grid points (edges held constant)."""
    b, n = x.shape
    pos = torch.arange(n, device=x.device, dtype=x.dtype)[None, :] - points[:, None]
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long().clamp(max=n - 2)
    frac = pos - i0
    return torch.gather(x, 1, i0) * (1 - frac) + torch.gather(x, 1, i0 + 1) * frac


def blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 12) -> torch.Tensor:
    """Gaussian blur with a per-spectrum width ``sigma`` (grid points; 0 = unchanged)."""
    b, n = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(-1, keepdim=True)
    xp = F.pad(x[None], (radius, radius), mode="replicate")
    return F.conv1d(xp, k[:, None, :], groups=b)[0]


def instrument_augment(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """A random instrument distortion of standardized spectra x (b, G): blur, shift, gain/tilt, baseline."""
    b, n = x.shape
    dev = x.device
    s = strength
    out = blur(x, _uniform(g, b, 0.0, 3.0 * s, dev))
    out = shift(out, _uniform(g, b, -6.0 * s, 6.0 * s, dev))
    t = torch.linspace(-1, 1, n, device=dev, dtype=x.dtype)[None, :]
    gain = 1 + _uniform(g, b, -0.3 * s, 0.3 * s, dev)[:, None] + _uniform(g, b, -0.2 * s, 0.2 * s, dev)[:, None] * t
    # baseline: low-order polynomial plus a broad bump (fluorescence / scattering)
    c = (torch.rand(b, 3, generator=g, device=dev) * 2 - 1) * 0.5 * s
    centre = _uniform(g, b, -1, 1, dev)[:, None]
    wid = _uniform(g, b, 0.3, 1.0, dev)[:, None]
    bump = _uniform(g, b, 0.0, 0.6 * s, dev)[:, None] * torch.exp(-0.5 * ((t - centre) / wid) ** 2)
    baseline = c[:, :1] * t + c[:, 1:2] * (1.5 * t**2 - 0.5) + c[:, 2:3] * (2.5 * t**3 - 1.5 * t) + bump
    return out * gain + baseline


def add_noise(x: torch.Tensor, g: torch.Generator, max_std: float) -> torch.Tensor:
    """Gaussian noise with a per-spectrum level in [0, max_std]."""
    level = torch.rand(x.shape[0], 1, generator=g, device=x.device) * max_std
    return x + level * torch.randn(x.shape, generator=g, device=x.device)


def restandardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-6)


def token_masks(x: torch.Tensor, n_tokens: int, g: torch.Generator, kind: str = "block", min_ratio: float = 0.15,
                max_ratio: float = 0.25, max_blocks: int = 2) -> torch.Tensor:
    """Boolean (b, n_tokens) masks hiding between min_ratio and max_ratio of the tokens.

    block: 1..max_blocks contiguous blocks at random places; random: scattered tokens;
    peak: contiguous blocks centred on tokens drawn in proportion to their peak energy.
    """
    b = x.shape[0]
    dev = x.device
    n_mask = (_uniform(g, b, min_ratio, max_ratio, dev) * n_tokens).round().clamp(min=1).long()
    if kind == "random":
        scores = torch.rand(b, n_tokens, generator=g, device=dev)
        ranks = scores.argsort(-1).argsort(-1)
        return ranks < n_mask[:, None]
    if kind not in ("block", "peak"):
        raise ValueError(f"mask kind must be block, random or peak, got {kind!r}")
    n_blocks = torch.randint(1, max_blocks + 1, (b,), generator=g, device=dev)
    idx = torch.arange(n_tokens, device=dev)[None, :]
    mask = torch.zeros(b, n_tokens, dtype=torch.bool, device=dev)
    if kind == "peak":
        energy = x.reshape(b, n_tokens, -1).amax(-1) - x.reshape(b, n_tokens, -1).mean(-1)
        prob = torch.softmax(4.0 * energy / energy.std(-1, keepdim=True).clamp_min(1e-6), dim=-1)
    for j in range(max_blocks):
        active = n_blocks > j
        length = torch.div(n_mask + n_blocks - 1 - j, n_blocks, rounding_mode="floor").clamp(min=1)
        if kind == "peak":
            centre = torch.multinomial(prob, 1, generator=g)[:, 0]
            start = (centre - length // 2).clamp(min=0)
        else:
            start = (torch.rand(b, generator=g, device=dev) * (n_tokens - length + 1).float()).floor().long()
        start = torch.minimum(start, n_tokens - length)
        block = (idx >= start[:, None]) & (idx < (start + length)[:, None])
        mask |= block & active[:, None]
    return mask


def expand_token_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Token mask (b, n_tokens) -> grid mask (b, n_tokens * patch)."""
    return mask.repeat_interleave(patch, dim=1)
