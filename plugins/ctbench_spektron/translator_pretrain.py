"""Pretraining of Spektron's instrument translator on simulated instrument pairs.

Every step draws ``episodes`` episodes from (seed, step) only (so ``--resume`` continues a run
exactly). An episode is one simulated transfer task:

1. a working axis (NIR: a range inside 400-2500 nm; Raman: inside 100-3200 cm-1; or the axis of a
   real unlabelled spectrum of the corpus, RRUFF Raman or fermentation MIR, used as a matrix);
2. ``samples`` chemical samples (``corpus.chemistry``: NIR overtone/combination bands of water,
   protein, lipid, carbohydrates with Beer-Lambert mixing, path length and particle-size scatter;
   Raman lines; or the real matrix spectrum with synthetic analytes added), their property values
   the concentrations - always SYNTHETIC;
3. two simulated instruments (``simulator``: shift, warp, broadening, response, baseline, scatter,
   stray light, nonlinearity, noise, gain, fluorescence), each measuring on its own native grid,
   resampled onto the working grid (what the benchmark's alignment does); ``simulator=False``
   replaces them with generic augmentations of one view (the ablation);
4. the first ``n_calibration`` samples are the source calibration (view A with values); a random
   3-12 of them are the standards (views A and B); the rest are queries (view B).

Objectives (``weights``; 0 switches one off):

* ``translation``: the pair encoder infers ``theta`` (the instrument difference, ``translator.THETA``)
  from the standards; the forward model turns every source view A of the episode into the target
  instrument's view; MSE against the real target view B (normalised units). The loss log also
  carries ``identity``, the same error with no translation at all (a reference, not trained).
* ``invariance``: z_chem of the two views of a sample agree (MSE, plus a variance floor against
  collapse), and the pair code z predicts the simulator's parameter differences (z_inst carries
  the instrument).
* ``episodic``: few-shot transfer as the benchmark poses it - a ridge model fitted in closed form on
  the *simulated target* calibration (the source calibration's A views through the forward model
  with the inferred theta) predicts the queries from their real target views B; MSE against the
  queries' values (standardised). The gradient flows through theta into the encoder.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .grid import interp_rows

DEFAULT_WEIGHTS = {"translation": 1.0, "invariance": 0.1, "episodic": 0.5}
DEFAULTS: dict[str, Any] = {
    "steps": 3000, "episodes": 8, "samples": 24, "n_calibration": 16, "max_standards": 12, "lr": 2e-3,
    "weight_decay": 1e-4, "warmup": 100, "seed": 0, "simulator": True, "real_fraction": 0.2,
    "raman_fraction": 0.3, "checkpoint_every": 250, "num_threads": 0, "device": "cpu", "precision": "fp32",
}
FILE_NAME = "spektron-translator.pt"


# --- episodes (numpy) ---------------------------------------------------------------------------


def _native_grid(rng: np.random.Generator, lo: float, hi: float, fine: np.ndarray, points: int) -> np.ndarray:
    """An instrument's own grid: a random point count and a range a little beyond [lo, hi]."""
    span = hi - lo
    a = max(fine[0], lo - rng.uniform(0, 0.02) * span)
    b = min(fine[-1], hi + rng.uniform(0, 0.02) * span)
    n = int(rng.integers(points // 2, 2 * points + 1))
    return np.linspace(a, b, n)


_WINDOWS = {"Raman": ((100.0, 600.0), (800.0, 2600.0), 3200.0), "NIR": ((400.0, 1300.0), (500.0, 2000.0), 2500.0)}
"""Synthetic-chemistry axis windows per domain: (range of the first point, range of the span, last
point at most), in cm-1 / nm."""


def _chemistry(rng: np.random.Generator, n: int, table: Any, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(fine axis, true spectra (n, p), property values (n, c), simulator domain)."""
    from .corpus.chemistry import nir_samples, raman_samples

    u = rng.uniform()
    if table is not None and table.n and u < cfg["real_fraction"]:
        i = int(rng.integers(table.n))
        lo, hi = float(table.lo[i]), float(table.hi[i])
        fine = np.linspace(lo, hi, table.values.shape[1])
        base = table.values[i].astype(np.float64)
        base = (base - base.min()) / max(float(np.ptp(base)), 1e-12)
        raman = str(table.unit[i]) == "cm-1"
        X, Y, _ = (raman_samples if raman else nir_samples)(rng, n, fine)
        X = X / max(float(np.abs(X).max()), 1e-12)
        level = rng.uniform(0.2, 1.0)
        matrix = base[None, :] * rng.uniform(0.8, 1.2, (n, 1))
        return fine, matrix + level * X, Y, "Raman" if raman else "NIR"
    domain = "Raman" if u < cfg["real_fraction"] + cfg["raman_fraction"] else "NIR"
    (first, last), (narrow, wide), top = _WINDOWS[domain]
    lo = rng.uniform(first, last)
    hi = min(top, lo + rng.uniform(narrow, wide))
    pad = 0.03 * (hi - lo)
    fine = np.linspace(lo - pad, hi + pad, 2048)
    X, Y, _ = (raman_samples if domain == "Raman" else nir_samples)(rng, n, fine)
    return fine, X, Y, domain


def make_episode(rng: np.random.Generator, table: Any, cfg: dict[str, Any], points: int,
                 param_names: list[str]) -> dict[str, np.ndarray]:
    """One simulated transfer task (see the module docstring); views normalised per instrument."""
    from . import simulator as sim
    from .translator import scalar_stats

    K = cfg["samples"]
    fine, X, Y, domain = _chemistry(rng, K, table, cfg)
    pad = (fine[-1] - fine[0]) * 0.03 / 1.06
    lo, hi = fine[0] + pad, fine[-1] - pad
    work = np.linspace(lo, hi, points)
    if cfg["simulator"]:
        views, params = [], []
        for _ in range(2):
            inst = sim.sample_instrument(rng, domain)
            grid = _native_grid(rng, lo, hi, fine, points)
            views.append(interp_rows(grid, sim.observe(fine, X, inst, grid, rng, domain), work))
            params.append(inst)
        A, B = views
        diff = []
        for name in param_names:
            dlo, dhi = sim.difference_range(name)
            half = max(abs(dlo), abs(dhi), 1e-12)
            diff.append(np.clip((params[1].get(name, 0.0) - params[0].get(name, 0.0)) / half, -3, 3))
        diff = np.asarray(diff, dtype=np.float64)
    else:  # ablation: one view plus generic augmentations (see _augment)
        A = interp_rows(fine, X, work)
        A = A + rng.normal(0, 0.005, A.shape) * np.std(A)
        B = _augment(rng, A)
        diff = np.zeros(len(param_names))
    n_cal = cfg["n_calibration"]
    n_std = int(rng.integers(3, cfg["max_standards"] + 1))
    order = rng.permutation(K)
    A, B, Y = A[order], B[order], Y[order]
    prop = int(rng.integers(Y.shape[1]))
    y = Y[:, prop]
    ym, ys = y[:n_cal].mean(), y[:n_cal].std() or 1.0
    ma, sa = scalar_stats(A[:n_std])
    mb, sb = scalar_stats(B[:n_std])
    return {"A": ((A - ma) / sa).astype(np.float32), "B": ((B - mb) / sb).astype(np.float32),
            "y": ((y - ym) / ys).astype(np.float32), "n_std": np.int64(n_std), "diff": diff.astype(np.float32)}


def _augment(rng: np.random.Generator, A: np.ndarray) -> np.ndarray:
    """Generic instrument-like augmentation of every row (the simulator-off ablation): one random
    shift (grid points), Gaussian blur, gain and tilt, polynomial baseline and noise per pair."""
    sd = float(np.std(A))
    scale = sd if sd > 0 else 1.0
    t = np.linspace(-1, 1, A.shape[1])
    shift = rng.uniform(-6, 6)
    pos = np.clip(np.arange(A.shape[1]) - shift, 0, A.shape[1] - 1)
    B = interp_rows(np.arange(A.shape[1], dtype=float), A, pos)
    sigma = rng.uniform(0, 3)
    if sigma > 0.3:
        k = np.exp(-0.5 * (np.arange(-12, 13) / sigma) ** 2)
        k /= k.sum()
        Bp = np.pad(B, ((0, 0), (12, 12)), mode="edge")
        B = np.stack([np.convolve(r, k, mode="valid") for r in Bp])
    gain = 1 + rng.uniform(-0.3, 0.3) + rng.uniform(-0.2, 0.2) * t
    c = rng.uniform(-0.5, 0.5, 3) * scale
    base = c[0] * t + c[1] * (1.5 * t**2 - 0.5) + c[2] * (2.5 * t**3 - 1.5 * t)
    return B * gain + base + rng.normal(0, 0.01 * scale, B.shape)


def make_batch(seed: int, step: int, table: Any, cfg: dict[str, Any], points: int, param_names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, step])
    eps = [make_episode(rng, table, cfg, points, param_names) for _ in range(cfg["episodes"])]
    return {k: np.stack([e[k] for e in eps]) for k in eps[0]}


# --- losses (torch) -----------------------------------------------------------------------------


def losses(model: Any, batch: dict[str, Any], cfg: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    A, B, y, n_std, diff = batch["A"], batch["B"], batch["y"], batch["n_std"], batch["diff"]
    E, K, P = A.shape
    from .translator import transform

    S = cfg["max_standards"]
    mask = (torch.arange(S)[None, :] < n_std[:, None]).float()
    z, theta = model.infer_theta(A[:, :S], B[:, :S], mask)
    t = torch.linspace(-1.0, 1.0, P, dtype=A.dtype)
    out: dict[str, Any] = {}
    total = A.new_zeros(())
    need_translation = weights["translation"] > 0 or weights["episodic"] > 0
    if need_translation:
        B_hat = transform(A.reshape(E * K, P), theta.repeat_interleave(K, 0), t).reshape(E, K, P)
        out["translation"] = F.mse_loss(B_hat, B)
        out["identity"] = F.mse_loss(A, B).detach()  # the error of no translation, for reference
        if weights["translation"] > 0:
            total = total + weights["translation"] * out["translation"]
    if weights["invariance"] > 0:
        idx = torch.arange(0, K, 4)
        za = model.embed_chem(A[:, idx].reshape(-1, P))
        zb = model.embed_chem(B[:, idx].reshape(-1, P))
        inv = F.mse_loss(za, zb)
        var = (F.relu(1.0 - torch.sqrt(torch.cat([za, zb]).var(0) + 1e-4))).mean()
        d = diff.shape[1]
        inst = F.mse_loss(model.inst(z)[:, :d], diff)
        out["invariance"] = inv + var + inst
        total = total + weights["invariance"] * out["invariance"]
    if weights["episodic"] > 0:
        n_cal = cfg["n_calibration"]
        Bc, yc = B_hat[:, :n_cal], y[:, :n_cal]  # the source calibration as the target would measure it
        mu = Bc.mean(1, keepdim=True)
        Xc = Bc - mu
        G = Xc @ Xc.transpose(1, 2)
        lam = 0.01 * G.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] + 1e-4
        alpha = torch.linalg.solve(G + lam * torch.eye(n_cal), (yc - yc.mean(1, keepdim=True)).unsqueeze(-1))
        q = B[:, n_cal:] - mu  # the queries as the target really measures them
        pred = (q @ Xc.transpose(1, 2) @ alpha).squeeze(-1) + yc.mean(1, keepdim=True)
        out["episodic"] = F.mse_loss(pred, y[:, n_cal:])
        total = total + weights["episodic"] * out["episodic"]
    out["total"] = total
    return out


# --- the run -------------------------------------------------------------------------------------


def run_pretraining(corpus_spec: str, config: dict[str, Any]) -> dict[str, Any]:
    """Pretrain the translator; writes OUT/spektron-translator.pt (+ .json manifest), OUT/losses.csv,
    OUT/checkpoint-last.pt. Returns a summary for the CLI."""
    import torch

    from ctbench.progress import Progress

    from . import simulator as sim
    from .translator import TranslatorConfig, new_model, save

    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in config.items() if k in DEFAULTS})
    weights = dict(DEFAULT_WEIGHTS)
    weights.update({k: float(v) for k, v in (config.get("weights") or {}).items()})
    unknown = set(config.get("weights") or {}) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown translator objective(s) {sorted(unknown)}; objectives: {', '.join(DEFAULT_WEIGHTS)}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError("every objective weight is 0: nothing to train")
    for key in ("simulator",):
        if isinstance(cfg[key], str):
            cfg[key] = cfg[key].lower() in ("1", "true", "yes", "on")
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    model_cfg = TranslatorConfig(**{k: v for k, v in (config.get("model") or {}).items()},
                                 n_inst=max(len(sim.RANGES), 1))
    param_names = sorted(sim.RANGES)
    table, manifest_corpus = _corpus(corpus_spec, config.get("data_dir"))
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg['device']}: CUDA is not available on this machine (use --device cpu)")
    if cfg["precision"] not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg['precision']!r}")
    model = new_model(model_cfg, seed=int(cfg["seed"])).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = int(config.get("steps", cfg["steps"]))
    start, history = 0, []
    last = out / "checkpoint-last.pt"
    if config.get("resume") and last.is_file():
        blob = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        start, history = int(blob["step"]), list(blob["history"])
    elif any(out.glob("spektron-translator*.pt")) and not config.get("resume"):
        raise FileExistsError(f"{out} already holds a translator run; use --resume or another --out")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg["precision"] == "bf16" else _null()
    t0 = time.perf_counter() - sum(h.get("seconds", 0.0) for h in history[-1:])
    progress = Progress("pretrain", total=steps, unit="steps", enabled=bool(config.get("progress", True)))
    progress.start(completed=start)
    names = ("total", "translation", "identity", "invariance", "episodic")
    try:
        for step in range(start, steps):
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step, steps)
            raw = make_batch(int(cfg["seed"]), step, table, cfg, model_cfg.points, param_names)
            batch = {k: torch.as_tensor(v, device=device) for k, v in raw.items()}
            model.train()
            with autocast:
                ls = losses(model, batch, cfg, weights)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(ls["total"]):  # a non-finite episode batch is skipped, never learned from
                ls["total"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            row = {"step": step + 1, "seconds": round(time.perf_counter() - t0, 2)}
            row.update({k: float(ls[k].detach()) for k in names if k in ls})
            history.append(row)
            progress.update(step + 1, info=f"loss {row['total']:.4f}")
            if (step + 1) % int(cfg["checkpoint_every"]) == 0 or step + 1 == steps:
                from .checkpoint import atomic_torch_save

                atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                                   "history": history}, last)
                _write_losses(out / "losses.csv", history, names)
    finally:
        progress.stop()
    elapsed = history[-1]["seconds"] if history else 0.0
    manifest = {
        "kind": "spektron-translator", "synthetic_training_data": True, "corpus": manifest_corpus,
        "objectives": weights, "simulator": bool(cfg["simulator"]), "simulator_ranges": {k: list(v) for k, v in sim.RANGES.items()},
        "config": {k: cfg[k] for k in DEFAULTS if k != "device"}, "steps": steps, "model_config": model_cfg.to_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())), "elapsed_s": elapsed,
        "command": config.get("command"), "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                                          "device": str(device), "cpu_count": os.cpu_count()},
        "final_losses": _tail_mean(history, names),
    }
    full = save(model.cpu(), out / FILE_NAME, manifest)
    _plot(out / "losses.png", history)
    return {"weights": str(out / FILE_NAME), "weights_sha256": full["weights_sha256"], "manifest": str(out / "spektron-translator.json"),
            "checkpoint": str(last), "parameters": manifest["parameters"], "elapsed_s": float(elapsed),
            "final_losses": manifest["final_losses"]}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _lr(cfg: dict[str, Any], step: int, steps: int) -> float:
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    frac = (step - cfg["warmup"]) / max(steps - cfg["warmup"], 1)
    return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _tail_mean(history: list[dict[str, Any]], names: tuple[str, ...], n: int = 50) -> dict[str, float]:
    tail = history[-n:]
    return {k: float(np.mean([h[k] for h in tail if k in h])) for k in names if any(k in h for h in tail)}


def _corpus(spec: str, data_dir: Any) -> tuple[Any, dict[str, Any]]:
    """The measured part of the corpus (matrices for the real-matrix episodes) and its manifest."""
    from ctbench.data import DataError

    from .corpus import build_corpus

    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    measured = [s for s in items if s.split(":", 1)[0] != "synthetic"]
    manifest: dict[str, Any] = {"spec": items, "synthetic": {"generator": "ctbench_spektron.corpus.chemistry + simulator",
                                                             "synthetic": True}}
    if not measured:
        return None, manifest
    try:
        corpus = build_corpus(measured, data_dir=data_dir, grid_points=1024)
    except DataError:
        raise
    manifest.update(corpus.manifest())
    return corpus.table, manifest


def _write_losses(path: Path, history: list[dict[str, Any]], names: tuple[str, ...]) -> None:
    from .checkpoint import atomic_write_text
    import io

    buf = io.StringIO()
    cols = ["step", "seconds"] + [n for n in names if any(n in h for h in history)]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow(h)
    atomic_write_text(path, buf.getvalue())


def _plot(path: Path, history: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for k in ("translation", "identity", "invariance", "episodic"):
        vals = [h.get(k) for h in history]
        if any(v is not None for v in vals):
            v = np.array([np.nan if x is None else x for x in vals])
            w = max(1, len(v) // 100)
            smooth = np.convolve(np.nan_to_num(v), np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], smooth, label=k + (" (no translation, reference)" if k == "identity" else ""))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (normalised units)")
    ax.set_title("Spektron translator pretraining (synthetic episodes)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


