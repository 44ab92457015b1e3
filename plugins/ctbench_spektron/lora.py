"""Low-rank adapters (LoRA, Hu et al. 2021) for the Spektron backbone, written for this plugin.

``LoRALinear`` (shared with lora_ct, from ``ctbench_deep.networks``) wraps a frozen
``nn.Linear``: y = W x + b + (alpha / r) * B (A x), with A (r, in) initialised small and random,
B (out, r) zero, so an untrained adapter changes nothing.
``add_lora`` swaps the named Linear layers of a module for wrapped ones, ``merge_lora`` folds the
trained adapters back into plain Linear weights (after training: the adapted copy is then an
ordinary module whose state dict pickles and deep-copies like any other).

Which layers: in a Mamba block the state-space projections ``in_proj`` (x and gate z),
``fwd.x_proj`` / ``bwd.x_proj`` (the input-dependent dt, B, C) and ``out_proj``; in a
Transformer block the attention ``qkv`` projection (Q, K and V in one matrix) and ``out``.
"""

from __future__ import annotations

import torch
from torch import nn

from ctbench_deep.networks import LoRALinear  # the one LoRA layer of the first-party plugins

MAMBA_TARGETS = ("in_proj", "fwd.x_proj", "bwd.x_proj", "out_proj")
ATTENTION_TARGETS = ("qkv", "out")


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
