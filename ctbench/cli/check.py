"""`ctbench check METHOD`: run the conformance kit (ctbench.testing) on a registered method, or
on a class that is not installed yet (``package.module:Class``)."""

from __future__ import annotations

from typing import Optional

import typer

from ctbench.cli.common import fail, friendly_errors, parse_params, split_list, stderr_console


def register(app: typer.Typer) -> None:
    app.command("check")(check)


def check(
    method: str = typer.Argument(
        ..., help="Registered method name (see `ctbench methods`), or package.module:Class for a class that is "
                  "not installed (imported from the current directory or PYTHONPATH).",
    ),
    quick: bool = typer.Option(False, "--quick", "-q", help="Fit once: no determinism check, search space not fitted."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Method parameter key=value for the kit's fits (repeatable), e.g. fewer epochs."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only these checks (comma-separated names)."),
    timeout: float = typer.Option(
        120.0, "--timeout", metavar="SECONDS",
        help="Time budget of each check: a check that runs longer fails (one line naming it) and the others go on. 0: no limit.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """Check that a method keeps the method contract and behaves on the synthetic task."""
    from ctbench.testing import MethodImportError, check_method, resolve_method

    if fmt not in ("table", "json"):
        fail(f"--format takes 'table' or 'json', got {fmt!r}")
    if timeout < 0:
        fail(f"--timeout takes a number of seconds (0: no limit), got {timeout:g}")
    params = parse_params(param)
    selected = split_list(only) if only is not None else None
    console = stderr_console()
    with friendly_errors():
        try:
            cls, origin = resolve_method(method)
        except MethodImportError as exc:
            fail(str(exc))
        label = getattr(cls, "name", "") or cls.__name__
        try:
            names = cls._param_names()
        except Exception:  # a malformed class: declares_contract reports it
            names = list(params)
        unknown = sorted(set(params) - set(names))
        if unknown:
            from ctbench.names import did_you_mean

            fail(f"method {label!r} has no parameter {unknown[0]!r}{did_you_mean(unknown[0], names)}")
        try:
            with console.status(f"checking {label}...", spinner="dots") as status:
                report = check_method(
                    cls,
                    quick=quick,
                    params=params,
                    checks=selected,
                    on_result=lambda r: status.update(f"checking {label}: {r.name} {r.status}"),
                    timeout=timeout or None,
                )
        except ValueError as exc:  # an unknown check name
            fail(str(exc))
    if fmt == "json":
        import json

        typer.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        _print_table(report, origin)
    if not report.ok:
        raise typer.Exit(1)


def _print_table(report, origin: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    style = {"passed": "[green]passed[/]", "failed": "[red]failed[/]", "skipped": "[yellow]skipped[/]"}
    table = Table(title=f"conformance of {report.method!r} ({origin})" + (" — quick" if report.quick else ""))
    table.add_column("check", no_wrap=True)
    table.add_column("group")
    table.add_column("status", no_wrap=True)
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for r in report.results:
        table.add_row(r.name, r.group, style[r.status], f"{r.seconds:.1f}", escape(r.detail))
    console = Console()
    console.print(table)
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{report.summary()}[/]")
