"""Shared CLI pieces: one-line errors, list options, --param parsing, default folders."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
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
    from ctbench.store import StoreError

    return (CardError, DataError, LeaderboardError, UnknownName, PlanError, ShotsError, StoreError)


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


@contextlib.contextmanager
def record_warnings() -> Iterator[None]:
    """Print the records skipped inside the block (``RecordWarning``) as ``warning:`` lines on
    stderr; any other warning is shown as Python would have shown it."""
    from ctbench.store import RecordWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecordWarning)
            yield
    finally:  # also when the block fails: the skipped records may be why
        for w in caught:
            if issubclass(w.category, RecordWarning):
                typer.echo(f"warning: {w.message}", err=True)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


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
    """--param k=v (repeatable); values are parsed as YAML scalars (numbers, 1e-3 included,
    true/false, null, strings) or a flat list ``[1, 2]``, with the strict loader of the cards (no
    anchors or aliases). Text that is not valid YAML is kept as a string; a mapping or nested list,
    an anchor or alias, or a key given twice is a one-line error. Types are settled later against
    the method's defaults (:func:`ctbench.params.normalise_params`)."""
    import datetime

    import yaml

    from ctbench.cards import YAMLInputError, load_yaml
    from ctbench.params import is_flat

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            fail(f"--param takes key=value, got {_clip(item)!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k:
            fail(f"--param takes key=value, got {_clip(item)!r} (no key)")
        if k in out:
            fail(f"--param {_clip(k)} is given twice; give each parameter once")
        try:
            value = load_yaml(v)
        except YAMLInputError as exc:
            fail(f"--param {_clip(k)}: {str(exc).split(': ', 1)[-1]}")
        except (yaml.YAMLError, RecursionError):
            value = v
        if isinstance(value, (datetime.date, datetime.datetime)):  # 2024-01-01: keep the text
            value = v.strip()
        if not is_flat(value):
            kind = "a mapping" if isinstance(value, dict) else "a nested list" if isinstance(value, list) else type(value).__name__
            fail(f"--param {_clip(k)} takes a number, true/false, null, a string or a flat list like [1, 2], "
                 f"got {kind}; quote the value to pass it as a string")
        out[k] = value
    return out


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


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
