"""Finding a dataset file on this machine, checksum-verified, or downloading it.

A ``DataFile`` (relpath, sha256, url) is looked for, in this order: the explicit ``data_dir``
(the CLI's ``--data-dir``), the mirror folder named by ``CTBENCH_DATA``, the user cache
(``CTBENCH_CACHE``, else ``$XDG_CACHE_HOME/ctbench``, else ``~/.cache/ctbench``); when none has
it and the file has a ``url``, it is downloaded into the cache (unless ``CTBENCH_OFFLINE`` is
set). Every file is sha256-verified before use; hashes are memoized per process by
(path, size, mtime), so a large file is hashed once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ctbench.data.registry import DataFile
from ctbench.data.spectra import DataError

log = logging.getLogger("ctbench.data")

ENV_DATA = "CTBENCH_DATA"
ENV_CACHE = "CTBENCH_CACHE"
ENV_OFFLINE = "CTBENCH_OFFLINE"
CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
POINT_AT_MIRROR = "point at a mirror folder with --data-dir DIR or CTBENCH_DATA=DIR"

_hash_memo: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, streamed in chunks; memoized by (path, size, mtime) per process."""
    path = Path(path)
    try:
        key = _stat_key(path)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    value = digest.hexdigest()
    with _hash_lock:
        _hash_memo[key] = value
    return value


def cache_dir() -> Path:
    """The user cache folder for downloaded files (it need not exist yet)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ctbench"


@dataclass(frozen=True)
class Place:
    """One folder where a data file may be: a label for messages ('--data-dir') and the folder."""

    label: str
    folder: Path | None  # None: not configured (e.g. CTBENCH_DATA unset)

    def describe(self) -> str:
        if self.folder is None:
            return f"{self.label} (not set)"
        if not self.folder.is_dir():
            return f"{self.label} {self.folder} (no such folder)"
        return f"{self.label} {self.folder}"


def search_places(data_dir: str | os.PathLike[str] | None = None) -> list[Place]:
    """The folders searched, in order: --data-dir, CTBENCH_DATA, cache."""
    places: list[Place] = []
    if data_dir is not None:
        places.append(Place("--data-dir", Path(data_dir).expanduser()))
    env = os.environ.get(ENV_DATA)
    places.append(Place(ENV_DATA, Path(env).expanduser() if env else None))
    places.append(Place("cache", cache_dir()))
    return places


@dataclass(frozen=True)
class Location:
    """Where a file was found (path and the place's label), or path None when nowhere."""

    file: DataFile
    path: Path | None
    label: str
    searched: tuple[Place, ...]


def locate(file: DataFile, data_dir: str | os.PathLike[str] | None = None) -> Location:
    """The first place holding ``file.relpath`` (not verified, nothing downloaded)."""
    places = search_places(data_dir)
    for place in places:
        if place.folder is None:
            continue
        candidate = place.folder / file.relpath
        if candidate.is_file():
            return Location(file, candidate, place.label, tuple(places))
    return Location(file, None, "missing", tuple(places))


def mismatch_message(file: DataFile, where: str, actual: str) -> str:
    return (
        f"checksum mismatch for {file.relpath} at {where}: expected sha256 {file.sha256[:12]}..., "
        f"got {actual[:12]}...; replace the file with the published one before any run"
    )


def verify(file: DataFile, path: Path) -> None:
    """Raise DataError (one line) when ``path`` does not have ``file``'s sha256."""
    actual = sha256_file(path)
    if actual != file.sha256.lower():
        raise DataError(mismatch_message(file, str(path), actual))


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def download(file: DataFile, dest: Path) -> Path:
    """Fetch ``file.url`` into ``dest`` via a temp file beside it; verify, then rename atomically."""
    import urllib.error
    import urllib.request

    if not file.url:
        raise DataError(f"{file.relpath} has no download address")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    log.info("downloading %s from %s", file.relpath, file.url)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(file.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != file.sha256.lower():
            raise DataError(mismatch_message(file, file.url, actual))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DataError):
            raise
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DataError(f"download of {file.relpath} from {file.url} failed: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with _hash_lock:
        _hash_memo[_stat_key(dest)] = actual
    return dest


def resolve(file: DataFile, data_dir: str | os.PathLike[str] | None = None, *, allow_download: bool = True) -> Path:
    """The verified local path of ``file``: --data-dir, CTBENCH_DATA, cache, then download.

    Raises DataError (one line) on a checksum mismatch or when the file cannot be had.
    """
    found = locate(file, data_dir)
    if found.path is not None:
        verify(file, found.path)
        return found.path
    searched = ", ".join(p.describe() for p in found.searched)
    if not file.url:
        why = "no download address is known"
    elif not allow_download:
        why = "downloading not allowed here"
    elif _offline():
        why = f"downloads disabled by {ENV_OFFLINE}"
    else:
        dest = cache_dir() / file.relpath
        try:
            return download(file, dest)
        except DataError as exc:
            if "checksum mismatch" in str(exc):
                raise
            why = str(exc)
    raise DataError(f"data file {file.relpath} not found (looked in {searched}; {why}); {POINT_AT_MIRROR}")
