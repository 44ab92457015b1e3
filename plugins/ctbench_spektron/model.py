"""The Spektron network.

spectrum on the grid (b, G) -> wavelet multi-scale token embedding -> + wavenumber positional
encoding -> [CLS] [DOMAIN] tokens prepended -> bidirectional Mamba blocks -> mixture of experts
(top-k routing, load-balancing loss) -> Transformer blocks -> variational bottleneck
(z_chem, z_inst) -> heads: masked reconstruction (tokens + z), regression (z_chem), and a
Fourier-neural-operator transfer head (spectrum + z_inst -> corrected spectrum).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DOMAINS, ModelConfig
from .grid import token_positions
from .ssm import MambaBlock
from .wavelet import WaveletEmbedding


class WavenumberEncoding(nn.Module):
    """Sinusoids of the token's centre wavenumber (cm-1), periods 4 .. 40000 cm-1, plus log width."""

    def __init__(self, d_model: int, n_freq: int = 32, min_period: float = 4.0, max_period: float = 40000.0):
        super().__init__()
        periods = torch.logspace(math.log10(min_period), math.log10(max_period), n_freq)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * n_freq + 1, d_model)

    def forward(self, k: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        ang = k.float()[..., None] * self.omega
        feats = torch.cat([torch.sin(ang), torch.cos(ang), torch.log(width.float())[..., None] / 5.0], dim=-1)
        return self.proj(feats)


class MoELayer(nn.Module):
    """Pre-norm residual mixture of expert MLPs with top-k routing; returns (h, load-balancing loss)."""

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int):
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.norm = nn.LayerNorm(d_model)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model)) for _ in range(n_experts)
        )

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(h).reshape(-1, h.shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = (top_p / top_p.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * gates[rows, slot, None])
        # Switch-Transformer balance: n_experts * sum_e (share of assignments) * (mean router prob)
        share = torch.bincount(top_i.reshape(-1), minlength=self.n_experts).float() / top_i.numel()
        aux = self.n_experts * (share * probs.mean(0)).sum()
        return h + out.view_as(h), aux


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block (dropout kept for MC-dropout uncertainty)."""

    def __init__(self, d_model: int, n_heads: int, hidden: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, L, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, L, d)
        h = h + self.drop(self.out(a))
        return h + self.drop(self.mlp(self.norm2(h)))


class SpectralConv1d(nn.Module):
    """Fourier layer: keep the lowest ``modes`` frequencies and mix channels there with complex weights.

    Channels-last: x (b, n, width) -> (b, n, width)."""

    def __init__(self, width: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        self.weight = nn.Parameter(scale * torch.randn(modes, width, width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        xf = torch.fft.rfft(x.float().transpose(1, 2).contiguous(), dim=-1)  # (b, width, n//2+1)
        m = min(self.modes, xf.shape[-1])
        w = torch.view_as_complex(self.weight[:m].contiguous())  # (m, in, out)
        low = torch.einsum("bim,mio->bom", xf[..., :m], w)
        out = F.pad(low, (0, xf.shape[-1] - m))
        return torch.fft.irfft(out, n=n, dim=-1).transpose(1, 2).to(x.dtype)


class FNOTransferHead(nn.Module):
    """Fourier neural operator mapping a target-instrument spectrum (b, G) to a source-like one,
    conditioned on an instrument code (FiLM); output = input + learned correction."""

    def __init__(self, cond_dim: int, width: int, modes: int, layers: int):
        super().__init__()
        self.lift = nn.Linear(2, width)
        self.spectral = nn.ModuleList(SpectralConv1d(width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.film = nn.Linear(cond_dim, 2 * width * layers)
        self.project = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.project[-1].weight)
        nn.init.zeros_(self.project[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, n = x.shape
        pos = torch.linspace(-1, 1, n, device=x.device, dtype=x.dtype).expand(b, n)
        h = self.lift(torch.stack([x, pos], dim=-1))  # (b, n, width)
        film = self.film(cond.to(x.dtype)).view(b, len(self.spectral), 2, 1, -1)
        for i, (sc, pw) in enumerate(zip(self.spectral, self.pointwise)):
            h = F.gelu((sc(h) + pw(h)) * (1 + film[:, i, 0]) + film[:, i, 1])
        return x + self.project(h)[..., 0]


class SpektronModel(nn.Module):
    """The backbone and its heads; ``forward`` takes standardized spectra on the grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = WaveletEmbedding(cfg.grid_points, cfg.patch, cfg.wavelet, cfg.context_levels, d)
        self.pos = WavenumberEncoding(d)
        self.cls_token = nn.Parameter(0.02 * torch.randn(d))
        self.mask_token = nn.Parameter(0.02 * torch.randn(d))
        self.domain_tokens = nn.Embedding(len(DOMAINS), d)
        self.mamba = nn.ModuleList(
            MambaBlock(d, cfg.d_state, cfg.expand, cfg.ssm_structure, cfg.head_dim, cfg.conv_kernel,
                       cfg.bidirectional, cfg.scan_chunk, cfg.scan_impl)
            for _ in range(cfg.n_mamba)
        )
        self.moe = MoELayer(d, cfg.expert_hidden, cfg.n_experts, cfg.top_k)
        self.transformer = nn.ModuleList(
            TransformerBlock(d, cfg.n_heads, cfg.ffn_hidden, cfg.dropout) for _ in range(cfg.n_transformer)
        )
        self.norm = nn.LayerNorm(d)
        zc, zi = cfg.z_chem, cfg.z_inst
        self.bottleneck = nn.Linear(2 * d, 2 * (zc + zi))
        self.recon_film = nn.Linear(zc + zi, 2 * d)
        self.recon_gate = nn.Linear(d, 1)
        nn.init.zeros_(self.recon_gate.weight)
        nn.init.constant_(self.recon_gate.bias, 2.0)
        self.recon_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.patch))
        self.regression_head = nn.Sequential(nn.Linear(zc, zc), nn.GELU(), nn.Linear(zc, cfg.n_targets))
        self.transfer_head = FNOTransferHead(zi, cfg.fno_width, cfg.fno_modes, cfg.fno_layers)

    # --- building blocks ---
    def encode_tokens(self, x: torch.Tensor, k_tok: torch.Tensor, width: torch.Tensor, domain: torch.Tensor,
                      token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone: returns (hidden states (b, 2 + n_tokens, d), MoE balance loss)."""
        tok = self.embed(x)
        if token_mask is not None:
            tok = torch.where(token_mask[..., None], self.mask_token.to(tok.dtype), tok)
        tok = tok + self.pos(k_tok, width).to(tok.dtype)
        b = x.shape[0]
        h = torch.cat([self.cls_token.expand(b, 1, -1).to(tok.dtype), self.domain_tokens(domain)[:, None].to(tok.dtype), tok], dim=1)
        for blk in self.mamba:
            h = blk(h)
        h, aux = self.moe(h)
        for blk in self.transformer:
            h = blk(h)
        return self.norm(h), aux

    def bottleneck_stats(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior means and log-variances of z_chem and z_inst from CLS + mean-pooled tokens."""
        zc, zi = self.cfg.z_chem, self.cfg.z_inst
        pooled = torch.cat([h[:, 0], h[:, 2:].mean(1)], dim=-1)
        mu_c, lv_c, mu_i, lv_i = torch.split(self.bottleneck(pooled).float(), [zc, zc, zi, zi], dim=-1)
        return {"mu_chem": mu_c, "logvar_chem": lv_c.clamp(-10, 10), "mu_inst": mu_i, "logvar_inst": lv_i.clamp(-10, 10)}

    def reconstruct(self, h: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Spectrum (b, G) from token states modulated by the latent code, plus a gated copy of
        the input signal (a skip connection; masked inputs are zero, so hidden blocks must come
        from context, while visible ones only need their noise removed)."""
        scale, shift = self.recon_film(z.to(h.dtype))[:, None].chunk(2, dim=-1)
        tok = h[:, 2:] * (1 + scale) + shift
        b, n_tok = tok.shape[:2]
        gate = torch.sigmoid(self.recon_gate(tok))  # (b, n_tokens, 1)
        out = self.recon_head(tok) + gate * x.view(b, n_tok, -1).to(tok.dtype)
        return out.reshape(b, -1)

    def forward(self, x: torch.Tensor, k_tok: torch.Tensor, width: torch.Tensor, domain: torch.Tensor,
                token_mask: torch.Tensor | None = None, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """x: (b, G) standardized spectra; k_tok, width: (b, n_tokens) cm-1; domain: (b,) ids."""
        h, aux = self.encode_tokens(x, k_tok, width, domain, token_mask)
        out = self.bottleneck_stats(h)
        sample = self.training if sample is None else sample
        if sample:
            z_c = out["mu_chem"] + torch.randn_like(out["mu_chem"]) * torch.exp(0.5 * out["logvar_chem"])
            z_i = out["mu_inst"] + torch.randn_like(out["mu_inst"]) * torch.exp(0.5 * out["logvar_inst"])
        else:
            z_c, z_i = out["mu_chem"], out["mu_inst"]
        out.update(hidden=h, z_chem=z_c, z_inst=z_i, moe_aux=aux, recon=self.reconstruct(h, torch.cat([z_c, z_i], -1), x))
        return out

    def regress(self, z_chem: torch.Tensor) -> torch.Tensor:
        return self.regression_head(z_chem)

    def transfer(self, x: torch.Tensor, z_inst: torch.Tensor) -> torch.Tensor:
        return self.transfer_head(x, z_inst)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-spectrum zero mean / unit std; returns (x_std, mean, std) with mean, std (b, 1)."""
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True).clamp_min(1e-8)
    return (x - mean) / std, mean, std


def model_inputs(grid_values: np.ndarray, lo: np.ndarray, hi: np.ndarray, unit: Any, domain: np.ndarray,
                 cfg: ModelConfig, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors for ``SpektronModel.forward`` from spectra already on the grid (n, G)."""
    k_tok, width = token_positions(lo, hi, unit, cfg.grid_points, cfg.patch)
    x = torch.as_tensor(np.asarray(grid_values, dtype=np.float32), device=device)
    x, _, _ = standardize(x)
    return {
        "x": x,
        "k_tok": torch.as_tensor(k_tok, device=device),
        "width": torch.as_tensor(width, device=device),
        "domain": torch.as_tensor(np.asarray(domain, dtype=np.int64), device=device),
    }
