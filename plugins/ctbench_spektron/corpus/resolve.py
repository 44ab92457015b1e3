"""Find a corpus file (mirror folder, user cache, or download) and verify its sha256.

A thin wrapper over ``ctbench.data.mirror.resolve``: --data-dir, $CTBENCH_DATA, the user cache,
then the canonical address where one exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctbench.data.mirror import resolve
from ctbench.data.registry import DataFile


def resolve_file(relpath: str, sha256: str, explicit_dir: str | Path | None = None, url: str | None = None) -> Path:
    """Local, checksum-verified path of ``relpath`` (DataError with a one-line hint otherwise)."""
    return Path(resolve(DataFile(relpath=relpath, sha256=sha256, url=url), str(explicit_dir) if explicit_dir else None))


def cache_dir() -> Path:
    """Where parsed corpora are cached: $CTBENCH_CACHE, else $XDG_CACHE_HOME/ctbench, else ~/.cache/ctbench."""
    env = os.environ.get("CTBENCH_CACHE")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctbench"
    path = base / "spektron"
    path.mkdir(parents=True, exist_ok=True)
    return path
