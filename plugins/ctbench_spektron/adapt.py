"""Training the adapted stages of the backbone: LoRA transfer, full fine-tuning, test-time training.

The backbone is shared (one frozen copy per process), so nothing here modifies it: the stages to
train are deep-copied, wrapped (LoRA) or unfrozen (full), trained, merged, and returned as state
dicts that the method stores. The stages before the first adapted one are frozen, so their
output is computed once (the *prefix*) and training only runs the adapted part.

Objective of a transfer (``AdapterTask``), for the N standards (target spectra t_i, source
spectra s_i, values y_i), with f the readout features (scaled token states + statistics):

    regression  mean over properties of ((head(f_adapted(t_i)) - y_i) / sd_y)^2
    alignment   ||f_adapted(t_i) - f_frozen(s_i)||^2 / total variance of the source features
    recon       masked reconstruction of unlabelled target spectra (test-time training)
    moments     ||mean f_adapted(unlabelled) - mean f(source calibration)||^2 / total variance

Also trained: an affine correction of the two intensity statistics and the head's bias.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .lora import ATTENTION_TARGETS, MAMBA_TARGETS, add_lora, lora_parameters, merge_lora
from .readout import FeatureScaling, adaptable, embed_stage, run_stage, stage_module, stage_names, tokens


@dataclass
class AdapterSettings:
    kind: str = "lora"
    """'lora' (low-rank adapters) or 'full' (every weight of the adapted stages)."""
    rank: int = 4
    alpha: float = 8.0
    steps: int = 100
    lr: float = 3e-3
    align_weight: float = 1.0
    recon_weight: float = 1.0
    moments_weight: float = 1.0
    ttt_batch: int = 16
    mask_kind: str = "block"
    weight_decay: float = 0.0


@dataclass
class AdapterTask:
    """What one adapter training sees (torch tensors unless noted)."""

    h_prefix: Any = None
    """Frozen hidden states of the standards' target spectra after the prefix stages."""
    stats_target: Any = None
    """(N, 2) target statistics, scaled like the source ones."""
    f_source: Any = None
    """(N, D) readout features of the standards' source spectra (frozen path), the alignment target."""
    y: Any = None
    """(N, k) values divided by the source calibration's standard deviations."""
    unlabelled: Any = None
    """GridSpectra of unlabelled target spectra (test-time training), or None."""
    source_feature_mean: Any = None
    """(D,) mean readout feature of the source calibration (moments term)."""


@dataclass
class AdapterResult:
    states: dict[str, dict[str, Any]]
    stats_scale: np.ndarray
    stats_shift: np.ndarray
    bias_delta: np.ndarray
    history: list[float] = field(default_factory=list)


def targets_for(name: str) -> tuple[str, ...]:
    return MAMBA_TARGETS if name.startswith("mamba") else ATTENTION_TARGETS


def adapted_stage_names(model: Any, readout: str, n_blocks: int) -> list[str]:
    """The last ``n_blocks`` adaptable stages at or before the readout (n_blocks < 0: all)."""
    names = stage_names(model)
    path = [s for s in names[: names.index(readout) + 1] if adaptable(s)]
    if n_blocks < 0 or n_blocks >= len(path):
        return path
    return path[len(path) - n_blocks:] if n_blocks > 0 else []


def path_after(model: Any, first: str | None, readout: str) -> tuple[list[str], list[str]]:
    """(prefix stages after embed, trained path) split at ``first`` (None: everything is prefix)."""
    names = stage_names(model)
    stop = names.index(readout) + 1
    if first is None:
        return names[1:stop], []
    i = names.index(first)
    return names[1:i], names[i:stop]


