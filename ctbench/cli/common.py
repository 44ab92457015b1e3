"""Shared CLI pieces: one-line errors, list options, --param parsing, default folders."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

DEFAULT_RESULTS = "results"


def results_dir_default() -> str:
    return os.environ.get("CTBENCH_RESULTS", DEFAULT_RESULTS)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    from ctbench.cards import CardError
    from ctbench.data.spectra import DataError
    from ctbench.leaderboard import LeaderboardError
    from ctbench.plugins import UnknownName
    from ctbench.runner import PlanError
    from ctbench.splits import ShotsError

    return (CardError, DataError, LeaderboardError, UnknownName, PlanError, ShotsError)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn the project's user-facing exceptions into one-line errors with exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if isinstance(exc, user_errors()):
            msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            fail(msg.splitlines()[0] if msg else type(exc).__name__)
        raise


def split_list(value: str | None) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def int_list(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    out = []
    for v in split_list(value):
        try:
            out.append(int(v))
        except ValueError:
            fail(f"{option} takes comma-separated integers, got {v!r}")
    return out


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """--param k=v (repeatable); values are parsed as YAML scalars (numbers, true/false, null)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            fail(f"--param takes key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def set_data_dir(data_dir: Path | None) -> str | None:
    if data_dir is not None:
        if not data_dir.is_dir():
            fail(f"--data-dir {data_dir} is not a folder")
        return str(data_dir.resolve())
    return None


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
