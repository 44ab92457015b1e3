"""Find a dataset file in the offline mirror and verify its sha256.

A local stand-in until ``ctbench.data.mirror.resolve`` exists (another part of ctbench):
the data folder is ``--data-dir``, else env ``CTBENCH_DATA``, else /work/shared/datasets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ctbench.data import DataError

DEFAULT_DATA_DIR = "/work/shared/datasets"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The mirror folder: the explicit argument, else $CTBENCH_DATA, else the shared default."""
    return Path(explicit or os.environ.get("CTBENCH_DATA") or DEFAULT_DATA_DIR).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_file(relpath: str, sha256: str, explicit_dir: str | Path | None = None) -> Path:
    """Local path of ``relpath`` in the mirror after checking its sha256 (DataError otherwise)."""
    try:  # prefer ctbench's own resolver once it exists
        from ctbench.data.mirror import resolve as _resolve  # type: ignore[attr-defined]
    except Exception:
        _resolve = None
    if _resolve is not None:
        try:
            return Path(_resolve(relpath, sha256=sha256, data_dir=explicit_dir))
        except TypeError:  # a different signature: fall back to the local resolver
            pass
    root = data_dir(explicit_dir)
    path = root / relpath
    if not path.is_file():
        raise DataError(
            f"{relpath} not found under {root}; pass --data-dir or set CTBENCH_DATA to the dataset mirror folder"
        )
    got = sha256_file(path)
    if got != sha256:
        raise DataError(f"{path}: sha256 {got[:16]}... does not match the expected {sha256[:16]}...; the file is corrupt or a different version")
    return path


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
