"""Spektron configuration: model sizes and pretraining settings (plain dataclasses, no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("NIR", "IR", "Raman", "unknown")
"""Spectroscopic domains; index = [DOMAIN] token id."""


@dataclass
class ModelConfig:
    """Architecture of a Spektron network (see docs/spektron.md for the data flow)."""

    size: str = "small"
    grid_points: int = 2048
    """Every spectrum is resampled to this many points over its own native axis range."""
    patch: int = 32
    """Grid points per token (a power of two): 2048 / 32 = 64 spectral tokens."""
    wavelet: str = "db4"
    context_levels: int = 2
    """DWT levels coarser than the patch, broadcast to the tokens as context."""
    d_model: int = 128
    n_mamba: int = 3
    d_state: int = 16
    expand: int = 2
    ssm_structure: str = "head"
    """'head': one decay rate per head of ``head_dim`` channels (Mamba-2 style, fast chunked
    matmul scan on CPU); 'diagonal': Mamba-1 decay per (channel, state)."""
    head_dim: int = 32
    conv_kernel: int = 4
    bidirectional: bool = True
    n_experts: int = 4
    top_k: int = 2
    expert_hidden: int = 256
    n_transformer: int = 2
    n_heads: int = 4
    ffn_hidden: int = 256
    dropout: float = 0.1
    z_chem: int = 128
    z_inst: int = 64
    n_targets: int = 1
    fno_modes: int = 64
    fno_width: int = 16
    fno_layers: int = 2
    scan_chunk: int = 16
    scan_impl: str = "auto"
    """'auto' (mamba_ssm CUDA kernel when available, else chunked), 'cuda', 'chunked', 'ref'."""

    def __post_init__(self) -> None:
        if self.grid_points % self.patch:
            raise ValueError(f"grid_points ({self.grid_points}) must be a multiple of patch ({self.patch})")
        if self.patch & (self.patch - 1):
            raise ValueError(f"patch must be a power of two, got {self.patch}")
        if self.ssm_structure not in ("head", "diagonal"):
            raise ValueError(f"ssm_structure must be 'head' or 'diagonal', got {self.ssm_structure!r}")
        if self.ssm_structure == "head" and (self.d_model * self.expand) % self.head_dim:
            raise ValueError("d_model * expand must be a multiple of head_dim")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("top_k must be between 1 and n_experts")

    @property
    def n_tokens(self) -> int:
        return self.grid_points // self.patch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


SIZES: dict[str, dict[str, Any]] = {
    # tests: a few thousand parameters per block, runs in milliseconds
    "tiny": dict(
        patch=64, d_model=32, n_mamba=1, d_state=8, head_dim=16, expert_hidden=64, n_transformer=2,
        n_heads=2, ffn_hidden=64, z_chem=16, z_inst=8, fno_modes=16, fno_width=8, fno_layers=1, dropout=0.0,
    ),
    # CPU pretraining (the committed default checkpoint)
    "small": dict(patch=32, d_model=128, n_mamba=3, d_state=16, head_dim=32, expert_hidden=256,
                  n_transformer=2, n_heads=4, ffn_hidden=256),
    # GPU pretraining, ~9M parameters
    "base": dict(patch=16, d_model=256, n_mamba=8, d_state=16, head_dim=64, expert_hidden=768,
                 n_transformer=2, n_heads=8, ffn_hidden=1024, fno_modes=128, fno_width=32, fno_layers=4),
}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named size, with optional field overrides."""
    if size not in SIZES:
        from ctbench.names import did_you_mean

        raise ValueError(f"unknown Spektron size {size!r}{did_you_mean(size, SIZES)}; sizes: {', '.join(SIZES)}")
    return ModelConfig(size=size, **{**SIZES[size], **overrides})


@dataclass
class ObjectiveWeights:
    """Weight of each pretraining objective; 0 disables it (and skips its computation)."""

    recon: float = 1.0
    """Masked reconstruction of the hidden blocks."""
    denoise: float = 0.5
    """Reconstruction of the visible (noised) part of the input."""
    byol: float = 0.5
    """Agreement of z_chem between augmented views / natural cross-instrument pairs (EMA target)."""
    ot: float = 0.1
    """Sinkhorn divergence between z_chem distributions of different instruments in a batch."""
    smooth: float = 0.01
    nonneg: float = 0.1
    deriv: float = 0.1
    kl: float = 1e-3
    moe_balance: float = 0.01
    transfer: float = 0.2
    """FNO transfer head: instrument-distorted view -> reference spectrum."""


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the corpus; stored in every checkpoint."""

    size: str = "small"
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the size's ModelConfig fields."""
    steps: int = 1000
    batch_size: int = 32
    """Spectra per step per process (each gives two views)."""
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_start: float = 0.99
    mask_kind: str = "block"
    """'block' (contiguous), 'random' (scattered tokens) or 'peak' (blocks centred on peaks)."""
    mask_min: float = 0.15
    mask_max: float = 0.25
    mask_blocks: int = 2
    noise_std: float = 0.05
    synthetic_fraction: float = 0.3
    pair_fraction: float = 0.25
    """Share of each batch drawn as natural cross-instrument pairs (same specimen, other laser)."""
    ot_reg: float = 0.05
    ot_iters: int = 50
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    checkpoint_every: int = 200
    log_every: int = 10
    num_threads: int = 0
    """torch CPU threads (0: leave torch's default)."""

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = ObjectiveWeights(**self.weights)
        if self.mask_kind not in ("block", "random", "peak"):
            raise ValueError(f"mask_kind must be block, random or peak, got {self.mask_kind!r}")
        if not 0 < self.mask_min <= self.mask_max < 1:
            raise ValueError("need 0 < mask_min <= mask_max < 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")

    def model_config(self) -> ModelConfig:
        return model_config(self.size, **self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
