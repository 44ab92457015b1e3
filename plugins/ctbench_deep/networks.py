"""Torch modules of the deep baselines: the 1-D spectral CNN and a low-rank adapter (LoRA) layer.

Imported lazily (it imports torch); ``ctbench_deep`` itself stays torch-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    """Shape of a :class:`SpectralCNN`; stored with the fitted weights so a model can be rebuilt."""

    n_outputs: int
    widths: tuple[int, ...] = (8, 16, 16)
    kernel_size: int = 11
    stride: int = 2
    pool_size: int = 44
    hidden: int = 64
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def feature_length(n_channels: int, config: CNNConfig) -> int:
    """Length of the conv stack's output for spectra of ``n_channels`` points."""
    length = int(n_channels)
    k = int(config.kernel_size)
    for _ in config.widths:
        length = (length + 2 * (k // 2) - k) // int(config.stride) + 1
    return length


class SpectralCNN(nn.Module):
    """Spectrum (n, p) -> properties (n, k).

    Three (or ``len(widths)``) blocks Conv1d -> BatchNorm1d -> ELU, adaptive max-pooling to
    ``pool_size`` positions, then two fully connected layers ``fc1`` (ELU, dropout) and ``fc2``.
    This is the primary model of LoRA-CT (Lai et al., Anal. Chem. 2025) and the backbone of ``cnn``.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        k = int(config.kernel_size)
        for width in config.widths:
            layers += [
                nn.Conv1d(c_in, int(width), k, stride=int(config.stride), padding=k // 2, bias=False),
                nn.BatchNorm1d(int(width)),
                nn.ELU(),
            ]
            c_in = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool1d(int(config.pool_size))
        self.fc1: nn.Module = nn.Linear(c_in * int(config.pool_size), int(config.hidden))
        self.act = nn.ELU()
        self.dropout = nn.Dropout(float(config.dropout))
        self.fc2 = nn.Linear(int(config.hidden), int(config.n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1))
        h = self.pool(h).flatten(1)
        h = self.dropout(self.act(self.fc1(h)))
        return self.fc2(h)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = W x + b + (alpha / r) * B A x.

    ``A`` (r x in) starts random (Kaiming-uniform, from ``generator`` when one is given), ``B``
    (out x r) starts at zero, so the wrapped layer initially computes exactly what the base layer
    does. Trainable parameters: r * (in + out). ``weight`` / ``bias`` / ``in_features`` /
    ``out_features`` read like a Linear's (the effective weight), for modules that use them
    directly. Shared by lora_ct and the Spektron adapters.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / self.rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)  # U(+-1/sqrt(in))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """The low-rank weight update (alpha / r) * B @ A, shaped like the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W' = W + (alpha / r) * B @ A (same outputs, no adapter)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def add_lora(model: SpectralCNN, rank: int, alpha: float | None = None) -> SpectralCNN:
    """Freeze every weight of ``model`` and wrap ``fc1`` in a :class:`LoRALinear` (in place)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(model.fc1, LoRALinear):
        raise ValueError("fc1 already carries a LoRA adapter")
    model.fc1 = LoRALinear(model.fc1, rank, alpha)
    return model


def merge_lora(model: SpectralCNN) -> SpectralCNN:
    """Fold the adapter of ``fc1`` into its weight (in place); the model is a plain CNN again."""
    if isinstance(model.fc1, LoRALinear):
        model.fc1 = model.fc1.merged()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_parameters(model: SpectralCNN) -> list[nn.Parameter]:
    """The trainable adapter matrices of ``model`` ([A, B]), empty if it carries none."""
    if isinstance(model.fc1, LoRALinear):
        return [model.fc1.lora_A, model.fc1.lora_B]
    return []
