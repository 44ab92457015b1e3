"""The local result store: one JSON record per (method config, task version, N, rep).

Records live at ``<results>/runs/<task>/<method>/<key>.json``; the key is a hash of the
canonical JSON of what defines the run, so re-running skips finished work and a killed sweep
resumes. Writes are atomic (temporary file, then rename): a record is either whole or absent.
Failed runs are stored with status ``failed`` and their traceback, and are retried next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3


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


class Store:
    def __init__(self, results_dir: Path | str):
        self.root = Path(results_dir)
        self.runs = self.root / "runs"
        self._made: set[Path] = set()

    def path_for(self, identity: dict[str, Any]) -> Path:
        return self.runs / _safe(identity["task"]) / _safe(identity["method"]) / f"{record_key(identity)}.json"

    def get(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path_for(identity)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, identity: dict[str, Any]) -> bool:
        rec = self.get(identity)
        return rec is not None and rec.get("status") == "ok"

    def write(self, record: dict[str, Any]) -> Path:
        """Write a record atomically under its key."""
        path = self.path_for(record["identity"])
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        # compact: the C encoder (indent would take the pure-Python one, 10x slower)
        data = json.dumps(record, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, path)  # atomic: a killed process leaves the old record or none, never half of one
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def iter_records(self, task: str | None = None, warn: bool = True) -> Iterator[dict[str, Any]]:
        """Every readable record (a corrupt one is skipped with a warning)."""
        base = self.runs / _safe(task) if task else self.runs
        if not base.exists():
            return
        for path in sorted(base.rglob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            try:
                rec = json.loads(path.read_text())
                if not isinstance(rec, dict) or "identity" not in rec or "status" not in rec:
                    raise ValueError("not a ctbench record")
            except (OSError, ValueError) as exc:
                if warn:
                    warnings.warn(f"skipping corrupt record {path}: {exc}", stacklevel=2)
                continue
            rec["_path"] = str(path)
            yield rec


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name))
