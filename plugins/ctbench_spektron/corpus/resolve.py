"""Find a dataset file in the offline mirror and verify its sha256.

Uses ``ctbench.data.mirror.resolve`` (--data-dir, $CTBENCH_DATA, the user cache, download)
when it is importable, and a small local resolver otherwise. When neither --data-dir nor
$CTBENCH_DATA is given, the shared mirror /work/shared/datasets is tried as the default folder.
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
    folder: str | Path | None = explicit_dir
    if folder is None and not os.environ.get("CTBENCH_DATA") and Path(DEFAULT_DATA_DIR).is_dir():
        folder = DEFAULT_DATA_DIR
    try:
        from ctbench.data.mirror import resolve as mirror_resolve
        from ctbench.data.registry import DataFile
    except ImportError:  # an older ctbench without the mirror module
        mirror_resolve = None
    if mirror_resolve is not None:
        return Path(mirror_resolve(DataFile(relpath=relpath, sha256=sha256), folder))
    root = data_dir(folder)
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