class AdaptedPath:
    """Trainable copies of the adapted stages and the extra parameters (statistics affine, bias)."""

    def __init__(self, model: Any, stages: list[str], base: dict[str, Any], settings: AdapterSettings,
                 n_targets: int, seed: int):
        import torch

        g = torch.Generator().manual_seed(int(seed) % (2**63))
        self.modules: dict[str, Any] = {}
        params = []
        for name in stages:
            mod = copy.deepcopy(base.get(name) or stage_module(model, name))
            if settings.kind == "lora":
                add_lora(mod, targets_for(name), settings.rank, settings.alpha, g)
                params += lora_parameters(mod)
            elif settings.kind == "full":
                for p in mod.parameters():
                    p.requires_grad_(True)
                params += list(mod.parameters())
            else:
                raise ValueError(f"adapter kind must be 'lora' or 'full', got {settings.kind!r}")
            mod.train()
            self.modules[name] = mod
        self.stats_log_scale = torch.zeros(2, requires_grad=True)
        self.stats_shift = torch.zeros(2, requires_grad=True)
        self.bias_delta = torch.zeros(n_targets, requires_grad=True)
        self.params = params
        self.extra = [self.stats_log_scale, self.stats_shift, self.bias_delta]

    def stats(self, s: Any) -> Any:
        import torch

        return s * torch.exp(self.stats_log_scale) + self.stats_shift

    def result(self, history: list[float]) -> AdapterResult:
        states = {}
        for name, mod in self.modules.items():
            merge_lora(mod)
            mod.eval()
            states[name] = {k: v.detach().clone() for k, v in mod.state_dict().items()}
        return AdapterResult(states, np.exp(self.stats_log_scale.detach().numpy()).astype(float),
                             self.stats_shift.detach().numpy().astype(float), self.bias_delta.detach().numpy().astype(float),
                             history)


def _features(model: Any, ap: AdaptedPath, h: Any, path: list[str], overrides: dict[str, Any],
              scaling: FeatureScaling, stats_scaled: Any) -> Any:
    import torch

    for name in path:
        h = run_stage(model, name, h, {**overrides, **ap.modules})
    return torch.cat([scaling.torch_tokens(tokens(h)), ap.stats(stats_scaled)], dim=-1), h


def _recon_loss(model: Any, ap: AdaptedPath, gs: Any, rows: Any, prefix: list[str], path: list[str], readout: str,
                overrides: dict[str, Any], settings: AdapterSettings, g: Any) -> Any:
    """Masked reconstruction of unlabelled spectra through the adapted path (test-time training)."""
    import torch

    from .augment import expand_token_mask, token_masks

    cfg = model.cfg
    x = gs.inputs["x"][rows]
    tmask = token_masks(x, cfg.n_tokens, g, settings.mask_kind)
    gmask = expand_token_mask(tmask, cfg.patch)
    x_in = torch.where(gmask, torch.zeros_like(x), x)
    part = {k: v[rows] for k, v in gs.inputs.items()}
    part["x"] = x_in
    names = stage_names(model)
    after = names[names.index(readout) + 1:]
    with torch.no_grad():
        tok = model.embed(x_in)
        tok = torch.where(tmask[..., None], model.mask_token.to(tok.dtype), tok)
        tok = tok + model.pos(part["k_tok"], part["width"])
        b = tok.shape[0]
        h = torch.cat([model.cls_token.expand(b, 1, -1), model.domain_tokens(part["domain"])[:, None], tok], dim=1)
        for name in prefix:
            h = run_stage(model, name, h, overrides)
    all_over = {**overrides, **ap.modules}
    for name in path + after:
        h = run_stage(model, name, h, all_over)
    st = model.bottleneck_stats(h)
    recon = model.reconstruct(h, torch.cat([st["mu_chem"], st["mu_inst"]], -1), x_in)
    m = gmask.float()
    return ((recon - x) ** 2 * m).sum() / m.sum().clamp_min(1)


