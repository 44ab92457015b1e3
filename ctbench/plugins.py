"""Plugin discovery: every plugin (first-party included) comes through the entry-point group
``ctbench``. Nothing a plugin does can break the others or resolve a name silently:

* a plugin whose import or hook raises (``SystemExit`` included; ``KeyboardInterrupt`` is let
  through) is recorded with its error, and the other plugins load;
* two distributions declaring the same entry-point name are both loaded, the second under
  ``name@distribution`` with a warning;
* each registered method class is validated; a malformed one is skipped with an error;
* a method name registered twice is never resolved silently: a built-in (distribution
  ``ctbench``) keeps the plain name and the other class is reachable only as ``plugin:method``;
  two third parties sharing a name both lose the plain name (asking for it explains the clash);
  ``plugin:method`` is always accepted;
* module attributes ``ctbench_*`` that are not hooks (misspelt hooks) warn with a 'did you mean';
* ``CTBENCH_DISABLE_PLUGINS=name1,name2`` switches plugins off (they are not imported).

Problems are kept on each plugin's :class:`PluginStatus` (``errors`` / ``warnings``) and listed, one
line each, by :func:`problem_lines` (shown by ``ctbench methods`` and ``ctbench plugins``).
"""

from __future__ import annotations

import logging
import os
import traceback
import types
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from ctbench import hookspecs

ENTRY_POINT_GROUP = "ctbench"
BUILTIN_DISTRIBUTION = "ctbench"
DISABLE_ENV = "CTBENCH_DISABLE_PLUGINS"
QUALIFIER = ":"

log = logging.getLogger(__name__)


class UnknownName(LookupError):
    """An unknown (or ambiguous) method / task / dataset name; the message says what to ask for."""


@dataclass
class PluginStatus:
    name: str
    """Registration name: the entry-point name, or ``name@distribution`` for a reused one."""
    module: str
    distribution: str
    version: str
    ok: bool
    """Imported and registered (a disabled or failed plugin is not)."""
    errors: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    builtin: bool = False
    disabled: bool = False
    entry_point: str = ""
    """The entry-point name as declared (differs from ``name`` for a reused entry-point name)."""

    @property
    def error(self) -> str:
        return "; ".join(self.errors)

    @error.setter
    def error(self, value: str) -> None:
        self.errors = [value] if value else []

    @property
    def state(self) -> str:
        """disabled, failed (not imported), errors (something skipped), warnings, or ok."""
        if self.disabled:
            return "disabled"
        if not self.ok:
            return "failed"
        if self.errors:
            return "errors"
        if self.warnings:
            return "warnings"
        return "ok"


@dataclass
class Registry:
    manager: pluggy.PluginManager
    plugins: list[PluginStatus]
    warnings: list[str] = field(default_factory=list)
    """Problems not tied to one plugin (e.g. an unknown name in CTBENCH_DISABLE_PLUGINS)."""

    def status(self, name: str) -> PluginStatus | None:
        return next((s for s in self.plugins if s.name == name), None)


@dataclass
class MethodCatalog:
    """Every valid registered method class, once, and how names resolve."""

    listed: dict[str, Any]
    """Listed name -> MethodInfo (what :func:`load_methods` returns)."""
    qualified: dict[str, Any]
    """``plugin:method`` -> MethodInfo, for every class."""
    shadowed: dict[str, list[Any]]
    """Plain name owned by a built-in -> the other classes registering it (reachable qualified only)."""
    ambiguous: dict[str, list[Any]]
    """Plain name claimed by several third parties -> all of them (none gets the plain name)."""


# --- helpers ----------------------------------------------------------------------------------

