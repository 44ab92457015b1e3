"""Plugin discovery: every plugin (first-party included) comes through the entry-point group
``ctbench``; one that fails to import is recorded with its error and never breaks the others."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from ctbench import hookspecs

ENTRY_POINT_GROUP = "ctbench"


class UnknownName(LookupError):
    """An unknown method / task / dataset name (the message carries a 'did you mean')."""


@dataclass
class PluginStatus:
    name: str
    module: str
    distribution: str
    version: str
    ok: bool
    error: str = ""
    provides: list[str] = field(default_factory=list)


@dataclass
class Registry:
    manager: pluggy.PluginManager
    plugins: list[PluginStatus]


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """Load every plugin of the entry-point group once per process."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    statuses: list[PluginStatus] = []
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        dist, version = _distribution_of(ep)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            statuses.append(PluginStatus(ep.name, ep.value, dist, version, ok=True))
        except Exception as exc:  # a broken plugin is reported, never fatal
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            statuses.append(PluginStatus(ep.name, ep.value, dist, version, ok=False, error=last))
    return Registry(pm, statuses)


def get_manager() -> pluggy.PluginManager:
    return get_registry().manager


def _collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call a hook plugin by plugin, so one plugin's exception does not hide the others."""
    reg = get_registry()
    out: list[tuple[str, Any]] = []
    for status in reg.plugins:
        if not status.ok:
            continue
        plugin = reg.manager.get_plugin(status.name)
        impl = getattr(plugin, hook_name, None)
        if impl is None:
            continue
        try:
            items = impl() or []
        except Exception as exc:
            status.ok = False
            status.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
            continue
        for item in items:
            out.append((status.name, item))
    return out


@lru_cache(maxsize=1)
def load_methods() -> dict[str, Any]:
    """Registered methods by name -> MethodInfo."""
    from ctbench.method import MethodInfo, TransferMethod

    methods: dict[str, MethodInfo] = {}
    statuses = {s.name: s for s in get_registry().plugins}
    for plugin_name, cls in _collect("ctbench_register_methods"):
        status = statuses[plugin_name]
        if not (isinstance(cls, type) and issubclass(cls, TransferMethod)) or not cls.name:
            status.error = (status.error + "; " if status.error else "") + f"{cls!r} is not a named TransferMethod"
            continue
        if cls.name in methods:
            status.error = (status.error + "; " if status.error else "") + (
                f"method {cls.name!r} already registered by plugin {methods[cls.name].plugin!r}"
            )
            continue
        methods[cls.name] = MethodInfo(cls=cls, plugin=plugin_name)
        status.provides.append(f"method:{cls.name}")
    return dict(sorted(methods.items()))


@lru_cache(maxsize=1)
def load_loaders() -> dict[str, Any]:
    """Registered dataset loaders by name -> DatasetLoader."""
    loaders: dict[str, Any] = {}
    statuses = {s.name: s for s in get_registry().plugins}
    for plugin_name, loader in _collect("ctbench_register_loaders"):
        if loader.name in loaders:
            continue
        loaders[loader.name] = loader
        statuses[plugin_name].provides.append(f"dataset:{loader.name}")
    return loaders


@lru_cache(maxsize=1)
def load_task_dirs() -> list[Path]:
    return [Path(p) for _, p in _collect("ctbench_register_task_dirs")]


@lru_cache(maxsize=1)
def load_corpora() -> dict[str, Any]:
    corpora: dict[str, Any] = {}
    for _, item in _collect("ctbench_register_corpora"):
        name = getattr(item, "name", None) or item[0]
        corpora.setdefault(name, item)
    return corpora


def get_method(name: str) -> Any:
    """The MethodInfo of a method name, or UnknownName with a 'did you mean'."""
    from ctbench.names import did_you_mean

    methods = load_methods()
    if name not in methods:
        broken = [s for s in get_registry().plugins if not s.ok]
        hint = ""
        if broken:
            hint = "; plugins that failed to load: " + ", ".join(f"{s.name} ({s.error})" for s in broken)
        raise UnknownName(
            f"unknown method {name!r}{did_you_mean(name, methods)}; known: {', '.join(methods) or '(none)'}{hint}"
        )
    return methods[name]


def get_loader(name: str) -> Any:
    from ctbench.names import did_you_mean

    loaders = load_loaders()
    if name not in loaders:
        raise UnknownName(f"unknown dataset {name!r}{did_you_mean(name, loaders)}; known: {', '.join(loaders)}")
    return loaders[name]
