"""MLflow tracking: where it goes and how its store is opened safely (the sink that copies records
is ``ctbench.mlflow_sink``).

Tracking goes to ``MLFLOW_TRACKING_URI`` when set, else to a SQLite file in the results dir.
MLflow is a copy of the records, never the truth: every MLflow fault is one warning line and
turns logging off for the rest of the command; the next run copies what MLflow lacks.

Concurrency: every ctbench process that writes to a results dir's MLflow store does so under one
file lock (``<results>/.mlflow.lock``): the schema's creation or migration (two processes
migrating one fresh SQLite file at once leave it half-migrated) and each record's run (check,
create, complete), so two sweeps never log one record twice and a run seen ``RUNNING`` under the
lock was left by a process that died. What each sweep logged is appended to a journal beside the
lock, so a concurrent sweep learns of it without searching the whole experiment again.

The MLflow UI (docs/tracking.md): every experiment ctbench creates gets the tags of
:func:`experiment_tags` (``mlflow.experimentKind`` = ``custom_model_development``, a description in
``mlflow.note.content`` and, for the record experiments, a saved runs-table view with the headline
metric columns); opening the SQLite store ctbench manages (:func:`tidy_store`) adds those that are
missing to ctbench's existing experiments and hides MLflow's empty ``Default`` experiment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
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


# --- how ctbench's experiments look in MLflow's UI ----------------------------------------------------

KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
"""The experiment kind of classic model training: MLflow 3 UIs that read this tag open such an
experiment on its runs ("Training runs") instead of the GenAI overview and traces."""
NOTE_TAG = "mlflow.note.content"
"""The experiment's description (Markdown), shown on its page."""
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "ctbench"
"""``mlflow.sharedViewState.ctbench``: a saved view of the runs table (MLflow's own format: an
envelope with the view's state as JSON text) with the headline metric columns; the UI lists it
among the experiment's views and opens it from ``...?viewStateShareKey=ctbench``."""
VIEW_NAME = "ctbench: headline metrics"
VIEW_CREATED_MS = 1767225600000
"""2026-01-01T00:00Z: a fixed date, so the view ctbench writes is the same text every time."""
VIEW_COLUMNS = ("params.`method`", "params.`n_shots`", "params.`rep`", "metrics.`rel_rmsep`", "metrics.`rmsep`",
                "metrics.`r2`", "tags.`ctbench.status`")
TUNE_PREFIX = "ctbench-tune/"
PRETRAIN_EXPERIMENTS = ("spektron-pretrain",)

RECORD_NOTE = """ctbench records of task {task}: one run per record (method, N transfer standards, \
repetition), named `<method>-N<shots>-rep<rep>`. The record files (`<results>/runs/`) are the \
results; this is a copy for browsing.

Headline metrics (runs table: *Columns* → *Metrics*, or the saved view *{view}*):

- `rel_rmsep`: RMSEP / RMSEP of full_recalibration on the same outer test split, geometric mean \
over the properties (1 = as good as recalibrating on the target; lower is better). Set once a \
full_recalibration record of that split is in the store.
- `rmsep`, `sep`, `bias`, `r2`, `rpd`: the mean over the properties (raw units: properties on \
different scales); `<property>.rmsep`, ... per property; `time.fit_s`, `time.transfer_s`, \
`time.predict_s`: seconds.

Params: `method`, `n_shots`, `rep`, `seed`, `param.<name>`. Tags: `ctbench.status`, \
`ctbench.record_key` (the record file's name). Leaderboard with intervals and tie groups: \
`ctbench leaderboard`; figures and significance tests: `ctbench report`."""

TUNE_NOTE = """ctbench tuning of task {task} (`ctbench tune`): one parent run per invocation \
(`tune-<method>-N<shots>`) with `best_val_<metric>`, trial counts and the best parameters \
`best.<name>`; one nested run per trial (`trial-<k>`) with `val_<metric>` (the validation \
metric, mean over the validation splits of the outer split's calibration pool), its per-split \
values and `duration_s`. The Optuna study (`<results>/optuna.db`) is the truth."""

PRETRAIN_NOTE = """Pretraining runs (`ctbench pretrain`): one run per pretraining, metrics per logged \
step: `total` (the training loss) and its parts, `grad_norm`, `lr`, `spectra_per_s`, \
`elapsed_s`. The run folder (`--out`) holds the checkpoints, weights and manifest."""


def saved_view() -> str:
    """The saved runs-table view (MLflow's envelope: name, dates, the state as JSON text)."""
    import json

    state = {"selectedColumns": list(VIEW_COLUMNS), "columnOrder": [], "columnWidths": {}}
    return json.dumps({"name": VIEW_NAME, "createdAt": VIEW_CREATED_MS, "updatedAt": VIEW_CREATED_MS,
                       "state": json.dumps(state, separators=(",", ":"))}, separators=(",", ":"))


