"""`ctbench methods`, `ctbench tasks [show T]`, `ctbench plugins`: what is installed."""

from __future__ import annotations

from typing import Optional

import typer

from ctbench.cli.common import friendly_errors


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)
    app.command("plugins")(plugins)
    tasks_app = typer.Typer(help="List task cards, show one, or write a new one from your data files (tasks new).", invoke_without_command=True, no_args_is_help=False)
    tasks_app.callback(invoke_without_command=True)(tasks_list)
    tasks_app.command("show")(tasks_show)
    from ctbench.cli.tasks_new import tasks_new  # typer only: `ctbench --help` stays instant

    tasks_app.command("new")(tasks_new)
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


def methods(
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Table: every column (version, plugin, distribution), even past the terminal's width."),
) -> None:
    """Registered transfer methods (from every installed plugin); plugin problems on stderr.

    A name registered by two plugins is never resolved silently: a built-in keeps the plain name and the other is listed as PLUGIN:METHOD; two third parties both get PLUGIN:METHOD. PLUGIN:METHOD is accepted everywhere a method name is. $CTBENCH_DISABLE_PLUGINS=a,b switches plugins off. The table leaves out the columns that do not fit the terminal (--wide shows them all)."""
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
        columns = [_Col("name"), _Col("version", extra=2), _Col("plugin", extra=3), _Col("distribution", extra=4),
                   _Col("min N"), _Col("flags", wrap=12, words=True), _Col("description", wrap=24, extra=1)]
        cells = []
        for r in rows:
            dist = "built-in" if r["builtin"] else f"{r['distribution']} {r['distribution_version']}".strip()
            cells.append([r["name"], str(r["version"]), r["plugin"], dist, str(r["min_shots"]), ", ".join(r["flags"]),
                          r["description"]])
        _print_fitted(f"{len(rows)} methods", columns, cells, wide)
    _echo_problems(problem_lines() + bad)


def plugins(
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Table: every column (module, distribution), even past the terminal's width."),
) -> None:
    """Installed plugins of the `ctbench` entry-point group: status, distribution, what each provides, errors and warnings.

    $CTBENCH_DISABLE_PLUGINS=a,b switches plugins off (not imported). The table leaves out the columns that do not fit the terminal (--wide shows them all)."""
    from ctbench.plugins import DISABLE_ENV, load_all

    reg = load_all()
    if fmt == "json":
        import json

        typer.echo(json.dumps({"plugins": [
            {"name": s.name, "entry_point": s.entry_point, "module": s.module, "distribution": s.distribution,
             "version": s.version, "builtin": s.builtin, "status": s.state, "provides": s.provides,
             "errors": s.errors, "warnings": s.warnings} for s in reg.plugins], "warnings": reg.warnings}, indent=1))
        return
    from rich.text import Text

    colour = {"ok": "green", "warnings": "yellow", "errors": "red", "failed": "red", "disabled": "dim"}
    columns = [_Col("name"), _Col("module", extra=2), _Col("distribution", extra=1), _Col("status"),
               _Col("provides / problems", wrap=30, words=True)]
    cells = []
    for s in reg.plugins:
        dist = f"{s.distribution} {s.version}".strip() or "?"
        if s.builtin:
            dist += " (built-in)"
        what = Text()
        lines: list[tuple[str, str | None]] = []
        if s.disabled:
            lines.append((f"switched off by {DISABLE_ENV}" + (": a built-in plugin, its methods are unavailable"
                                                              if s.builtin else ""), "dim"))
        elif not s.ok:
            lines.append((s.error, "red"))
        else:
            lines.append((", ".join(s.provides), None) if s.provides else ("(nothing)", "dim"))
            lines += [(f"error: {e}", "red") for e in s.errors]
        lines += [(f"warning: {w}", "yellow") for w in s.warnings]
        for i, (line, style) in enumerate(lines):
            what.append(("\n" if i else "") + line, style=style)
        cells.append([s.name, s.module, dist, Text(s.state, style=colour.get(s.state)), what])
    console = _print_fitted("plugins (entry-point group 'ctbench')", columns, cells, wide)
    for w in reg.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))


