"""The local result store: one JSON record per (method config, task version, N, rep).

Records live at ``<results>/runs/<task>/<method>/<key>.json``; the key is a hash of the
canonical JSON of what defines the run, so re-running skips finished work and a killed sweep
resumes. Writes are atomic (temporary file, then rename): a record is either whole or absent;
a write the OS refuses (disk full, read-only) is a one-line :class:`StoreError`.
Failed runs are stored with status ``failed`` and their traceback, and are retried next time.

Record files are read defensively: one that is unreadable, not JSON or malformed
(:func:`record_problem`) is skipped with a warning when listing the store, and treated as absent
(so the run is done again and its file replaced) when planning. Folder names come from task and
method names made safe (:func:`_safe`): a record is never written outside ``runs/``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

RECORD_METRICS = ("rmsep", "r2", "rpd", "bias", "sep")
"""The metrics every ok record holds per property and as their mean (``ctbench.metrics.METRICS``)."""


class StoreError(Exception):
    """The store cannot be written (disk full, read-only, no permission); one line says what to do."""


class RecordWarning(UserWarning):
    """A record file was skipped (unreadable or malformed); the message names the file and why."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def run_identity(method: str, method_version: str, params: dict, task: str, task_version: str,
                 n_shots: int, rep: int, seed: int, *, card_sha256: str, code_sha256: str) -> dict[str, Any]:
    """What defines a run; its hash is the record key. ``card_sha256`` (the card's text) and
    ``code_sha256`` (:func:`ctbench.codehash.method_code_hash`) make a changed card or changed
    method code produce new records even when nobody bumped a version."""
    return {
        "card_sha256": str(card_sha256),
        "code_sha256": str(code_sha256),
        "method": method,
        "method_version": str(method_version),
        "params": json.loads(canonical_json(params)),
        "task": task,
        "task_version": str(task_version),
        "n_shots": int(n_shots),
        "rep": int(rep),
        "seed": int(seed),
    }


def record_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:24]


def params_hash(params: dict) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:10]


# --- record validation ------------------------------------------------------------------

def _is_num(v: Any) -> bool:
    """A JSON number (NaN and infinities included: a record may hold them); booleans are not numbers."""
    return type(v) is float or type(v) is int


def _is_int(v: Any) -> bool:
    return type(v) is int


_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def _kind(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)


def _shown(v: Any) -> str:
    """How a wrong value is named in a message: its JSON type, and the value when it is short."""
    if v is None or isinstance(v, (dict, list)):
        return _kind(v)
    text = json.dumps(v)
    return f"{_kind(v)} {text}" if len(text) <= 40 else _kind(v)


