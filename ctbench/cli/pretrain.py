"""`ctbench pretrain --method M ...`: self-supervised pretraining of a foundation-model method.

Generic: the method class comes from the plugin registry and must define
``pretrain(corpus, config)``; ctbench only gathers the options. Distributed training:
``torchrun --nproc_per_node=K -m ctbench pretrain ...`` (the method reads WORLD_SIZE / RANK).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from ctbench.cli.common import fail, friendly_errors, parse_params, results_dir_default, set_data_dir


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


def method_class(name: str) -> type:
    """The registered method class called ``name`` (UnknownName with a 'did you mean' otherwise)."""
    from ctbench.plugins import get_method

    return get_method(name).cls


def _nested(params: dict[str, Any]) -> dict[str, Any]:
    """{'weights.ot': 0} -> {'weights': {'ot': 0}}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def pretrain(
    method: str = typer.Option(..., "--method", "-m", help="Registered method that supports pretraining (e.g. spektron)."),
    corpus: str = typer.Option("rruff,fermentation,synthetic", "--corpus", "-c",
                               help="Comma-separated corpus sources, e.g. rruff,fermentation,synthetic or files:/my/folder?unit=nm."),
    size: str = typer.Option("small", "--size", help="Model size (spektron: tiny, small, base)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (under torchrun each process takes its LOCAL_RANK GPU)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps in all."),
    batch_size: int = typer.Option(32, "--batch-size", help="Spectra per step per process."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, loss log, final weights and manifest."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset mirror folder (else $CTBENCH_DATA, then the user cache, then a download where the file has an address)."),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Results folder holding the MLflow store (default: results)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to MLflow."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data stream, masks and initialisation."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Write a checkpoint every K steps."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads per process (0: torch's default)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p",
                                              help="Extra pretraining option key=value (repeatable), e.g. lr=5e-4 or weights.ot=0."),
) -> None:
    """Pretrain a foundation-model method on a corpus and write its weights and manifest."""
    if precision not in ("fp32", "bf16"):
        fail(f"--precision takes fp32 or bf16, got {precision!r}")
    if steps < 1 or batch_size < 2:
        fail("--steps must be >= 1 and --batch-size >= 2")
    config: dict[str, Any] = {
        "size": size, "steps": steps, "batch_size": batch_size, "device": device, "precision": precision, "seed": seed,
        "checkpoint_every": checkpoint_every, "num_threads": threads, "out": str(out), "resume": resume,
        "data_dir": set_data_dir(data_dir), "results_dir": str(results_dir or results_dir_default()),
        "mlflow": not no_mlflow, "progress": True,
        "command": " ".join(shlex.quote(a) for a in [
            "ctbench", "pretrain", "--method", method, "--corpus", corpus, "--size", size, "--device", device,
            "--precision", precision, "--steps", str(steps), "--batch-size", str(batch_size), "--seed", str(seed),
            "--out", str(out)] + [a for p in (param or []) for a in ("--param", p)]),
    }
    config.update(_nested(parse_params(param)))
    with friendly_errors():
        cls = method_class(method)
        if not cls.has_pretrain():
            fail(f"method {method!r} does not support pretraining (it defines no pretrain(corpus, config))")
        try:
            summary = cls.pretrain(corpus, config)
        except (ValueError, FileExistsError, FileNotFoundError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if int(os.environ.get("RANK", "0")) == 0 and isinstance(summary, dict):
        for key in ("weights", "weights_sha256", "manifest", "checkpoint", "parameters", "elapsed_s"):
            if key in summary:
                value = summary[key]
                typer.echo(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
        losses = summary.get("final_losses") or {}
        if "total" in losses:
            typer.echo(f"final loss: {losses['total']:.4f}")
