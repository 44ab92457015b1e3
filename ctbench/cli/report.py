"""`ctbench report`: an HTML page and a Markdown summary of the result store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctbench.cli.common import fail, friendly_errors, results_dir_default, set_data_dir, split_list, stderr_console


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    results_dir: Path = typer.Option(results_dir_default(), "--results-dir", help="Result store folder."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output folder (index.html, summary.md, figures/)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task(s) or suite(s), comma-separated (default: all in the store but synthetic ones)."),
    metric: str = typer.Option("rel_rmsep", "--metric", help="rel_rmsep (RMSEP / full recalibration's, the headline), rmsep, r2, rpd, bias, sep or gap_closed: for the curves and the significance ranking."),
    shots_for_heatmap: int = typer.Option(10, "--shots-for-heatmap", help="N of the gap-closed heatmap (the closest N a task has)."),
    band: str = typer.Option("ci", "--band", help="Band around the curves: ci (95 % bootstrap interval of the relative RMSEP; ±1 sd for other metrics), sd (±1 sd) or minmax over repetitions."),
    blocks: str = typer.Option("tasks", "--blocks", help="Blocks of the Friedman / Nemenyi test at each N: tasks (tasks of one dataset share samples: optimistic) or datasets (one block per dataset)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset mirror folder, to refit spectrum-correcting methods (else $CTBENCH_DATA, cache)."),
    no_spectra: bool = typer.Option(False, "--no-spectra", help="Skip refitting methods for the before/after spectra figure."),
    task_version: Optional[str] = typer.Option(None, "--task-version", help="Only records of this task version."),
    method_version: Optional[str] = typer.Option(None, "--method-version", help="Only records of this method version."),
    include_synthetic: bool = typer.Option(False, "--include-synthetic", help="Keep synthetic tasks (made-up demo data, e.g. synthetic_a_b) in the leaderboards, curves and significance tests; without it they are left out (with a note) unless named with --task."),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="Also save a PNG of the whole page (headless Chromium on PATH: chromium, chromium-browser or google-chrome), its height measured from the page."),
    width: int = typer.Option(1400, "--screenshot-width", help="Window width of --screenshot in pixels."),
) -> None:
    """Write OUT/index.html (self-contained), OUT/summary.md and OUT/figures/*.png."""
    from ctbench.cli.leaderboard import _expand
    from ctbench.report import ReportError, build_report

    if band not in ("ci", "sd", "minmax"):
        fail(f"--band must be ci, sd or minmax, got {band!r}")
    if blocks not in ("tasks", "datasets"):
        fail(f"--blocks must be tasks or datasets, got {blocks!r}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder")
    browser = None
    if screenshot is not None:
        from ctbench.report.screenshot import find_chromium

        if width < 200:
            fail("--screenshot-width must be at least 200 pixels")
        browser = find_chromium()
        if browser is None:
            fail("--screenshot needs headless Chromium on PATH (chromium, chromium-browser or google-chrome); "
                 "install it (Debian: apt-get install chromium) or see docs/report.md")
    from ctbench.progress import stage_printer

    # without a terminal: a line per stage (the report printed nothing while working); on one: a status line
    say = stage_printer("report", stderr_console())
    with friendly_errors():
        data = set_data_dir(data_dir)
        tasks = _expand(split_list(task)) if task else None
        try:
            rep = build_report(results_dir, out, tasks=tasks, metric=metric, shots_for_heatmap=shots_for_heatmap,
                               data_dir=data, band=band, task_version=task_version, method_version=method_version,
                               spectra=not no_spectra, blocks=blocks, include_synthetic=include_synthetic, say=say)
        except ReportError as exc:
            say(None)  # the status line stops before the error line is printed
            fail(str(exc))
        finally:
            say(None)
    typer.echo(f"wrote {out / 'index.html'}, {out / 'summary.md'} and {len(rep.figures())} figure(s) under "
               f"{out / 'figures'}", err=True)
    for note in rep.notes:
        typer.echo(f"note: {note}", err=True)
    if screenshot is not None:
        from ctbench.report.screenshot import ScreenshotError, take_screenshot

        say(f"screenshot of the whole page with {browser}")
        try:
            height = take_screenshot(browser, out / "index.html", screenshot, width=width)
        except ScreenshotError as exc:
            fail(str(exc), code=1)
        finally:
            say(None)
        typer.echo(f"wrote {screenshot} ({width} x {height} pixels: the whole page)", err=True)
