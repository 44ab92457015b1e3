"""The deep-learning baselines ``cnn`` (full fine-tune) and ``lora_ct`` (Lai et al., Anal. Chem. 2025).

Both train the same kind of 1-D CNN (:class:`ctbench_deep.networks.SpectralCNN`) on the source
calibration once in ``fit`` and adapt it with the N transfer standards in ``transfer``. This
module does not import torch; the torch code lives in ``networks`` and ``training`` and is
imported inside the methods.

Preprocessing (both): spectra are standardized per channel and y per property with the source
calibration's means and standard deviations; the same source statistics are applied to the
target spectra.
Fitted state is kept as CPU ``state_dict`` copies (``source_state_``: the source model, never
modified; ``state_``: the model ``predict`` uses), so a fitted method deep-copies and pickles,
and ``transfer`` always starts again from the source model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

# Architecture and source-training defaults shared by both methods; chosen on validation splits
# of the corn calibration pool and the synthetic set (see the class docstrings).
_WIDTHS = (8, 16, 16)


def _as_2d(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or inf values")
    return arr


def _safe_std(a: np.ndarray) -> np.ndarray:
    sd = a.std(axis=0)
    floor = 1e-8 * max(float(np.abs(a).max()), 1.0)
    return np.where(sd > floor, sd, 1.0)


def holdout_split(
    n: int, fraction: float, rng: np.random.Generator, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices: a random ``fraction`` of the rows (of whole groups, if given) held out."""
    if groups is None:
        groups = np.arange(n)
    uniq = np.unique(np.asarray(groups).astype(str))
    n_val = int(round(fraction * len(uniq)))
    if fraction <= 0 or n_val < 2 or len(uniq) - n_val < 2:
        return np.arange(n), np.arange(0)
    val_groups = set(rng.permutation(uniq)[:n_val].tolist())
    is_val = np.array([g in val_groups for g in np.asarray(groups).astype(str)])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class _DeepTransferMethod(TransferMethod):
    """Source training, preprocessing and prediction shared by ``cnn`` and ``lora_ct``."""

    _loss: str = "mse"
    _optimizer: str = "adam"

    # --- helpers ---
    def _config(self, n_channels: int, n_outputs: int):
        """The network shape; the pooled length is capped at the conv stack's output length."""
        from dataclasses import replace

        from ctbench_deep.networks import CNNConfig, feature_length

        widths = tuple(int(w) for w in self.widths)
        if not widths or min(widths) < 1 or int(self.kernel_size) < 1 or int(self.stride) < 1:
            raise ValueError(f"{self.name}: widths, kernel_size and stride must be positive")
        config = CNNConfig(
            n_outputs=int(n_outputs),
            widths=widths,
            kernel_size=int(self.kernel_size),
            stride=int(self.stride),
            pool_size=int(self.pool_size),
            hidden=int(self.hidden),
            dropout=float(self.dropout),
        )
        length = feature_length(n_channels, config)
        if length < 1:
            raise ValueError(f"{self.name}: spectra of {n_channels} channels are too short for {len(widths)} conv blocks")
        return replace(config, pool_size=max(1, min(config.pool_size, length)))

    def _check_fitted(self) -> None:
        if getattr(self, "source_state_", None) is None:
            raise RuntimeError(f"{self.name}: call fit(source) before transfer/predict")

    def _scale_x(self, X: Any, what: str) -> np.ndarray:
        X = _as_2d(X, what)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{what} has {X.shape[1]} channels but the source calibration had {self.n_features_in_}"
            )
        return (X - self.x_mean_) / self.x_std_

    def _scale_y(self, y: Any, what: str) -> np.ndarray:
        y = _as_2d(y, what)
        if y.shape[1] != self.y_mean_.shape[0]:
            raise ValueError(f"{what} has {y.shape[1]} properties but the source had {self.y_mean_.shape[0]}")
        return (y - self.y_mean_) / self.y_std_

    def _scaled_standards(self, standards: Standards) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        if standards.n < max(1, self.tags.min_shots):
            raise ValueError(f"{self.name} needs at least {self.tags.min_shots} transfer standards, got {standards.n}")
        Xs = self._scale_x(standards.X_target, "standards.X_target")
        Ys = self._scale_y(standards.y, "standards.y")
        if Xs.shape[0] != Ys.shape[0]:
            raise ValueError(f"standards: {Xs.shape[0]} target spectra but {Ys.shape[0]} rows of y")
        return Xs, Ys

    # --- the contract ---
    def fit(self, source: SourceData) -> _DeepTransferMethod:
        """Train the source CNN (early stopping on a held-out part of the calibration)."""
        from ctbench_deep import training as T

        X = _as_2d(source.X, "source.X")
        Y = _as_2d(source.y, "source.y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"source: {X.shape[0]} spectra but {Y.shape[0]} rows of y")
        if X.shape[0] < 4:
            raise ValueError(f"{self.name} needs at least 4 calibration samples, got {X.shape[0]}")
        device = T.resolve_device(self.device)
        self.n_features_in_ = X.shape[1]
        self.properties_ = tuple(source.properties)
        self.x_mean_, self.x_std_ = X.mean(axis=0), _safe_std(X)
        self.y_mean_, self.y_std_ = Y.mean(axis=0), _safe_std(Y)
        Xs, Ys = (X - self.x_mean_) / self.x_std_, (Y - self.y_mean_) / self.y_std_
        rng = np.random.default_rng(self.random_state)
        train, val = holdout_split(X.shape[0], float(self.val_fraction), rng, source.groups)
        config = self._config(X.shape[1], Y.shape[1])
        augment = None
        if float(self.augment) > 0:
            levels = X.mean(axis=1)
            augment = T.BaselineAugment(
                self.x_mean_, self.x_std_, levels.std(), levels.mean(), float(self.augment), device
            )
        with T.seeded(self.random_state, device):
            model = T.build_model(config, None, device)
            Xt, Yt = T.as_tensor(Xs, device), T.as_tensor(Ys, device)
            result = T.fit_network(
                model,
                Xt[train],
                Yt[train],
                params=list(model.parameters()),
                epochs=int(self.epochs),
                lr=float(self.lr),
                weight_decay=float(self.weight_decay),
                batch_size=int(self.batch_size),
                loss=self._loss,
                optimizer=self._optimizer,
                rng=rng,
                X_val=Xt[val] if len(val) else None,
                Y_val=Yt[val] if len(val) else None,
                patience=int(self.patience),
                on_epoch=self.report_intermediate,
                augment=augment,
            )
            if self.refit and len(val) and result.best_epoch > 0:
                # the epoch count is chosen; now train again on the whole calibration
                rng = np.random.default_rng([int(self.random_state), 1])
                T.reseed(self.random_state)  # same initial weights as the run that chose the count
                model = T.build_model(config, None, device)
                T.fit_network(
                    model,
                    Xt,
                    Yt,
                    params=list(model.parameters()),
                    epochs=result.best_epoch,
                    lr=float(self.lr),
                    weight_decay=float(self.weight_decay),
                    batch_size=int(self.batch_size),
                    loss=self._loss,
                    optimizer=self._optimizer,
                    rng=rng,
                    augment=augment,
                )
        self.config_ = config
        self.source_state_ = T.cpu_state(model)
        self.state_ = self.source_state_
        self.source_epochs_ = result.best_epoch
        self.source_val_mse_ = result.best_val
        self.adapter_ = None
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        """Property values (n, k) for target spectra, in the units of the source y."""
        from ctbench_deep import training as T

        self._check_fitted()
        Xs = self._scale_x(X_target, "X_target")
        device = T.resolve_device(self.device)
        model = T.build_model(self.config_, self.state_, device)
        out = T.predict_array(model, T.as_tensor(Xs, device)).cpu().numpy().astype(float)
        return out * self.y_std_ + self.y_mean_


class CNN(_DeepTransferMethod):
    """1-D CNN regressor on the source calibration, transferred by fine-tuning ALL weights.

    The "full fine-tune" deep baseline. Source model: :class:`~ctbench_deep.networks.SpectralCNN`
    (three Conv1d(``kernel_size``, stride ``stride``) + BatchNorm + ELU blocks of ``widths``
    channels, adaptive max-pool to ``pool_size`` positions, FC ``hidden`` + ELU + dropout, FC -> k),
    multi-output over all properties on standardized spectra and y; Adam(``lr``, ``weight_decay``)
    + MSE, minibatches of ``batch_size``, at most ``epochs`` epochs with early stopping
    (``patience``) on a random ``val_fraction`` of the calibration (whole groups when replicates
    are marked); with ``refit`` the network is then trained again from the same initialisation on
    the whole calibration for the chosen epoch count. ``augment`` > 0 adds random baseline
    offset / slope / gain perturbations during source training (off by default: it hurt corn
    moisture on validation).

    Transfer: every weight is fine-tuned on the N target spectra + y of the standards with
    Adam(``transfer_lr``), MSE. ``transfer_train_mode=False`` (default) fine-tunes in eval mode:
    batch-norm statistics and dropout stay frozen while all weights (batch-norm affine
    parameters included) train; True fine-tunes in train mode (statistics from the standards'
    minibatches), which was clearly worse on validation with N <= 10. When
    N >= ``early_stopping_min_shots`` a random quarter of the standards (at least 2) is held out to
    choose the number of epochs (up to ``transfer_max_epochs``, patience ``transfer_patience``;
    0 = keep the source model), then the source model is fine-tuned again on all N for that many
    epochs; with fewer standards, a fixed ``transfer_epochs`` epochs on all N.

    Defaults (chosen on inner validation splits of the corn m5 -> mp6 calibration pool only, 3
    splits of 45 / 15, N = 2..30 Kennard-Stone and random standards, and checked on the synthetic
    set): widths (8, 16, 16), kernel 11, stride 2, pool 44, hidden 64, dropout 0.1; lr 1e-3,
    weight decay 1e-4, batch 16, <= 500 epochs, patience 150, val 20 %, refit; transfer lr 1e-4,
    60 epochs, early stopping from N = 20 (holding out 2-3 of 10 standards chose poor epoch counts),
    <= 300 epochs, patience 60. Source training on corn-size data (60 x 700): about 5-10 s on
    one CPU core.
    """

    name = "cnn"
    version = "1"
    tags = Tags(min_shots=2, zero_shot=False, transductive=False, multi_target=True, iterative=True)
    description = "1-D CNN on the source calibration, full fine-tune of all weights on the standards"

    def __init__(
        self,
        epochs: int = 500,
        lr: float = 1e-3,
        batch_size: int = 16,
        weight_decay: float = 1e-4,
        patience: int = 150,
        val_fraction: float = 0.2,
        widths: Sequence[int] = _WIDTHS,
        kernel_size: int = 11,
        stride: int = 2,
        pool_size: int = 44,
        hidden: int = 64,
        dropout: float = 0.1,
        augment: float = 0.0,
        refit: bool = True,
        transfer_epochs: int = 60,
        transfer_max_epochs: int = 300,
        transfer_patience: int = 60,
        transfer_lr: float = 1e-4,
        early_stopping_min_shots: int = 20,
        transfer_train_mode: bool = False,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.widths = widths
        self.kernel_size = kernel_size
        self.stride = stride
        self.pool_size = pool_size
        self.hidden = hidden
        self.dropout = dropout
        self.augment = augment
        self.refit = refit
        self.transfer_epochs = transfer_epochs
        self.transfer_max_epochs = transfer_max_epochs
        self.transfer_patience = transfer_patience
        self.transfer_lr = transfer_lr
        self.early_stopping_min_shots = early_stopping_min_shots
        self.transfer_train_mode = transfer_train_mode
        self.device = device
        self.random_state = random_state

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> CNN:
        """Fine-tune all weights of a copy of the source model on the standards' target spectra."""
        from ctbench_deep import training as T

        Xs, Ys = self._scaled_standards(standards)
        device = T.resolve_device(self.device)
        n = Xs.shape[0]
        rng = np.random.default_rng([int(self.random_state), n])
        with T.seeded(self.random_state, device):
            Xt, Yt = T.as_tensor(Xs, device), T.as_tensor(Ys, device)
            common = dict(
                lr=float(self.transfer_lr),
                weight_decay=float(self.weight_decay),
                batch_size=int(self.batch_size),
                loss=self._loss,
                optimizer=self._optimizer,
                rng=rng,
                train_mode=bool(self.transfer_train_mode),
            )
            epochs = int(self.transfer_epochs)
            if n >= int(self.early_stopping_min_shots):
                n_val = max(2, int(round(0.25 * n)))
                order = rng.permutation(n)
                val, train = order[:n_val], order[n_val:]
                probe = T.build_model(self.config_, self.source_state_, device)
                res = T.fit_network(
                    probe,
                    Xt[train],
                    Yt[train],
                    params=list(probe.parameters()),
                    epochs=int(self.transfer_max_epochs),
                    X_val=Xt[val],
                    Y_val=Yt[val],
                    patience=int(self.transfer_patience),
                    **common,
                )
                epochs = res.best_epoch
            model = T.build_model(self.config_, self.source_state_, device)
            if epochs > 0:
                T.fit_network(model, Xt, Yt, params=list(model.parameters()), epochs=epochs, **common)
        self.transfer_epochs_ = epochs
        self.state_ = T.cpu_state(model)
        return self

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "transfer_lr": trial.suggest_float("transfer_lr", 1e-5, 1e-2, log=True),
            "transfer_epochs": trial.suggest_int("transfer_epochs", 5, 200, log=True),
        }


class LoRACT(_DeepTransferMethod):
    """LoRA-CT (Lai et al., Anal. Chem. 2025): low-rank adapters on the first FC layer.

    Primary model: :class:`~ctbench_deep.networks.SpectralCNN` (three Conv1d + BatchNorm + ELU
    blocks, adaptive max-pooling, two FC layers), trained on the source calibration as in ``cnn``
    (same architecture and early stopping / refit) but with AdamW and smooth-L1 loss.

    Transfer: (1) with ``adapt_batchnorm`` (default, as published) batch-norm running statistics
    are re-estimated on the N standards' target spectra (forward pass in train mode, no gradient,
    momentum=None cumulative average), then eval mode; (2) every base weight is frozen and ``fc1``
    gets a LoRA adapter of rank ``rank`` with alpha = rank (scaling alpha / r = 1): A (r x in,
    Kaiming-uniform), B (out x r, zeros), rank * (in + out) trainable numbers; only the adapter is
    trained, on the standards' target spectra + y, AdamW(``transfer_lr``,
    ``transfer_weight_decay``), smooth-L1, ``transfer_epochs`` epochs, eval mode; (3) the adapter
    is merged, W' = W + B @ A * alpha / r, so the transferred model is a plain CNN again.
    ``adapter_`` keeps A, B for inspection.

    Defaults (chosen on inner validation splits of the corn m5 -> mp6 calibration pool only, see
    ``cnn``): the ``cnn`` architecture and source training; rank 4, transfer lr 1e-3, weight decay
    1e-2, 200 epochs. Finding on those splits: re-estimating batch-norm statistics on the few
    standards made LoRA-CT worse on corn (``adapt_batchnorm=False`` was better at every N); the
    published procedure stays the default, the switch is there for ablations.
    """

    name = "lora_ct"
    version = "1"
    tags = Tags(min_shots=2, zero_shot=False, transductive=False, multi_target=True, iterative=True)
    description = "LoRA-CT: CNN with low-rank adapters on the first FC layer + batch-norm re-estimation"

    _loss = "smooth_l1"
    _optimizer = "adamw"

    def __init__(
        self,
        epochs: int = 500,
        lr: float = 1e-3,
        batch_size: int = 16,
        weight_decay: float = 1e-4,
        patience: int = 150,
        val_fraction: float = 0.2,
        widths: Sequence[int] = _WIDTHS,
        kernel_size: int = 11,
        stride: int = 2,
        pool_size: int = 44,
        hidden: int = 64,
        dropout: float = 0.1,
        augment: float = 0.0,
        refit: bool = True,
        rank: int = 4,
        transfer_epochs: int = 200,
        transfer_lr: float = 1e-3,
        transfer_weight_decay: float = 1e-2,
        adapt_batchnorm: bool = True,
        device: str = "cpu",
        random_state: int = 0,
    ):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.widths = widths
        self.kernel_size = kernel_size
        self.stride = stride
        self.pool_size = pool_size
        self.hidden = hidden
        self.dropout = dropout
        self.augment = augment
        self.refit = refit
        self.rank = rank
        self.transfer_epochs = transfer_epochs
        self.transfer_lr = transfer_lr
        self.transfer_weight_decay = transfer_weight_decay
        self.adapt_batchnorm = adapt_batchnorm
        self.device = device
        self.random_state = random_state

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> LoRACT:
        """Re-estimate batch-norm statistics, train a LoRA adapter on fc1, merge it."""
        from ctbench_deep import networks as nets
        from ctbench_deep import training as T

        Xs, Ys = self._scaled_standards(standards)
        device = T.resolve_device(self.device)
        rank = int(self.rank)
        rng = np.random.default_rng([int(self.random_state), Xs.shape[0]])
        with T.seeded(self.random_state, device):
            Xt, Yt = T.as_tensor(Xs, device), T.as_tensor(Ys, device)
            model = T.build_model(self.config_, self.source_state_, device)
            if self.adapt_batchnorm:
                T.reestimate_batchnorm(model, Xt)
            model.eval()
            nets.add_lora(model, rank, alpha=rank)
            T.fit_network(
                model,
                Xt,
                Yt,
                params=nets.adapter_parameters(model),
                epochs=int(self.transfer_epochs),
                lr=float(self.transfer_lr),
                weight_decay=float(self.transfer_weight_decay),
                batch_size=int(self.batch_size),
                loss=self._loss,
                optimizer=self._optimizer,
                rng=rng,
                train_mode=False,
            )
            lora = model.fc1
            self.adapter_ = {
                "A": lora.lora_A.detach().cpu().clone(),
                "B": lora.lora_B.detach().cpu().clone(),
                "rank": lora.rank,
                "alpha": lora.alpha,
            }
            nets.merge_lora(model)
        self.state_ = T.cpu_state(model)
        return self

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The published LoRA-CT search: learning rate, weight decay (both log) and rank."""
        return {
            "transfer_lr": trial.suggest_float("transfer_lr", 1e-5, 1e-1, log=True),
            "transfer_weight_decay": trial.suggest_float("transfer_weight_decay", 1e-6, 1e-1, log=True),
            "rank": trial.suggest_categorical("rank", [2, 4, 8, 16]),
        }
