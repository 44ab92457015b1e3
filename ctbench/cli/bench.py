"""`ctbench bench sweep`: time a whole benchmark sweep (figures printed, nothing asserted)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from ctbench.cli.common import friendly_errors, int_list, set_data_dir, split_list, stderr_console

CLASSICAL_SWEEP = (
    "no_transfer,target_only,full_recalibration,sbc,model_update,ds,pds,cca,dipls,mdipls,gctpls,"
    "sst,coral,epo,top,glsw,pfce_ns,pfce_ss,pfce_fs,jypls,prep_sbc"
)
# what --publish adds by default: the transductive di-PLS (its 5-fold CV for l over the whole
# test set as target domain costs 0.3-4 s per transfer: ~8 of the published sweep's 9 minutes)
PUBLISHED_EXTRA = "dipls_t"


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks that print timings (speed targets live here, not in tests).")
    bench.command("sweep")(sweep)
    bench.command("transfer")(transfer)
    app.add_typer(bench, name="bench")


def sweep(
    method: Optional[str] = typer.Option(
        None, "--method", "-m",
        help=f"Methods, comma-separated (default: {CLASSICAL_SWEEP}; with --publish also {PUBLISHED_EXTRA}).",
    ),
    task: str = typer.Option("all", "--task", "-t", help="Tasks or suites."),
    shots: str = typer.Option("0,5,10,20,30,50", "--shots", "-n", help="Shot counts (impossible ones are skipped)."),
    reps: int = typer.Option(10, "--reps", "-r"),
    seed: int = typer.Option(0, "--seed"),
    jobs: int = typer.Option(2, "--jobs", "-j"),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Store (default: a fresh temporary folder, so everything is computed)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    publish: Optional[Path] = typer.Option(None, "--publish", help="Also write the leaderboard (Markdown + JSON) into this folder."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Copy the records to MLflow as `ctbench run` does (its cost is then in the wall time)."),
) -> None:
    """Run a sweep (without MLflow unless --mlflow) and print its wall time and records per second."""
    from ctbench.runner import MethodSpec, execute

    console = stderr_console()
    if method is None:
        method = CLASSICAL_SWEEP + (f",{PUBLISHED_EXTRA}" if publish is not None else "")
    tmp = None
    if results_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ctbench-bench-")
        results_dir = Path(tmp.name)
    t0 = time.perf_counter()
    with friendly_errors():
        specs = [MethodSpec(m) for m in split_list(method)]
        tasks = split_list(task)
        shot_list = int_list(shots, "--shots")
        plan = _lenient_plan(specs, tasks, shot_list, reps, seed, results_dir, set_data_dir(data_dir))
    t_plan = time.perf_counter() - t0
    console.print(f"{plan.n_todo} runs to do ({plan.n_done} already stored), {len(plan.units)} (method, task) fits, {jobs} processes; {len(plan.skipped)} impossible (task, method, N) combinations skipped")
    counts = {"ok": 0, "failed": 0}
    sink = None
    if mlflow:
        from ctbench.cli.run import start_mlflow

        sink = start_mlflow(plan, results_dir, console)
    from ctbench.progress import Progress

    t1 = time.perf_counter()
    # a rich bar on a terminal; plain lines every CTBENCH_PROGRESS_SECONDS otherwise
    with Progress("sweep", plan.n_todo, "records", console=console, enabled=plan.n_todo > 0) as progress:

        def on_record(status: str, path: str) -> None:
            counts[status] = counts.get(status, 0) + 1
            if sink is not None:
                import json

                sink.submit(json.loads(Path(path).read_text()), path)
            progress.advance(failed=counts.get("failed", 0))

        execute(plan, jobs, on_record)
    t_compute = time.perf_counter() - t1
    if sink is not None:
        from ctbench.cli.run import finish_mlflow
        from ctbench.mlflow_sink import count_runs

        finish_mlflow(sink, results_dir, console)
    t_run = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    from ctbench.cli.common import record_warnings
    from ctbench.store import Store

    phases: dict[str, float] = {}
    fits: dict[tuple, float] = {}
    per_method: dict[str, float] = {}
    with record_warnings():  # a malformed record file is skipped with a warning line naming it
        records = list(Store(results_dir).iter_records())
    for r in records:
        name = r["identity"]["method"]
        for k, v in (r.get("timings") or {}).items():
            if k == "fit_s":
                fits[(name, r["identity"]["task"], (r.get("outer") or {}).get("index", 0))] = v
            elif k != "load_s":
                phases[k] = phases.get(k, 0.0) + v
                per_method[name] = per_method.get(name, 0.0) + v
    for (name, _, _), v in fits.items():
        per_method[name] = per_method.get(name, 0.0) + v
    phases["fit_s (once per method, task and outer split)"] = sum(fits.values())
    n = counts["ok"] + counts["failed"]
    typer.echo(f"records: {n} ({counts['ok']} ok, {counts['failed']} failed)")
    typer.echo(f"wall time: {wall:.1f} s (planning and data loading {t_plan:.1f} s, runs {t_run:.1f} s) on {jobs} process(es)")
    typer.echo(f"throughput: {n / max(t_run, 1e-9):.1f} records/s")
    if sink is not None:
        runs = count_runs(results_dir)
        typer.echo(f"MLflow ({sink.backend or 'off'}): {'?' if runs is None else runs} record runs for "
                   f"{len(records)} records in the store; {t_run - t_compute:.2f} s spent after the last record "
                   f"finishing the copy" + (" (MLflow was switched off: see the warning)" if sink.disabled else ""))
    for k, v in sorted(phases.items()):
        typer.echo(f"  summed {k}: {v:.1f} s")
    typer.echo("  per method (fit + transfer + predict, summed over processes): " + ", ".join(
        f"{m} {v:.1f} s" for m, v in sorted(per_method.items(), key=lambda kv: -kv[1])))
    if publish is not None:
        _publish(publish, records, _regenerate_command(method, task, shots, reps, seed, jobs, publish))
    if tmp is not None:
        tmp.cleanup()


def _regenerate_command(method: str, task: str, shots: str, reps: int, seed: int, jobs: int, publish: Path) -> str:
    """The sweep command with the options that differ from the defaults (so it reads like the docs)."""
    parts = ["ctbench bench sweep", f"--jobs {jobs}"]
    for flag, value, default in (
        ("--method", method, f"{CLASSICAL_SWEEP},{PUBLISHED_EXTRA}"),
        ("--task", task, "all"),
        ("--shots", shots, "0,5,10,20,30,50"),
        ("--reps", str(reps), "10"),
        ("--seed", str(seed), "0"),
    ):
        if value != default:
            parts.append(f"{flag} {value}")
    parts.append(f"--publish {publish}")
    return " ".join(parts)


def _publish(folder: Path, records: list[dict], command: str) -> None:
    """Write the leaderboard of the sweep's records as reference_leaderboard.md and .json."""
    import json

    from ctbench.leaderboard import build_leaderboard, format_rows
    from ctbench.runner import environment

    folder.mkdir(parents=True, exist_ok=True)
    from ctbench.cli.common import record_warnings

    # one order whatever the store's file order: the means are then the same to the last bit
    records = sorted(records, key=lambda r: json.dumps(r.get("identity"), sort_keys=True, default=str))
    with record_warnings():
        rows = build_leaderboard(records, per_property=True)
    ok = sum(1 for r in records if r.get("status") == "ok")
    tasks = sorted({r["identity"]["task"] for r in records})
    versions = sorted({(r["identity"]["method"], str(r["identity"]["method_version"])) for r in records})
    env = environment()
    header = (
        "# ctbench reference leaderboard\n\n"
        f"Regenerate: `CTBENCH_DATA=<data mirror> {command}` (a fresh temporary store: every record is computed).\n\n"
        f"{len(records)} records ({ok} ok) on {len(tasks)} tasks; methods (version): "
        + ", ".join(f"{m} ({v})" for m, v in versions)
        + f". Default parameters; ctbench {env['ctbench']}, numpy {env['numpy']}, scipy {env['scipy']}.\n\n"
        f"Protocol (leaderboard v2): {_outer_splits_text(records)}; a repetition is (outer split, standards draw), "
        "repetition r = (split r mod K, draw r div K), no two with the same standard set. "
        "Per task and N (standards; 0 = zero-shot) and per property: relative RMSEP = RMSEP / RMSEP(full "
        "recalibration) on the same outer split, geometric mean over properties and repetitions, with a 95 % "
        "two-stage paired bootstrap interval (repetitions, then test samples); group 1 = the best method and "
        "every method not significantly worse (paired bootstrap, Holm, alpha 0.05). Raw RMSEP mean ± sd and "
        "R2 per cell; gap closed per property. The methods' known limitations behind outlying rows are "
        "described in their docstrings (plugins/ctbench_classical) and in docs/methods.md.\n\n"
    )
    (folder / "reference_leaderboard.md").write_text(header + format_rows(rows, "md") + "\n\n" + _across_tasks(rows) + "\n")
    (folder / "reference_leaderboard.json").write_text(json.dumps(rows, indent=1, default=lambda o: None) + "\n")
    typer.echo(f"wrote {folder / 'reference_leaderboard.md'} and .json ({len(rows)} rows)")


