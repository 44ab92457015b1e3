"""Which class a check is about: a class, a registered name, or ``package.module:Class``.

``package.module:Class`` names a class that need not be installed as a plugin: the module is
imported from the current directory or ``PYTHONPATH`` (as ``python -m`` would). A registered
name may itself contain a colon (``plugin:method``, for a method whose name another plugin also
uses): a spec whose part before the colon is the entry-point name of a loaded plugin is a
registered name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


class MethodImportError(LookupError):
    """``package.module:Class`` could not be imported, or is not a TransferMethod (one-line message)."""


def is_import_path(spec: str) -> bool:
    """True when ``spec`` is ``module:Class`` rather than a registered name (or ``plugin:method``)."""
    if ":" not in spec:
        return False
    left, right = spec.split(":", 1)
    if not left or not right:
        return True
    try:
        from ctbench.plugins import get_registry

        plugins = {p.name for p in get_registry().plugins}
    except Exception:  # pragma: no cover - a registry that cannot load: treat as an import path
        plugins = set()
    return left not in plugins


def import_method(spec: str) -> type:
    """Import ``package.module:Class`` (from the current directory or ``PYTHONPATH``) and return
    the class; MethodImportError with a one-line reason otherwise."""
    from ctbench.method import TransferMethod

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise MethodImportError(f"{spec!r}: expected package.module:Class")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the current directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if missing == module_name or module_name.startswith(missing + "."):
            raise MethodImportError(
                f"cannot import {spec!r}: no module named {missing!r} in the current directory or on PYTHONPATH"
            ) from None
        raise MethodImportError(f"cannot import {spec!r}: importing {module_name!r} failed: {_line(exc)}") from None
    except BaseException as exc:  # SyntaxError, SystemExit, anything a module does at import
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise MethodImportError(f"cannot import {spec!r}: importing {module_name!r} raised {_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            from ctbench.names import did_you_mean

            known = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, TransferMethod)
                           and v is not TransferMethod)
            raise MethodImportError(
                f"module {module_name!r} has no class {attr!r}{did_you_mean(part, known)}"
                + (f"; its TransferMethod classes: {', '.join(known)}" if known else "")
            )
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, TransferMethod)):
        what = f"a {type(obj).__name__}" if not isinstance(obj, type) else f"class {obj.__qualname__}"
        raise MethodImportError(f"{spec!r} is {what}, not a subclass of ctbench.method.TransferMethod")
    return obj


def _line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg and msg[0] else type(exc).__name__


def resolve_method(spec: Any) -> tuple[type, str]:
    """(class, where it comes from) of a class, a MethodInfo, a registered name or ``module:Class``."""
    if isinstance(spec, str):
        if is_import_path(spec):
            return import_method(spec), f"module {spec.partition(':')[0]}, not installed"
        from ctbench.plugins import get_method

        info = get_method(spec)
        return info.cls, f"plugin {info.plugin}"
    cls = getattr(spec, "cls", spec)  # a MethodInfo
    if not isinstance(cls, type):
        raise TypeError(f"expected a method class, a registered method name or 'module:Class', got {spec!r}")
    plugin = getattr(spec, "plugin", "")
    return cls, f"plugin {plugin}" if plugin else f"module {cls.__module__}"
