"""MLflow tracking: where it goes, how it is opened safely, and the sink that copies records.

Tracking goes to ``MLFLOW_TRACKING_URI`` when set, else to a SQLite file in the results dir.
MLflow is a copy of the records, never the truth: every MLflow fault is one warning line and
turns logging off for the rest of the command; the next run copies what MLflow lacks.

Concurrency: every ctbench process that writes to a results dir's MLflow store does so under one
file lock (``<results>/.mlflow.lock``): the schema's creation or migration (two processes
migrating one fresh SQLite file at once leave it half-migrated) and each record's run (check,
create, complete), so two sweeps never log one record twice and a run seen ``RUNNING`` under the
lock was left by a process that died. What each sweep logged is appended to a journal beside the
lock, so a concurrent sweep learns of it without searching the whole experiment again.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

LOCK_NAME = ".mlflow.lock"
JOURNAL_NAME = ".mlflow.journal"
LOCK_TIMEOUT_S = 120.0
SQLITE_BUSY_S = 2.0
SYNC_CHUNK = 50


class TrackingUnavailable(Exception):
    """MLflow cannot be used for this command; the message is one line naming the path and what to do."""


def tracking_uri(results_dir: Path | str) -> str:
    """The MLflow tracking URI for a results directory (MLFLOW_TRACKING_URI wins). The path is
    percent-encoded: ``#``, ``?`` or ``%`` in a folder name must not move the database elsewhere."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(results_dir).resolve() / "mlflow.db"
    return "sqlite:///" + quote(str(path), safe="/")


def sqlite_path(results_dir: Path | str) -> Path | None:
    """The SQLite file ctbench manages (None when MLFLOW_TRACKING_URI points elsewhere)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return Path(results_dir).resolve() / "mlflow.db"


def artifact_location(results_dir: Path | str) -> str:
    """Default artifact root beside the SQLite store."""
    return (Path(results_dir).resolve() / "mlartifacts").as_uri()


def experiment_name(task: str) -> str:
    return f"ctbench/{task}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def tracking_lock(results_dir: Path | str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the results dir's MLflow lock (an flock: released by the kernel if the holder dies)."""
    import fcntl

    root = Path(results_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TrackingUnavailable(f"cannot create the MLflow lock {root / LOCK_NAME} ({_first_line(exc)})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingUnavailable(
                        f"another ctbench process has held the MLflow lock {root / LOCK_NAME} for over {timeout:.0f} s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _sqlite_problem(path: Path) -> str | None:
    """Why the SQLite file cannot be used right now (not a file, unreadable, locked), or None."""
    import sqlite3

    if not path.exists():
        if not os.access(path.parent, os.W_OK):
            return f"cannot create the MLflow database {path}: its folder is not writable"
        return None
    if not path.is_file():
        return f"the MLflow database {path} is not a file; move it away"
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=SQLITE_BUSY_S)
    except sqlite3.Error as exc:
        return f"cannot open the MLflow database {path} ({_first_line(exc)}); check its permissions"
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            return f"the MLflow database {path} is locked by another program (for over {SQLITE_BUSY_S:.0f} s); close it"
        if "readonly" in msg or "read-only" in msg:
            return f"the MLflow database {path} is read-only; fix its permissions"
        return None  # not a database: _broken says so and the file is moved aside
    finally:
        con.close()
    return None


def _broken(path: Path) -> str | None:
    """Why an existing SQLite file is beyond use as an MLflow store (a crashed or raced schema
    migration, not a database), or None."""
    import sqlite3

    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=SQLITE_BUSY_S)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"not an SQLite database ({_first_line(exc)})"
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        return f"left half-migrated by an interrupted schema migration ({', '.join(leftovers)})"
    return None


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached SQLAlchemy engine of ``uri`` (it holds the file that was moved aside)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    except Exception:  # noqa: BLE001 - best effort: a private cache
        pass


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    os.replace(path, dest)
    for suffix in ("-journal", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, dest.with_name(dest.name + suffix))
    return dest