def _outer_splits_text(records: list[dict]) -> str:
    """Per dataset, its outer splits and test-set sizes as the records saw them, e.g. "corn: 5 grouped
    outer folds (16 test samples each) shared by its 6 tasks"."""
    seen: dict[str, dict] = {}
    for r in records:
        task = r.get("task") if isinstance(r.get("task"), dict) else {}
        ds = str(task.get("dataset") or r["identity"]["task"])
        d = seen.setdefault(ds, {"k": 0, "tasks": set(), "sizes": set()})
        d["k"] = max(d["k"], int((r.get("outer") or {}).get("of") or task.get("outer_splits") or 1))
        d["tasks"].add(r["identity"]["task"])
        if task.get("test_samples") is not None:
            d["sizes"].add(int(task["test_samples"]))
    parts = []
    for ds, d in sorted(seen.items()):
        sizes = sorted(d["sizes"])
        size = "" if not sizes else f" ({sizes[0] if len(sizes) == 1 else f'{sizes[0]}-{sizes[-1]}'} test samples)"
        what = "one fixed test set" if d["k"] == 1 else f"{d['k']} grouped outer folds"
        n = len(d["tasks"])
        parts.append(f"{ds}: {what}{size} shared by its {n} task{'s' if n != 1 else ''}")
    return "; ".join(parts)