def experiment_tags(name: str) -> dict[str, str]:
    """The tags ctbench gives experiment ``name`` in MLflow: the experiment kind of model training
    (so MLflow's UI opens it on its runs, not on the GenAI overview) and, for ctbench's own
    experiments, a description and (record experiments) the saved headline-metrics view."""
    tags = {KIND_TAG: KIND}
    if name.startswith("ctbench/"):
        tags[NOTE_TAG] = RECORD_NOTE.format(task=name.removeprefix("ctbench/"), view=VIEW_NAME)
        tags[VIEW_TAG_PREFIX + VIEW_KEY] = saved_view()
    elif name.startswith(TUNE_PREFIX):
        tags[NOTE_TAG] = TUNE_NOTE.format(task=name.removeprefix(TUNE_PREFIX))
    elif name in PRETRAIN_EXPERIMENTS:
        tags[NOTE_TAG] = PRETRAIN_NOTE
    return tags


def is_ctbench_experiment(name: str) -> bool:
    return name.startswith(("ctbench/", TUNE_PREFIX)) or name in PRETRAIN_EXPERIMENTS


def tidy_store(path: Path) -> None:
    """Bring the SQLite store ctbench manages in line with what ctbench sets (call it holding the
    lock): ctbench's active experiments get the tags of :func:`experiment_tags` they lack (tags
    already there are kept: a description edited in the UI stays), and MLflow's ``Default``
    experiment (id 0), which MLflow creates in every store and ctbench never uses, is marked
    deleted as ``MlflowClient.delete_experiment`` does (lifecycle stage ``deleted``, last update
    time now) when nothing refers to it: no run, trace, logged model, dataset or other row of any
    table. ``mlflow experiments restore --experiment-id 0`` brings it back. Best effort: a store
    this cannot read is left as it is."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=SQLITE_BUSY_S,
                              isolation_level=None)
    except sqlite3.Error:
        return
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            rows = con.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'").fetchall()
            have: dict[int, set[str]] = {}
            for exp_id, key in con.execute("SELECT experiment_id, key FROM experiment_tags"):
                have.setdefault(exp_id, set()).add(key)
            missing = [(k, v, exp_id) for exp_id, name in rows if is_ctbench_experiment(str(name))
                       for k, v in experiment_tags(str(name)).items() if k not in have.get(exp_id, set())]
            if missing:
                con.executemany('INSERT INTO experiment_tags ("key", value, experiment_id) VALUES (?, ?, ?)', missing)
            _hide_default(con, [(i, n) for i, n in rows])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except sqlite3.Error:
        pass
    finally:
        con.close()


def _hide_default(con, active: list[tuple[int, str]]) -> None:
    """Mark the Default experiment deleted when it is active and nothing refers to it."""
    if (0, "Default") not in [(int(i), str(n)) for i, n in active]:
        return
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        if table in ("experiments", "experiment_tags") or table.startswith(("sqlite_", "_alembic")):
            continue
        cols = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
        if "experiment_id" in cols and con.execute(
                f'SELECT 1 FROM "{table}" WHERE experiment_id IN (0, \'0\') LIMIT 1').fetchone():
            return
    con.execute("UPDATE experiments SET lifecycle_stage = 'deleted', last_update_time = ? "
                "WHERE experiment_id = 0 AND lifecycle_stage = 'active'", (int(time.time() * 1000),))


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


def preflight(results_dir: Path | str) -> None:
    """The quick checks of the SQLite store (a folder in its place, read-only, locked by another
    program), under the lock and without importing MLflow: run before any compute.
    Raises :class:`TrackingUnavailable` (one line)."""
    path = sqlite_path(results_dir)
    if path is None:
        return
    with tracking_lock(results_dir):
        problem = _sqlite_problem(path)
    if problem:
        raise TrackingUnavailable(problem)


def open_client(results_dir: Path | str, lazy: bool = False):
    """An MlflowClient for the results dir, its store created, migrated or repaired under the
    lock. Returns ``(client, note)``: ``note`` is a one-line message when the SQLite file was
    beyond use and was moved aside for a fresh one (the caller then refills it from the records).
    With ``lazy``, a healthy SQLite file already at the installed MLflow's schema gives
    ``(None, None)`` without importing MLflow (a second or so). Raises
    :class:`TrackingUnavailable` (one line) when MLflow cannot be used."""
    _quiet_mlflow_logs()
    uri = tracking_uri(results_dir)
    path = sqlite_path(results_dir)
    if path is None:  # a server or another database: it manages its own schema
        try:
            return _connect(uri), None
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailable(f"MLflow at {uri} is not usable ({_first_line(exc)})") from None
    with tracking_lock(results_dir), _no_stray_folder(path, uri):  # another ctbench may be creating the schema
        out = _open_sqlite(results_dir, uri, path, lazy)
        tidy_store(path)  # ctbench's tags on its experiments, MLflow's empty Default hidden
    return out


def _open_sqlite(results_dir: Path | str, uri: str, path: Path, lazy: bool):
    """:func:`open_client` for the SQLite store, called holding the lock: the store as it is,
    copied from the template, or moved aside for a fresh one when beyond use."""
    problem = _sqlite_problem(path)
    if problem:
        raise TrackingUnavailable(problem)
    why = _broken(path)
    if why is None:
        fresh = _fresh(path)
        if fresh and from_template(path, results_dir):
            return (None, None) if lazy else (_connect(uri), None)
        if lazy and schema_current(path):
            return None, None
        try:
            client = _connect(uri)
        except Exception as exc:  # noqa: BLE001
            why = _unusable_schema(exc, uri)
            if why is None:
                raise TrackingUnavailable(f"the MLflow database {path} is not usable ({_first_line(exc)})") from None
        else:
            if fresh:
                save_template(path)  # the template stays as MLflow made it
            return client, None
    _forget_engine(uri)
    moved = _move_aside(path)
    note = (f"the MLflow database {path} was {why}; moved it to {moved.name} and started a fresh one, "
            f"filled from the records (the old file keeps any tuning runs)")
    if from_template(path, results_dir):
        return (None, note) if lazy else (_connect(uri), note)
    try:
        client = _connect(uri)
    except Exception as exc:  # noqa: BLE001
        raise TrackingUnavailable(f"cannot create a fresh MLflow database {path} ({_first_line(exc)})") from None
    save_template(path)
    return client, note


def _fresh(path: Path) -> bool:
    return not path.exists() or (path.is_file() and path.stat().st_size == 0)


def _template() -> Path | None:
    """Where an empty store of the installed MLflow's schema is kept (the user cache), or None."""
    from importlib.metadata import PackageNotFoundError, version

    from ctbench.data.mirror import cache_dir

    head = mlflow_schema_head()
    try:
        return cache_dir() / "mlflow" / f"empty-{version('mlflow')}-{head}.db" if head else None
    except PackageNotFoundError:
        return None


