"""`ctbench tune`: Optuna search over a method's search_space on validation splits of the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctbench.cli.common import fail, friendly_errors, results_dir_default, set_data_dir, stderr_console


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)


def tune(
    method: str = typer.Option(..., "--method", "-m", help="Method to tune (it must define search_space(trial))."),
    task: str = typer.Option(..., "--task", "-t", help="One task name, or a path to a .yaml card."),
    shots: int = typer.Option(..., "--shots", "-n", help="Number of transfer standards N."),
    trials: int = typer.Option(50, "--trials", help="Total trials the study should hold (complete + pruned); a rerun resumes."),
    reps: int = typer.Option(5, "--reps", "-r", help="Validation splits carved from the calibration pool (objective = their mean)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation splits, the sampler and the method."),
    metric: str = typer.Option("rmsep", "--metric", help="Validation metric: rmsep, sep (minimised), r2, rpd (maximised)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL shared by workers (default: sqlite file <results>/optuna.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: ctbench/{method}/{task}/N{n})."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes on the study."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Start no new trial after this many seconds."),
    pruner: str = typer.Option("median", "--pruner", help="'median' (MedianPruner, for iterative methods) or 'none'."),
    results_dir: Path = typer.Option(results_dir_default(), "--results-dir", help="Result folder (study, tuned/ parameters, MLflow)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset mirror folder (else $CTBENCH_DATA, cache, download)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log trials to MLflow."),
) -> None:
    """Tune a method's hyper-parameters on validation splits of the calibration pool (never the test set)."""
    from ctbench.tuning import TuneConfig, TuningError
    from ctbench.tuning import tune as run_tune

    console = stderr_console()
    with friendly_errors():
        data = set_data_dir(data_dir)
        cfg = TuneConfig(
            method=method, task=task, n_shots=shots, trials=trials, reps=reps, seed=seed, metric=metric,
            results_dir=str(results_dir), data_dir=data, storage=storage, study=study, timeout=timeout, pruner=pruner,
        )
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]tuning[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=console, transient=False,
        )
        try:
            outcome = run_tune(
                cfg, jobs=jobs, mlflow=not no_mlflow,
                say=lambda msg: console.print(msg, highlight=False, soft_wrap=True),
                warn=lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True),
                progress=progress,  # started by tune() only when there are trials to run
            )
        except TuningError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print("interrupted: the study keeps its finished trials; rerun the same command to resume")
            raise typer.Exit(130)
    c = outcome.counts
    s = outcome.summary
    console.print(
        f"study {outcome.study!r}: {c['counted']} trials ({c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned; "
        f"{c.get('fail', 0)} failed, not counted) in {outcome.elapsed_s:.1f} s",
        highlight=False, soft_wrap=True,
    )
    params = ", ".join(f"{k}={v}" for k, v in sorted(s["params"].items())) or "(none)"
    console.print(
        f"best validation {s['metric']} {s['best_value']:.6g} (trial {s['best_trial']}): {params}", highlight=False, soft_wrap=True
    )
    console.print(
        f"saved to {outcome.path}; use them with `ctbench run --method {method} --task {s['task']} --shots {shots} --params tuned`",
        highlight=False, soft_wrap=True,
    )
