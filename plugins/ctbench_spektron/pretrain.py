"""The pretraining loop: corpus -> Spektron weights, single process or DistributedDataParallel.

``run_pretraining(corpus, config)`` is what ``Spektron.pretrain`` (and so ``ctbench pretrain``)
calls. Under ``torchrun`` (env WORLD_SIZE / RANK / LOCAL_RANK) it joins a process group (nccl on
CUDA, gloo on CPU), each process trains on its shard of every global batch, and only rank 0
writes checkpoints, the loss log, MLflow records and the final weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, atomic_write_text, export_weights
from .config import PretrainConfig

EXPERIMENT = "spektron-pretrain"
RUN_OPTIONS = ("out", "resume", "data_dir", "results_dir", "mlflow", "progress", "corpus", "stop_after", "command")


def split_config(config: dict[str, Any]) -> tuple[PretrainConfig, dict[str, Any]]:
    """Separate run options (paths, switches) from the PretrainConfig fields; unknown keys are errors."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(config) - fields - set(RUN_OPTIONS))
    if unknown:
        from ctbench.names import did_you_mean

        hint = did_you_mean(unknown[0], sorted(fields | set(RUN_OPTIONS)))
        raise ValueError(f"unknown Spektron pretraining option {unknown[0]!r}{hint}")
    pcfg = PretrainConfig.from_dict({k: v for k, v in config.items() if k in fields})
    run = {k: config[k] for k in RUN_OPTIONS if k in config}
    return pcfg, run


class DistributedContext:
    """Process group membership from torchrun's environment (a single process otherwise)."""

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if device.startswith("cuda"):
            index = self.local_rank if self.world_size > 1 or device == "cuda" else int(device.split(":")[1])
            self.device = torch.device("cuda", index)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(device)
        self.initialised_here = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.initialised_here = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


class MlflowLogger:
    """Losses to MLflow (tracking URI from ctbench.tracking); any failure becomes a warning.

    It talks through an explicit ``MlflowClient``: the fluent ``mlflow.set_tracking_uri`` would
    export ``MLFLOW_TRACKING_URI`` into this process and redirect every later tracking call.
    """

    def __init__(self, enabled: bool, results_dir: str | Path, params: dict[str, Any], run_name: str,
                 run_id: str | None = None):
        self.enabled = enabled
        self.run_id = run_id
        self.client = None
        if not enabled:
            return
        try:
            from mlflow.entities import Param

            from ctbench.tracking import experiment_id, open_client, tracking_lock

            self.client, note = open_client(results_dir)  # schema created or repaired under the lock
            if note:
                warnings.warn(note, stacklevel=2)
            with tracking_lock(results_dir):
                exp_id = experiment_id(self.client, results_dir, EXPERIMENT)
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
                flat = [Param(k, str(v)[:500]) for k, v in _flatten(params).items()]
                for i in range(0, len(flat), 100):
                    self.client.log_batch(self.run_id, params=flat[i:i + 100])
        except Exception as exc:  # noqa: BLE001 - tracking must never cost a run
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        warnings.warn(f"MLflow logging disabled: {type(exc).__name__}: {exc}", stacklevel=2)
        self.enabled = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        try:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def artifact(self, path: Path) -> None:
        if not self.enabled:
            return
        try:
            self.client.log_artifact(self.run_id, str(path))
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self.client.set_terminated(self.run_id, status="FINISHED")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def learning_rate(pcfg: PretrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    warm = min(1.0, (step + 1) / max(1, pcfg.warmup_steps))
    progress = min(1.0, step / max(1, pcfg.steps - 1))
    return pcfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_momentum(pcfg: PretrainConfig, step: int) -> float:
    return 1 - (1 - pcfg.ema_start) * (math.cos(math.pi * step / max(1, pcfg.steps)) + 1) / 2


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, 7]).generate_state(1)[0])


def _environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}