def save_template(path: Path) -> None:
    """Keep a copy of a store MLflow has just created (empty, at its schema revision) for
    :func:`from_template`; best effort."""
    template = _template()
    if template is None or schema_current(template) or not schema_current(path):
        return  # (a template that is not an MLflow store of this revision is replaced)
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        os.replace(tmp, template)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def from_template(path: Path, results_dir: Path | str) -> bool:
    """Create a fresh store by copying the empty one MLflow made earlier for this MLflow version
    and schema revision: MLflow's schema migrations take over a second, a copy milliseconds.
    False when there is no template yet (MLflow then creates the file, and it becomes the
    template). The default experiment's artifact folder is pointed into this results dir."""
    import sqlite3

    template = _template()
    if template is None or not schema_current(template):
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        con = sqlite3.connect(tmp)
        try:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0 AND name = 'Default'",
                        (f"{artifact_location(results_dir)}/0",))
            con.commit()
        finally:
            con.close()
        os.replace(tmp, path)
    except (OSError, sqlite3.Error):
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


@functools.lru_cache(maxsize=1)
def mlflow_schema_head() -> str | None:
    """The schema revision the installed MLflow migrates SQLite files to, read from its migration
    scripts without importing MLflow; None when it cannot be told (then MLflow opens the file)."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("mlflow")
        folder = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
        revisions, parents = set(), set()
        for script in folder.glob("*.py"):
            text = script.read_text()
            rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
            down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
            if rev is None or down is None:
                continue
            revisions.add(rev.group(1))
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)))
    except Exception:  # noqa: BLE001 - not installed, or laid out differently: let MLflow decide
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def schema_current(path: Path) -> bool:
    """Whether the SQLite file exists at the installed MLflow's schema revision."""
    import sqlite3

    head = mlflow_schema_head()
    if head is None or not path.is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=SQLITE_BUSY_S)
        try:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return rows == [(head,)]


def experiment_id(client, results_dir: Path | str, name: str) -> str:
    """The id of experiment ``name``, created if missing with its artifacts beside the SQLite
    store (not in the working directory). Call it holding :func:`tracking_lock`. A shared server
    has no lock in common between hosts: when another process created the experiment between the
    lookup and the creation, the creation fails and the experiment it made is used."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        _add_missing_tags(client, exp, name)
        return exp.experiment_id
    loc = artifact_location(results_dir) if tracking_uri(results_dir).startswith("sqlite") else None
    try:
        exp_id = client.create_experiment(name, artifact_location=loc)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:  # not a lost race: the creation itself failed
            raise
        _add_missing_tags(client, exp, name)  # (the winner may have died before tagging it)
        return exp.experiment_id
    _add_missing_tags(client, None, name, exp_id)
    return exp_id


def _add_missing_tags(client, exp, name: str, exp_id: str | None = None) -> None:
    """Give experiment ``name`` (``exp`` as the client returned it, or None for one just created
    as ``exp_id``) the tags of :func:`experiment_tags` it lacks; tags already there are kept, a
    deleted experiment is left alone. Best effort: a server that refuses changes nothing else."""
    if exp is not None:
        if getattr(exp, "lifecycle_stage", "active") != "active":
            return
        exp_id = exp.experiment_id
    have = (getattr(exp, "tags", None) or {}) if exp is not None else {}
    for key, value in experiment_tags(name).items():
        if key not in have:
            try:
                client.set_experiment_tag(exp_id, key, value)
            except Exception:  # noqa: BLE001 - a description is never worth a run
                return


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
