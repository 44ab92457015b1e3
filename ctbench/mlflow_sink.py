"""Copying records into MLflow off the compute path: one run per record, one experiment per task.

The sweep hands each finished record to :meth:`MlflowSink.submit` and goes on; a writer thread
copies what has gathered, in batches, one hold of the results dir's MLflow lock each:

- **the SQLite store ctbench manages** (the default): one SQL transaction per batch inserts the
  runs with their tags, params, metrics and latest metrics (and a missing experiment), in the
  tables of the installed MLflow's schema, as MLflow's own store writes them (a test holds the
  two to the same result). The file must be at that MLflow's schema revision
  (``tracking.schema_current``; a new file is a copy of an empty one MLflow made) and its columns
  are checked before the first write; when the revision differs, MLflow's client migrates or
  repairs the file first, and when the columns are not those known here the writer uses MLflow's
  client for every run. So a sweep imports MLflow (a second of CPU) only when MLflow has to
  create, migrate or repair something.
- **a tracking server or another database** (``MLFLOW_TRACKING_URI``): MLflow's client, one
  ``log_batch`` per run.

Each record's run carries ``rel_rmsep`` (RMSEP / full_recalibration's on the same outer test
split, geometric mean over the properties) once that split's full_recalibration record is in the
store: computed from the store's reference records when the run is written, or added at the end
of a later command (:meth:`MlflowSink._fill_relative`). A new experiment gets the tags of
``tracking.experiment_tags`` (docs/tracking.md, "In MLflow's UI").

What the faults issue asks of MLflow holds for both: runs are checked and written under the lock,
a journal tells concurrent sweeps what the others wrote, a run is complete only when it carries
the record's content hash (the SQL path writes a run in one transaction, so it is complete or
absent), runs left half-written or twice are deleted and written again, and any MLflow fault is
one warning after which the sink is off: records are never lost, and the next run copies what
MLflow lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.store import record_key
from ctbench.tracking import (
    JOURNAL_NAME,
    SQLITE_BUSY_S,
    TrackingUnavailable,
    _connect,
    _first_line,
    _no_stray_folder,
    artifact_location,
    experiment_id,
    experiment_name,
    experiment_tags,
    open_client,
    preflight,
    sqlite_path,
    tracking_lock,
    tracking_uri,
)

KEY_TAG = "ctbench.record_key"
SHA_TAG = "ctbench.record_sha"
BATCH_MAX = 500
"""Records per lock hold (a concurrent sweep writes in between)."""
GATHER_S = 0.5
"""How long the writer gathers records before writing them (one transaction per batch)."""
WRITER_NICE = 10
"""The writer thread's nice value (Linux): on a machine whose cores the workers fill, it copies in
their gaps and at the end instead of slowing them."""
SQL_BUSY_S = 10.0
"""How long one batch waits for another program's hold on the SQLite file before giving up."""


def record_sha(data: bytes) -> str:
    """The content hash of a record file's bytes (the run's tag that says which version it holds).
    The store writes canonical JSON and a newline, so this equals the hash of the canonical JSON
    of the record that earlier versions tagged: their runs stay current."""
    return hashlib.sha256(data.removesuffix(b"\n")).hexdigest()[:16]


