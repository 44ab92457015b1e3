"""The Spektron-LoRA calibration-transfer methods (``spektron-lora``, v2): a pretrained backbone, a
ridge head, LoRA transfer. (The headline ``spektron`` method, v3, is in ``translate_method``.)

fit        source spectra -> backbone -> readout features (token states of one stage + two
           intensity statistics) -> ridge head (penalty per property by grouped 5-fold CV). The
           readout stage (``readout="auto"``: each Mamba / Transformer stage and the final norm)
           and how much of the backbone to unfreeze (``unfreeze="auto"``: head only, or the last
           block fine-tuned with the head) are chosen on validation splits of the source calibration.
transfer   LoRA adapters on the last ``adapt_blocks`` stages before the readout (Mamba: in_proj,
           x_proj, out_proj; Transformer: attention qkv, out), trained with the N standards:
           regression loss on their target spectra + alignment of their target features to their
           source features; plus an affine correction of the statistics and the head's bias. The
           adapters are merged into copies of those stages; the shared backbone is never modified.
           Split-conformal intervals are calibrated by K-fold cross-validation over the standards.
predict    target spectra -> adapted backbone -> head: (n, k); ``predict_interval`` gives the
           90 % intervals (``interval_alpha``).

Variants (their own method names, for ablations): ``spektron-ttt`` (zero-shot / transductive:
test-time training on the unlabelled target spectra), ``spektron-lora-nopretrain`` (random
initialisation), ``spektron-fullft`` (full fine-tuning of the adapted stages instead of LoRA),
``spektron-pds`` (PDS correction first, the network learns what is left). torch is imported
only inside methods, so listing methods stays instant.
"""

from __future__ import annotations

import copy
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

from .variant import with_defaults

_MODEL_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()

AUTO_PRETRAIN: dict[str, Any] = {"size": "small", "steps": 150, "batch_size": 16, "num_threads": 1,
                                 "checkpoint_every": 50, "mlflow": False}
"""Settings of the one-off pretraining when no committed weights exist (about 2-4 min on 2 CPU cores)."""
AUTO_CORPUS = "rruff,fermentation,synthetic"
READOUTS = ("auto", "embed", "moe", "final")


def default_weights(progress: bool = True) -> Path:
    """The default small checkpoint: the committed one, else one trained on first use (cached)."""
    from .checkpoint import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    from .corpus.resolve import cache_dir

    auto = cache_dir() / "auto" / f"spektron-{AUTO_PRETRAIN.get('size', 'small')}.pt"
    if auto.is_file():
        return auto
    print("spektron: no committed weights found; pretraining a small model once (a few minutes on CPU)...",
          file=sys.stderr)
    from ctbench.data import DataError

    from .corpus import build_corpus
    from .pretrain import run_pretraining

    try:
        corpus = build_corpus(AUTO_CORPUS)
    except DataError:  # no dataset mirror on this machine: synthetic spectra only
        corpus = build_corpus("synthetic")
    out = auto.parent / "run"
    size = AUTO_PRETRAIN.get("size", "small")
    resume = (out / "checkpoint-last.pt").exists()  # an interrupted first use continues
    run_pretraining(corpus, AUTO_PRETRAIN | {"out": str(out), "progress": progress, "resume": resume})
    (out / f"spektron-{size}.pt").replace(auto)
    (out / f"spektron-{size}.json").replace(auto.with_suffix(".json"))
    return auto