def _field(d: dict, k: str) -> str:
    return _shown(d[k]) if k in d else "missing"


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` (a parsed record file) cannot be used, or None when it can.

    Checks every field the leaderboard, the report, ``bench sweep`` and run planning read, with
    its type and shape, so that a record that passes never makes them fail: ``identity`` (task
    and method names, versions, N, repetition, seed, parameters), ``status``, ``method``, the task
    summary, the split, the error of a failed record, timings; for an ok record its metrics (per
    property and mean, every metric of ``RECORD_METRICS`` a number) and its residuals (one row
    of numbers per test row, one column per property, a sample index per row). Booleans are not
    numbers. What a record holds beyond that is not checked. Consistency between records (the
    same properties for every record of a task, the same test rows on one split) is the
    leaderboard's to check (``ctbench.leaderboard.consistent_records``).
    """
    if not isinstance(rec, dict):
        return f"not a ctbench record (the file holds {_kind(rec)}, not an object)"
    ident = rec.get("identity")
    if not isinstance(ident, dict):
        return f"identity is {_kind(ident)}, not an object" if "identity" in rec else "no identity"
    for k in ("task", "method"):
        if not isinstance(ident.get(k), str) or not ident[k]:
            return f"identity.{k} is {_field(ident, k)}, not a name"
    for k in ("task_version", "method_version"):
        if not (isinstance(ident.get(k), str) or _is_int(ident.get(k))):
            return f"identity.{k} is {_field(ident, k)}, not a version"
    for k in ("n_shots", "rep", "seed"):
        v = ident.get(k)
        if not _is_int(v) or v < 0:
            return f"identity.{k} is {_field(ident, k)}, not a whole number >= 0"
    if not isinstance(ident.get("params"), dict):
        return f"identity.params is {_field(ident, 'params')}, not an object"
    status = rec.get("status")
    if status not in ("ok", "failed") or not isinstance(status, str):
        return f"status is {_field(rec, 'status')}, not \"ok\" or \"failed\""
    method = rec.get("method")
    if not isinstance(method, dict):
        return f"method is {_kind(method)}, not an object" if "method" in rec else "no method"
    if not isinstance(method.get("name"), str) or not method["name"]:
        return f"method.name is {_field(method, 'name')}, not a name"
    for k in ("user_params", "tags"):
        if method.get(k) is not None and not isinstance(method[k], dict):
            return f"method.{k} is {_kind(method[k])}, not an object"
    if "task" in rec:
        summary = rec["task"]
        if not isinstance(summary, dict):
            return f"task is {_kind(summary)}, not an object"
        props = summary.get("properties")
        if props is not None and not (isinstance(props, list) and all(isinstance(p, str) for p in props)):
            return "task.properties is not a list of names"
    split = rec.get("split")
    if split is not None:
        if not isinstance(split, dict):
            return f"split is {_kind(split)}, not an object"
        for k in ("hash", "test_rows_hash"):
            if k in split and not isinstance(split[k], str):
                return f"split.{k} is {_kind(split[k])}, not a string"
    error = rec.get("error")
    if error is not None:
        if not isinstance(error, dict):
            return f"error is {_kind(error)}, not an object"
        if error.get("message") is not None and not isinstance(error["message"], str):
            return f"error.message is {_kind(error['message'])}, not a string"
    timings = rec.get("timings")
    if timings is not None:
        if not isinstance(timings, dict) or not all(_is_num(v) for v in timings.values()):
            return "timings is not an object of numbers"
    outer = rec.get("outer")
    if outer is not None:
        if not isinstance(outer, dict) or ("index" in outer and not _is_int(outer["index"])):
            return "outer is not an object with a whole-number index"
    if status == "ok":
        return _ok_problem(rec)
    return None


def _ok_problem(rec: dict[str, Any]) -> str | None:
    """The parts only an ok record must have: split, metrics, residuals."""
    split = rec.get("split")
    if not isinstance(split, dict) or not isinstance(split.get("test_rows_hash"), str):
        return "status is ok but split.test_rows_hash is missing"
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        return f"status is ok but metrics is {_field(rec, 'metrics')}"
    per = metrics.get("per_property")
    if not isinstance(per, dict) or not per:
        return "metrics.per_property is " + ("missing" if "per_property" not in metrics else
                                             "empty" if per == {} else f"{_kind(per)}, not an object")
    for where, vals in [*((f"per_property.{p}", v) for p, v in per.items()), ("mean", metrics.get("mean"))]:
        if not isinstance(vals, dict):
            return f"metrics.{where} is {_field(metrics, 'mean') if where == 'mean' else _kind(vals)}, not an object"
        for m in RECORD_METRICS:
            if not _is_num(vals.get(m)):
                return f"metrics.{where}.{m} is {_field(vals, m)}, not a number"
    res = rec.get("residuals")
    if res is None:
        return None
    if not isinstance(res, dict):
        return f"residuals is {_kind(res)}, not an object"
    values, sample = res.get("values"), res.get("sample")
    if not isinstance(values, list) or not values or set(map(type, values)) != {list}:
        return "residuals.values is not a non-empty list of rows"
    widths = set(map(len, values))
    if len(widths) != 1:
        return f"residuals.values has rows of different lengths ({', '.join(map(str, sorted(widths)))})"
    if not set(map(type, chain.from_iterable(values))) <= {float, int, type(None)}:  # null: no reference value
        return "residuals.values holds something other than numbers"
    if not isinstance(sample, list) or set(map(type, sample)) != {int} or min(sample) < 0:
        return "residuals.sample is not a list of sample indices (whole numbers >= 0)"
    if len(sample) != len(values):
        return f"residuals.sample has {len(sample)} entries for {len(values)} rows of residuals.values"
    # the names of the columns, found as ctbench.stats.residual_columns finds them
    names = res.get("properties") or (rec.get("task") or {}).get("properties") or list(per)
    if not isinstance(names, list) or not all(isinstance(p, str) for p in names):
        return "residuals.properties is not a list of names"
    width = widths.pop()
    if len(names) != width:
        return f"residuals.values has {width} column(s) for {len(names)} properties ({', '.join(names)})"
    missing = [p for p in per if p not in names]
    if missing:
        return f"residuals have no column for {', '.join(missing)}"
    return None


class Store:
    def __init__(self, results_dir: Path | str):
        self.root = Path(results_dir)
        self.runs = self.root / "runs"
        self._made: set[Path] = set()
        self.rejected: dict[Path, str] = {}
        """Record files :meth:`get` found unusable (path -> why); their runs are done again."""

    def path_for(self, identity: dict[str, Any]) -> Path:
        """``runs/<task>/<method>/<key>.json``; never outside ``runs/`` whatever the names hold."""
        path = self.runs / _safe(identity["task"]) / _safe(identity["method"]) / f"{record_key(identity)}.json"
        runs = os.path.abspath(self.runs)
        if os.path.commonpath([runs, os.path.abspath(path)]) != runs:  # _safe makes this impossible
            raise StoreError(f"refusing to write a record outside {self.runs}: {path}")
        return path

    def get(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The stored record of ``identity``, or None when there is none or it cannot be used
        (unreadable, not JSON, not a valid record, another run's record): the run is then done
        again and its record replaces the file. Such a file gets one :class:`RecordWarning` and
        is listed in ``rejected`` with why."""
        path = self.path_for(identity)
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            self._reject(path, _read_problem(exc))
            return None
        problem = record_problem(rec)
        if problem is None and record_key(rec["identity"]) != record_key(identity):
            problem = "its identity is not the one its file name stands for"
        if problem is not None:
            self._reject(path, problem)
            return None
        return rec

    def _reject(self, path: Path, problem: str) -> None:
        if path not in self.rejected:  # once per file
            warnings.warn(f"record {path} cannot be used ({problem}); its run is done again and the file replaced",
                          RecordWarning, stacklevel=3)
        self.rejected[path] = problem

    def is_done(self, identity: dict[str, Any]) -> bool:
        rec = self.get(identity)
        return rec is not None and rec.get("status") == "ok"

    def write(self, record: dict[str, Any]) -> Path:
        """Write a record atomically under its key (a temporary file, then a rename: nothing
        half-written is ever left). An OS error (disk full, read-only, no permission) becomes a
        one-line :class:`StoreError`."""
        path = self.path_for(record["identity"])
        # compact: the C encoder (indent would take the pure-Python one, 10x slower)
        data = json.dumps(record, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n"
        try:
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            fd, tmp = new_temp_file(path.parent, prefix=".tmp-", suffix=".json")
        except OSError as exc:
            raise StoreError(_write_message(path, exc)) from exc
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, path)  # atomic: a killed process leaves the old record or none, never half of one
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StoreError(_write_message(path, exc)) from exc
            raise
        return path

    def check_writable(self) -> None:
        """Write and remove a probe file in ``runs/`` (or, when it does not exist yet, in its
        nearest existing parent folder, so nothing is created: concurrent sweeps probing one new
        store must not remove each other's folders); :class:`StoreError` (one line) when that
        fails. Call it before any compute, so a sweep never runs for nothing."""
        where = self.runs
        while not where.exists() and where != where.parent:
            where = where.parent
        tmp = None
        try:
            if not where.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(where))
            fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-", suffix=".json", dir=where)
            with os.fdopen(fd, "w") as fh:
                fh.write("{}\n")
        except OSError as exc:
            raise StoreError(f"results directory {self.root} is not writable ({_os_reason(exc)}): choose another "
                             f"with --results-dir or fix its permissions") from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def iter_records(self, task: str | None = None, warn: bool = True) -> Iterator[dict[str, Any]]:
        """Every usable record; an unreadable or malformed one (:func:`record_problem`) is
        skipped with a :class:`RecordWarning` naming the file and the problem."""
        base = self.runs / _safe(task) if task else self.runs
        if not base.exists():
            return
        for path in sorted(base.rglob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            try:
                rec = json.loads(path.read_text())
                problem = record_problem(rec)
            except (OSError, ValueError, RecursionError) as exc:
                problem = _read_problem(exc)
            if problem is not None:
                if warn:
                    warnings.warn(f"skipping corrupt record {path}: {problem}", RecordWarning, stacklevel=2)
                continue
            rec["_path"] = str(path)
            yield rec


def new_temp_file(folder: Path | str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
    """Create a new, uniquely named file in ``folder`` for writing and return ``(fd, path)``, like
    :func:`tempfile.mkstemp` but with the permissions :func:`open` gives a new file (0666 less the
    umask, typically 0644) instead of mkstemp's 0600: the file is renamed into place as a record,
    so it must be readable like every other file of the store (tuned parameters, published
    leaderboards, the report)."""
    import secrets

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(folder, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(folder))


def _read_problem(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not a text file ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc})"
    if isinstance(exc, OSError):
        return f"cannot be read ({_os_reason(exc)})"
    return str(exc)


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


def _write_message(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        todo = "free space or choose another --results-dir"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "fix its permissions or choose another --results-dir"
    else:
        todo = "fix that or choose another --results-dir"
    return (f"cannot write record {path}: {_os_reason(exc)}; {todo}, then run the same command again "
            f"(finished records are kept)")


_MAX_NAME = 120


def _safe(name: Any) -> str:
    """A task or method name as one folder name: letters, digits and ``-_.+`` are kept, anything
    else becomes ``_``; names of dots only (``.``, ``..``) and the empty name are spelt with
    ``%2E`` / ``%`` (``%`` is never otherwise produced, so no other name maps there), and a very
    long name is cut and given a hash (so a folder name always fits)."""
    out = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name))
    if not out.strip("."):
        out = "%2E" * len(out) or "%"
    from ctbench.names import fit_name

    return fit_name(out, str(name), _MAX_NAME)
