"""Entry point of the `ctbench` command. Each command module exposes ``register(app)``."""

from __future__ import annotations

import importlib
from typing import Any

import typer

COMMAND_MODULES = ("run", "leaderboard", "catalog", "data", "check", "tune", "report", "pretrain", "bench")


def _quiet_flag_types() -> None:
    """No ``<bool>`` after flags in --help.

    The rich help of typer 0.29 (its vendored click) shows every option's type after its name,
    flags included: ``--force <bool>``, ``--help <bool>`` (its plain help leaves flags bare). A
    flag takes no value, so it shows none here, in every command (``--help`` too); options that
    take a value keep theirs (``--reps <int>``)."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_ctbench_quiet_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if (getattr(self, "is_flag", False) or getattr(self, "count", False)) and self.metavar is None:
            return None
        return shown(self, ctx)

    display_type_rich._ctbench_quiet_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_quiet_flag_types()

app = typer.Typer(
    name="ctbench",
    help="Benchmark harness for spectral calibration transfer (and the Spektron foundation model).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version_string() -> str:
    """The installed distribution's version, else ``ctbench.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("ctbench")
    except metadata.PackageNotFoundError:
        import ctbench

        return str(getattr(ctbench, "__version__", "unknown"))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ctbench {version_string()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    pass


def _register_all() -> None:
    import importlib.util

    for name in COMMAND_MODULES:
        modname = f"ctbench.cli.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(app)


_register_all()


def main() -> None:
    app()
