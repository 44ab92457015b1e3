"""`ctbench leaderboard`: rank methods from the local store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctbench.cli.common import fail, friendly_errors, int_list, record_warnings, results_dir_default, split_list


def register(app: typer.Typer) -> None:
    app.command("leaderboard")(leaderboard)


def leaderboard(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task(s) or suite(s), comma-separated (default: all in the store but synthetic ones)."),
    shots: Optional[str] = typer.Option(None, "--shots", "-n", help="Shot counts, comma-separated."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method name(s), comma-separated."),
    metric: str = typer.Option("rel_rmsep", "--metric", help="rel_rmsep (RMSEP / full recalibration's), rmsep, r2, rpd, bias, sep or gap_closed (per property)."),
    per_property: bool = typer.Option(False, "--per-property", help="One row per property instead of their mean."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, md, csv or json."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Table: every column (raw metric mean ± sd, R2, gap closed), even past the terminal's width; by default the columns that do not fit are left out."),
    include_synthetic: bool = typer.Option(False, "--include-synthetic", help="Also rank tasks on synthetic data (left out unless named with --task)."),
    results_dir: Path = typer.Option(results_dir_default(), "--results-dir", help="Result store folder."),
    task_version: Optional[str] = typer.Option(None, "--task-version", help="Only records of this task version."),
    method_version: Optional[str] = typer.Option(None, "--method-version", help="Only records of this method version."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file instead of the terminal."),
) -> None:
    """Relative RMSEP with 95 % intervals and tie groups per (task, N), reference rows included.

    Tasks on synthetic data are left out unless named with --task or asked with --include-synthetic. Rows with fewer repetitions than the others of their task (a run still going) are marked partial. The table leaves out the columns that do not fit the terminal (--wide shows them all); numbers are never cut."""
    from ctbench.leaderboard import (build_leaderboard, format_rows, missing_full_recalibration, mixed_code,
                                     only_synthetic_message, partial_cells, rich_table, terminal_layout,
                                     without_synthetic)
    from ctbench.store import Store

    if fmt not in ("table", "md", "csv", "json"):
        fail(f"--format must be table, md, csv or json, got {fmt!r}")
    with friendly_errors():
        tasks = _expand(split_list(task)) if task else None
        with record_warnings():  # a corrupt record file: one warning line naming it
            records = list(Store(results_dir).iter_records())
        if not records:
            fail(f"no records in {results_dir}/runs; run `ctbench run` first")
        if tasks is None and not include_synthetic:
            records, synthetic = without_synthetic(records)
            if synthetic and not records:
                fail(only_synthetic_message(synthetic))
            if synthetic:
                typer.echo(f"note: {len(synthetic)} synthetic task{'s' if len(synthetic) > 1 else ''} left out "
                           f"({', '.join(synthetic)}); add --include-synthetic to rank {'them' if len(synthetic) > 1 else 'it'}",
                           err=True)
        with record_warnings():
            rows = build_leaderboard(records, metric=metric, tasks=tasks, shots=int_list(shots, "--shots"),
                                     methods=split_list(method) or None, per_property=per_property,
                                     task_version=task_version, method_version=method_version)
    if not rows:
        fail("no records match the filters")
    for note in mixed_code(records):
        typer.echo(f"warning: {note}", err=True)
    for t in missing_full_recalibration(rows):
        typer.echo(f"warning: task {t!r} has no full_recalibration records: no relative RMSEP, intervals or tie groups "
                   f"(run `ctbench run -m full_recalibration -t {t}` with the same --reps)", err=True)
    partial = partial_cells(rows)
    if partial:
        n_cells = len({(r["task"], r["n_shots"], r["method"]) for r in rows})
        typer.echo(f"warning: {len(partial)} of {n_cells} cells (task, N, method) are partial: fewer repetitions than "
                   f"the most of their task (a run still going?); marked 'partial', their intervals and groups are "
                   f"provisional", err=True)
    if fmt == "table" and out is None:
        from rich.console import Console

        console = Console()
        columns, needed = terminal_layout(rows, wide=wide, width=console.width)
        if needed > console.width:  # never cut a number: wider lines rather than lost digits
            console = Console(width=needed)
        console.print(rich_table(rows, width=console.width, records=records, columns=columns))
        return
    text = format_rows(rows, "md" if fmt == "table" else fmt, records=records)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)
    else:
        typer.echo(text)


def _expand(names: list[str]) -> list[str]:
    """Suite names expand to their tasks; unknown names are kept as given (records may hold them)."""
    from ctbench.cards import SuiteCard, load_card

    out: list[str] = []
    for n in names:
        try:
            card = load_card(n)
        except Exception:
            out.append(n)
            continue
        if isinstance(card, SuiteCard):
            out += _expand(list(card.tasks))
        else:
            out.append(card.name)
    return out
