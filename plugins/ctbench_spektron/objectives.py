"""Pretraining objectives: what one step computes from a batch.

Online network input = [view A ; view B] (the EMA target sees the clean A or B, alternating):
  view A = the spectrum, noised, with 15-25 % of its tokens masked (signal zeroed + mask token);
  view B = its natural partner on another instrument (when it has one), else an instrument
           augmentation of it (blur, shift, gain/tilt, baseline, noise).
Losses (each weighted; weight 0 skips it):
  recon    MSE on the masked grid points of A against the clean spectrum;
  denoise  MSE on the visible (noised) points of A;
  byol     the online prediction from one view's z_chem matches the EMA target's projection of
           the other view (BYOL, cosine; the direction alternates between steps);
  ot       debiased Sinkhorn divergence (POT, torch backend, log-domain) between the z_chem
           distributions of the instruments present in the batch;
  smooth   roughness (2nd difference energy) of the reconstruction beyond the target's;
  nonneg   reconstruction below the spectrum's physical zero (sources with non-negative data);
  deriv    first-derivative matching of reconstruction and target;
  kl       the variational bottleneck's KL to N(0, I) (z_chem and z_inst);
  moe_balance  the mixture-of-experts load-balancing loss;
  transfer FNO transfer head: view B (same axis as A) + z_inst(B) -> the clean spectrum A.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import add_noise, expand_token_mask, instrument_augment, restandardize, token_masks
from .config import ModelConfig, PretrainConfig
from .grid import token_positions
from .model import SpektronModel, standardize
from .sampling import Batch

LOSS_NAMES = ("recon", "denoise", "byol", "ot", "smooth", "nonneg", "deriv", "kl", "moe_balance", "transfer")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d_out))


class PretrainModule(nn.Module):
    """Backbone + BYOL projector/predictor; one forward computes every output a step needs (DDP-safe)."""

    def __init__(self, cfg: ModelConfig, proj_dim: int = 128, hidden: int = 256):
        super().__init__()
        self.backbone = SpektronModel(cfg)
        self.projector = _mlp(cfg.z_chem, hidden, proj_dim)
        self.predictor = _mlp(proj_dim, hidden, proj_dim)

    def forward(self, x: torch.Tensor, k_tok: torch.Tensor, width: torch.Tensor, domain: torch.Tensor,
                token_mask: torch.Tensor, fno_rows: torch.Tensor, fno_input: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.backbone(x, k_tok, width, domain, token_mask)
        out["pred"] = self.predictor(self.projector(out["mu_chem"]))
        if fno_rows.numel():
            out["fno"] = self.backbone.transfer(fno_input, out["z_inst"][fno_rows])
        return out


class TargetNetwork(nn.Module):
    """EMA copy of backbone + projector (BYOL target); never receives gradients."""

    def __init__(self, online: PretrainModule):
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x, k_tok, width, domain) -> torch.Tensor:
        h, _ = self.backbone.encode_tokens(x, k_tok, width, domain)
        return self.projector(self.backbone.bottleneck_stats(h)["mu_chem"])

    @torch.no_grad()
    def update(self, online: PretrainModule, momentum: float) -> None:
        for tgt, src in ((self.backbone, online.backbone), (self.projector, online.projector)):
            for pt, ps in zip(tgt.parameters(), src.parameters()):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


@dataclass
class Views:
    """Tensors of one step: online inputs (2n rows), target inputs, and what the losses compare to."""

    x_online: torch.Tensor
    x_target: torch.Tensor
    k_tok: torch.Tensor
    width: torch.Tensor
    domain: torch.Tensor
    token_mask: torch.Tensor
    grid_mask: torch.Tensor
    clean_a: torch.Tensor
    floor_a: torch.Tensor
    instrument: torch.Tensor
    fno_rows: torch.Tensor
    fno_input: torch.Tensor
    fno_target: torch.Tensor
    target_rows: torch.Tensor
    """Rows of the online batch the EMA target projects (one view per step, alternating)."""


def make_views(batch: Batch, pcfg: PretrainConfig, mcfg: ModelConfig, g: torch.Generator, device: torch.device,
               step: int = 0) -> Views:
    """Build both views of every spectrum of a batch (masks and augmentations drawn from ``g``)."""
    n = batch.n
    raw_a = torch.as_tensor(batch.values_a, device=device)
    xa, mean_a, std_a = standardize(raw_a)
    xb, _, _ = standardize(torch.as_tensor(batch.values_b, device=device))
    has = torch.as_tensor(batch.has_partner, device=device)
    nonneg = torch.as_tensor(batch.nonneg, device=device)
    floor_a = torch.where(nonneg, (-mean_a / std_a)[:, 0], torch.full_like(mean_a[:, 0], -torch.inf))
    k_a, w_a = token_positions(batch.lo_a, batch.hi_a, batch.unit_a, mcfg.grid_points, mcfg.patch)
    k_b, w_b = token_positions(batch.lo_b, batch.hi_b, batch.unit_b, mcfg.grid_points, mcfg.patch)
    hp = batch.has_partner[:, None]
    k_b, w_b = np.where(hp, k_b, k_a), np.where(hp, w_b, w_a)
    tmask = token_masks(xa, mcfg.n_tokens, g, pcfg.mask_kind, pcfg.mask_min, pcfg.mask_max, pcfg.mask_blocks)
    gmask = expand_token_mask(tmask, mcfg.patch)
    a_in = torch.where(gmask, torch.zeros_like(xa), add_noise(xa, g, pcfg.noise_std))
    b_src = torch.where(has[:, None], xb, xa)
    strength = torch.where(has, 0.5, 1.0)[:, None]
    b_view = restandardize(add_noise(instrument_augment(b_src, g) * strength + b_src * (1 - strength), g, pcfg.noise_std / 2))
    dom_a = torch.as_tensor(batch.domain_a, device=device)
    dom_b = torch.where(has, torch.as_tensor(batch.domain_b, device=device), dom_a)
    inst_a = torch.as_tensor(batch.instrument_a, device=device)
    inst_b = torch.where(has, torch.as_tensor(batch.instrument_b, device=device), inst_a)
    fno_local = torch.as_tensor(np.flatnonzero(~batch.has_partner | batch.same_axis), device=device, dtype=torch.long)
    return Views(
        x_online=torch.cat([a_in, b_view]), x_target=torch.cat([xa, b_view]),
        k_tok=torch.as_tensor(np.concatenate([k_a, k_b]), device=device),
        width=torch.as_tensor(np.concatenate([w_a, w_b]), device=device),
        domain=torch.cat([dom_a, dom_b]),
        token_mask=torch.cat([tmask, torch.zeros_like(tmask)]), grid_mask=gmask, clean_a=xa, floor_a=floor_a,
        instrument=torch.cat([inst_a, inst_b]), fno_rows=fno_local + n, fno_input=b_view[fno_local],
        fno_target=xa[fno_local],
        target_rows=torch.arange(n, 2 * n, device=device) if step % 2 == 0 else torch.arange(n, device=device),
    )


def sinkhorn_divergence(a: torch.Tensor, b: torch.Tensor, reg: float, iters: int) -> torch.Tensor:
    """Debiased entropic OT divergence between two point clouds (uniform weights), via POT."""
    import ot

    def w(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wx = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)
        wy = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=y.dtype, device=y.device)
        return ot.sinkhorn2(wx, wy, ot.dist(x, y), reg, method="sinkhorn_log", numItermax=iters, stopThr=1e-6)

    return w(a, b) - 0.5 * w(a, a) - 0.5 * w(b, b)


def ot_alignment(z: torch.Tensor, groups: torch.Tensor, reg: float, iters: int, max_groups: int = 3,
                 min_members: int = 4, max_members: int = 32) -> torch.Tensor:
    """Mean Sinkhorn divergence between the z distributions of the largest groups (instruments)."""
    ids, counts = torch.unique(groups, return_counts=True)
    keep = ids[counts >= min_members][counts[counts >= min_members].argsort(descending=True)][:max_groups]
    if keep.numel() < 2:
        return z.new_zeros(())
    zn = F.normalize(z.float(), dim=-1)
    clouds = [zn[groups == i][:max_members] for i in keep.tolist()]
    terms = [sinkhorn_divergence(clouds[i], clouds[j], reg, iters)
             for i in range(len(clouds)) for j in range(i + 1, len(clouds))]
    return torch.stack(terms).mean()


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean()


def compute_losses(out: dict[str, torch.Tensor], target_proj: torch.Tensor | None, views: Views,
                   pcfg: PretrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and the (unweighted) value of each active objective."""
    w = pcfg.weights
    n = views.clean_a.shape[0]
    recon = out["recon"][:n].float()
    target = views.clean_a
    m = views.grid_mask.float()
    parts: dict[str, torch.Tensor] = {}
    if w.recon:
        parts["recon"] = ((recon - target) ** 2 * m).sum() / m.sum().clamp_min(1)
    if w.denoise:
        parts["denoise"] = ((recon - target) ** 2 * (1 - m)).sum() / (1 - m).sum().clamp_min(1)
    if w.smooth:
        d2 = recon[:, 2:] - 2 * recon[:, 1:-1] + recon[:, :-2]
        d2t = target[:, 2:] - 2 * target[:, 1:-1] + target[:, :-2]
        scale = d2t.pow(2).mean().clamp_min(1e-8)
        parts["smooth"] = F.relu(d2.pow(2).mean(1) - d2t.pow(2).mean(1)).mean() / scale
    if w.nonneg:
        parts["nonneg"] = F.relu(views.floor_a[:, None] - recon).pow(2).mean()
    if w.deriv:
        d1, d1t = recon.diff(dim=1), target.diff(dim=1)
        parts["deriv"] = (d1 - d1t).pow(2).mean() / d1t.pow(2).mean().clamp_min(1e-8)
    if w.kl:
        parts["kl"] = _kl(out["mu_chem"], out["logvar_chem"]) + _kl(out["mu_inst"], out["logvar_inst"])
    if w.moe_balance:
        parts["moe_balance"] = out["moe_aux"].float()
    if w.byol and target_proj is not None:
        # the target projected one view (B on even steps, A on odd ones): the other view predicts it
        p = F.normalize(out["pred"].float(), dim=-1)
        t = F.normalize(target_proj.float(), dim=-1)
        online = p[:n] if views.target_rows[0] >= n else p[n:]
        parts["byol"] = (2 - 2 * (online * t).sum(-1)).mean()
    if w.ot:
        parts["ot"] = ot_alignment(out["mu_chem"], views.instrument, pcfg.ot_reg, pcfg.ot_iters)
    if w.transfer and "fno" in out:
        parts["transfer"] = (out["fno"].float() - views.fno_target).pow(2).mean()
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, parts