def _across_tasks(rows: list[dict]) -> str:
    """The Friedman / Nemenyi analysis at each N (task blocks, reference rows excluded) as Markdown."""
    from ctbench.report.page import _friedman_text
    from ctbench.report.significance import friedman_by_shots

    lines = ["## Across tasks: Friedman + Nemenyi at each N", ""]
    for res in friedman_by_shots(rows, "rel_rmsep"):
        lines.append(f"### N = {res.n_shots}")
        lines += ["", *_friedman_text(res), ""]
        if res.ran:
            lines.append("Average ranks (1 = best): " + ", ".join(f"{m} {r:.2f}" for m, r in res.avg_ranks.items()) + ".")
            groups = res.cliques()
            if groups:
                lines.append("Not significantly different (average ranks within CD): "
                             + "; ".join("{" + ", ".join(g) + "}" for g in groups) + ".")
            lines.append("")
    return "\n".join(lines)


def _lenient_plan(specs: list, tasks: list[str], shots: list[int], reps: int, seed: int, results_dir: Path, data_dir: str | None):
    """The sweep's plan: every (method, task) with the shot counts it can run; impossible ones are skipped.

    (``plan_runs`` refuses an impossible shot count for a task named explicitly, which is
    right for ``ctbench run`` but not for a benchmark over a default shot grid.)
    """
    from ctbench.cards import expand_tasks
    from ctbench.plugins import get_method
    from ctbench.runner import Plan, check_shots, plan_runs
    from ctbench.tasks import build_task

    infos = [(spec, get_method(spec.name).cls) for spec in specs]
    parts, skipped = [], []
    for card, _, _ in expand_tasks(tasks):
        t = build_task(card, data_dir)
        for spec, cls in infos:
            ok = []
            for n in shots:
                why = check_shots(cls, spec.name, t, n)
                if why:
                    skipped.append(why)
                else:
                    ok.append(n)
            if ok:
                parts.append(plan_runs([spec], [card.path or card.name], ok, reps, seed, results_dir, data_dir))
    return Plan(
        units=[u for p in parts for u in p.units],
        n_total=sum(p.n_total for p in parts),
        n_done=sum(p.n_done for p in parts),
        skipped=sorted(set(skipped) | {w for p in parts for w in p.skipped}),
        done_records=[r for p in parts for r in p.done_records],
    )


def transfer(
    method: str = typer.Option(..., "--method", "-m", help="Method name."),
    task: str = typer.Option("corn_m5_mp6", "--task", "-t"),
    shots: int = typer.Option(30, "--shots", "-n"),
    repeat: int = typer.Option(5, "--repeat", help="Timed repetitions of transfer + predict (median printed)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Method parameter key=value."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
) -> None:
    """Time one method's fit, transfer and predict on a task (median over repeats)."""
    import copy
    import statistics

    from ctbench.cards import load_card
    from ctbench.cli.common import parse_params
    from ctbench.plugins import get_method
    from ctbench.runner import MethodSpec, _one_thread, resolved_params, source_for, standards_for, target_spectra
    from ctbench.splits import make_split
    from ctbench.tasks import build_task

    with friendly_errors(), _one_thread():
        cls = get_method(method).cls
        params = resolved_params(cls, MethodSpec(method, parse_params(param)))
        t = build_task(load_card(task), set_data_dir(data_dir))
        split = make_split(t, shots, 0)
        t0 = time.perf_counter()
        fitted = cls(**params).fit(source_for(t, cls))
        fit_s = time.perf_counter() - t0
        X_test = target_spectra(t, cls, t.test_rows)
        unl = X_test if cls.tags.transductive else None
        tr, pr = [], []
        for _ in range(repeat):
            m = copy.deepcopy(fitted)
            t0 = time.perf_counter()
            m.transfer(standards_for(t, split.standard_rows, cls), unl)
            tr.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            m.predict(X_test)
            pr.append(time.perf_counter() - t0)
    typer.echo(f"{method} on {task} ({t.X_source.shape[1]} channels), N={shots}, one thread (BLAS, OpenMP, torch):")
    typer.echo(f"  fit      {fit_s * 1e3:9.1f} ms (once per task)")
    typer.echo(f"  transfer {statistics.median(tr) * 1e3:9.1f} ms (median of {repeat})")
    typer.echo(f"  predict  {statistics.median(pr) * 1e3:9.1f} ms for {len(X_test)} spectra")
