"""`ctbench tune`: Optuna search over a method's search_space on validation splits of each outer split's pool."""

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
    outer: str = typer.Option(
        "all", "--outer",
        help="Outer split(s) to tune on: 'all' (each in turn, one study each) or one index; "
             "split k's parameters serve only split k's repetitions.",
    ),
    trials: int = typer.Option(50, "--trials", help="Total trials each study should hold (complete + pruned); a rerun resumes."),
    reps: int = typer.Option(5, "--reps", "-r", help="Validation splits carved from the outer split's calibration pool (objective = their mean)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation splits, the sampler and the method."),
    metric: str = typer.Option("rmsep", "--metric", help="Validation metric: rmsep, sep (minimised), r2, rpd (maximised)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL shared by workers (default: sqlite file <results>/optuna.db)."),
    study: Optional[str] = typer.Option(
        None, "--study",
        help="Study name (default: ctbench/{method}/{task}/N{n}); '/outer{k}' is appended on tasks with several outer splits.",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes on the study."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", metavar="SECONDS",
        help="Study budget, per outer split: start no new trial after this many seconds (a running trial finishes). "
             "To stop a slow or hung trial, use --trial-timeout.",
    ),
    trial_timeout: Optional[float] = typer.Option(
        None, "--trial-timeout", metavar="SECONDS",
        help="Per-trial limit: a trial whose method calls (fit, transfer, predict on its validation splits) run longer "
             "is stopped and recorded as a failed trial with the reason; the study goes on.",
    ),
    pruner: str = typer.Option("median", "--pruner", help="'median' (MedianPruner, for iterative methods) or 'none'."),
    results_dir: Path = typer.Option(results_dir_default(), "--results-dir", help="Result folder (study, tuned/ parameters, MLflow)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset mirror folder (else $CTBENCH_DATA, cache, download)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log trials to MLflow."),
) -> None:
    """Tune a method's hyper-parameters on validation splits of each outer split's calibration pool (never a test set)."""
    from ctbench.tuning import TuneConfig, TuningError, n_outer_splits
    from ctbench.tuning import tune as run_tune

    console = stderr_console()
    if outer.strip().lower() == "all":
        which: int | None = None
    else:
        try:
            which = int(outer)
        except ValueError:
            fail(f"--outer takes 'all' or an outer split index (0, 1, ...), got {outer!r}")

    def say(msg: str) -> None:
        console.print(msg, highlight=False, soft_wrap=True)

    saved: list[Path] = []
    last = None
    with friendly_errors():
        data = set_data_dir(data_dir)
        from ctbench.store import Store

        Store(results_dir).check_writable()  # the study's storage and tuned files live there
        from ctbench.progress import Progress

        try:
            n_outer = n_outer_splits(task, data) if which is None else None
            splits = list(range(n_outer)) if which is None else [which]
            for k in splits:
                cfg = TuneConfig(
                    method=method, task=task, n_shots=shots, trials=trials, reps=reps, seed=seed, metric=metric,
                    results_dir=str(results_dir), data_dir=data, storage=storage, study=study, timeout=timeout,
                    trial_timeout=trial_timeout, pruner=pruner, outer=k,
                )
                label = "tuning" if len(splits) == 1 else f"tuning outer split {k}"
                # a rich bar on a terminal; plain lines every CTBENCH_PROGRESS_SECONDS otherwise
                progress = Progress("tune" if len(splits) == 1 else f"tune outer split {k}", unit="trials",
                                    bar_label=label, console=console)
                outcome = run_tune(
                    cfg, jobs=jobs, mlflow=not no_mlflow, say=say,
                    warn=lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True),
                    progress=progress,  # started by tune() only when there are trials to run
                )
                _report(say, outcome)
                saved.append(outcome.path)
                last = outcome
        except TuningError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print("interrupted: the study keeps its finished trials" + (" (as do those of the outer splits before it)" if saved else "")
                          + "; rerun the same command to resume")
            raise typer.Exit(130)
    use = f"`ctbench run --method {method} --task {last.summary['task']} --shots {shots} --params tuned`"
    if len(saved) == 1:
        say(f"saved to {saved[0]}; use them with {use}" + (
            f" (they serve the repetitions of outer split {last.summary['outer']} of {last.summary['n_outer']})"
            if last.summary["n_outer"] > 1 else ""))
    else:
        say(f"saved {len(saved)} files, one per outer split: {', '.join(str(p) for p in saved)}; use them with {use} "
            f"(outer split k's parameters serve its repetitions)")


def _report(say, outcome) -> None:
    """The final lines of one study: its trial counts and its best parameters."""
    c = outcome.counts
    s = outcome.summary
    say(
        f"study {outcome.study!r}: {c['counted']} trials ({c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned; "
        f"{c.get('fail', 0)} failed, not counted) in {outcome.elapsed_s:.1f} s"
    )
    params = ", ".join(f"{k}={v}" for k, v in sorted(s["params"].items())) or "(none)"
    say(f"best validation {s['metric']} {s['best_value']:.6g} (trial {s['best_trial']}): {params}")