def _quiet_mlflow_logs() -> None:
    import logging

    for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _no_stray_folder(path: Path, uri: str) -> Iterator[None]:
    """MLflow makes the parent folder of the *percent-encoded* path (``a%23b`` beside ``a#b``):
    remove it again when it is new and empty."""
    encoded = Path(uri.removeprefix("sqlite:///")).parent
    new = [p for p in [encoded, *encoded.parents] if not p.exists()] if encoded != path.parent else []
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            for p in new:  # innermost first; only folders that did not exist before
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()


def open_client(results_dir: Path | str):
    """An MlflowClient for the results dir, its store created, migrated or repaired under the
    lock. Returns ``(client, note)``: ``note`` is a one-line message when the SQLite file was
    beyond use and was moved aside for a fresh one (the caller then refills it from the records).
    Raises :class:`TrackingUnavailable` (one line) when MLflow cannot be used."""
    _quiet_mlflow_logs()
    uri = tracking_uri(results_dir)
    path = sqlite_path(results_dir)
    if path is None:  # a server or another database: it manages its own schema
        try:
            return _connect(uri), None
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailable(f"MLflow at {uri} is not usable ({_first_line(exc)})") from None
    note = None
    with tracking_lock(results_dir), _no_stray_folder(path, uri):  # another ctbench may be creating the schema
        problem = _sqlite_problem(path)
        if problem:
            raise TrackingUnavailable(problem)
        why = _broken(path)
        if why is None:
            try:
                return _connect(uri), None
            except Exception as exc:  # noqa: BLE001
                why = _unusable_schema(exc, uri)
                if why is None:
                    raise TrackingUnavailable(f"the MLflow database {path} is not usable ({_first_line(exc)})") from None
        _forget_engine(uri)
        moved = _move_aside(path)
        note = (f"the MLflow database {path} was {why}; moved it to {moved.name} and started a fresh one, "
                f"filled from the records (the old file keeps any tuning runs)")
        try:
            client = _connect(uri)
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailable(f"cannot create a fresh MLflow database {path} ({_first_line(exc)})") from None
    return client, note


def experiment_id(client, results_dir: Path | str, name: str) -> str:
    """The id of experiment ``name``, created if missing with its artifacts beside the SQLite
    store (not in the working directory). Call it holding :func:`tracking_lock`: two processes
    creating one experiment at once would clash."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    loc = artifact_location(results_dir) if tracking_uri(results_dir).startswith("sqlite") else None
    return client.create_experiment(name, artifact_location=loc)


def _connect(uri: str):
    """A client whose store is open: the first call creates the schema of a fresh SQLite file."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    return client


def _unusable_schema(exc: BaseException, uri: str) -> str | None:
    """The schema error that makes the file beyond use (after one upgrade attempt for an older
    MLflow's schema), or None for another fault (which is reported, never repaired by moving)."""
    msg = str(exc)
    if "out-of-date database schema" in msg:
        try:
            import sqlalchemy

            from mlflow.store.db.utils import _upgrade_db

            engine = sqlalchemy.create_engine(uri)
            try:
                _upgrade_db(engine)
            finally:
                engine.dispose()
            return None if _reopens(uri) else "an MLflow schema that does not upgrade"
        except Exception as exc2:  # noqa: BLE001
            return f"an MLflow schema that does not upgrade ({_first_line(exc2)})"
    schema_words = ("no such column", "no such table", "duplicate column", "already exists", "alembic",
                    "file is not a database", "malformed", "Can't locate revision")
    if any(w in msg for w in schema_words):
        return f"unusable ({_first_line(exc)})"
    return None


def _reopens(uri: str) -> bool:
    _forget_engine(uri)
    try:
        _connect(uri)
        return True
    except Exception:  # noqa: BLE001
        return False