def _finite(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def item(record: dict, path: Path | str, stored: bool = False) -> tuple[str, str, Path, bool]:
    """What the writer needs of a record to find its run: (task, key, file, stored before)."""
    return record["identity"]["task"], str(record.get("key") or record_key(record["identity"])), Path(path), stored


@dataclass
class Draft:
    """What one record becomes in MLflow."""

    key: str
    sha: str
    name: str
    status: str  # FINISHED or FAILED
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    artifact: Path
    data: bytes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


REL_METRIC = "rel_rmsep"
"""The headline metric of a record's run: RMSEP / RMSEP of full_recalibration on the same outer
test split, geometric mean over the properties (as the report computes it per record)."""
TEST_ROWS_TAG = "ctbench.test_rows_hash"
"""The record's outer test split (``split.test_rows_hash``): whose full_recalibration it is relative to."""
REFERENCE = "full_recalibration"


def _relative(rmsep: dict[str, float], reference: dict[str, float] | None) -> float | None:
    """The run's ``rel_rmsep`` (:func:`ctbench.metrics.relative_rmsep`, as the report computes
    it per record), or None when it is not a finite number (no reference on the split yet)."""
    from ctbench.metrics import relative_rmsep

    try:
        rel = relative_rmsep(rmsep, reference)
    except (TypeError, ValueError):
        return None
    return rel if math.isfinite(rel) else None


def _rmsep_of(record: dict) -> dict[str, float]:
    per = (record.get("metrics") or {}).get("per_property") or {}
    return {prop: vals.get("rmsep") for prop, vals in per.items() if isinstance(vals, dict)}


def _split_of(record: dict) -> tuple[str, str]:
    """(task version, test-rows hash) of a record: what its reference must share."""
    return str(record["identity"]["task_version"]), str((record.get("split") or {}).get("test_rows_hash", ""))


class References:
    """The RMSEP per property of full_recalibration (default parameters, ok records) per task and
    outer test split, read from the store's records (``runs/<task>/full_recalibration/``) once per
    task and kept up to date with the records that pass through the sink; the mean when several
    records share a split (as the report does)."""

    def __init__(self, results_dir: Path):
        self.results_dir = Path(results_dir)
        self._tasks: dict[str, dict[tuple[str, str], dict[str, dict[str, float]]]] = {}
        self._means: dict[str, dict[tuple[str, str], dict[str, float]]] = {}

    @staticmethod
    def usable(record: dict) -> bool:
        return (record.get("status") == "ok" and record["identity"]["method"] == REFERENCE
                and not (record.get("method") or {}).get("user_params") and bool(_split_of(record)[1])
                and bool(_rmsep_of(record)))

    def _task(self, task: str) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
        if task not in self._tasks:
            from ctbench.store import Store, _safe, record_problem

            found: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
            folder = Store(self.results_dir).runs / _safe(task) / _safe(REFERENCE)
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                if path.name.startswith(".tmp-"):
                    continue
                try:
                    rec = json.loads(path.read_bytes())
                except (OSError, ValueError, RecursionError):
                    continue
                if record_problem(rec) is None and rec["identity"]["task"] == task and self.usable(rec):
                    found.setdefault(_split_of(rec), {})[path.stem] = _rmsep_of(rec)
            self._tasks[task] = found
        return self._tasks[task]

    def add(self, record: dict, key: str) -> None:
        """A full_recalibration record the sink copies (before the records that need it)."""
        if self.usable(record):
            task = record["identity"]["task"]
            self._task(task).setdefault(_split_of(record), {})[key] = _rmsep_of(record)
            self._means.pop(task, None)

    def of_task(self, task: str) -> dict[tuple[str, str], dict[str, float]]:
        """(task version, test-rows hash) -> property -> mean RMSEP of full_recalibration."""
        if task not in self._means:
            out = {}
            for split, by_key in self._task(task).items():
                props: dict[str, list[float]] = {}
                for rmseps in by_key.values():
                    for prop, v in rmseps.items():
                        if type(v) in (int, float) and math.isfinite(v):
                            props.setdefault(prop, []).append(float(v))
                out[split] = {prop: sum(vs) / len(vs) for prop, vs in props.items()}
            self._means[task] = out
        return self._means[task]

    def relative(self, record: dict) -> float | None:
        """The record's relative RMSEP, or None (failed, or no reference on its split yet)."""
        if record.get("status") != "ok":
            return None
        return _relative(_rmsep_of(record), self.of_task(record["identity"]["task"]).get(_split_of(record)))


def draft(record: dict, path: Path, data: bytes, key: str, relative: float | None = None) -> Draft:
    """The run of one record: the identity as params, headline metrics per property and their
    mean (and ``rel_rmsep``, the relative RMSEP, when ``relative`` is given), timings, tags to
    find it (key, status, versions, split), the record file as artifact."""
    ident = record["identity"]
    params = {f"param.{k}": str(v)[:500] for k, v in sorted((ident.get("params") or {}).items())}
    params.update(method=str(ident["method"]), task=str(ident["task"]), n_shots=str(ident["n_shots"]),
                  rep=str(ident["rep"]), seed=str(ident["seed"]))
    metrics: dict[str, float] = {}
    m = record.get("metrics") or {}
    for name, value in (m.get("mean") or {}).items():
        metrics[name] = _finite(value)
    for prop, vals in (m.get("per_property") or {}).items():
        for name, value in (vals or {}).items():
            metrics[f"{prop}.{name}"] = _finite(value)
    for name, value in (record.get("timings") or {}).items():
        metrics[f"time.{name}"] = _finite(value)
    if relative is not None:
        metrics[REL_METRIC] = _finite(relative)
    name = f"{ident['method']}-N{ident['n_shots']}-rep{ident['rep']}"
    tags = {
        KEY_TAG: key,
        "ctbench.status": str(record["status"]),
        "ctbench.task_version": str(ident["task_version"]),
        "ctbench.method_version": str(ident["method_version"]),
        "ctbench.split_hash": str((record.get("split") or {}).get("hash", "")),
        TEST_ROWS_TAG: str((record.get("split") or {}).get("test_rows_hash", "")),
        "ctbench.transductive": str(record.get("transductive", False)),
        "mlflow.runName": name,
        "mlflow.note.content": "ctbench record",
        SHA_TAG: record_sha(data),  # last: a run with its hash is complete
    }
    return Draft(key, tags[SHA_TAG], name, "FINISHED" if record["status"] == "ok" else "FAILED", tags, params, metrics,
                 path, data)


def _table_columns(con, table: str) -> dict[str, tuple]:
    """Column name -> ``PRAGMA table_info`` row."""
    return {row[1]: row for row in con.execute(f"PRAGMA table_info({table})")}


def _required(column: tuple) -> bool:
    """A ``PRAGMA table_info`` row that an insert must fill: NOT NULL (or a primary key that is
    not SQLite's row id) without a default."""
    _, _, kind, notnull, default, pk = column
    return (bool(notnull) or (bool(pk) and kind.upper() != "INTEGER")) and default is None


def _local_folder(uri: str) -> Path | None:
    """The local folder of a ``file:`` URI or a plain path; None for remote artifact stores."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


def _store_artifact(artifact_uri: str, path: Path, data: bytes) -> None:
    """The record file as the run's artifact (``data``: its bytes, as hashed)."""
    folder = _local_folder(artifact_uri)
    if folder is not None:
        try:
            folder.mkdir()
        except FileNotFoundError:
            folder.mkdir(parents=True)
        except FileExistsError:
            pass
        (folder / path.name).write_bytes(data)
    else:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(artifact_uri).log_artifact(str(path))


# --- the two ways of writing runs ------------------------------------------------------------------


class SqlRuns:
    """Runs written straight into the SQLite file of the installed MLflow's schema, a batch per
    transaction. MLflow's client is connected only to create an experiment."""

    WRITTEN = {
        "runs": ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
                 "start_time", "end_time", "deleted_time", "source_version", "lifecycle_stage", "artifact_uri",
                 "experiment_id"),
        "tags": ("key", "value", "run_uuid"),
        "params": ("key", "value", "run_uuid"),
        "metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
        "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
        "experiment_tags": ("key", "value", "experiment_id"),  # with a new experiment (tracking.experiment_tags)
    }
    READ = {"experiments": ("experiment_id", "name", "artifact_location", "lifecycle_stage")}

    def __init__(self, results_dir: Path, path: Path, client=None):
        import sqlite3

        self.results_dir = results_dir
        self._client = client
        self.con = sqlite3.connect(path, timeout=SQL_BUSY_S, isolation_level=None, check_same_thread=False)
        self.artifact_locations: dict[str, str] = {}

    @classmethod
    def fits(cls, path: Path) -> bool:
        """Whether the file's tables have the columns written here and no other required one."""
        import sqlite3

        try:
            con = sqlite3.connect(path, timeout=SQLITE_BUSY_S)
            try:
                for table, known in {**cls.WRITTEN, **cls.READ}.items():
                    cols = _table_columns(con, table)
                    if not set(known) <= set(cols):
                        return False
                    if table in cls.WRITTEN and any(name not in known and _required(row) for name, row in cols.items()):
                        return False  # a column the insert would leave empty but must not
            finally:
                con.close()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        self.con.close()

    def experiment(self, name: str) -> str:
        rows = self.con.execute("SELECT experiment_id, artifact_location, lifecycle_stage FROM experiments WHERE name = ?",
                                (name,)).fetchall()
        if len(rows) == 1 and rows[0][2] != "active":
            raise TrackingUnavailable(f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments "
                                      f"restore) or remove it for good (mlflow gc)")
        if len(rows) == 1 and rows[0][1]:
            exp_id = str(rows[0][0])
        elif not rows and self._creates_experiments():
            location = artifact_location(self.results_dir)
            now = int(time.time() * 1000)
            cols = {"name": name, "artifact_location": location, "lifecycle_stage": "active", "creation_time": now,
                    "last_update_time": now}
            if "workspace" in _table_columns(self.con, "experiments"):
                cols["workspace"] = "default"  # what MLflow's store without workspaces writes
            with self._transaction():
                cur = self.con.execute(f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                       tuple(cols.values()))
                self.con.executemany('INSERT INTO experiment_tags ("key", value, experiment_id) VALUES (?, ?, ?)',
                                     [(k, v, cur.lastrowid) for k, v in experiment_tags(name).items()])
            exp_id, rows = str(cur.lastrowid), [(cur.lastrowid, location)]
        else:  # one per workspace, or workspaces in use: MLflow's client creates or finds it
            uri = tracking_uri(self.results_dir)
            with _no_stray_folder(sqlite_path(self.results_dir), uri):
                if self._client is None:
                    self._client = _connect(uri)
                exp_id = experiment_id(self._client, self.results_dir, name)
                rows = [(exp_id, self._client.get_experiment(exp_id).artifact_location)]
        self.artifact_locations[exp_id] = str(rows[0][1])
        return exp_id

    EXPERIMENT_COLUMNS = ("experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time",
                          "last_update_time", "workspace")

    def _creates_experiments(self) -> bool:
        """Whether an experiment may be inserted here as MLflow's store without workspaces does
        (with MLflow's workspaces switched on, or an unknown required column, the client does it)."""
        if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() not in ("", "0", "false"):
            return False
        return not any(name not in self.EXPERIMENT_COLUMNS and _required(row)
                       for name, row in _table_columns(self.con, "experiments").items())

    def runs(self, exp_id: str) -> list[tuple[str, str, str, str]]:
        """(run id, status, key, sha) of the experiment's active record runs, newest first."""
        return self.con.execute(
            "SELECT r.run_uuid, r.status, k.value, COALESCE(s.value, '') FROM runs r "
            "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
            "LEFT JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = ? "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' ORDER BY r.start_time DESC, r.run_uuid",
            (KEY_TAG, SHA_TAG, int(exp_id))).fetchall()

    def running(self, exp_ids: list[str]) -> list[tuple[str, str, str]]:
        """(experiment id, run id, key) of record runs left RUNNING."""
        marks = ",".join("?" * len(exp_ids))
        rows = self.con.execute(
            f"SELECT r.experiment_id, r.run_uuid, k.value FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
            f"WHERE r.status = 'RUNNING' AND r.lifecycle_stage = 'active' AND r.experiment_id IN ({marks})",
            (KEY_TAG, *map(int, exp_ids))).fetchall()
        return [(str(e), r, k) for e, r, k in rows]

    def delete(self, run_ids: list[str]) -> None:
        if run_ids:
            with self._transaction():
                self._mark_deleted(run_ids, int(time.time() * 1000))

    def _mark_deleted(self, run_ids: list[str], now: int) -> None:
        """Mark runs deleted, as MLflow's ``delete_run`` does (record runs carry no assessments);
        inside a transaction."""
        self.con.executemany("UPDATE runs SET lifecycle_stage = 'deleted', deleted_time = ? WHERE run_uuid = ?",
                             [(now, r) for r in run_ids])

    def write(self, exp_id: str, drafts: list[Draft], replaced: list[str]) -> None:
        """Delete ``replaced`` and insert ``drafts`` in one transaction (artifacts copied first)."""
        now = int(time.time() * 1000)
        runs, tags, params, metrics = [], [], [], []
        location = self.artifact_locations[exp_id].rstrip("/")
        for d in drafts:
            artifact_uri = f"{location}/{d.run_id}/artifacts"
            _store_artifact(artifact_uri, d.artifact, d.data)
            runs.append((d.run_id, d.name, "UNKNOWN", "", "", "unknown", d.status, now, now, None, "", "active",
                         artifact_uri, int(exp_id)))
            tags += [(k, v, d.run_id) for k, v in d.tags.items()]
            params += [(k, v, d.run_id) for k, v in d.params.items()]
            for k, v in d.metrics.items():
                nan = math.isnan(v)
                metrics.append((k, 0.0 if nan else v, 0, 0, int(nan), d.run_id))
        with self._transaction():
            self._mark_deleted(replaced, now)
            for table, rows in (("runs", runs), ("tags", tags), ("params", params), ("metrics", metrics),
                                ("latest_metrics", metrics)):
                cols = self.WRITTEN[table]
                self.con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)

    def lacking(self, exp_id: str) -> list[tuple[str, tuple[str, str], dict[str, float]]]:
        """(run id, (task version, test-rows hash), property -> RMSEP) of the experiment's finished
        record runs that have no ``rel_rmsep`` yet (their reference was not in the store then)."""
        rows = self.con.execute(
            "SELECT r.run_uuid, COALESCE(v.value, ''), h.value FROM runs r "
            "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
            "JOIN tags h ON h.run_uuid = r.run_uuid AND h.key = ? "
            "LEFT JOIN tags v ON v.run_uuid = r.run_uuid AND v.key = 'ctbench.task_version' "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' AND r.status = 'FINISHED' AND h.value != '' "
            "AND NOT EXISTS (SELECT 1 FROM latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = ?)",
            (KEY_TAG, TEST_ROWS_TAG, int(exp_id), REL_METRIC)).fetchall()
        rmsep: dict[str, dict[str, float]] = {}
        ids = [r[0] for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for run_id, key, value, nan in self.con.execute(
                    f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE key LIKE '%.rmsep' "
                    f"AND run_uuid IN ({','.join('?' * len(chunk))})", chunk):
                rmsep.setdefault(run_id, {})[key[:-len(".rmsep")]] = float("nan") if nan else value
        return [(run_id, (version, h), rmsep.get(run_id, {})) for run_id, version, h in rows]

    def add_metric(self, name: str, values: list[tuple[str, float]]) -> None:
        """Log metric ``name`` (step 0, timestamp 0, as the runs' other metrics) on runs that
        lack it, in one transaction."""
        if values:
            rows = [(name, v, 0, 0, 0, run_id) for run_id, v in values]
            cols = self.WRITTEN["metrics"]
            with self._transaction():
                for table in ("metrics", "latest_metrics"):
                    self.con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                         rows)

    @contextlib.contextmanager
    def _transaction(self):
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")