def run_pretraining(corpus: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Pretrain Spektron on ``corpus`` (a PretrainCorpus or a spec like 'rruff,synthetic').

    ``config``: PretrainConfig fields plus run options ``out`` (folder, required), ``resume``,
    ``data_dir``, ``results_dir``, ``mlflow`` (bool), ``progress`` (bool), ``stop_after`` (stop
    with a checkpoint after that many steps of this invocation; resume later). Returns a summary
    (paths of the checkpoint, weights and manifest; final losses; throughput).
    """
    import torch

    from .corpus import PretrainCorpus, build_corpus
    from .model import count_parameters
    from .objectives import LOSS_NAMES, PretrainModule, TargetNetwork, compute_losses, make_views
    from .sampling import BatchSampler

    pcfg, run = split_config(dict(config))
    if "out" not in run or not run["out"]:
        raise ValueError("pretraining needs an output folder (config['out'] / --out)")
    out_dir = Path(run["out"]).expanduser()
    threads_before = torch.get_num_threads()
    if pcfg.num_threads:
        torch.set_num_threads(pcfg.num_threads)
    mcfg = pcfg.model_config()
    ctx = DistributedContext(pcfg.device)
    device = ctx.device
    progress = None
    try:
        ckpt_path = out_dir / "checkpoint-last.pt"
        if ckpt_path.exists() and not run.get("resume"):
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        if run.get("resume") and not ckpt_path.exists() and ctx.is_main:
            warnings.warn(f"--resume: no checkpoint in {out_dir}, starting from step 0", stacklevel=2)
        # the main process parses (and caches) the corpus first, the others then read the cache
        if not isinstance(corpus, PretrainCorpus):
            if ctx.is_main:
                corpus = build_corpus(corpus, run.get("data_dir"), mcfg.grid_points)
            ctx.barrier()
            if not ctx.is_main:
                corpus = build_corpus(corpus, run.get("data_dir"), mcfg.grid_points)
        sampler = BatchSampler(corpus, pcfg.batch_size, pcfg.synthetic_fraction, pcfg.pair_fraction, pcfg.seed,
                               ctx.rank, ctx.world_size)

        torch.manual_seed(pcfg.seed)
        module = PretrainModule(mcfg).to(device)
        target = TargetNetwork(module).to(device).eval()
        decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and "token" not in n]
        no_decay = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and "token" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": pcfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=pcfg.lr, betas=(0.9, 0.98))
        start, history, mlflow_run_id = 0, [], None
        manifest_corpus = corpus.manifest()
        if ckpt_path.exists() and run.get("resume"):
            ctx.barrier()
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{ckpt_path} is not a Spektron training checkpoint")
            if state["model_config"] != mcfg.to_dict():
                raise ValueError(f"{ckpt_path} was trained with a different model configuration (size {state['model_config'].get('size')!r})")
            module.load_state_dict(state["model"])
            target.load_state_dict(state["target"])
            opt.load_state_dict(state["optimizer"])
            start, history = int(state["step"]), list(state.get("history", []))
            mlflow_run_id = state.get("mlflow_run_id")
        train_module: Any = module
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                               find_unused_parameters=True)
        n_params = count_parameters(module.backbone)
        run_name = f"spektron-{pcfg.size}-{out_dir.name}"
        logger = MlflowLogger(bool(run.get("mlflow", True)) and ctx.is_main,
                              run.get("results_dir") or "results", pcfg.to_dict(), run_name, mlflow_run_id)

        def manifest(step: int, elapsed: float) -> dict[str, Any]:
            return {
                "model": "spektron", "size": pcfg.size, "parameters": n_params, "step": step,
                "model_config": mcfg.to_dict(), "pretrain_config": pcfg.to_dict(), "corpus": manifest_corpus,
                "world_size": ctx.world_size, "device": str(device), "environment": _environment(),
                "train_seconds": round(elapsed, 1), "final_losses": history[-1] if history else {},
                "reproduce": run.get("command") or f"ctbench pretrain --method spektron --corpus {','.join(manifest_corpus['spec'])} "
                             f"--size {pcfg.size} --steps {pcfg.steps} --batch-size {pcfg.batch_size} --seed {pcfg.seed} --out OUT",
            }

        def save_checkpoint(step: int, elapsed: float) -> None:
            if not ctx.is_main:
                return
            atomic_torch_save({
                "format": CHECKPOINT_FORMAT, "step": step, "model": module.state_dict(), "target": target.state_dict(),
                "optimizer": opt.state_dict(), "model_config": mcfg.to_dict(), "config": pcfg.to_dict(),
                "manifest": json.loads(json.dumps(manifest(step, elapsed))), "history": history,
                "mlflow_run_id": logger.run_id,
            }, ckpt_path)

        amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if pcfg.precision == "bf16" else nullcontext())
        progress = _progress(ctx.is_main and bool(run.get("progress", True)), pcfg.steps, start)
        module.train()
        t0 = time.perf_counter()
        t_window, n_window = time.perf_counter(), 0
        elapsed_before = float(history[-1].get("elapsed_s", 0.0)) if history else 0.0
        use_target = pcfg.weights.byol > 0
        sums: dict[str, float] = {}
        n_sum = 0
        for step in range(start, pcfg.steps):
            seed = _step_seed(pcfg.seed, step, ctx.rank)
            torch.manual_seed(seed)
            g = torch.Generator(device=device).manual_seed(seed)
            batch = sampler.batch(step)
            views = make_views(batch, pcfg, mcfg, g, device, step)
            lr = learning_rate(pcfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            with amp:
                out = train_module(views.x_online, views.k_tok, views.width, views.domain, views.token_mask,
                                   views.fno_rows, views.fno_input)
                rows = views.target_rows
                tproj = (target(views.x_target[rows], views.k_tok[rows], views.width[rows], views.domain[rows])
                         if use_target else None)
            total, parts = compute_losses(out, tproj, views, pcfg)
            opt.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), pcfg.grad_clip)
            opt.step()
            if use_target:
                target.update(module, ema_momentum(pcfg, step))
            n_window += batch.n * ctx.world_size
            values = {"total": float(total.detach())} | {k: float(v.detach()) for k, v in parts.items()}
            values["grad_norm"] = float(grad_norm)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            done = step + 1
            if done % pcfg.log_every == 0 or done == pcfg.steps:
                keys = sorted(sums)
                avg = dict(zip(keys, ctx.mean([sums[k] / n_sum for k in keys])))
                now = time.perf_counter()
                rate = n_window / max(now - t_window, 1e-9)
                elapsed = elapsed_before + now - t0
                record = {"step": done, "lr": lr, "spectra_per_s": rate, "elapsed_s": elapsed} | avg
                history.append(record)
                logger.log({k: v for k, v in record.items() if k != "step"}, done)
                t_window, n_window, sums, n_sum = now, 0, {}, 0
                progress.update(done, avg.get("total", float("nan")), rate)
            else:
                progress.update(done, None, None)
            stop_now = bool(run.get("stop_after")) and done - start >= int(run["stop_after"]) and done != pcfg.steps
            if (done % pcfg.checkpoint_every == 0 or stop_now) and done != pcfg.steps:
                save_checkpoint(done, elapsed_before + time.perf_counter() - t0)
            if stop_now:
                stopped_at = done
                break
        else:
            stopped_at = None
        progress.close()
        elapsed = elapsed_before + time.perf_counter() - t0
        summary: dict[str, Any] = {"steps": pcfg.steps, "parameters": n_params, "elapsed_s": elapsed,
                                   "final_losses": history[-1] if history else {}}
        if stopped_at is not None:  # time-boxed invocation: checkpoint only, resume later
            summary.update(stopped_at=stopped_at, checkpoint=str(ckpt_path))
        elif ctx.is_main:
            save_checkpoint(pcfg.steps, elapsed)
            weights = out_dir / f"spektron-{pcfg.size}.pt"
            full_manifest = export_weights(module.backbone, weights, manifest(pcfg.steps, elapsed))
            full_manifest["checkpoint"] = ckpt_path.name
            atomic_write_text(out_dir / "manifest.json", json.dumps(full_manifest, indent=1, sort_keys=True))
            _write_history(out_dir / "losses.csv", history, LOSS_NAMES)
            try:
                from .figures import plot_losses

                plot_losses(history, out_dir / "losses.png", title=f"Spektron-{pcfg.size} pretraining")
            except Exception as exc:  # noqa: BLE001 - a figure never costs the run
                warnings.warn(f"loss figure not written: {exc}", stacklevel=2)
            logger.artifact(out_dir / "manifest.json")
            summary.update(checkpoint=str(ckpt_path), weights=str(weights), manifest=str(out_dir / "manifest.json"),
                           weights_sha256=full_manifest["weights_sha256"])
        logger.close()
        ctx.barrier()
        return summary
    finally:
        if progress is not None:  # an error mid-loop: stop the bar (or the plain lines' heartbeat)
            progress.close()
        ctx.close()
        torch.set_num_threads(threads_before)


def _write_history(path: Path, history: list[dict[str, Any]], loss_names: tuple[str, ...]) -> None:
    if not history:
        return
    keys = ["step", "elapsed_s", "lr", "spectra_per_s", "total", "grad_norm"] + [k for k in loss_names if k in history[-1]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for rec in history:
            w.writerow({k: (f"{rec[k]:.6g}" if isinstance(rec.get(k), float) else rec.get(k)) for k in keys})


class _progress:
    """The pretraining loop's progress: ctbench's shared :class:`ctbench.progress.Progress` (a rich
    bar on a terminal; without one, plain ``pretrain: 120/1000 steps (12 %), ...; loss 0.4123,
    812.3 spectra/s`` lines every ``CTBENCH_PROGRESS_SECONDS`` and one at the end), or nothing."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console

        from ctbench.progress import Progress

        self.bar = Progress("pretrain", total, "steps", console=Console(stderr=True)).start(completed=start)

    def update(self, done: int, loss: float | None, rate: float | None) -> None:
        if self.bar is None:
            return
        if loss is not None:
            self.bar.update(done, info=f"loss {loss:.4f}, {rate:.1f} spectra/s")
        else:
            self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
