"""``spektron`` (v3): calibration transfer through Spektron's pretrained instrument translator.

fit       the source calibration is kept, and a model-updating PLS (``ctbench_classical``'s
          ``model_update``) calibrates the source model on it.
transfer  from the N standards (source and target view of each) the pretrained pair encoder infers
          the instrument difference ``theta`` (axis shift / stretch / warp, line broadening, gain
          and response, baseline: ``translator.THETA``), refined by least squares (L-BFGS) on the
          standards themselves with a pull towards the network's estimate. The translator's
          forward model then shows what the target instrument would have measured for every
          source calibration spectrum, at the task's own resolution. Three paths:

          * ``simulate``: PLS calibrated on the simulated target calibration;
          * ``simulate+update``: model updating on the simulated target calibration plus the
            standards' real target spectra (the simulation carries what the prior knows about
            instruments, the update the rest);
          * ``model_update``: plain model updating on the spectra as measured (the fallback, no use
            of the network at all).

          ``path="auto"`` (default) picks one by grouped cross-validation over the standards
          (leave-one-sample-out up to 6 samples, 6 folds beyond): each fold's held-out standards
          leave the source calibration too, ``theta`` is inferred from the remaining standards
          only, and every path is refitted; score = mean over properties of RMSE / SD. Ties go to
          the simpler path (model_update first). The chosen path, ``theta`` and the scores go into
          the record (``extras.spektron``).
predict   target spectra as measured -> the chosen model.

Nothing here sees test spectra or values: the runner hands the method only the source calibration
and the standards.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards, Tags, TransferMethod

from .variant import with_defaults

PATHS = ("model_update", "simulate+update", "simulate")
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def default_translator() -> Path:
    from .checkpoint import PACKAGE_WEIGHTS

    return PACKAGE_WEIGHTS / "spektron-translator.pt"


def load_translator(checkpoint: str | None, pretrained: bool, seed: int) -> Any:
    """The translator network (eval mode, frozen), cached per process."""
    from .translator import TranslatorConfig, load, new_model

    path = str(checkpoint) if checkpoint else str(default_translator())
    key = (path, bool(pretrained), int(seed))
    with _LOCK:
        if key not in _CACHE:
            if pretrained:
                model, manifest = load(path)
            else:  # same architecture as the checkpoint (when one exists), random initialisation
                try:
                    cfg = load(path)[0].cfg
                except (FileNotFoundError, ValueError):
                    cfg = TranslatorConfig()
                model, manifest = new_model(cfg, seed=seed), {"pretrained": False}
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            _CACHE[key] = (model, manifest)
        return _CACHE[key]


class SpektronTranslate(TransferMethod):
    """Spektron: the pretrained instrument translator simulates the target calibration; model
    updating on top; path (or the model-update fallback) chosen by CV on the standards.

    Parameters (defaults in brackets):
      checkpoint [None]: translator weights (None: the committed ``weights/spektron-translator.pt``).
      pretrained [True]: False = the same architecture randomly initialised (ablation).
      path ["auto"]: "auto" (CV over the standards), "simulate", "simulate+update" or "model_update".
      refine_steps [50]: L-BFGS iterations refining theta on the standards (0: the network's theta only).
      prior [1e-4]: weight of the pull of the refined theta towards the network's (per squared unit).
      seed [0]: the random initialisation when ``pretrained`` is False.
    """

    name = "spektron"
    version = "3"
    tags = Tags(min_shots=2, multi_target=True)
    description = "Spektron: pretrained instrument translator simulates the target calibration + model updating, path by CV on the standards"

    def __init__(self, checkpoint: str | None = None, pretrained: bool = True, path: str = "auto",
                 refine_steps: int = 50, prior: float = 1e-4, seed: int = 0):
        self.checkpoint = checkpoint
        self.pretrained = pretrained
        self.path = path
        self.refine_steps = refine_steps
        self.prior = prior
        self.seed = seed

    def _check_params(self) -> None:
        if self.path not in ("auto",) + PATHS:
            raise ValueError(f"spektron: path must be 'auto' or one of {', '.join(PATHS)}, got {self.path!r}")
        if not isinstance(self.refine_steps, int) or isinstance(self.refine_steps, bool) or self.refine_steps < 0:
            raise ValueError(f"spektron: refine_steps must be a non-negative integer, got {self.refine_steps!r}")
        if not (isinstance(self.prior, (int, float)) and not isinstance(self.prior, bool) and self.prior >= 0):
            raise ValueError(f"spektron: prior must be a non-negative number, got {self.prior!r}")

    # --- the network ----------------------------------------------------------------------------
    def _net(self) -> Any:
        return load_translator(self.checkpoint, self.pretrained, self.seed)[0]

    def _infer_theta(self, Xs: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """(theta refined, theta from the network, normalisation (ms, ss, mt, st)) from paired standards."""
        import torch

        from .translator import resample, scalar_stats, transform

        net = self._net()
        ms, ss = scalar_stats(Xs)
        mt, st = scalar_stats(Xt)
        P = net.cfg.points
        a = torch.as_tensor((resample(self.axis_, Xs[:, self.order_], P) - ms) / ss, dtype=torch.float32)
        b = torch.as_tensor((resample(self.axis_, Xt[:, self.order_], P) - mt) / st, dtype=torch.float32)
        with torch.no_grad():
            theta0 = net.infer_theta(a[None], b[None])[1][0].double()
        theta = theta0.clone()
        if self.refine_steps:
            xs = torch.as_tensor((Xs[:, self.order_] - ms) / ss)
            xt = torch.as_tensor((Xt[:, self.order_] - mt) / st)
            t = self.t_
            theta.requires_grad_(True)
            opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=int(self.refine_steps), line_search_fn="strong_wolfe")

            def closure() -> Any:
                opt.zero_grad()
                loss = ((transform(xs, theta, t) - xt) ** 2).mean() + self.prior * ((theta - theta0) ** 2).mean()
                loss.backward()
                return loss

            opt.step(closure)
            theta = theta.detach()
            if not torch.isfinite(theta).all():
                theta = theta0
        return theta.numpy(), theta0.numpy(), (ms, ss, mt, st)

    def _simulate(self, X: np.ndarray, theta: np.ndarray, stats: tuple[float, ...]) -> np.ndarray:
        """Source spectra (n, p) -> what the target instrument would measure (n, p), task axis."""
        import torch

        from .translator import transform

        ms, ss, mt, st = stats
        with torch.no_grad():
            out = transform(torch.as_tensor((X[:, self.order_] - ms) / ss), torch.as_tensor(theta), self.t_)
        res = out.numpy() * st + mt
        back = np.empty_like(res)
        back[:, self.order_] = res
        return back

    # --- the contract ---------------------------------------------------------------------------
    def fit(self, source: SourceData) -> SpektronTranslate:
        import torch

        from ctbench_classical.model_update import ModelUpdate

        self._check_params()
        axis = np.asarray(source.axis, dtype=np.float64)
        self.order_ = np.argsort(axis, kind="stable")
        self.axis_ = axis[self.order_]
        if self.axis_.size < 8 or np.any(np.diff(self.axis_) <= 0):
            raise ValueError("spektron: the spectral axis needs at least 8 distinct points")
        self.t_ = torch.as_tensor(2 * (self.axis_ - self.axis_[0]) / (self.axis_[-1] - self.axis_[0]) - 1)
        self.source_ = source
        self.updater_ = ModelUpdate().fit(source)
        self._net()  # load (and fail early on missing weights)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> SpektronTranslate:
        from ctbench_classical._common import one_blas_thread, sample_folds, standards_arrays
        from ctbench_classical.model_update import grouped_folds, source_rows_of

        from .method import torch_threads

        if not hasattr(self, "updater_"):
            raise RuntimeError("spektron: call fit before transfer")
        self._check_params()
        up = self.updater_
        Xs, Xt, ys = standards_arrays(standards, up.n_channels_, up.n_properties_, self.tags.min_shots, self.name)
        src_X = np.asarray(self.source_.X, dtype=np.float64)
        with torch_threads(1), one_blas_thread():
            theta, theta0, stats = self._infer_theta(Xs, Xt)
            paths = list(PATHS) if self.path == "auto" else [self.path]
            scores = None
            samples = sample_folds(standards.groups, Xt.shape[0])
            held_source = source_rows_of(samples, Xs, up.X_source_, up.source_codes_)
            if len(paths) > 1 and len(samples) >= 3:
                scores = self._cv(paths, standards, Xs, Xt, ys, samples, held_source, grouped_folds(samples))
                best = int(np.flatnonzero(scores <= scores.min() * (1 + 1e-9))[0])
                chosen = paths[best]
            else:
                chosen = "model_update" if self.path == "auto" else self.path
            sim = None if chosen == "model_update" else self._simulate(src_X, theta, stats)
            self.model_ = self._fit_path(chosen, np.arange(src_X.shape[0]), standards, np.arange(Xt.shape[0]), samples,
                                         held_source, theta, stats, sim=sim, full=up)
        self.path_ = chosen
        self.theta_, self.theta_network_ = theta, theta0
        self.cv_scores_ = None if scores is None else {p: float(s) for p, s in zip(paths, scores)}
        return self

    def _fit_path(self, path: str, src_rows: np.ndarray, standards: Standards, std_rows: np.ndarray,
                  samples: list[np.ndarray], held_source: list[np.ndarray], theta: np.ndarray, stats: tuple,
                  sim: np.ndarray | None = None, full: Any = None, cache: dict | None = None) -> Any:
        """The fitted predictor of a path on source rows ``src_rows`` and standard rows ``std_rows``.
        ``sim``: the simulated target view of the whole source calibration (the simulate paths);
        ``full``: the model_update already fitted on the whole source calibration (reused);
        ``cache``: the source models already fitted in this fold, keyed by simulated or not."""
        from ctbench_classical.model_update import ModelUpdate

        src = self.source_
        simulated = path != "model_update"
        if full is not None and not simulated:
            up = copy.deepcopy(full)
        elif cache is not None and simulated in cache:
            up = copy.deepcopy(cache[simulated])
        else:
            X = sim if simulated else np.asarray(src.X, dtype=np.float64)
            g = None if src.groups is None else np.asarray(src.groups)[src_rows]
            up = ModelUpdate().fit(SourceData(X=X[src_rows], y=np.asarray(src.y)[src_rows], axis=src.axis,
                                              axis_unit=src.axis_unit, properties=src.properties,
                                              instrument=src.instrument, groups=g))
            if cache is not None:
                cache[simulated] = copy.deepcopy(up)
        if path == "simulate":
            return up.source_model_
        Xs = np.asarray(standards.X_source, dtype=np.float64)
        if simulated:  # a standard's simulated source view is its calibration row's
            Xs = Xs.copy()
            for rows, hit in zip(samples, held_source):
                Xs[rows] = sim[hit[0]] if hit.size == 1 and rows.size == 1 else self._simulate(Xs[rows], theta, stats)
        sg = None if standards.groups is None else np.asarray(standards.groups)[std_rows]
        return up.transfer(Standards(X_source=Xs[std_rows], X_target=np.asarray(standards.X_target)[std_rows],
                                     y=np.asarray(standards.y)[std_rows], axis=standards.axis,
                                     axis_unit=standards.axis_unit, properties=standards.properties, groups=sg))

    def _cv(self, paths: list[str], standards: Standards, Xs: np.ndarray, Xt: np.ndarray, ys: np.ndarray,
            samples: list[np.ndarray], held_source: list[np.ndarray], folds: list[list[int]]) -> np.ndarray:
        src_X = np.asarray(self.source_.X, dtype=np.float64)
        n_src = src_X.shape[0]
        err = np.zeros((len(paths), Xt.shape[0], ys.shape[1]))
        for fold in folds:
            held = np.concatenate([samples[i] for i in fold])
            keep_std = np.setdiff1d(np.arange(Xt.shape[0]), held)
            drop = np.concatenate([held_source[i] for i in fold]).astype(int)
            keep_src = np.setdiff1d(np.arange(n_src), drop)
            theta, _, stats = self._infer_theta(Xs[keep_std], Xt[keep_std])
            sim = self._simulate(src_X, theta, stats) if paths != ["model_update"] else None
            cache: dict = {}
            for p, path in enumerate(paths):
                model = self._fit_path(path, keep_src, standards, keep_std, samples, held_source, theta, stats,
                                       sim=sim, cache=cache)
                err[p, held] = model.predict(Xt[held]) - ys[held]
        scale = self.updater_.y_scale_
        return (np.sqrt((err**2).mean(axis=1)) / scale).mean(axis=1)

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        from ctbench_classical._common import one_blas_thread

        if not hasattr(self, "model_"):
            raise RuntimeError("spektron: call transfer before predict")
        X = np.asarray(X_target, dtype=np.float64)
        with one_blas_thread():
            out = self.model_.predict(X)
        return np.asarray(out, dtype=np.float64).reshape(X.shape[0], -1)

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "path_"):
            return {}
        manifest = load_translator(self.checkpoint, self.pretrained, self.seed)[1]
        from .translator import THETA

        return {"spektron": {"path": self.path_, "cv_scores": self.cv_scores_, "pretrained": bool(self.pretrained),
                             "theta": dict(zip(THETA, map(float, self.theta_))),
                             "theta_network": dict(zip(THETA, map(float, self.theta_network_))),
                             "weights_sha256": manifest.get("weights_sha256")}}

    def chosen_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if hasattr(self, "path_"):
            out["path"] = self.path_
            out["cv_scores"] = self.cv_scores_
        return out

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "path": trial.suggest_categorical("path", ["auto", *PATHS]),
            "refine_steps": trial.suggest_int("refine_steps", 0, 100),
            "prior": trial.suggest_float("prior", 1e-6, 1e-1, log=True),
        }

    @classmethod
    def pretrain(cls, corpus: Any, config: dict[str, Any]) -> dict[str, Any]:
        """Pretrain the translator on simulated instrument pairs (ctbench_spektron.translator_pretrain)."""
        from .translator_pretrain import run_pretraining

        return run_pretraining(corpus, config)


class SpektronTranslateNoPretrain(SpektronTranslate):
    """Ablation: the translator randomly initialised (same architecture, same transfer and CV)."""

    name = "spektron-nopretrain"
    description = "Spektron ablation: the translator randomly initialised instead of pretrained, same transfer"

    __init__ = with_defaults(SpektronTranslate, pretrained=False)