def tasks_list(
    ctx: typer.Context,
    wide: bool = typer.Option(False, "--wide", "-w", help="Table: every column (version, source → target), even past the terminal's width."),
) -> None:
    """Task and suite cards.

    A card that cannot be read is left out of the table with one 'warning:' line on stderr naming its file and what is wrong (the exit code stays 0). The table leaves out the columns that do not fit the terminal (--wide shows them all)."""
    if ctx.invoked_subcommand is not None:
        return
    import os

    from ctbench.cards import CardError, SuiteCard, all_card_names, load_card
    from ctbench.cli.common import user_errors

    cells: list[list[str]] = []
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
            cells.append([card.name, "suite", str(card.version), ", ".join(card.tasks), "",
                          " ".join(card.description.split())])
        else:
            cells.append([card.name, "task", str(card.version), card.dataset, f"{card.source} → {card.target}",
                          card.description.splitlines()[0] if card.description else ""])
    columns = [_Col("name"), _Col("kind"), _Col("version", extra=2), _Col("dataset / tasks", wrap=12, words=True),
               _Col("source → target", wrap=12, extra=1), _Col("description", wrap=16)]
    _print_fitted("task cards", columns, cells, wide)
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


# --- tables that fit the terminal -------------------------------------------------------------------


class _Col:
    """A table column: ``wrap`` (the narrowest it may wrap to; None: never wraps, as names and
    numbers; ``words``: nor narrower than its longest word, for lists of names), ``extra`` (0:
    always shown; else shown when it fits, 1 first; every one with --wide)."""

    def __init__(self, header: str, wrap: int | None = None, extra: int = 0, words: bool = False):
        self.header, self.wrap, self.extra, self.words = header, wrap, extra, words


_SEP = 3  # one space of padding either side of a one-space divider (box.SIMPLE_HEAD, no edges)
_EDGE = 2  # one space of padding at either end of a line (a name starts after a space, as in " pds ")


def _plain(cell) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _line_width(text: str) -> int:
    from rich.cells import cell_len

    return max([cell_len(line) for line in text.splitlines()] or [0])


def _widths(columns: list[_Col], rows: list[list], keep: list[int], width: int) -> tuple[dict[int, int], int]:
    """Column widths for the columns ``keep`` in ``width``, and the width they need at least.

    Columns that do not wrap get their natural width; the wrapping ones share the rest: the
    widest gives way first, none below its narrowest."""
    from rich.cells import cell_len

    natural, least = {}, {}
    for i in keep:
        texts = [columns[i].header] + [_plain(r[i]) for r in rows]
        natural[i] = max(_line_width(t) for t in texts)
        if columns[i].wrap is None:
            least[i] = natural[i]
        else:
            floor = columns[i].wrap
            if columns[i].words:
                floor = max([floor] + [cell_len(w) for t in texts for w in t.split()])
            least[i] = min(natural[i], floor)
    needed = sum(least.values()) + _SEP * (len(keep) - 1) + _EDGE
    widths = dict(natural)
    excess = sum(widths.values()) + _SEP * (len(keep) - 1) + _EDGE - width
    while excess > 0:  # the widest wrapping column gives way first
        shrink = [i for i in keep if widths[i] > least[i]]
        if not shrink:
            break
        i = max(shrink, key=lambda i: widths[i])
        widths[i] -= 1
        excess -= 1
    return widths, needed


def _print_fitted(title: str, columns: list[_Col], rows: list[list], wide: bool):
    """Print ``rows`` as one table that fits the terminal: the extra columns that fit (all with
    ``wide``), the wrapping ones sharing what is left (``_widths``); names and numbers are never
    cut: the console is widened when even the narrowest layout needs more. Every cell is plain
    text (never read as rich markup). Returns the console used."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    keep = [i for i, c in enumerate(columns) if c.extra == 0 or wide]
    if not wide:
        for i in sorted((i for i, c in enumerate(columns) if c.extra), key=lambda i: columns[i].extra):
            trial = sorted(keep + [i])
            if _widths(columns, rows, trial, console.width)[1] <= console.width:
                keep = trial
    widths, needed = _widths(columns, rows, keep, console.width)
    if needed > console.width:
        console = Console(width=needed)
    table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  show_edge=False, pad_edge=True)
    for i in keep:
        table.add_column(Text(columns[i].header), width=widths[i], overflow="fold", no_wrap=columns[i].wrap is None)
    for r in rows:
        table.add_row(*[r[i] if isinstance(r[i], Text) else Text(str(r[i])) for i in keep])
    console.print(table)
    return console
