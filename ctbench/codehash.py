"""The hash of a method's code, part of every record's identity (so changed code never reuses
old records, even when its ``version`` was not bumped).

The code of a method class is every Python file of its top-level package (``ctbench_classical``
for ``ctbench_classical.pds.PDS``; the module alone when it is not in a package), plus the
ctbench modules those files import, transitively (``ctbench.pls``, ``ctbench.method``, ...):
found by reading the files' import statements, not by running them. Third-party libraries
(numpy, scikit-learn, torch) are not hashed; their versions are in each record's environment.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any


def _package_files(module_name: str) -> list[Path]:
    """The .py files of ``module_name``'s top-level package (or the module's own file)."""
    top = module_name.split(".")[0]
    mod = sys.modules.get(top)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        spec = importlib.util.find_spec(top)
        path = spec.origin if spec is not None else None
    if path is None:
        return []
    path = Path(path)
    if path.name == "__init__.py":
        return sorted(p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [path]


def _ctbench_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, package: str) -> set[str]:
    """The ctbench module names a file imports (absolute and relative forms)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in out if n == "ctbench" or n.startswith("ctbench.")}


def _module_of(path: Path) -> str:
    """A dotted package name for resolving relative imports inside ``path``."""
    parts = [path.stem] if path.name != "__init__.py" else []
    d = path.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts[:-1] if path.name != "__init__.py" else parts) or path.stem


def files_of(cls: Any) -> list[Path]:
    """The files whose bytes make up :func:`method_code_hash` of ``cls``."""
    return _files(cls.__module__)


def _files(module_name: str) -> list[Path]:
    files = set(_package_files(module_name))
    todo = list(files)
    while todo:
        f = todo.pop()
        for name in _imports(f, _module_of(f)):
            target = _ctbench_file(name)
            if target is not None and target not in files:
                files.add(target)
                todo.append(target)
    return sorted(files, key=_label)


@lru_cache(maxsize=None)
def _hash_of(module_name: str) -> str:
    h = hashlib.sha256()
    for f in _files(module_name):
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(f"{_label(f)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def _label(path: Path) -> str:
    """A location-independent name for a file (its path inside its top-level package)."""
    parts = [path.name]
    d = path.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return "/".join(parts)


def method_code_hash(cls: Any) -> str:
    """16 hex digits identifying the code a method class runs (module docstring)."""
    return _hash_of(cls.__module__)