class MlflowSink:
    """Copies records into MLflow: one experiment per task, one run per record.

    Each run carries the record key as a tag, and (once complete) the record's content hash, so
    ``sync`` can tell which records MLflow lacks (after a kill), holds in an older form (after a
    retry or ``--force``) or holds half-written (a run left RUNNING, or without its hash) and
    mend it: the run count always ends equal to the record count. The first MLflow error is one
    warning and turns logging off for the rest of the command.
    """

    KEY_TAG = "ctbench.record_key"
    SHA_TAG = "ctbench.record_sha"

    def __init__(self, results_dir: Path | str, warn=None):
        self.results_dir = Path(results_dir)
        self._client = None
        self._experiments: dict[str, str] = {}
        self._known: dict[str, dict[str, tuple[str, str]]] = {}  # exp id -> key -> (run id, sha)
        self._journal_pos = 0
        self._journal_id: tuple[int, int] | None = None
        self.disabled = False
        self.note: str | None = None
        """One line when the MLflow database was repaired on opening (the caller prints it)."""
        self.rebuilt = False
        """True when the database was started afresh: every record of the store should be synced."""
        self._warn_fn = warn or (lambda msg: warnings.warn(msg, stacklevel=4))

    # --- opening ------------------------------------------------------------------------------

    def open(self) -> bool:
        """Open (create, migrate or repair) the store now, before any compute; False when MLflow
        is unusable (one warning says why and logging is off)."""
        if self.disabled:
            return False
        if self._client is None:
            try:
                self._client, self.note = open_client(self.results_dir)
                self.rebuilt = self.note is not None
                if self.rebuilt:
                    self._reset_journal()
            except TrackingUnavailable as exc:
                self._off(str(exc))
            except Exception as exc:  # noqa: BLE001
                self._off(f"MLflow could not be opened ({_first_line(exc)})")
        return not self.disabled

    def _off(self, why: str) -> None:
        if not self.disabled:
            self.disabled = True
            self._warn_fn(f"MLflow logging is off for this run: {why}; the records are safe, "
                          f"and the next run copies them to MLflow")

    @property
    def client(self):
        if self._client is None and not self.open():
            raise TrackingUnavailable("MLflow is off")
        return self._client

    # --- the journal: what other processes logged since we last looked -----------------------

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

    # --- experiments and runs ------------------------------------------------------------------

    def _experiment(self, task: str) -> str:
        if task not in self._experiments:
            exp_id = experiment_id(self.client, self.results_dir, experiment_name(task))  # under the lock (_log)
            self._experiments[task] = exp_id
            self._known[exp_id] = self._existing(exp_id)
        return self._experiments[task]

    def _existing(self, exp_id: str) -> dict[str, tuple[str, str]]:
        """key -> (run id, sha) of the experiment's complete runs. Under the lock, a run that is
        RUNNING or lacks its hash was left by a process that died mid-log, and a second run of
        one key is a duplicate: both are deleted."""
        from mlflow.entities import ViewType

        out: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            for run in page:
                key = run.data.tags.get(self.KEY_TAG)
                if not key:
                    continue
                sha = run.data.tags.get(self.SHA_TAG, "")
                if run.info.status == "RUNNING" or not sha or key in out:
                    self.client.delete_run(run.info.run_id)
                    continue
                out[key] = (run.info.run_id, sha)
            token = page.token
            if not token:
                break
        return out

    def log(self, record: dict, path: Path | str) -> None:
        """Log one record (replacing an older copy of the same key)."""
        if self.disabled:
            return
        try:
            with tracking_lock(self.results_dir):
                self._catch_up()
                self._log(record, Path(path))
        except Exception as exc:  # never lose a record to MLflow
            self._off(f"logging failed ({_first_line(exc)})")

    def _log(self, record: dict, path: Path) -> bool:
        """Log under the lock; True when a run was written."""
        from mlflow.entities import Metric, Param, RunTag

        from ctbench.store import canonical_json, record_key

        ident = record["identity"]
        exp_id = self._experiment(ident["task"])
        key = str(record.get("key") or record_key(ident))
        sha = hashlib_sha(canonical_json({k: v for k, v in record.items() if not k.startswith("_")}))
        known = self._known[exp_id]
        journal = []
        if key in known:
            if known[key][1] == sha:
                return False
            self.client.delete_run(known[key][0])
            journal.append(f"D\t{exp_id}\t{key}\t{known[key][0]}\t-")
            del known[key]
        status = record["status"]
        run = self.client.create_run(
            exp_id,
            run_name=f"{ident['method']}-N{ident['n_shots']}-rep{ident['rep']}",
            tags={
                self.KEY_TAG: key,  # the hash tag comes last, once the run is complete
                "ctbench.status": status,
                "ctbench.task_version": str(ident["task_version"]),
                "ctbench.method_version": str(ident["method_version"]),
                "ctbench.split_hash": str((record.get("split") or {}).get("hash", "")),
                "ctbench.transductive": str(record.get("transductive", False)),
            },
        )
        run_id = run.info.run_id
        params = [Param(f"param.{k}", str(v)[:500]) for k, v in sorted((ident.get("params") or {}).items())]
        params += [
            Param("method", str(ident["method"])),
            Param("task", str(ident["task"])),
            Param("n_shots", str(ident["n_shots"])),
            Param("rep", str(ident["rep"])),
            Param("seed", str(ident["seed"])),
        ]
        metrics = []
        ts = 0
        m = record.get("metrics") or {}
        for name, value in (m.get("mean") or {}).items():
            metrics.append(Metric(name, _finite(value), ts, 0))
        for prop, vals in (m.get("per_property") or {}).items():
            for name, value in (vals or {}).items():
                metrics.append(Metric(f"{prop}.{name}", _finite(value), ts, 0))
        for name, value in (record.get("timings") or {}).items():
            metrics.append(Metric(f"time.{name}", _finite(value), ts, 0))
        self.client.log_artifact(run_id, str(path))
        self.client.log_batch(run_id, metrics=metrics, params=params,
                              tags=[RunTag("mlflow.note.content", "ctbench record"), RunTag(self.SHA_TAG, sha)])
        self.client.set_terminated(run_id, status="FINISHED" if status == "ok" else "FAILED")
        known[key] = (run_id, sha)
        journal.append(f"F\t{exp_id}\t{key}\t{run_id}\t{sha}")
        self._append(journal)
        return True

    def sync(self, records: list[tuple[dict, Path]]) -> int:
        """Make MLflow hold exactly one current run per given record; returns runs written."""
        if self.disabled or not records:
            return 0
        written = 0
        try:
            for i in range(0, len(records), SYNC_CHUNK):  # let a concurrent sweep log in between
                with tracking_lock(self.results_dir):
                    self._catch_up()
                    for rec, path in records[i:i + SYNC_CHUNK]:
                        written += self._log(rec, Path(path))
        except Exception as exc:
            self._off(f"sync failed ({_first_line(exc)})")
        return written

    def close(self) -> None:
        """Delete runs of this command's experiments left RUNNING by a process that died while
        logging (every writer completes its run within one hold of the lock, so under the lock
        a RUNNING run is an orphan)."""
        if self.disabled or self._client is None or not self._known:
            return
        try:
            with tracking_lock(self.results_dir):
                self._catch_up()
                runs = self.client.search_runs(list(self._known), filter_string="attributes.status = 'RUNNING'",
                                               max_results=5000)
                gone = []
                for run in runs:
                    key = run.data.tags.get(self.KEY_TAG)
                    if key:
                        self.client.delete_run(run.info.run_id)
                        exp_id = run.info.experiment_id
                        if self._known.get(exp_id, {}).get(key, ("",))[0] == run.info.run_id:
                            del self._known[exp_id][key]
                        gone.append(f"D\t{exp_id}\t{key}\t{run.info.run_id}\t-")
                self._append(gone)
        except Exception as exc:  # noqa: BLE001
            self._off(f"closing failed ({_first_line(exc)})")


def hashlib_sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(value) -> float:
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")
