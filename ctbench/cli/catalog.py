"""`ctbench methods`, `ctbench tasks [show T]`, `ctbench plugins`: what is installed."""

from __future__ import annotations

from typing import Optional

import typer

from ctbench.cli.common import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)
    app.command("plugins")(plugins)
    tasks_app = typer.Typer(help="List task cards, or show one.", invoke_without_command=True, no_args_is_help=False)
    tasks_app.callback(invoke_without_command=True)(tasks_list)
    tasks_app.command("show")(tasks_show)
    app.add_typer(tasks_app, name="tasks")


def _method_row(name: str, info) -> dict:
    cls = info.cls
    t = cls.tags
    flags = [f for f, on in (("zero-shot", t.zero_shot), ("transductive", t.transductive),
                             ("reference", t.reference), ("corrects spectra", t.corrects_spectra),
                             ("tunable", cls.has_search_space()), ("pretrains", cls.has_pretrain())) if on]
    doc = cls.description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
    return {"name": name, "version": cls.version, "plugin": info.plugin,
            "qualified": getattr(info, "qualified", "") or f"{info.plugin}:{cls.name}",
            "method": cls.name, "class": f"{cls.__module__}.{cls.__qualname__}",
            "distribution": getattr(info, "distribution", ""),
            "distribution_version": getattr(info, "distribution_version", ""),
            "builtin": bool(getattr(info, "builtin", False)),
            "min_shots": t.min_shots, "flags": flags, "description": doc}


def _echo_problems(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line, err=True)


def methods(fmt: str = typer.Option("table", "--format", "-f", help="table or json.")) -> None:
    """Registered transfer methods (from every installed plugin); plugin problems on stderr.

    A name registered by two plugins is never resolved silently: a built-in keeps the plain
    name and the other is listed as PLUGIN:METHOD; two third parties both get PLUGIN:METHOD.
    PLUGIN:METHOD is accepted everywhere a method name is. $CTBENCH_DISABLE_PLUGINS=a,b
    switches plugins off."""
    from ctbench.plugins import load_all, load_methods, problem_lines

    infos = load_methods()
    load_all()
    rows, bad = [], []
    for name, info in infos.items():
        try:
            rows.append(_method_row(name, info))
        except Exception as exc:  # never let one odd class break the listing
            bad.append(f"error: method {name!r} ({info.plugin}) cannot be listed: {type(exc).__name__}: {exc}")
    if fmt == "json":
        import json

        typer.echo(json.dumps(rows, indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(rows)} methods")
        for h in ("name", "version", "plugin", "distribution", "min shots", "flags", "description"):
            table.add_column(h)
        for r in rows:
            dist = "built-in" if r["builtin"] else f"{r['distribution']} {r['distribution_version']}".strip()
            table.add_row(r["name"], r["version"], r["plugin"], dist, str(r["min_shots"]), ", ".join(r["flags"]),
                          r["description"])
        Console().print(table)
    _echo_problems(problem_lines() + bad)


def plugins(fmt: str = typer.Option("table", "--format", "-f", help="table or json.")) -> None:
    """Installed plugins of the `ctbench` entry-point group: status, distribution, what each provides,
    errors and warnings. $CTBENCH_DISABLE_PLUGINS=a,b switches plugins off (not imported)."""
    from ctbench.plugins import DISABLE_ENV, load_all

    reg = load_all()
    if fmt == "json":
        import json

        typer.echo(json.dumps({"plugins": [
            {"name": s.name, "entry_point": s.entry_point, "module": s.module, "distribution": s.distribution,
             "version": s.version, "builtin": s.builtin, "status": s.state, "provides": s.provides,
             "errors": s.errors, "warnings": s.warnings} for s in reg.plugins], "warnings": reg.warnings}, indent=1))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"ok": "green", "warnings": "yellow", "errors": "red", "failed": "red", "disabled": "dim"}
    table = Table(title="plugins (entry-point group 'ctbench')")
    for h in ("name", "module", "distribution", "status", "provides / problems"):
        table.add_column(h)
    for s in reg.plugins:
        dist = f"{s.distribution} {s.version}".strip() or "?"
        if s.builtin:
            dist += " (built-in)"
        lines = []
        if s.disabled:
            lines.append(f"[dim]switched off by {DISABLE_ENV}" + (": a built-in plugin, its methods are unavailable"
                                                               if s.builtin else "") + "[/]")
        elif not s.ok:
            lines.append(f"[red]{escape(s.error)}[/]")
        else:
            lines.append(escape(", ".join(s.provides)) or "[dim](nothing)[/]")
            lines += [f"[red]error: {escape(e)}[/]" for e in s.errors]
        lines += [f"[yellow]warning: {escape(w)}[/]" for w in s.warnings]
        table.add_row(s.name, s.module, dist, f"[{colour[s.state]}]{s.state}[/]", "\n".join(lines))
    console = Console()
    console.print(table)
    for w in reg.warnings:
        console.print(f"[yellow]warning: {escape(w)}[/]")


def tasks_list(ctx: typer.Context) -> None:
    """Task and suite cards. A card that cannot be read is left out of the table with one
    'warning:' line on stderr naming its file and what is wrong (the exit code stays 0)."""
    if ctx.invoked_subcommand is not None:
        return
    import os

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ctbench.cards import CardError, SuiteCard, all_card_names, load_card
    from ctbench.cli.common import user_errors

    table = Table(title="task cards")
    for h in ("name", "kind", "version", "dataset / tasks", "source → target", "description"):
        table.add_column(h)
    problems: list[str] = []
    for folder in (os.environ.get("CTBENCH_TASKS") or "").split(os.pathsep):
        if folder and not os.path.isdir(folder):
            problems.append(f"CTBENCH_TASKS folder {folder} does not exist (or is not a folder); skipped")
    with friendly_errors():
        names = all_card_names()
    for name in names:
        try:
            card = load_card(name)
        except user_errors() as exc:
            msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            msg = (msg.splitlines() or [type(exc).__name__])[0]
            if not isinstance(exc, CardError):
                msg = f"card {name!r}: {msg}"
            problems.append(f"{msg}; card skipped")
            continue
        if isinstance(card, SuiteCard):
            table.add_row(escape(card.name), "suite", escape(card.version), escape(", ".join(card.tasks)), "",
                          escape(card.description))
        else:
            table.add_row(escape(card.name), "task", escape(card.version), escape(card.dataset),
                          escape(f"{card.source} → {card.target}"),
                          escape(card.description.splitlines()[0] if card.description else ""))
    Console().print(table)
    for line in problems:
        typer.echo(f"warning: {line}", err=True)


def tasks_show(
    name: str = typer.Argument(..., help="Task name or path to a card."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Dataset mirror folder."),
) -> None:
    """A task's card and what it gives once loaded (sizes, axis, split)."""
    import json

    from ctbench.cards import SuiteCard, load_card
    from ctbench.tasks import build_task

    with friendly_errors():
        card = load_card(name)
        if isinstance(card, SuiteCard):
            typer.echo(json.dumps({"suite": card.name, "version": card.version, "tasks": list(card.tasks), "shots": card.shots}, indent=1))
            return
        typer.echo(f"# {card.path}")
        from pathlib import Path

        typer.echo(Path(card.path).read_text().rstrip())
        task = build_task(card, data_dir)
        typer.echo("# loaded:")
        typer.echo(json.dumps(task.summary(), indent=1))
