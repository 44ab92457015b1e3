"""`ctbench run`: run methods over tasks, N-shot splits and repetitions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ctbench.cli.common import (
    fail,
    friendly_errors,
    int_list,
    parse_params,
    results_dir_default,
    set_data_dir,
    split_list,
    stderr_console,
)


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name(s), comma-separated."),
    task: str = typer.Option("demo", "--task", "-t", help="Task(s) or suite(s), comma-separated, or a path to a .yaml card."),
    shots: Optional[str] = typer.Option(None, "--shots", "-n", help="Shot counts, e.g. 5,10,20 (default: the card's)."),
    reps: int = typer.Option(10, "--reps", "-r", help="Repetitions (different standards) per shot count."),
    seed: int = typer.Option(0, "--seed", help="Master seed of the standards and of the methods."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Parallel worker processes."),
    results_dir: Path = typer.Option(results_dir_default(), "--results-dir", help="Result store folder."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset mirror folder (else $CTBENCH_DATA, cache, download)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not copy records to MLflow."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Method parameter key=value (repeatable): a YAML scalar (3, 1e-3, true, null, text) or a flat list, converted to the type of the method's default; random_state comes from --seed."),
    params: Optional[str] = typer.Option(None, "--params", help="'tuned' to use parameters saved by `ctbench tune`."),
    force: bool = typer.Option(False, "--force", help="Redo runs the store already holds."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds each method call (fit, each transfer, each predict) may take; past it the record fails and the sweep goes on."),
    executor: str = typer.Option("local", "--executor", help="Where packages run: 'local' (--jobs processes here) or 'dask' (a Dask cluster; see docs/cluster.md)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address tcp://HOST:PORT (or scheduler file) for --executor dask; without it a local cluster of --jobs workers."),
) -> None:
    """Run methods on tasks and store one record per (method, task, N, rep)."""
    from ctbench.runner import MethodSpec, execute

    console = stderr_console()
    with friendly_errors():
        methods = split_list(method)
        if not methods:
            fail("--method needs at least one method name")
        user_params = parse_params(param)
        if user_params and len(methods) > 1:
            fail("--param applies to one method at a time; run the methods separately")
        if params not in (None, "tuned", "default"):
            fail(f"--params takes 'tuned' or 'default', got {params!r}")
        if jobs < 1:
            fail("--jobs must be at least 1")
        if timeout is not None and not timeout > 0:
            fail("--timeout must be a positive number of seconds")
        if executor not in ("local", "dask"):
            fail(f"--executor takes 'local' or 'dask', got {executor!r}")
        if scheduler is not None and executor != "dask":
            fail("--scheduler needs --executor dask")
        if executor == "dask":
            from ctbench.dask_executor import dask_missing

            if dask_missing():
                fail(dask_missing())
        data = set_data_dir(data_dir)
        from ctbench.store import Store

        Store(results_dir).check_writable()  # before loading data or computing anything
        shot_list = int_list(shots, "--shots")
        tasks = split_list(task)
        if params == "tuned":
            from ctbench.tuning import tuned_specs

            specs = tuned_specs(methods, tasks, shot_list, results_dir, user_params, data)
        else:
            specs = [MethodSpec(m, dict(user_params), "cli" if user_params else "default") for m in methods]
        t_start = time.perf_counter()
        from ctbench.cli.common import record_warnings

        with record_warnings():  # a corrupt record file: one warning line, and its run is done again
            plan = _plan(specs, tasks, shot_list, reps, seed, results_dir, data, force)
    for why in plan.skipped:
        console.print(f"[yellow]skipped:[/] {why}")
    console.print(
        f"{plan.n_total} runs in the grid: {plan.n_done} already in {results_dir}, {plan.n_todo} to do"
        + (f" in {jobs} processes" if jobs > 1 and plan.n_todo else ""), soft_wrap=True,
    )
    sink = start_mlflow(plan, results_dir, console) if not no_mlflow and plan.n_total else None
    statuses: dict[str, int] = {"ok": 0, "failed": 0}
    failures: list[str] = []

    from ctbench.progress import Progress

    # a rich bar on a terminal; plain lines every CTBENCH_PROGRESS_SECONDS otherwise
    with Progress("run", plan.n_todo, "records", bar_label="running", console=console,
                  enabled=plan.n_todo > 0) as progress:

        def on_record(status: str, path: str) -> None:
            import json

            statuses[status] = statuses.get(status, 0) + 1
            rec = json.loads(Path(path).read_text())
            ident = rec["identity"]
            if status != "ok":
                err = rec.get("error") or {}
                failures.append(f"{ident['method']} on {ident['task']} N={ident['n_shots']} rep={ident['rep']}: {err.get('type')}: {err.get('message', '').splitlines()[0] if err.get('message') else ''}")
            if sink is not None:
                sink.submit(rec, path)
            progress.advance(failed=statuses.get("failed", 0),
                             description=f"{ident['method']} · {ident['task']} · N={ident['n_shots']}")

        from ctbench.store import StoreError

        try:
            if executor == "dask":
                from ctbench.dask_executor import ClusterError, execute_dask

                try:
                    execute_dask(plan, on_record, scheduler=scheduler, workers=jobs, timeout=timeout, data_dir=data)
                except ClusterError as exc:
                    progress.stop()
                    fail(str(exc))
            else:
                execute(plan, jobs, on_record, timeout=timeout, data_dir=data)
        except KeyboardInterrupt:
            progress.stop()
            if sink is not None:
                sink.finish(timeout=5.0)  # what the writer has not copied, the next run does
            done = statuses.get("ok", 0) + statuses.get("failed", 0)
            console.print(
                f"[yellow]interrupted:[/] workers stopped; {done} new record(s) kept in {results_dir / 'runs'} "
                f"({plan.n_done} were there before); run the same command again to resume"
            )
            raise typer.Exit(130)
        except StoreError as exc:
            progress.stop()
            if sink is not None:
                sink.finish(timeout=5.0)
            done = statuses.get("ok", 0) + statuses.get("failed", 0)
            fail(f"{exc} ({done} new record(s) were written before it)", code=1)
    if sink is not None:
        mended = finish_mlflow(sink, results_dir, console)
        if mended:
            console.print(f"MLflow: logged {mended} record(s) it was missing")
    elapsed = time.perf_counter() - t_start
    console.print(
        f"done in {elapsed:.1f} s: {statuses.get('ok', 0)} ok, {statuses.get('failed', 0)} failed, "
        f"{plan.n_done} skipped (already done); records in {results_dir / 'runs'}", soft_wrap=True,
    )
    if failures:
        for f in failures[:10]:
            console.print(f"[red]failed:[/] {f}")
        if len(failures) > 10:
            console.print(f"... and {len(failures) - 10} more (see the records' error field)")
        raise typer.Exit(1)


def start_mlflow(plan, results_dir: Path, console):
    """The MLflow sink of a sweep: its quick checks before any compute (one warning when MLflow
    cannot be used), then a writer thread that opens the store and copies records as they come,
    starting with the stored ones that MLflow lacks or holds half-written."""
    from ctbench.mlflow_sink import MlflowSink

    sink = MlflowSink(results_dir, warn=lambda msg: console.print(f"warning: {msg}", markup=False, highlight=False,
                                                                  soft_wrap=True))
    if sink.open():
        sink.start(sorted({u.card.name for u in plan.units}))
        for rec, path in plan.done_records:
            sink.submit(rec, path, stored=True)
    return sink


def finish_mlflow(sink, results_dir: Path, console) -> int:
    """Wait for the MLflow writer (saying so when it is still busy); after a repair of the
    database copy every stored record. Returns the runs written for records stored before."""
    from ctbench.cli.common import record_warnings
    from ctbench.mlflow_sink import item

    waiting = sink.pending()
    if waiting > 100:
        console.print(f"MLflow: copying the last {waiting} record(s)")
    sink.drain()
    if sink.rebuilt and not sink.disabled:  # a fresh database: fill it from every record of the store
        from ctbench.store import Store

        with record_warnings():
            every = [item(r, r["_path"], stored=True) for r in Store(results_dir).iter_records()]
        sink.write(every)
    return sink.finish()


def _group_specs(specs):
    """Specs come as MethodSpec, or (MethodSpec, tasks, shots[, rep_filter]) for tuned parameters
    per task / N / outer split (``rep_filter`` picks the repetitions of that outer split).
    Returns groups of (spec, tasks, shots, rep_filter) sharing tasks, shots and rep_filter."""
    groups: dict[tuple, list] = {}
    for s in specs:
        if isinstance(s, tuple):
            spec, tasks, shots, *rest = s
            rep_filter = rest[0] if rest else None
        else:
            spec, tasks, shots, rep_filter = s, None, None, None
        key = (tuple(tasks) if tasks else None, tuple(shots) if shots is not None else None, rep_filter)
        groups.setdefault(key, []).append(
            (spec, list(tasks) if tasks else None, list(shots) if shots is not None else None, rep_filter)
        )
    return list(groups.values())


def _plan(specs, tasks, shot_list, reps, seed, results_dir, data, force):
    """One plan for every group of specs (see :func:`_group_specs`)."""
    from ctbench.runner import plan_runs

    plan = None
    for spec_group in _group_specs(specs):
        p = plan_runs(
            [s for s, _, _, _ in spec_group],
            spec_group[0][1] or tasks,
            spec_group[0][2] if spec_group[0][2] is not None else shot_list,
            reps,
            seed,
            results_dir,
            data,
            force,
            rep_filter=spec_group[0][3],
        )
        if plan is None:
            plan = p
        else:
            plan.units += p.units
            plan.n_total += p.n_total
            plan.n_done += p.n_done
            plan.skipped = sorted(set(plan.skipped) | set(p.skipped))
            plan.done_records += p.done_records
    return plan
