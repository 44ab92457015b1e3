"""`ctbench data`: list the registered datasets, verify their files (location + sha256)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def _loaders() -> dict[str, Any]:
    """Registered dataset loaders by name: from the plugin manager when it exists, else built-ins."""
    import importlib.util

    if importlib.util.find_spec("ctbench.plugins") is not None:
        from ctbench.plugins import load_loaders

        return dict(load_loaders())
    from ctbench.data.builtin import builtin_loaders

    return {loader.name: loader for loader in builtin_loaders()}


def _pick(loaders: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    if dataset is None:
        return loaders
    if dataset not in loaders:
        from ctbench.names import did_you_mean

        typer.echo(
            f"error: unknown dataset {dataset!r}{did_you_mean(dataset, loaders)}; known: {', '.join(loaders)}",
            err=True,
        )
        raise typer.Exit(2)
    return {dataset: loaders[dataset]}


def list_datasets() -> None:
    """List the registered datasets and their files."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="datasets")
    table.add_column("name", style="bold")
    table.add_column("files", justify="right")
    table.add_column("description", overflow="fold")
    for name, loader in sorted(_loaders().items()):
        table.add_row(name, str(len(loader.files)) if loader.files else "-", loader.description)
    Console().print(table)


def verify_files(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="mirror folder laid out like shared/datasets (else CTBENCH_DATA, then the cache)"
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="only this dataset"),
) -> None:
    """Where each registered data file is found and whether its sha256 matches (nothing is downloaded)."""
    from rich.console import Console
    from rich.table import Table

    from ctbench.data.mirror import POINT_AT_MIRROR, locate, search_places, sha256_file
    from ctbench.data.spectra import DataError

    chosen = _pick(_loaders(), dataset)
    table = Table(title="data files")
    table.add_column("dataset", style="bold")
    table.add_column("file", overflow="fold")
    table.add_column("found in")
    table.add_column("path", overflow="fold")
    table.add_column("sha256", overflow="fold")
    problems = 0
    missing = 0
    checked = 0
    for name, loader in sorted(chosen.items()):
        for file in loader.files:
            checked += 1
            where = locate(file, data_dir)
            if where.path is None:
                missing += 1
                status = "[red]MISSING[/red]"
                table.add_row(name, file.relpath, "[red]nowhere[/red]", "-", status)
                continue
            try:
                actual = sha256_file(where.path)
            except DataError as exc:
                problems += 1
                table.add_row(name, file.relpath, where.label, str(where.path), f"[red]UNREADABLE[/red] {exc}")
                continue
            if actual == file.sha256.lower():
                status = "[green]ok[/green]"
            else:
                problems += 1
                status = f"[red]MISMATCH[/red] expected {file.sha256[:12]}... got {actual[:12]}..."
            table.add_row(name, file.relpath, where.label, str(where.path), status)
    console = Console()
    if checked == 0:
        console.print("no registered data files" + (f" for dataset {dataset!r}" if dataset else ""))
        return
    console.print(table)
    if missing:
        searched = ", ".join(p.describe() for p in search_places(data_dir))
        console.print(f"{missing} file(s) missing (looked in {searched}); {POINT_AT_MIRROR}", soft_wrap=True)
    if problems:
        console.print(f"{problems} file(s) with a wrong checksum: replace them before any run", soft_wrap=True)
    if missing or problems:
        raise typer.Exit(1)
    console.print(f"all {checked} file(s) verified")


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (list, verify) to the app."""
    data_app = typer.Typer(help="Datasets: list them, verify their files.", no_args_is_help=True)
    data_app.command("list")(list_datasets)
    data_app.command("verify")(verify_files)
    app.add_typer(data_app, name="data")