def train_adapter(model: Any, readout: str, stages: list[str], base: dict[str, Any], scaling: FeatureScaling,
                  head_W: Any, head_b: Any, task: AdapterTask, settings: AdapterSettings, n_targets: int,
                  seed: int) -> AdapterResult:
    """Train the adapted stages (and statistics affine, head bias) on the task's terms; see module doc."""
    import torch

    torch.manual_seed(int(seed) % (2**63))
    prefix, path = path_after(model, stages[0] if stages else None, readout)
    ap = AdaptedPath(model, stages, base, settings, n_targets, seed)
    opt_params = [{"params": ap.params, "lr": settings.lr, "weight_decay": settings.weight_decay},
                  {"params": ap.extra, "lr": settings.lr * 3, "weight_decay": 0.0}]
    if not ap.params:
        opt_params = opt_params[1:]
    opt = torch.optim.Adam(opt_params)
    g = torch.Generator().manual_seed(int(seed) % (2**63) + 1)
    has_std = task.h_prefix is not None and task.h_prefix.shape[0] > 0
    ttt = task.unlabelled is not None and task.unlabelled.stats.shape[0] > 0
    src_var = float(scaling.stats_weight**2 * 2 + 1.0)  # total variance of the scaled source features
    stats_u = torch.as_tensor(scaling.stats(task.unlabelled.stats), dtype=torch.float32) if ttt else None
    history = []
    for step in range(settings.steps):
        opt.zero_grad()
        loss = torch.zeros(())
        if has_std:
            f, _ = _features(model, ap, task.h_prefix, path, base, scaling, task.stats_target)
            if task.y is not None and task.y.shape[0]:
                pred = f @ head_W + head_b + ap.bias_delta
                loss = loss + ((pred - task.y) ** 2).mean()
            if settings.align_weight and task.f_source is not None:
                loss = loss + settings.align_weight * ((f - task.f_source) ** 2).sum(1).mean() / src_var
        if ttt:
            n_u = task.unlabelled.stats.shape[0]
            rows = torch.randperm(n_u, generator=g)[: settings.ttt_batch]
            if settings.recon_weight:
                loss = loss + settings.recon_weight * _recon_loss(model, ap, task.unlabelled, rows, prefix, path, readout,
                                                                  base, settings, g)
            if settings.moments_weight and task.source_feature_mean is not None:
                with torch.no_grad():
                    h_u = embed_stage(model, {k: v[rows] for k, v in task.unlabelled.inputs.items()})
                    for name in prefix:
                        h_u = run_stage(model, name, h_u, base)
                f_u, _ = _features(model, ap, h_u, path, base, scaling, stats_u[rows])
                gap = f_u.mean(0) - task.source_feature_mean
                loss = loss + settings.moments_weight * (gap**2).sum() / src_var
        if not loss.requires_grad:
            break
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return ap.result(history)


def finetune_last_stage(model: Any, readout: str, scaling: FeatureScaling, h_prefix: Any, stats: Any, y: Any,
                        W0: np.ndarray, b0: np.ndarray, penalty: np.ndarray, steps: int, lr: float, seed: int,
                        batch: int = 32) -> tuple[dict[str, dict[str, Any]], np.ndarray, np.ndarray]:
    """Fit-time unfreezing of the last block: the last adaptable stage at or before the readout and
    the head, trained together on the source calibration (MSE on y / sd plus the head's ridge
    penalty ``penalty`` (absolute, per property)). ``h_prefix``: hidden states before that stage.
    Returns ({stage: state}, W, b)."""
    import torch

    stage = adapted_stage_names(model, readout, 1)[0]
    _, path = path_after(model, stage, readout)
    torch.manual_seed(int(seed) % (2**63))
    mod = copy.deepcopy(stage_module(model, stage))
    for p in mod.parameters():
        p.requires_grad_(True)
    mod.train()
    W = torch.tensor(W0, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    lam = torch.as_tensor(penalty, dtype=torch.float32)
    opt = torch.optim.Adam([{"params": list(mod.parameters()), "lr": lr}, {"params": [W, b], "lr": lr}])
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    n, k = h_prefix.shape[0], W.shape[1]
    st = torch.as_tensor(scaling.stats(stats), dtype=torch.float32)
    for _ in range(steps):
        rows = torch.randperm(n, generator=g)[:batch]
        opt.zero_grad()
        h = h_prefix[rows]
        for name in path:
            h = run_stage(model, name, h, {stage: mod})
        f = torch.cat([scaling.torch_tokens(tokens(h)), st[rows]], dim=-1)
        loss = ((f @ W + b - y[rows]) ** 2).mean() + (lam * (W**2).sum(0)).sum() / (n * k)
        loss.backward()
        opt.step()
    mod.eval()
    return ({stage: {k_: v.detach().clone() for k_, v in mod.state_dict().items()}}, W.detach().numpy().astype(float),
            b.detach().numpy().astype(float))
