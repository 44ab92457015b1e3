"""Entry point of the `ctbench` command. Each command module exposes ``register(app)``."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("run", "leaderboard", "catalog", "data", "check", "tune", "report", "pretrain", "bench")

app = typer.Typer(
    name="ctbench",
    help="Benchmark harness for spectral calibration transfer (and the Spektron foundation model).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
