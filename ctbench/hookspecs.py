"""The hooks a ctbench plugin may implement (the only module with @hookspec)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ctbench")


@hookspec
def ctbench_register_methods() -> list[Any]:
    """Return TransferMethod subclasses this plugin provides."""


@hookspec
def ctbench_register_loaders() -> list[Any]:
    """Return DatasetLoader objects (named dataset readers) this plugin provides."""


@hookspec
def ctbench_register_task_dirs() -> list[Any]:
    """Return folders of task cards (YAML) this plugin ships."""


@hookspec
def ctbench_register_corpora() -> list[Any]:
    """Return pretraining corpus sources (name -> loader) this plugin provides."""
