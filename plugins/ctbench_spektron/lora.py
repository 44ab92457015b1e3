"""Low-rank adapters (LoRA, Hu et al. 2021) for the Spektron backbone, written for this plugin.

``LoRALinear`` wraps a frozen ``nn.Linear``: y = W x + b + (alpha / r) * B (A x), with A (r, in)
initialised small and random, B (out, r) zero, so an untrained adapter changes nothing.
``add_lora`` swaps the named Linear layers of a module for wrapped ones, ``merge_lora`` folds the
trained adapters back into plain Linear weights (after training: the adapted copy is then an
ordinary module whose state dict pickles and deep-copies like any other).

Which layers: in a Mamba block the state-space projections ``in_proj`` (x and gate z),
``fwd.x_proj`` / ``bwd.x_proj`` (the input-dependent dt, B, C) and ``out_proj``; in a
Transformer block the attention ``qkv`` projection (Q, K and V in one matrix) and ``out``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAMBA_TARGETS = ("in_proj", "fwd.x_proj", "bwd.x_proj", "out_proj")
ATTENTION_TARGETS = ("qkv", "out")


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable rank-r update (alpha / r) * B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.scale = float(alpha) / self.rank
        a = torch.empty(self.rank, base.in_features)
        bound = 1.0 / math.sqrt(base.in_features)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # the effective weight (modules that read .weight keep working)
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)

    def merged(self) -> nn.Linear:
        """A plain Linear with the adapter folded into its weight."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _get(module: nn.Module, dotted: str) -> tuple[nn.Module, str, nn.Module | None]:
    parent = module
    parts = dotted.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p, None)
        if parent is None:
            return module, parts[-1], None
    return parent, parts[-1], getattr(parent, parts[-1], None)


def add_lora(module: nn.Module, targets: tuple[str, ...], rank: int, alpha: float,
             generator: torch.Generator | None = None) -> list[LoRALinear]:
    """Replace each Linear named in ``targets`` (dotted paths inside ``module``) by a LoRALinear.

    Every other parameter of ``module`` is frozen. Returns the adapters (missing names, e.g.
    ``bwd.x_proj`` of a unidirectional block, are skipped)."""
    for p in module.parameters():
        p.requires_grad_(False)
    adapters = []
    for name in targets:
        parent, attr, layer = _get(module, name)
        if layer is None:
            continue
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"LoRA target {name!r} is a {type(layer).__name__}, not a Linear layer")
        wrapped = LoRALinear(layer, rank, alpha, generator)
        setattr(parent, attr, wrapped)
        adapters.append(wrapped)
    return adapters


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRALinear inside ``module`` into a plain Linear, in place; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
            count += 1
        else:
            count += merge_lora(child)
    return count


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if n.endswith("lora_A") or n.endswith("lora_B")]
