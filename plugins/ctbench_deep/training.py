"""Training loops shared by the deep baselines (imports torch; loaded lazily by the methods)."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ctbench_deep.networks import CNNConfig, SpectralCNN


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` / ``"cuda:i"`` -> torch.device, with a one-line error when CUDA is absent."""
    text = str(name).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={name!r} was asked for but torch finds no CUDA GPU "
                f"(torch {torch.__version__}); pass device='cpu'"
            )
        return torch.device(text)
    raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:<index>'), got {name!r}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's global random state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def reseed(seed: int) -> None:
    """Re-seed torch (inside a :func:`seeded` block, so the caller's state is still restored)."""
    torch.manual_seed(int(seed))


def build_model(config: CNNConfig, state: dict[str, torch.Tensor] | None, device: torch.device) -> SpectralCNN:
    """A SpectralCNN of ``config`` on ``device``, loaded with ``state`` when given."""
    model = SpectralCNN(config)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.state_dict()`` (picklable, independent of the model)."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def as_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)


def loss_function(name: str) -> nn.Module:
    if name == "mse":
        return nn.MSELoss()
    if name == "smooth_l1":
        return nn.SmoothL1Loss(beta=1.0)
    raise ValueError(f"unknown loss {name!r}; use 'mse' or 'smooth_l1'")


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamw'")


@torch.no_grad()
def predict_array(model: nn.Module, X: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Eval-mode predictions, in batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)])
    model.train(was_training)
    return out


@dataclass
class FitResult:
    """What a training run found: the epoch count kept and the loss history."""

    epochs_run: int
    best_epoch: int
    """1-based epoch whose weights were kept (the last one without validation data)."""
    best_val: float | None
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def fit_network(
    model: nn.Module,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    params: list[nn.Parameter],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    loss: str,
    optimizer: str,
    rng: np.random.Generator,
    X_val: torch.Tensor | None = None,
    Y_val: torch.Tensor | None = None,
    patience: int | None = None,
    train_mode: bool = True,
    on_epoch: Callable[[float, int], None] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Minibatch training of ``params`` of ``model`` on (X, Y).

    With validation data the weights of the epoch with the lowest validation MSE are restored
    at the end, and training stops ``patience`` epochs after the last improvement.
    ``train_mode=False`` keeps the model in eval mode (frozen batch-norm statistics, no dropout).
    ``on_epoch(val_mse, epoch)`` is called after each epoch when validation data is given.
    ``augment(batch)`` (optional) perturbs each training batch.
    """
    criterion = loss_function(loss)
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    n = X.shape[0]
    bs = max(1, min(int(batch_size), n))
    has_val = X_val is not None and Y_val is not None and X_val.shape[0] > 0
    best_val = float("inf")
    best_epoch = 0
    best_state = None
    result = FitResult(epochs_run=0, best_epoch=0, best_val=None)
    if has_val:
        # epoch 0: the starting weights compete too (fine-tuning may not help at all)
        best_val = float(torch.mean((predict_array(model, X_val) - Y_val) ** 2))
        best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, int(epochs) + 1):
        model.train(train_mode)
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, bs):
            idx = torch.as_tensor(order[start : start + bs], device=X.device)
            opt.zero_grad(set_to_none=True)
            xb = X[idx] if augment is None else augment(X[idx])
            batch_loss = criterion(model(xb), Y[idx])
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        result.train_loss.append(total / n)
        result.epochs_run = epoch
        if has_val:
            val = float(torch.mean((predict_array(model, X_val) - Y_val) ** 2))
            result.val_loss.append(val)
            if on_epoch is not None:
                on_epoch(val, epoch)
            if val < best_val - 1e-12:
                best_val, best_epoch = val, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif patience is not None and epoch - best_epoch >= patience:
                break
    model.eval()
    if has_val and best_state is not None:
        model.load_state_dict(best_state)
        result.best_epoch, result.best_val = best_epoch, best_val
    else:
        result.best_epoch = result.epochs_run
    return result


class BaselineAugment:
    """Random baseline offset, linear slope and gain per spectrum, applied to standardized spectra.

    Perturbations are drawn in raw units (offset and slope ~ N(0, (strength * s)^2), gain - 1 ~
    N(0, (strength * s / mean)^2), with s the spread of the spectra's mean level across the
    calibration) and mapped through the per-channel standardization, as in Bjerrum et al. (2017).
    """

    def __init__(self, x_mean: np.ndarray, x_std: np.ndarray, level_spread: float, level: float, strength: float, device: torch.device):
        self.mean = as_tensor(x_mean, device)
        self.std = as_tensor(x_std, device)
        self.t = torch.linspace(-0.5, 0.5, len(x_mean), device=device)
        self.sigma = float(strength) * float(level_spread)
        self.sigma_gain = self.sigma / max(abs(float(level)), 1e-12)

    def __call__(self, Xs: torch.Tensor) -> torch.Tensor:
        n = Xs.shape[0]
        shape = (n, 1)
        offset = torch.randn(shape, device=Xs.device) * self.sigma
        slope = torch.randn(shape, device=Xs.device) * self.sigma
        gain = torch.randn(shape, device=Xs.device) * self.sigma_gain
        raw = Xs * self.std + self.mean
        return Xs + (offset + slope * self.t + gain * raw) / self.std


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, X: torch.Tensor) -> None:
    """Replace every batch-norm layer's running statistics by those of ``X`` (cumulative average).

    Forward passes in train mode without gradients, momentum=None (exact average over the
    batches seen), then the model is left in eval mode with the momenta restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(X)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