def load_backbone(path: str | Path | None, pretrained: bool = True, seed: int = 0):
    """The frozen model for a weights path (None: the default), cached per process.

    ``pretrained=False``: the same architecture, randomly initialised from ``seed`` (ablation)."""
    from .checkpoint import load_model

    p = Path(path) if path else default_weights()
    key = (str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0, bool(pretrained), int(seed) if not pretrained else 0)
    with _LOCK:
        if key not in _MODEL_CACHE:
            model = load_model(p)[0]
            if not pretrained:
                import torch

                from .model import SpektronModel

                state = torch.random.get_rng_state()
                torch.manual_seed(int(seed) % (2**63))
                model = SpektronModel(model.cfg).eval()
                torch.random.set_rng_state(state)
                for q in model.parameters():
                    q.requires_grad_(False)
            _MODEL_CACHE[key] = model
        return _MODEL_CACHE[key]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: leave as is), restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def group_means(groups: np.ndarray | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row means per replicate group (the runner's sample ids), in order of first appearance."""
    if groups is None or len(arrays[0]) == 0:
        return arrays
    g = np.asarray(groups)
    _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first)
    if order.size == g.size:
        return arrays
    counts = np.bincount(inverse)
    out = []
    for a in arrays:
        sums = np.zeros((counts.size,) + a.shape[1:])
        np.add.at(sums, inverse, a)
        out.append((sums / counts.reshape((-1,) + (1,) * (a.ndim - 1)))[order])
    return tuple(out)


def _as_2d(y: Any) -> np.ndarray:
    y = np.array(y, dtype=float, copy=True)
    return y[:, None] if y.ndim == 1 else y


class Spektron(TransferMethod):
    """Spektron: pretrained wavelet-Mamba-MoE-Transformer backbone, ridge head, LoRA transfer."""

    name = "spektron-lora"
    version = "2"
    tags = Tags(min_shots=2, multi_target=True, native_axes=True)
    description = ("Spektron foundation model: token-level ridge head on the pretrained backbone, LoRA transfer "
                   "with the standards (regression + source/target alignment), MC-dropout + conformal intervals")

    def __init__(self, checkpoint: str | None = None, pretrained: bool = True, readout: str = "auto",
                 unfreeze: str = "auto", adapter: str = "lora", adapt_blocks: int = 2, lora_rank: int = 4,
                 lora_alpha: float | None = None, transfer_steps: int = 80, lr: float = 3e-3,
                 align_weight: float = 1.0, ttt_steps: int = 0, recon_weight: float = 1.0,
                 moments_weight: float = 1.0, pds_first: bool = False, stats_weight: float = 1.0,
                 mc_dropout: float = 0.1, mc_samples: int = 32, interval_alpha: float = 0.1,
                 conformal: str = "standards_cv", conformal_folds: int = 3, finetune_steps: int = 60,
                 head_refit: float = 0.5, domain: str = "auto", threads: int = 1, random_state: int = 0):
        self.checkpoint = checkpoint
        self.pretrained = pretrained
        self.readout = readout
        self.unfreeze = unfreeze
        self.adapter = adapter
        self.adapt_blocks = adapt_blocks
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.transfer_steps = transfer_steps
        self.lr = lr
        self.align_weight = align_weight
        self.ttt_steps = ttt_steps
        self.recon_weight = recon_weight
        self.moments_weight = moments_weight
        self.pds_first = pds_first
        self.stats_weight = stats_weight
        self.mc_dropout = mc_dropout
        self.mc_samples = mc_samples
        self.interval_alpha = interval_alpha
        self.conformal = conformal
        self.conformal_folds = conformal_folds
        self.finetune_steps = finetune_steps
        self.head_refit = head_refit
        self.domain = domain
        self.threads = threads
        self.random_state = random_state

    # --- pickling: the per-instance caches (adapted modules, last predictions) are rebuilt on demand
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    # --- helpers ---
    def _check_params(self) -> None:
        if self.unfreeze not in ("auto", "head", "last"):
            raise ValueError(f"{self.name}: unfreeze must be 'auto', 'head' or 'last', got {self.unfreeze!r}")
        if self.adapter not in ("lora", "full"):
            raise ValueError(f"{self.name}: adapter must be 'lora' or 'full', got {self.adapter!r}")
        if self.conformal not in ("standards_cv", "source_cv", "none"):
            raise ValueError(f"{self.name}: conformal must be 'standards_cv', 'source_cv' or 'none', got {self.conformal!r}")
        if int(self.lora_rank) < 1:
            raise ValueError(f"{self.name}: lora_rank must be >= 1, got {self.lora_rank}")
        if not 0 < float(self.interval_alpha) < 1:
            raise ValueError(f"{self.name}: interval_alpha must be in (0, 1), got {self.interval_alpha}")
        if not 0 <= float(self.mc_dropout) < 1:
            raise ValueError(f"{self.name}: mc_dropout must be in [0, 1), got {self.mc_dropout}")

    def _model(self):
        return load_backbone(self.checkpoint, bool(self.pretrained), self.random_state)

    def _cached(self) -> dict[str, Any]:
        if getattr(self, "_cache", None) is None:
            self._cache = {}
        return self._cache

    def _grid(self, model: Any, X: np.ndarray, axis: np.ndarray, unit: str):
        from .readout import to_grid

        return to_grid(model, X, axis, unit, self.domain)

    def _modules(self, model: Any, states: dict[str, dict[str, Any]] | None, key: str) -> dict[str, Any]:
        """Stage overrides built from stored state dicts (cached per instance)."""
        from .readout import stage_module

        cache = self._cached()
        if key not in cache:
            out = {}
            for name, state in (states or {}).items():
                mod = copy.deepcopy(stage_module(model, name))
                mod.load_state_dict(state)
                mod.eval()
                out[name] = mod
            cache[key] = out
        return cache[key]

    def _base_overrides(self, model: Any) -> dict[str, Any]:
        return self._modules(model, getattr(self, "fit_states_", None), "fit")

    def _overrides(self, model: Any) -> dict[str, Any]:
        base = self._base_overrides(model)
        if not getattr(self, "transferred_", False):
            return base
        return {**base, **self._modules(model, self.adapted_states_, "adapted")}

    def _settings(self, steps: int):
        from .adapt import AdapterSettings

        rank = int(self.lora_rank)
        return AdapterSettings(kind=self.adapter, rank=rank, alpha=float(self.lora_alpha or 2 * rank), steps=int(steps),
                               lr=float(self.lr) if self.adapter == "lora" else float(self.lr) / 10,
                               align_weight=float(self.align_weight), recon_weight=float(self.recon_weight),
                               moments_weight=float(self.moments_weight))

    def _target_axis(self) -> np.ndarray:
        """The target spectra's axis: the source calibration's, unless the standards came on the
        target instrument's own axis (tag native_axes, card alignment native); the network's
        grid resamples either."""
        axis = getattr(self, "target_axis_", None)
        return self.axis_ if axis is None else axis

    def _features(self, model: Any, X: np.ndarray, overrides: dict[str, Any], stats_affine: bool,
                  axis: np.ndarray | None = None) -> np.ndarray:
        """Scaled readout features (n, D + 2) of spectra X on ``axis`` (the source calibration's by default)."""
        from .readout import forward_all

        gs = self._grid(model, X, self.axis_ if axis is None else axis, self.axis_unit_)
        Z = forward_all(model, gs, self.readout_, overrides=overrides)[self.readout_]
        F = self.scaling_.apply(Z, gs.stats)
        if stats_affine and getattr(self, "transferred_", False):
            F[:, -2:] = F[:, -2:] * self.stats_scale_ + self.stats_shift_
        return F

    def _head(self, F: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (F @ W + b) * self.y_scale_

    # --- fit ---
    def fit(self, source: SourceData) -> Spektron:
        self._check_params()
        with torch_threads(self.threads):
            return self._fit(source)

    def _fit(self, source: SourceData) -> Spektron:
        import torch

        from .readout import FeatureScaling, forward_all, group_folds, hidden_until, ridge_cv, ridge_solution, stage_names
        from .uncertainty import mc_dropout_spread

        X = np.array(source.X, dtype=float, copy=True)
        y = _as_2d(source.y)
        if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 4:
            raise ValueError(f"{self.name}: need a source calibration of at least 4 spectra with values, got X {X.shape}, y {y.shape}")
        self.axis_ = np.array(source.axis, dtype=float, copy=True)
        self.axis_unit_ = source.axis_unit
        self.n_targets_ = y.shape[1]
        self._cache = {}
        self.fit_states_ = {}
        if self.pds_first:
            from ctbench_classical import PDS

            self.pds_ = PDS(half_window=3, random_state=self.random_state).fit(source)
        model = self._model()
        names = stage_names(model)
        if self.readout == "auto":
            candidates = [s for s in names if s.startswith("mamba") or s.startswith("tf")]
            candidates = [s for s in candidates if s != f"tf{model.cfg.n_transformer}"] + ["final"]
        elif self.readout in names:
            candidates = [self.readout]
        else:
            raise ValueError(f"{self.name}: readout must be 'auto' or a stage ({', '.join(names)}), got {self.readout!r}")
        gs = self._grid(model, X, self.axis_, self.axis_unit_)
        last = max(candidates, key=names.index)
        feats = forward_all(model, gs, last)
        sd = y.std(0)
        self.y_scale_ = np.where(sd > 0, sd, 1.0)
        ys = y / self.y_scale_
        folds = group_folds(X.shape[0], source.groups, 5, self.random_state)
        scores = {}
        for cand in candidates:
            sc = FeatureScaling.fit(feats[cand], gs.stats, float(self.stats_weight))
            scores[cand] = (sc, ridge_cv(sc.apply(feats[cand], gs.stats), ys, folds))
        self.readout_scores_ = {k: round(v[1].score, 5) for k, v in scores.items()}
        self.readout_ = min(candidates, key=lambda c: scores[c][1].score)
        self.scaling_, cv = scores[self.readout_]
        Z = feats[self.readout_]
        F = self.scaling_.apply(Z, gs.stats)
        self.penalty_ = cv.penalty
        W, b = ridge_solution(F, ys, self.penalty_)
        del feats
        # how much of the backbone to unfreeze: head only, or the last block with the head (holdout)
        self.unfreeze_ = "head" if int(self.finetune_steps) <= 0 else self.unfreeze
        self.unfreeze_scores_ = None
        if self.unfreeze in ("auto", "last") and int(self.finetune_steps) > 0:
            from .adapt import adapted_stage_names, finetune_last_stage

            stage = adapted_stage_names(model, self.readout_, 1)
            if not stage:
                self.unfreeze_ = "head"
            else:
                before = names[names.index(stage[0]) - 1]
                h_pre = hidden_until(model, gs, before)
                ys_t = torch.as_tensor(ys, dtype=torch.float32)
                eig_mean = self._kernel_eig_mean(F)
                if self.unfreeze == "auto":
                    val = folds[0]
                    tr = np.setdiff1d(np.arange(X.shape[0]), val)
                    eig_tr = self._kernel_eig_mean(F[tr])
                    W_tr, b_tr = ridge_solution(F[tr], ys[tr], self.penalty_)
                    head_err = np.sqrt(((F[val] @ W_tr + b_tr - ys[val]) ** 2).mean(0)).mean()
                    st, W_ft, b_ft = finetune_last_stage(model, self.readout_, self.scaling_, h_pre[tr], gs.stats[tr],
                                                         ys_t[tr], W_tr, b_tr, self.penalty_ * eig_tr,
                                                         int(self.finetune_steps), 3e-4, self.random_state)
                    F_val = self._features_with(model, gs, val, self._states_to_modules(model, st))
                    ft_err = np.sqrt(((F_val @ W_ft + b_ft - ys[val]) ** 2).mean(0)).mean()
                    self.unfreeze_scores_ = {"head": float(head_err), "last": float(ft_err)}
                    self.unfreeze_ = "last" if ft_err < head_err else "head"
                if self.unfreeze_ == "last":
                    st, W, b = finetune_last_stage(model, self.readout_, self.scaling_, h_pre, gs.stats, ys_t, W, b,
                                                   self.penalty_ * eig_mean, int(self.finetune_steps), 3e-4,
                                                   self.random_state)
                    self.fit_states_ = st
                    self._cache = {}
                    F = self._features_with(model, gs, np.arange(X.shape[0]), self._base_overrides(model))
        self.head_W_, self.head_b_ = W.astype(np.float32), b.astype(float)
        self.source_W_, self.source_b_ = self.head_W_, self.head_b_
        self.source_feature_mean_ = F.mean(0).astype(np.float32)
        self.eig_mean_ = self._kernel_eig_mean(F)
        self.source_features_ = F.astype(np.float32)
        self.source_ys_ = ys
        # conformal scores on held-out source calibration (out-of-fold ridge predictions)
        sd_src = mc_dropout_spread(F, self.head_W_, float(self.mc_dropout), int(self.mc_samples), self.random_state)
        self.source_spread_median_ = np.median(sd_src, axis=0) if sd_src.size else np.ones(self.n_targets_)
        self.source_scores_ = self._scores(cv.oof, ys, sd_src)
        self.transferred_ = False
        self.stats_scale_ = np.ones(2)
        self.stats_shift_ = np.zeros(2)
        self.bias_delta_ = np.zeros(self.n_targets_)
        self.conformal_q_ = None
        return self

    @staticmethod
    def _kernel_eig_mean(F: np.ndarray) -> float:
        A = F - F.mean(0)
        return float(max((A * A).sum() / max(A.shape[0], 1), 1e-12))

    def _states_to_modules(self, model: Any, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from .readout import stage_module

        out = {}
        for name, state in states.items():
            mod = copy.deepcopy(stage_module(model, name))
            mod.load_state_dict(state)
            out[name] = mod.eval()
        return out

    def _features_with(self, model: Any, gs: Any, rows: np.ndarray, overrides: dict[str, Any]) -> np.ndarray:
        from .readout import GridSpectra, forward_all

        part = GridSpectra({k: v[rows] for k, v in gs.inputs.items()}, gs.stats[rows], gs.grid[rows])
        Z = forward_all(model, part, self.readout_, overrides=overrides)[self.readout_]
        return self.scaling_.apply(Z, part.stats)

    def _scores(self, pred_scaled: np.ndarray, ys: np.ndarray, spread: np.ndarray) -> np.ndarray:
        from .uncertainty import floor_spread

        sd = floor_spread(spread, self.source_spread_median_[None, :] * np.ones_like(spread))
        return np.abs(ys - pred_scaled) / sd

    # --- transfer ---
    def _target_spectra(self, X: np.ndarray) -> np.ndarray:
        if self.pds_first and getattr(self, "pds_transferred_", False):
            return self.pds_.transform_target(X)
        return X

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> Spektron:
        if not hasattr(self, "head_W_"):
            raise RuntimeError(f"{self.name}: call fit() before transfer()")
        self._check_params()
        with torch_threads(self.threads):
            return self._transfer(standards, unlabelled)

    def _adapter_task(self, model: Any, stages: list[str], Xs: np.ndarray, Xt: np.ndarray, ys: np.ndarray,
                      X_unl: np.ndarray | None):
        import torch

        from .adapt import AdapterTask, path_after
        from .readout import forward_all, hidden_until

        base = self._base_overrides(model)
        prefix, _ = path_after(model, stages[0] if stages else None, self.readout_)
        task = AdapterTask(source_feature_mean=torch.as_tensor(self.source_feature_mean_))
        if Xt.shape[0]:
            gs_t = self._grid(model, Xt, self._target_axis(), self.axis_unit_)
            gs_s = self._grid(model, Xs, self.axis_, self.axis_unit_)
            last_prefix = prefix[-1] if prefix else "embed"
            task.h_prefix = hidden_until(model, gs_t, last_prefix, overrides=base)
            task.stats_target = torch.as_tensor(self.scaling_.stats(gs_t.stats), dtype=torch.float32)
            Zs = forward_all(model, gs_s, self.readout_, overrides=base)[self.readout_]
            task.f_source = torch.as_tensor(self.scaling_.apply(Zs, gs_s.stats), dtype=torch.float32)
            task.y = torch.as_tensor(ys, dtype=torch.float32)
        if X_unl is not None and X_unl.shape[0]:
            task.unlabelled = self._grid(model, X_unl, self._target_axis(), self.axis_unit_)
        return task

    def _train(self, model: Any, Xs: np.ndarray, Xt: np.ndarray, ys: np.ndarray, X_unl: np.ndarray | None, seed: int,
               groups: np.ndarray | None = None):
        """Adapter training on the standards (replicate spectra of a sample averaged first)."""
        from .adapt import adapted_stage_names, train_adapter

        Xs, Xt, ys = group_means(groups, Xs, Xt, ys)
        stages = adapted_stage_names(model, self.readout_, int(self.adapt_blocks))
        ttt = X_unl is not None and int(self.ttt_steps) > 0
        steps = max(int(self.transfer_steps) if Xt.shape[0] else 0, int(self.ttt_steps) if ttt else 0)
        task = self._adapter_task(model, stages, Xs, Xt, ys, X_unl if ttt else None)
        import torch

        W = torch.as_tensor(self.source_W_)
        b = torch.as_tensor(self.source_b_, dtype=torch.float32)
        return train_adapter(model, self.readout_, stages, self._base_overrides(model), self.scaling_, W, b, task,
                             self._settings(steps), self.n_targets_, seed)

    def _refit_head(self, model: Any, res: Any, Xt: np.ndarray, ys: np.ndarray,
                    groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W, b, bias_delta) of the head after an adapter training: the trained bias, or with
        ``head_refit`` > 0 a ridge refit on the source calibration plus the standards' adapted
        target features (each standard weighted ``head_refit``)."""
        if float(self.head_refit) <= 0 or Xt.shape[0] == 0:
            return self.source_W_, self.source_b_, res.bias_delta
        from .readout import forward_all, weighted_ridge_solution

        Xt, ys = group_means(groups, Xt, ys)
        mods = {**self._base_overrides(model), **self._states_to_modules(model, res.states)}
        gs = self._grid(model, Xt, self._target_axis(), self.axis_unit_)
        Z = forward_all(model, gs, self.readout_, overrides=mods)[self.readout_]
        Ft = self.scaling_.apply(Z, gs.stats)
        Ft[:, -2:] = Ft[:, -2:] * res.stats_scale + res.stats_shift
        F = np.vstack([self.source_features_, Ft])
        w = np.concatenate([np.ones(self.source_features_.shape[0]), np.full(Ft.shape[0], float(self.head_refit))])
        W, b = weighted_ridge_solution(F, np.vstack([self.source_ys_, ys]), w, self.penalty_, self.eig_mean_)
        return W.astype(np.float32), b, np.zeros(self.n_targets_)

    def _apply_result(self, res: Any) -> None:
        self.adapted_states_ = res.states
        self.stats_scale_ = res.stats_scale
        self.stats_shift_ = res.stats_shift
        self.bias_delta_ = res.bias_delta
        self.transfer_loss_ = [res.history[0], res.history[-1]] if res.history else []
        self.transferred_ = True
        self._cached().pop("adapted", None)
        self._cached().pop("last", None)

    def _transfer(self, standards: Standards, unlabelled: np.ndarray | None) -> Spektron:
        from .readout import group_folds

        Xs = np.array(standards.X_source, dtype=float, copy=True)
        Xt = np.array(standards.X_target, dtype=float, copy=True)
        n = Xt.shape[0] if Xt.ndim == 2 else 0
        ys = _as_2d(standards.y) / self.y_scale_ if n else np.zeros((0, self.n_targets_))
        axis = np.array(standards.axis, dtype=float)
        if axis.shape != self.axis_.shape or not np.allclose(axis, self.axis_):
            raise ValueError(f"{self.name}: standards must be on the source calibration's axis (resample them first)")
        axis_t = getattr(standards, "axis_target", None)
        self.target_axis_ = None if axis_t is None else np.array(axis_t, dtype=float)
        if self.target_axis_ is not None and self.pds_first:
            raise ValueError(f"{self.name}: pds_first needs both instruments on one axis (card alignment 'overlap', not 'native')")
        t_axis = self._target_axis()
        if Xs.ndim == 2 and n and Xs.shape[1] != self.axis_.size:
            raise ValueError(f"{self.name}: standards' source spectra have {Xs.shape[1]} channels, the source calibration {self.axis_.size}")
        if n and Xt.shape[1] != t_axis.size:
            raise ValueError(f"{self.name}: standards' target spectra have {Xt.shape[1]} channels, their axis {t_axis.size}")
        if n < self.tags.min_shots:
            raise ValueError(f"{self.name} needs at least {self.tags.min_shots} transfer standards, got {n}")
        X_unl = None
        if unlabelled is not None and self.tags.transductive:
            X_unl = np.array(unlabelled, dtype=float, copy=True)
        self.pds_transferred_ = False
        Xt_raw = Xt
        pds_fitted = self.pds_ if self.pds_first else None
        if self.pds_first and n >= 2:
            self.pds_ = copy.deepcopy(self.pds_).transfer(standards)
            self.pds_transferred_ = True
            Xt = self.pds_.transform_target(Xt)
            X_unl = self.pds_.transform_target(X_unl) if X_unl is not None else None
        if n == 0 and X_unl is None:
            # zero-shot without unlabelled spectra: the source model as it is
            self.adapted_states_, self.transferred_, self.transfer_loss_ = {}, False, []
        else:
            model = self._model()
            res = self._train(model, Xs, Xt, ys, X_unl, self.random_state, standards.groups)
            self._apply_result(res)
            self.head_W_, self.head_b_, self.bias_delta_ = self._refit_head(model, res, Xt, ys, standards.groups)
        # conformal calibration: cross-validation over the standards (never test data)
        cv = None
        self.standards_cv_rmse_ = None
        if n >= 2 and self.conformal == "standards_cv" and self.transferred_:
            cv = self._standards_cv(standards, Xs, Xt if pds_fitted is None else Xt_raw, ys, X_unl, pds_fitted)
            self.standards_cv_rmse_ = (np.sqrt((cv["resid"] ** 2).mean(0)) * self.y_scale_).tolist()
        self.conformal_source_ = "none"
        self.conformal_q_ = None
        self.conformal_n_ = 0
        if self.conformal != "none":
            scores = np.zeros((0, self.n_targets_))
            source = []
            if self.conformal == "standards_cv" and cv is not None:
                scores = cv["scores"]
                source.append("standards_cv")
            from .uncertainty import conformal_quantile, conformal_valid

            if not conformal_valid(scores.shape[0], float(self.interval_alpha)):
                scores = np.vstack([scores, self.source_scores_])
                source.append("source_cv")
            self.conformal_q_ = conformal_quantile(scores, float(self.interval_alpha))
            self.conformal_n_ = int(scores.shape[0])
            self.conformal_source_ = "+".join(source)
        self.source_features_ = self.source_ys_ = None  # not needed after the transfer (lighter copies)
        return self

    def _standards_cv(self, standards: Standards, Xs: np.ndarray, Xt: np.ndarray, ys: np.ndarray,
                      X_unl: np.ndarray | None, pds_fitted: Any = None) -> dict[str, np.ndarray]:
        """K-fold CV over the standards: each held-out standard predicted by adapters trained without
        it (the same recipe). Returns the residuals and normalized conformal scores of the rows held
        out (with ``pds_fitted``, Xt are the raw target spectra and PDS is refitted without them too)."""
        import dataclasses

        from .readout import group_folds
        from .uncertainty import mc_dropout_spread

        model = self._model()
        groups = standards.groups
        n = Xt.shape[0]
        folds = group_folds(n, groups, int(self.conformal_folds), self.random_state + 7)
        out = {k: np.zeros((n, self.n_targets_)) for k in ("resid", "scores")}
        done = np.zeros(n, dtype=bool)
        for j, val in enumerate(folds):
            tr = np.setdiff1d(np.arange(n), val)
            if tr.size < 1:
                continue
            g_tr = None if groups is None else np.asarray(groups)[tr]
            Xt_tr, Xt_val = Xt[tr], Xt[val]
            if pds_fitted is not None:
                if tr.size < 2:
                    continue
                sub = dataclasses.replace(standards, X_source=standards.X_source[tr], X_target=standards.X_target[tr],
                                          y=standards.y[tr], groups=g_tr)
                fold_pds = copy.deepcopy(pds_fitted).transfer(sub)
                Xt_tr, Xt_val = fold_pds.transform_target(Xt_tr), fold_pds.transform_target(Xt_val)
            # fold models are trained on the standards only: the test-time-training term (no labels)
            # would multiply the cost by the number of folds (documented approximation)
            res = self._train(model, Xs[tr], Xt_tr, ys[tr], None, self.random_state + 101 + j, g_tr)
            W, b, bias = self._refit_head(model, res, Xt_tr, ys[tr], g_tr)
            mods = {**self._base_overrides(model), **self._states_to_modules(model, res.states)}
            gs = self._grid(model, Xt_val, self._target_axis(), self.axis_unit_)
            from .readout import forward_all

            Z = forward_all(model, gs, self.readout_, overrides=mods)[self.readout_]
            F = self.scaling_.apply(Z, gs.stats)
            F[:, -2:] = F[:, -2:] * res.stats_scale + res.stats_shift
            pred = F @ W + b + bias
            sd = mc_dropout_spread(F, W, float(self.mc_dropout), int(self.mc_samples), self.random_state + j)
            out["resid"][val] = pred - ys[val]
            out["scores"][val] = self._scores(pred, ys[val], sd)
            done[val] = True
        return {k: v[done] for k, v in out.items()}

    # --- predict ---
    def _predict_scaled(self, X_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, MC-dropout spreads), both in y / sd units, with a one-entry cache for predict_interval."""
        if not hasattr(self, "head_W_"):
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        X = np.array(X_target, dtype=float, copy=True)
        t_axis = self._target_axis()
        if X.ndim != 2 or X.shape[1] != t_axis.size:
            raise ValueError(f"{self.name}: expected spectra with {t_axis.size} channels, got shape {X.shape}")
        cache = self._cached()
        key = (X.shape, hash(X.tobytes()))
        last = cache.get("last")
        if last is not None and last[0] == key:
            return last[1], last[2]
        from .uncertainty import floor_spread, mc_dropout_spread

        rate, T, seed = float(self.mc_dropout), int(self.mc_samples), self.random_state + 3
        with torch_threads(self.threads):
            model = self._model()
            Xc = self._target_spectra(X)
            F = self._features(model, Xc, self._overrides(model), stats_affine=True, axis=self._target_axis())
            pred = F @ self.head_W_ + self.head_b_ + self.bias_delta_
            sd = mc_dropout_spread(F, self.head_W_, rate, T, seed)
        sd = floor_spread(sd, self.source_spread_median_[None, :] * np.ones_like(sd))
        cache["last"] = (key, pred, sd)
        return pred, sd

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self._predict_scaled(X_target)[0] * self.y_scale_

    def predict_interval(self, X_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds (n, k) of the split-conformal intervals at 1 - interval_alpha."""
        pred, sd = self._predict_scaled(X_target)
        q = self.conformal_q_ if getattr(self, "conformal_q_", None) is not None else np.full(self.n_targets_, np.inf)
        half = q * sd
        return (pred - half) * self.y_scale_, (pred + half) * self.y_scale_

    def predict_spread(self, X_target: np.ndarray) -> np.ndarray:
        """MC-dropout standard deviation (n, k) of each prediction (floored), in the values' units."""
        return self._predict_scaled(X_target)[1] * self.y_scale_

    def record_extras(self) -> dict[str, Any]:
        """What the run records beside the metrics: the choices made on validation data, the conformal calibration."""
        out: dict[str, Any] = {
            "readout": getattr(self, "readout_", None),
            "readout_cv": getattr(self, "readout_scores_", None),
            "unfreeze": getattr(self, "unfreeze_", None),
            "unfreeze_validation": getattr(self, "unfreeze_scores_", None),
            "transfer_loss": getattr(self, "transfer_loss_", None),
            "standards_cv_rmse": getattr(self, "standards_cv_rmse_", None),
        }
        if getattr(self, "conformal_q_", None) is not None:
            out["conformal"] = {"calibration": self.conformal_source_, "n_scores": self.conformal_n_,
                                "level": 1 - float(self.interval_alpha),
                                "quantile": [float(v) for v in self.conformal_q_]}
        if self.pds_first and getattr(self, "pds_transferred_", False):
            out["pds_selected"] = getattr(self.pds_, "selected_", None)
        return {"spektron": out}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "lora_rank": trial.suggest_categorical("lora_rank", [2, 4, 8]),
            "adapt_blocks": trial.suggest_int("adapt_blocks", 1, 3),
            "transfer_steps": trial.suggest_int("transfer_steps", 30, 200, log=True),
            "lr": trial.suggest_float("lr", 5e-4, 1e-2, log=True),
            "align_weight": trial.suggest_float("align_weight", 0.05, 20.0, log=True),
        }

    @classmethod
    def pretrain(cls, corpus: Any, config: dict[str, Any]) -> dict[str, Any]:
        """Self-supervised pretraining (see ctbench_spektron.pretrain.run_pretraining)."""
        from .pretrain import run_pretraining

        return run_pretraining(corpus, config)


class SpektronTTT(Spektron):
    """Zero-shot Spektron: test-time training (masked reconstruction + feature-moment matching)
    of the adapters on the unlabelled target spectra; with standards, their terms are added."""

    name = "spektron-ttt"
    tags = Tags(min_shots=0, zero_shot=True, transductive=True, multi_target=True, native_axes=True)
    description = "Spektron zero-shot: LoRA test-time training on the unlabelled target spectra (transductive)"
    __init__ = with_defaults(Spektron, ttt_steps=40, moments_weight=10.0)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "lora_rank": trial.suggest_categorical("lora_rank", [2, 4, 8]),
            "ttt_steps": trial.suggest_int("ttt_steps", 10, 100, log=True),
            "recon_weight": trial.suggest_float("recon_weight", 0.1, 10.0, log=True),
            "moments_weight": trial.suggest_float("moments_weight", 0.1, 10.0, log=True),
        }


class SpektronNoPretrain(Spektron):
    """Ablation: the same architecture and transfer, randomly initialised (no pretraining)."""

    name = "spektron-lora-nopretrain"
    description = "Spektron-LoRA ablation: random initialisation instead of the pretrained weights, same head and LoRA transfer"
    __init__ = with_defaults(Spektron, pretrained=False)


class SpektronFullFT(Spektron):
    """Ablation: the adapted stages fully fine-tuned (every weight, lr / 10) instead of LoRA."""

    name = "spektron-fullft"
    description = "Spektron ablation: full fine-tuning of the adapted stages instead of LoRA adapters"
    __init__ = with_defaults(Spektron, adapter="full")


class SpektronPDS(Spektron):
    """PDS first (ctbench_classical's PDS, windowed local regression on the standards), then the
    network, fed the PDS-corrected target spectra, learns what is left with the same LoRA transfer."""

    name = "spektron-pds"
    tags = Tags(min_shots=2, multi_target=True)  # PDS needs both instruments on one axis
    description = "Spektron on PDS-corrected target spectra: PDS first, the LoRA-adapted network learns the residual"
    __init__ = with_defaults(Spektron, pds_first=True)


from .translate_method import SpektronTranslate, SpektronTranslateNoPretrain  # noqa: E402  (numpy only at import)

METHODS = [SpektronTranslate, SpektronTranslateNoPretrain, Spektron, SpektronTTT, SpektronNoPretrain, SpektronFullFT,
           SpektronPDS]