def _canonical(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def is_builtin_distribution(dist: str) -> bool:
    """True for the project's own distribution (whose plugins keep plain names on a clash)."""
    return _canonical(dist) == BUILTIN_DISTRIBUTION


def qualify(plugin: str, method: str) -> str:
    """The qualified name ``plugin:method``."""
    return f"{plugin}{QUALIFIER}{method}"


def split_qualified(name: str) -> tuple[str, str] | None:
    """``("plugin", "method")`` for a qualified name, else None (method names never hold ':')."""
    if QUALIFIER not in name:
        return None
    plugin, _, method = name.rpartition(QUALIFIER)
    return plugin, method


def disabled_plugins() -> list[str]:
    """Plugin names switched off by ``$CTBENCH_DISABLE_PLUGINS`` (comma-separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return [n.strip() for n in raw.split(",") if n.strip()]


def hook_names() -> list[str]:
    """The hooks a plugin may implement (those declared in ctbench.hookspecs)."""
    marker = f"{ENTRY_POINT_GROUP}_spec"
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, marker))


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "", ""
    try:
        return dist.metadata["Name"] or "", dist.version or ""
    except Exception:  # unreadable metadata: the plugin still loads, as from an unknown distribution
        return "", ""


def _exception_line(exc: BaseException) -> str:
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if isinstance(exc, SystemExit):
        line += " (the plugin called sys.exit())"
    return line


def _describe_class(obj: Any) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r}"[:120]


def _dist_label(status: PluginStatus) -> str:
    if not status.distribution:
        return "unknown distribution"
    return f"{status.distribution} {status.version}".strip()


# --- loading ----------------------------------------------------------------------------------

def _entry_points() -> list[tuple[str, metadata.EntryPoint, str, str, bool]]:
    """(registration name, entry point, distribution, version, builtin), built-ins first among
    entry points sharing a name; a reused name becomes ``name@distribution``."""
    by_name: dict[str, list[tuple[metadata.EntryPoint, str, str, bool]]] = defaultdict(list)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist, version = _distribution_of(ep)
        by_name[ep.name].append((ep, dist, version, is_builtin_distribution(dist)))
    taken = set(by_name)
    out = []
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda e: (not e[3], _canonical(e[1]), e[0].value))
        for i, (ep, dist, version, builtin) in enumerate(group):
            reg = name
            if i > 0:
                reg = f"{name}@{dist or 'unknown'}"
                k = 2
                while reg in taken:
                    reg = f"{name}@{dist or 'unknown'}#{k}"
                    k += 1
                taken.add(reg)
            out.append((reg, ep, dist, version, builtin))
    return sorted(out, key=lambda e: e[0])


def _unknown_hook_warnings(plugin: Any) -> list[str]:
    from ctbench.names import did_you_mean

    known = hook_names()
    prefix = f"{ENTRY_POINT_GROUP}_"
    out = []
    try:
        attrs = sorted(dir(plugin))
    except (Exception, SystemExit):
        return out
    for attr in attrs:
        if not attr.startswith(prefix) or attr in known:
            continue
        try:
            value = getattr(plugin, attr)
        except (Exception, SystemExit):
            continue
        if isinstance(value, types.ModuleType) or not callable(value):
            continue
        hint = did_you_mean(attr, known) or f"; the hooks are {', '.join(known)}"
        out.append(f"{attr!r} is not a ctbench hook and is never called{hint}")
    return out


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """Load every enabled plugin of the entry-point group once per process."""
    from ctbench.names import did_you_mean

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    statuses: list[PluginStatus] = []
    reg_warnings: list[str] = []
    entries = _entry_points()
    off = disabled_plugins()
    names = [e[0] for e in entries]
    for unknown in [n for n in off if n not in names]:
        reg_warnings.append(f"{DISABLE_ENV} names {unknown!r}, which is no installed plugin"
                            f"{did_you_mean(unknown, names)}; plugins: {', '.join(names) or '(none)'}")
    first_of: dict[str, PluginStatus] = {}
    for reg, ep, dist, version, builtin in entries:
        status = PluginStatus(reg, ep.value, dist, version, ok=False, builtin=builtin, entry_point=ep.name)
        statuses.append(status)
        if reg != ep.name:
            first = first_of.get(ep.name)
            owner = (f"plugin {first.name!r} ({_dist_label(first)}{', built-in' if first.builtin else ''})"
                     if first else "another distribution")
            status.warnings.append(
                f"entry-point name {ep.name!r} is already used by {owner}; this plugin is registered as "
                f"{reg!r} (its methods are {reg}{QUALIFIER}<method>; disable it with {DISABLE_ENV}={reg})")
        else:
            first_of[ep.name] = status
        if reg in off:
            status.disabled = True
            continue
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # a broken plugin is reported, never fatal
            status.errors.append(_exception_line(exc))
            continue
        try:
            pm.register(plugin, name=reg)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            other = pm.get_name(plugin) if pm.is_registered(plugin) else None
            status.errors.append(f"module {ep.value!r} is already registered as plugin {other!r}" if other
                                 else f"cannot register: {_exception_line(exc)}")
            continue
        status.ok = True
        status.warnings.extend(_unknown_hook_warnings(plugin))
    return Registry(pm, statuses, reg_warnings)


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
        try:
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            result = impl()
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            status.errors.append(f"{hook_name} raised {_exception_line(exc)}")
            continue
        if result is None:
            continue
        if isinstance(result, (str, bytes, dict)) or not hasattr(result, "__iter__"):
            status.errors.append(f"{hook_name} must return a list, got {type(result).__name__}")
            continue
        try:
            items = list(result)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            status.errors.append(f"{hook_name} raised {_exception_line(exc)}")
            continue
        out.extend((status.name, item) for item in items)
    return out


# --- methods ----------------------------------------------------------------------------------

def method_class_problems(cls: Any) -> list[str]:
    """Why ``cls`` cannot be registered as a method ([] when it can)."""
    from ctbench.method import Tags, TransferMethod

    if not (isinstance(cls, type) and issubclass(cls, TransferMethod)):
        return ["not a TransferMethod subclass"]
    problems = []
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        problems.append(f"`name` must be a non-empty str, got {name!r}")
    elif QUALIFIER in name or any(c.isspace() for c in name):
        problems.append(f"`name` {name!r} must not contain {QUALIFIER!r} or whitespace")
    version = getattr(cls, "version", None)
    if not isinstance(version, str) or not version:
        problems.append(f"`version` must be a non-empty str, got {version!r}")
    description = getattr(cls, "description", "")
    if description is not None and not isinstance(description, str):
        problems.append(f"`description` must be a str, got {type(description).__name__}")
    tags = getattr(cls, "tags", None)
    if not isinstance(tags, Tags):
        problems.append(f"`tags` must be a ctbench.method.Tags instance, got {type(tags).__name__} {tags!r}"[:200])
    else:
        for f in ("min_shots",):
            v = getattr(tags, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                problems.append(f"tags.{f} must be an int >= 0, got {v!r}")
        if tags.max_shots is not None and (not isinstance(tags.max_shots, int) or isinstance(tags.max_shots, bool)):
            problems.append(f"tags.max_shots must be an int or None, got {tags.max_shots!r}")
        for f in tags.__dataclass_fields__:
            if f not in ("min_shots", "max_shots") and not isinstance(getattr(tags, f), bool):
                problems.append(f"tags.{f} must be a bool, got {getattr(tags, f)!r}")
    if cls.__init__ is object.__init__:
        problems.append("defines no __init__: list the parameters as keyword arguments of __init__ "
                        "(`def __init__(self): pass` when there are none)")
    for what, call in (("__init__", cls._param_names), ("default_params()", cls.default_params),
                       ("has_search_space()", cls.has_search_space), ("has_pretrain()", cls.has_pretrain)):
        if what == "__init__" and cls.__init__ is object.__init__:
            continue
        try:
            call()
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            problems.append(f"{what}: {_exception_line(exc)}")
    return problems


@lru_cache(maxsize=1)
def method_catalog() -> MethodCatalog:
    """Collect, validate and name every registered method class (once per process)."""
    from ctbench.method import MethodInfo

    reg = get_registry()
    statuses = {s.name: s for s in reg.plugins}
    by_qualified: dict[str, MethodInfo] = {}
    by_name: dict[str, list[MethodInfo]] = defaultdict(list)
    for plugin_name, cls in _collect("ctbench_register_methods"):
        status = statuses[plugin_name]
        problems = method_class_problems(cls)
        if problems:
            status.errors.append(f"method class {_describe_class(cls)} skipped: {'; '.join(problems)}")
            continue
        q = qualify(plugin_name, cls.name)
        if q in by_qualified:
            first = by_qualified[q].cls
            if first is not cls:
                status.errors.append(f"registers two classes named {cls.name!r} ({_describe_class(first)} and "
                                     f"{_describe_class(cls)}); the second is skipped")
            else:
                status.warnings.append(f"registers method {cls.name!r} twice (counted once)")
            continue
        info = MethodInfo(cls=cls, plugin=plugin_name, qualified=q, distribution=status.distribution,
                          distribution_version=status.version, builtin=status.builtin)
        by_qualified[q] = info
        by_name[cls.name].append(info)

    listed: dict[str, MethodInfo] = {}
    shadowed: dict[str, list[MethodInfo]] = {}
    ambiguous: dict[str, list[MethodInfo]] = {}

    def give(info: MethodInfo, name: str) -> None:
        info.listed_name = name
        listed[name] = info
        statuses[info.plugin].provides.append(f"method:{name}")

    for name, infos in by_name.items():
        if len(infos) == 1:
            give(infos[0], name)
            continue
        builtins = [i for i in infos if i.builtin]
        if len(builtins) == 1:
            owner = builtins[0]
            give(owner, name)
            shadowed[name] = [i for i in infos if i is not owner]
            for other in shadowed[name]:
                give(other, other.qualified)
                statuses[other.plugin].warnings.append(
                    f"method {name!r} ({_describe_class(other.cls)}, {_dist_label(statuses[other.plugin])}) clashes "
                    f"with the built-in {owner.qualified!r}: the built-in keeps the name {name!r}; this one is "
                    f"reachable only as {other.qualified!r}")
            continue
        ambiguous[name] = infos
        choices = " or ".join(repr(i.qualified) for i in infos)
        who = " and ".join(f"{i.plugin!r} ({_dist_label(statuses[i.plugin])})" for i in infos)
        msg = (f"method name {name!r} is registered by plugins {who}; none of them gets the plain name: "
               f"ask for {choices}")
        for info in infos:
            give(info, info.qualified)
            statuses[info.plugin].warnings.append(msg)
    return MethodCatalog(dict(sorted(listed.items())), by_qualified, shadowed, ambiguous)


@lru_cache(maxsize=1)
def load_methods() -> dict[str, Any]:
    """Registered methods by listed name -> MethodInfo: each valid class once, under its plain name,
    or under ``plugin:method`` when the plain name is shadowed by a built-in or claimed twice."""
    return dict(method_catalog().listed)


def _failing_plugins_hint() -> str:
    reg = get_registry()
    parts = []
    broken = [s for s in reg.plugins if not s.ok and not s.disabled]
    if broken:
        parts.append("plugins that failed to load: " + ", ".join(f"{s.name} ({s.error})" for s in broken))
    erring = [s for s in reg.plugins if s.ok and s.errors]
    if erring:
        parts.append("plugins with errors: " + ", ".join(f"{s.name} ({s.error})" for s in erring))
    off = [s.name for s in reg.plugins if s.disabled]
    if off:
        parts.append(f"plugins disabled by {DISABLE_ENV}: {', '.join(off)}")
    return "".join("; " + p for p in parts)


_announced: set[str] = set()


def get_method(name: str, *, quiet: bool = False) -> Any:
    """The MethodInfo of a method name: a listed name, or ``plugin:method`` (always accepted).
    UnknownName (with a 'did you mean', or the clash and the qualified names to ask for) otherwise.
    A plain name that a built-in owns while another plugin also registers it resolves to the
    built-in and, unless ``quiet``, says so once per process on stderr (logging)."""
    from ctbench.names import did_you_mean

    methods = load_methods()
    catalog = method_catalog()
    if name in methods:
        info = methods[name]
        others = catalog.shadowed.get(name, []) if info.builtin else []
        if others and not quiet and name not in _announced:
            _announced.add(name)
            log.warning("warning: method %r is the built-in %r; %s also registered %r (ask for %s to run %s)",
                        name, info.qualified, " and ".join(f"plugin {o.plugin!r}" for o in others), name,
                        " or ".join(repr(o.qualified) for o in others), "it" if len(others) == 1 else "them")
        return info
    if name in catalog.qualified:
        return catalog.qualified[name]
    for info in methods.values():  # classes added outside the registry (tests) by their qualified name
        if getattr(info, "qualified", "") == name:
            return info
    if name in catalog.ambiguous:
        infos = catalog.ambiguous[name]
        raise UnknownName(
            f"method name {name!r} is ambiguous: registered by plugins "
            + " and ".join(f"{i.plugin!r} ({i.distribution} {i.distribution_version}, {_describe_class(i.cls)})"
                           for i in infos)
            + "; ask for " + " or ".join(repr(i.qualified) for i in infos))
    parts = split_qualified(name)
    if parts is not None:
        plugin, method = parts
        reg = get_registry()
        status = reg.status(plugin)
        qualified = sorted(catalog.qualified)
        if status is None:
            plugins = [s.name for s in reg.plugins]
            why = f"no plugin {plugin!r}{did_you_mean(plugin, plugins)}; plugins: {', '.join(plugins) or '(none)'}"
        elif status.disabled:
            why = f"plugin {plugin!r} is disabled by {DISABLE_ENV}"
        elif not status.ok:
            why = f"plugin {plugin!r} failed to load: {status.error}"
        else:
            mine = [q for q in qualified if q.startswith(plugin + QUALIFIER)]
            why = (f"plugin {plugin!r} provides no method {method!r}{did_you_mean(name, qualified)}; "
                   f"it provides: {', '.join(mine) or '(none)'}")
        raise UnknownName(f"unknown method {name!r}: {why}")
    raise UnknownName(
        f"unknown method {name!r}{did_you_mean(name, methods)}; known: {', '.join(methods) or '(none)'}"
        f"{_failing_plugins_hint()}"
    )


def record_name(info: Any) -> str:
    """The unambiguous name records and leaderboard rows should carry for a MethodInfo: its plain
    name when that resolves to this very class, else its qualified ``plugin:method`` name."""
    listed = getattr(info, "listed_name", "")
    if listed:
        return listed
    same = load_methods().get(info.cls.name)
    if same is not None and same.cls is info.cls:
        return info.cls.name
    return getattr(info, "qualified", "") or qualify(info.plugin, info.cls.name)


# --- loaders, task folders, corpora -----------------------------------------------------------

def _first_wins(kind: str, hook: str, name_of: Any) -> dict[str, Any]:
    """Items of a hook by name; on a clash a built-in wins, else the first plugin; the loser warns."""
    statuses = {s.name: s for s in get_registry().plugins}
    found: dict[str, tuple[str, Any]] = {}
    for plugin_name, item in _collect(hook):
        status = statuses[plugin_name]
        try:
            name = name_of(item)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            status.errors.append(f"{hook} returned an item without a name ({_exception_line(exc)}): {item!r}"[:300])
            continue
        if not isinstance(name, str) or not name:
            status.errors.append(f"{hook} returned an item without a str name: {item!r}"[:300])
            continue
        if name in found:
            owner = found[name][0]
            if statuses[plugin_name].builtin and not statuses[owner].builtin:
                statuses[owner].warnings.append(f"{kind} {name!r} is also provided by the built-in plugin "
                                                f"{plugin_name!r}, which keeps it; this plugin's is ignored")
                statuses[owner].provides.remove(f"{kind}:{name}")
            else:
                status.warnings.append(f"{kind} {name!r} is already provided by plugin {owner!r}; this plugin's "
                                       "is ignored")
                continue
        found[name] = (plugin_name, item)
        status.provides.append(f"{kind}:{name}")
    return {name: item for name, (_, item) in found.items()}


@lru_cache(maxsize=1)
def load_loaders() -> dict[str, Any]:
    """Registered dataset loaders by name -> DatasetLoader."""
    return _first_wins("dataset", "ctbench_register_loaders", lambda loader: loader.name)


@lru_cache(maxsize=1)
def load_task_dirs() -> list[Path]:
    out = []
    statuses = {s.name: s for s in get_registry().plugins}
    for plugin_name, p in _collect("ctbench_register_task_dirs"):
        try:
            out.append(Path(p))
        except TypeError:
            statuses[plugin_name].errors.append(f"ctbench_register_task_dirs returned {p!r}, not a path"[:300])
    return out


@lru_cache(maxsize=1)
def load_corpora() -> dict[str, Any]:
    return _first_wins("corpus", "ctbench_register_corpora", lambda item: getattr(item, "name", None) or item[0])


def load_all() -> Registry:
    """Call every hook once (so each plugin's status is complete) and return the registry."""
    load_methods(), load_loaders(), load_task_dirs(), load_corpora()
    return get_registry()


def problem_lines() -> list[str]:
    """One line per problem of the plugins loaded so far (failed, skipped, clashing, disabled ...)."""
    reg = get_registry()
    lines = [f"warning: {w}" for w in reg.warnings]
    seen: set[str] = set()
    for s in reg.plugins:
        if s.disabled:
            lines.append(f"note: plugin {s.name!r} ({_dist_label(s)}) is disabled by {DISABLE_ENV}"
                         + (" (a built-in plugin: its methods are unavailable)" if s.builtin else ""))
            continue
        if not s.ok:
            lines.append(f"warning: plugin {s.name!r} ({s.module}) failed to load: {s.error}")
            continue
        for e in s.errors:
            lines.append(f"error: plugin {s.name!r}: {e}")
        for w in s.warnings:
            if w in seen:
                continue
            seen.add(w)
            lines.append(f"warning: plugin {s.name!r}: {w}")
    return lines


def get_loader(name: str) -> Any:
    from ctbench.names import did_you_mean

    loaders = load_loaders()
    if name not in loaders:
        raise UnknownName(f"unknown dataset {name!r}{did_you_mean(name, loaders)}; known: {', '.join(loaders)}")
    return loaders[name]
