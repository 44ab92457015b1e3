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


def methods(fmt: str = typer.Option("table", "--format", "-f", help="table or json.")) -> None:
    """Registered transfer methods (from every installed plugin)."""
    from ctbench.plugins import get_registry, load_methods

    infos = load_methods()
    rows = []
    for name, info in infos.items():
        t = info.cls.tags
        flags = [f for f, on in (("zero-shot", t.zero_shot), ("transductive", t.transductive),
                                 ("reference", t.reference), ("corrects spectra", t.corrects_spectra),
                                 ("tunable", info.cls.has_search_space()), ("pretrains", info.cls.has_pretrain())) if on]
        rows.append({"name": name, "version": info.cls.version, "plugin": info.plugin, "min_shots": t.min_shots,
                     "flags": flags, "description": (info.cls.description or (info.cls.__doc__ or "").strip().splitlines()[0] if (info.cls.description or info.cls.__doc__) else "")})
    if fmt == "json":
        import json

        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} methods")
    for h in ("name", "version", "plugin", "min shots", "flags", "description"):
        table.add_column(h)
    for r in rows:
        table.add_row(r["name"], r["version"], r["plugin"], str(r["min_shots"]), ", ".join(r["flags"]), r["description"])
    Console().print(table)
    broken = [s for s in get_registry().plugins if not s.ok]
    for s in broken:
        typer.echo(f"warning: plugin {s.name!r} ({s.module}) failed to load: {s.error}", err=True)


def plugins() -> None:
    """Installed plugins of the `ctbench` entry-point group, with load errors."""
    from rich.console import Console
    from rich.table import Table

    from ctbench.plugins import get_registry, load_corpora, load_loaders, load_methods

    load_methods(), load_loaders(), load_corpora()
    table = Table(title="plugins (entry-point group 'ctbench')")
    for h in ("name", "module", "distribution", "status", "provides / error"):
        table.add_column(h)
    for s in get_registry().plugins:
        status = "[green]ok[/]" if s.ok else "[red]failed[/]"
        detail = ", ".join(s.provides) if s.ok else s.error
        if s.ok and s.error:
            detail += f" [yellow]({s.error})[/]"
        table.add_row(s.name, s.module, f"{s.distribution} {s.version}", status, detail)
    Console().print(table)


def tasks_list(ctx: typer.Context) -> None:
    """Task and suite cards."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from ctbench.cards import SuiteCard, all_card_names, load_card

    table = Table(title="task cards")
    for h in ("name", "kind", "version", "dataset / tasks", "source → target", "description"):
        table.add_column(h)
    with friendly_errors():
        for name in all_card_names():
            card = load_card(name)
            if isinstance(card, SuiteCard):
                table.add_row(card.name, "suite", card.version, ", ".join(card.tasks), "", card.description)
            else:
                table.add_row(card.name, "task", card.version, card.dataset, f"{card.source} → {card.target}",
                              card.description.splitlines()[0] if card.description else "")
    Console().print(table)


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