class ClientRuns:
    """Runs written with MLflow's client (a tracking server, or a database ctbench does not manage):
    each run created, given its artifact and one ``log_batch``, then terminated."""

    def __init__(self, results_dir: Path, client):
        self.results_dir = results_dir
        self.client = client

    def close(self) -> None:
        pass

    def experiment(self, name: str) -> str:
        return experiment_id(self.client, self.results_dir, name)

    def runs(self, exp_id: str) -> list[tuple[str, str, str, str]]:
        from mlflow.entities import ViewType

        out, token = [], None
        while True:
            page = self.client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            out += [(r.info.run_id, r.info.status, r.data.tags[KEY_TAG], r.data.tags.get(SHA_TAG, ""))
                    for r in page if r.data.tags.get(KEY_TAG)]
            token = page.token
            if not token:
                return out

    def running(self, exp_ids: list[str]) -> list[tuple[str, str, str]]:
        runs = self.client.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=5000)
        return [(r.info.experiment_id, r.info.run_id, r.data.tags[KEY_TAG]) for r in runs if r.data.tags.get(KEY_TAG)]

    def delete(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            self.client.delete_run(run_id)

    def lacking(self, exp_id: str) -> list[tuple[str, tuple[str, str], dict[str, float]]]:
        """As :meth:`SqlRuns.lacking`."""
        from mlflow.entities import ViewType

        out, token = [], None
        while True:
            page = self.client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            for r in page:
                tags, metrics = r.data.tags, r.data.metrics
                if tags.get(KEY_TAG) and tags.get(TEST_ROWS_TAG) and REL_METRIC not in metrics:
                    out.append((r.info.run_id, (tags.get("ctbench.task_version", ""), tags[TEST_ROWS_TAG]),
                                {k[:-len(".rmsep")]: v for k, v in metrics.items() if k.endswith(".rmsep")}))
            token = page.token
            if not token:
                return out

    def add_metric(self, name: str, values: list[tuple[str, float]]) -> None:
        from mlflow.entities import Metric

        for run_id, v in values:
            self.client.log_batch(run_id, metrics=[Metric(name, v, 0, 0)])

    def write(self, exp_id: str, drafts: list[Draft], replaced: list[str]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.delete(replaced)
        for d in drafts:
            first = {k: v for k, v in d.tags.items() if k not in (SHA_TAG, "mlflow.runName")}
            run = self.client.create_run(exp_id, run_name=d.name, tags=first)
            d.run_id = run.info.run_id
            with tempfile.TemporaryDirectory(prefix="ctbench-artifact-") as tmp:  # the bytes hashed, not a newer file
                copy = Path(tmp) / d.artifact.name
                copy.write_bytes(d.data)
                self.client.log_artifact(d.run_id, str(copy))
            self.client.log_batch(d.run_id, metrics=[Metric(k, v, 0, 0) for k, v in d.metrics.items()],
                                  params=[Param(k, v) for k, v in d.params.items()],
                                  tags=[RunTag(SHA_TAG, d.sha)])  # the hash last: the run is complete
            self.client.set_terminated(d.run_id, status=d.status)


# --- the sink ----------------------------------------------------------------------------------------


class MlflowSink:
    """Copies records into MLflow from a writer thread; see the module's docstring.

    Use: ``open()`` before any compute (quick checks, one warning if MLflow cannot be used),
    ``submit(record, path)`` for each record, ``finish()`` at the end (waits for the writer,
    deletes orphaned runs; returns the runs written for records that were already stored).
    ``write(items)`` copies synchronously (items as :meth:`write` takes them).
    """

    KEY_TAG = KEY_TAG
    SHA_TAG = SHA_TAG

    def __init__(self, results_dir: Path | str, warn=None):
        self.results_dir = Path(results_dir)
        self._runs: SqlRuns | ClientRuns | None = None
        self._experiments: dict[str, str] = {}
        self._known: dict[str, dict[str, tuple[str, str]]] = {}  # exp id -> key -> (run id, sha)
        self._journal_pos = 0
        self._journal_id: tuple[int, int] | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._abandon = False
        self.disabled = False
        self.mended = 0
        """Runs written for records that were stored before this command (MLflow lacked them)."""
        self.note: str | None = None
        """One line when the MLflow database was repaired on opening (printed through ``warn``)."""
        self.rebuilt = False
        """True when the database was started afresh: every record of the store should be copied."""
        self.backend = ""
        """'sql' or 'client' once opened."""
        self._warn_fn = warn or (lambda msg: warnings.warn(msg, stacklevel=4))
        self._refs = References(self.results_dir)

    # --- opening ----------------------------------------------------------------------------------

    def open(self) -> bool:
        """The quick checks, before any compute; False when MLflow cannot be used (one warning)."""
        if not self.disabled:
            try:
                preflight(self.results_dir)
            except TrackingUnavailable as exc:
                self._off(str(exc))
        return not self.disabled

    def _connect(self) -> None:
        """Open the store in the writer: created, migrated or repaired by MLflow's client when
        needed (under the lock), then the SQL writer when the file's tables are the known ones."""
        if self._runs is not None:
            return
        client, self.note = open_client(self.results_dir, lazy=True)
        path = sqlite_path(self.results_dir)
        if path is not None and SqlRuns.fits(path):
            self._runs, self.backend = SqlRuns(self.results_dir, path, client), "sql"
        else:
            if client is None:
                client, _ = open_client(self.results_dir)
            self._runs, self.backend = ClientRuns(self.results_dir, client), "client"
        if self.note:
            self.rebuilt = True
            self._reset_journal()
            self._warn_fn(self.note)

    def _opened(self) -> bool:
        """Open the store unless open; False (after one warning) when MLflow cannot be used."""
        if not self.disabled and self._runs is None:
            with self._faults("MLflow could not be opened"):
                self._connect()
        return not self.disabled

    @contextlib.contextmanager
    def _faults(self, what: str) -> Iterator[None]:
        """Any MLflow fault inside: one warning (its own line, or ``what`` and the error's first
        line), and the sink is off. Records are never touched here, so nothing is lost."""
        try:
            yield
        except TrackingUnavailable as exc:
            self._off(str(exc))
        except Exception as exc:  # noqa: BLE001 - never lose a record to MLflow
            self._off(f"{what} ({_first_line(exc)})")

    def _off(self, why: str) -> None:
        if not self.disabled:
            self.disabled = True
            self._warn_fn(f"MLflow logging is off for this run: {why}; the records are safe, "
                          f"and the next run copies them to MLflow")

    # --- the writer thread ------------------------------------------------------------------------

    def start(self, tasks: list[str] = ()) -> None:
        """Start the writer now: it opens the store and the tasks' experiments (importing MLflow
        only when one must be created) while the sweep begins computing."""
        if not self.disabled and self._thread is None:
            self._thread = threading.Thread(target=self._writer, args=(list(tasks),), name="ctbench-mlflow", daemon=True)
            self._thread.start()

    def submit(self, record: dict, path: Path | str, stored: bool = False) -> None:
        """Hand a record to the writer (returns at once). ``stored``: it was in the store before
        this command (counted in :attr:`mended` when MLflow lacked it)."""
        if self.disabled:
            return
        self.start()
        self._queue.put(item(record, path, stored))

    def _writer(self, tasks: list[str]) -> None:
        if sys.platform == "linux":  # a thread's own nice value: the workers' compute comes first
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        if tasks and self._opened():
            with self._faults("MLflow could not be opened"), tracking_lock(self.results_dir):
                self._catch_up()
                for task in tasks:
                    self._experiment(task)
        stop = False
        while not stop:
            batch = [self._queue.get()]
            deadline = time.monotonic() + GATHER_S
            while batch[-1] is not None and len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            if batch[-1] is None:
                batch.pop()
                stop = True
            if batch and not self.disabled and not self._abandon:
                self.write(batch)

    def pending(self) -> int:
        """Records handed over and not yet copied (roughly)."""
        return self._queue.qsize()

    def drain(self, timeout: float | None = None) -> bool:
        """Stop the writer once it has copied everything handed over (waiting at most ``timeout``
        seconds; past it the rest is left to the next run, and a batch in flight rolls back).
        True when the writer is done."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abandon = True
                return False
            self._thread = None
        return True

    def finish(self, timeout: float | None = None) -> int:
        """:meth:`drain`, then delete runs orphaned by a dead process and close. Returns
        :attr:`mended`."""
        if self.drain(timeout):
            self._fill_relative()
            self._orphans()
            if self._runs is not None:
                with contextlib.suppress(Exception):
                    self._runs.close()
                self._runs = None
        return self.mended

    # --- writing ----------------------------------------------------------------------------------

    def write(self, items: list[tuple[str, str, Path, bool]]) -> int:
        """Make MLflow hold one current run per record file, given as (task, key, path, stored);
        returns the runs written. Under the lock, a batch at a time."""
        if not self._opened():
            return 0
        written = 0
        with self._faults("logging failed"):
            for i in range(0, len(items), BATCH_MAX):
                with tracking_lock(self.results_dir):
                    self._catch_up()
                    written += self._write_batch(items[i:i + BATCH_MAX])
        return written

    def _write_batch(self, items: list[tuple[str, str, Path, bool]]) -> int:
        """Under the lock: write the records MLflow lacks or holds in another version, replacing
        the older runs; returns the runs written."""
        per_exp: dict[str, tuple[dict[str, Draft], list[str], list[str]]] = {}  # drafts by key, replaced, journal
        stored_keys: set[str] = set()
        todo = []
        for task, key, path, stored in items:
            exp_id = self._experiment(task)
            try:
                data = path.read_bytes()
            except OSError:  # gone since (another sweep's --force replaces atomically): next time
                continue
            old = self._known[exp_id].get(key)
            if old is not None and old[1] == record_sha(data):
                continue
            try:
                current = json.loads(data)  # what the file holds now: the run matches its hash
            except ValueError:  # replaced by something unreadable since: `run` redoes it
                continue
            self._refs.add(current, key)  # a full_recalibration record first: the batch's others need it
            todo.append((exp_id, key, path, data, current, stored, old))
        for exp_id, key, path, data, current, stored, old in todo:
            drafts, replaced, journal = per_exp.setdefault(exp_id, ({}, [], []))
            drafts.pop(key, None)  # the same record twice in one batch: the later wins
            if old is not None:
                replaced.append(old[0])
                journal.append(f"D\t{exp_id}\t{key}\t{old[0]}\t-")
            drafts[key] = draft(current, path, data, key, self._refs.relative(current))
            if stored:
                stored_keys.add(key)
        written = 0
        for exp_id, (by_key, replaced, journal) in per_exp.items():
            drafts = list(by_key.values())
            self._runs.write(exp_id, drafts, replaced)
            for d in drafts:
                self._known[exp_id][d.key] = (d.run_id, d.sha)
                journal.append(f"F\t{exp_id}\t{d.key}\t{d.run_id}\t{d.sha}")
                self.mended += d.key in stored_keys
            written += len(drafts)
            self._append(journal)
        return written

    def _experiment(self, task: str) -> str:
        if task not in self._experiments:
            exp_id = self._runs.experiment(experiment_name(task))
            self._experiments[task] = exp_id
            self._known[exp_id] = self._existing(exp_id)
        return self._experiments[task]

    def _existing(self, exp_id: str) -> dict[str, tuple[str, str]]:
        """key -> (run id, sha) of the experiment's complete runs. Under the lock, a run that is
        RUNNING or lacks its hash was left by a process that died mid-log, and a second run of
        one key is a duplicate: both are deleted."""
        out: dict[str, tuple[str, str]] = {}
        gone = []
        for run_id, status, key, sha in self._runs.runs(exp_id):
            if status == "RUNNING" or not sha or key in out:
                gone.append(run_id)
            else:
                out[key] = (run_id, sha)
        self._runs.delete(gone)
        return out

    def _fill_relative(self) -> None:
        """Give ``rel_rmsep`` to the record runs of this command's experiments that lack it because
        their split's full_recalibration record came later (in a later batch or command)."""
        if self.disabled or self._runs is None or not self._experiments:
            return
        with self._faults("adding rel_rmsep failed"), tracking_lock(self.results_dir):
            for task, exp_id in self._experiments.items():
                refs = self._refs.of_task(task)
                if not refs:
                    continue
                values = []
                for run_id, split, rmsep in self._runs.lacking(exp_id):
                    rel = _relative(rmsep, refs.get(split))
                    if rel is not None:
                        values.append((run_id, rel))
                self._runs.add_metric(REL_METRIC, values)

    def _orphans(self) -> None:
        """Delete runs of this command's experiments left RUNNING by a process that died while
        logging (every writer completes its runs within one hold of the lock, so under the lock
        a RUNNING run is an orphan)."""
        if self.disabled or self._runs is None or not self._known:
            return
        with self._faults("closing failed"), tracking_lock(self.results_dir):
            self._catch_up()
            found = self._runs.running(list(self._known))
            self._runs.delete([run_id for _, run_id, _ in found])
            for exp_id, run_id, key in found:
                if self._known.get(exp_id, {}).get(key, ("",))[0] == run_id:
                    del self._known[exp_id][key]
            self._append([f"D\t{exp_id}\t{key}\t{run_id}\t-" for exp_id, run_id, key in found])

    # --- the journal: what other processes logged since we last looked ------------------------------

    def _journal(self) -> Path:
        return self.results_dir / JOURNAL_NAME

    def _reset_journal(self) -> None:
        with contextlib.suppress(OSError):
            self._journal().write_text("")

    def _catch_up(self) -> None:
        """Apply journal lines other processes appended since our last look (under the lock)."""
        path = self._journal()
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        ident = (st.st_dev, st.st_ino) if st else None
        size = st.st_size if st else 0
        if ident != self._journal_id or size < self._journal_pos:
            # a new or truncated journal: what we know may be stale; read the experiments again
            self._journal_id, self._journal_pos = ident, size
            for exp_id in list(self._known):
                self._known[exp_id] = self._existing(exp_id)
            return
        if size == self._journal_pos:
            return
        with open(path, "rb") as fh:
            fh.seek(self._journal_pos)
            data = fh.read(size - self._journal_pos)
        self._journal_pos = size
        for line in data.decode("utf-8", "replace").splitlines():
            parts = line.split("\t")
            if len(parts) != 5 or parts[1] not in self._known:
                continue
            op, exp_id, key, run_id, sha = parts
            if op == "F":
                self._known[exp_id][key] = (run_id, sha)
            elif op == "D" and self._known[exp_id].get(key, ("",))[0] == run_id:
                del self._known[exp_id][key]

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        path = self._journal()
        with open(path, "ab") as fh:
            fh.write(("\n".join(lines) + "\n").encode())
        st = path.stat()
        self._journal_id, self._journal_pos = (st.st_dev, st.st_ino), st.st_size


def count_runs(results_dir: Path | str) -> int | None:
    """Active record runs in the results dir's SQLite store (None when tracking goes elsewhere or
    the file cannot be read)."""
    import sqlite3

    path = sqlite_path(results_dir)
    if path is None or not path.is_file():
        return None
    try:
        from urllib.parse import quote

        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=SQLITE_BUSY_S)
        try:
            return con.execute("SELECT COUNT(*) FROM runs r JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
                               "WHERE r.lifecycle_stage = 'active'", (KEY_TAG,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None
