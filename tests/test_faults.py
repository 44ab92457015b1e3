"""Faults of the machine and of the stores (issue 13): MLflow under concurrency and after kills,
locked or misplaced MLflow databases, odd folder names, read-only and full disks, thread
variables. Every case ends in one clear line, never a lost or half-written result, and the next
run repairs what the last left half done."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TASK = "synthetic_a_b"  # embedded synthetic task: no data files, fast
GRID = ["-m", "no_transfer,target_only,sbc", "-t", TASK, "--shots", "5,10", "--reps", "3"]  # 18 records


def ctbench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctbench", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def record_files(results: Path) -> list[Path]:
    return [p for p in (results / "runs").rglob("*.json") if not p.name.startswith(".tmp-")] if (results / "runs").exists() else []


def mlflow_state(results: Path) -> dict:
    """Active record runs in MLflow (read straight from the SQLite file), duplicated keys, runs
    left RUNNING, leftover migration tables."""
    con = sqlite3.connect(results / "mlflow.db")
    try:
        tmp = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '\\_alembic\\_tmp%' ESCAPE '\\'")]
        rows = list(con.execute(
            "SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'ctbench.record_key' "
            "WHERE r.lifecycle_stage = 'active'"))
    finally:
        con.close()
    keys = collections.Counter(k for _, k in rows)
    return {"runs": len(rows), "duplicated": sum(1 for v in keys.values() if v > 1),
            "running": sum(1 for s, _ in rows if s == "RUNNING"), "tmp_tables": tmp, "keys": set(keys)}


def record_keys(results: Path) -> set[str]:
    return {json.loads(p.read_text())["key"] for p in record_files(results)}


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def assert_consistent(results: Path, n: int) -> None:
    state = mlflow_state(results)
    assert len(record_files(results)) == n
    assert state["runs"] == n and state["duplicated"] == 0 and state["running"] == 0 and not state["tmp_tables"], state
    assert state["keys"] == record_keys(results)


# --- MLflow under concurrency ----------------------------------------------------------------


def test_two_sweeps_started_together_on_a_fresh_store(tmp_path):
    """Before: the two raced MLflow's schema migration (half-migrated file, every later run
    logged nothing) or, on an initialised file, logged most records twice."""
    results = tmp_path / "r"
    a = start("run", *GRID, "--results-dir", str(results))
    b = start("run", *GRID, "--results-dir", str(results))
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    for _, err in outs:
        assert not warnings_of(err), err
    assert_consistent(results, 18)
    # and again, on the initialised store, with --force so both write every record again
    a = start("run", *GRID, "--results-dir", str(results), "--force")
    b = start("run", *GRID, "--results-dir", str(results), "--force")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    assert_consistent(results, 18)


def test_a_tune_and_a_sweep_started_together_on_a_fresh_store(tmp_path):
    """Before: a tune worker got 'duplicate column name: step' and logged no trials."""
    results = tmp_path / "r"
    tune = start("tune", "-m", "pds", "-t", TASK, "-n", "10", "--trials", "4", "--reps", "2", "--outer", "0",
                 "--jobs", "2", "--results-dir", str(results))
    sweep = start("run", *GRID, "--results-dir", str(results))
    outs = [p.communicate(timeout=300) for p in (tune, sweep)]
    assert tune.returncode == 0 and sweep.returncode == 0, outs
    for _, err in outs:
        assert not [w for w in warnings_of(err) if "MLflow" in w], err
    assert_consistent(results, 18)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"ctbench-tune/{TASK}")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) >= 4


# --- repair of what a dead process left -----------------------------------------------------


def test_runs_left_half_written_are_repaired_on_the_next_run(tmp_path):
    """A run killed mid-log stays RUNNING (or lacks its content hash); before, `sync` took it
    for present forever."""
    results = tmp_path / "r"
    assert ctbench("run", *GRID, "--results-dir", str(results)).returncode == 0
    con = sqlite3.connect(results / "mlflow.db")
    runs = [r[0] for r in con.execute("SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' ORDER BY run_uuid")]
    con.execute("UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE run_uuid = ?", (runs[0],))
    con.execute("DELETE FROM tags WHERE run_uuid = ? AND key = 'ctbench.record_sha'", (runs[1],))
    con.execute("DELETE FROM metrics WHERE run_uuid = ?", (runs[1],))
    con.commit()
    con.close()
    res = ctbench("run", *GRID, "--results-dir", str(results))
    assert res.returncode == 0, res.stderr
    assert "MLflow: logged 2 record(s) it was missing" in res.stderr
    assert_consistent(results, 18)


def test_a_half_migrated_database_is_moved_aside_and_refilled(tmp_path):
    results = tmp_path / "r"
    assert ctbench("run", *GRID, "--results-dir", str(results), "--no-mlflow").returncode == 0
    assert ctbench("run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)).returncode == 0
    con = sqlite3.connect(results / "mlflow.db")  # what an interrupted batch migration leaves
    con.execute("CREATE TABLE _alembic_tmp_runs (run_uuid VARCHAR(32))")
    con.commit()
    con.close()
    res = ctbench("run", *GRID, "-m", "no_transfer,target_only,sbc,ds", "--results-dir", str(results))
    assert res.returncode == 0, res.stderr
    warns = warnings_of(res.stderr)
    assert len(warns) == 1 and "half-migrated" in warns[0] and "moved it to mlflow.db.broken-" in warns[0], res.stderr
    assert list(results.glob("mlflow.db.broken-*"))
    assert_consistent(results, 24)  # the 18 earlier records too, copied from the store


# --- MLflow that cannot be used: one warning, the run goes on, the next run catches up ------------


def test_a_locked_mlflow_database_costs_one_warning(tmp_path):
    """Before: ~5 s per record waiting on the lock, and a warning per record."""
    results = tmp_path / "r"
    assert ctbench("run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)).returncode == 0
    holder = sqlite3.connect(results / "mlflow.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        res = ctbench("run", *GRID, "--results-dir", str(results))
        elapsed = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert res.returncode == 0, res.stderr
    warns = warnings_of(res.stderr)
    assert len(warns) == 1 and "is locked by another program" in warns[0] and str(results / "mlflow.db") in warns[0]
    assert "Traceback" not in res.stderr and elapsed < 60
    assert len(record_files(results)) == 18
    res = ctbench("run", *GRID, "--results-dir", str(results))  # unlocked: the next run copies what MLflow lacks
    assert res.returncode == 0 and "MLflow: logged 17 record(s) it was missing" in res.stderr, res.stderr
    assert_consistent(results, 18)


def test_a_folder_in_place_of_the_mlflow_database(tmp_path):
    """Before: MLflow retried for minutes (a 2-record run took 310 s)."""
    results = tmp_path / "r"
    (results / "mlflow.db").mkdir(parents=True)
    t0 = time.monotonic()
    res = ctbench("run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir", str(results))
    assert res.returncode == 0 and time.monotonic() - t0 < 60
    warns = warnings_of(res.stderr)
    assert len(warns) == 1 and f"the MLflow database {results / 'mlflow.db'} is not a file; move it away" in warns[0]
    assert len(record_files(results)) == 2


@pytest.mark.parametrize("name", ["a#b", "c%20d", "e?f", "g h%"])
def test_url_characters_in_the_results_dir(tmp_path, name):
    """Before: '#', '%20' or '?' put the SQLite database outside the results dir."""
    results = tmp_path / name
    res = ctbench("run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir", str(results))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing beside it
    assert_consistent(results, 2)
    assert list((results / "mlartifacts").rglob("*.json"))


# --- disks --------------------------------------------------------------------------------------


_WRITE_RIGHTS = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make: Landlock ABI 1


def _deny_writes_except(allowed: list[str]):
    """A preexec_fn: the child may write only beneath ``allowed`` (Landlock; reading is untouched)."""
    from ctbench import sandbox

    def apply() -> None:
        libc = sandbox._libc()
        machine = os.uname().machine
        attr = sandbox._RulesetAttr(_WRITE_RIGHTS, 0, 0)
        fd = libc.syscall(sandbox._SYS_CREATE_RULESET[machine], ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
        for path in allowed:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule = sandbox._PathBeneathAttr(_WRITE_RIGHTS, pfd)
            libc.syscall(sandbox._SYS_ADD_RULE[machine], ctypes.c_int(fd), ctypes.c_int(sandbox._RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0))
            os.close(pfd)
        libc.prctl(sandbox._PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        assert libc.syscall(sandbox._SYS_RESTRICT_SELF[machine], ctypes.c_int(fd), ctypes.c_uint32(0)) == 0
        os.close(fd)

    return apply


@contextlib.contextmanager
def _mounted(kind: str, where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    if kind == "bind":
        ok = subprocess.run(["mount", "--bind", str(where), str(where)], capture_output=True).returncode == 0
        ok = ok and subprocess.run(["mount", "-o", f"remount,bind,{options}", str(where)], capture_output=True).returncode == 0
    else:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_read_only_results_dir_fails_before_any_compute(tmp_path):
    """Before: it failed after loading data and computing the first record, with a 52-71 line
    traceback."""
    from ctbench import sandbox

    results = tmp_path / "ro"
    (results / "runs").mkdir(parents=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)]
    with _mounted("bind", results, "ro") as mounted:
        if mounted:  # a read-only file system (EROFS), as on a read-only mount
            res = subprocess.run([sys.executable, "-m", "ctbench", *args], capture_output=True, text=True, timeout=120)
        elif sandbox.landlock_abi() >= 1:  # no mount privilege: Landlock denies the writes (EACCES)
            res = subprocess.run([sys.executable, "-m", "ctbench", *args], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "TMPDIR": str(scratch)},
                                 preexec_fn=_deny_writes_except([str(scratch), "/dev"]))
        else:
            pytest.skip("needs mount privilege or Landlock to make a folder read-only")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: results directory {results} is not writable"), res.stderr
    assert "--results-dir" in lines[0]
    assert "grid" not in res.stderr  # before planning: nothing loaded, nothing computed


def test_a_full_disk_mid_sweep_is_one_line_and_loses_nothing(tmp_path):
    """Before: ENOSPC on a record write was a raw traceback."""
    results = tmp_path / "small"
    with _mounted("tmpfs", results, "size=48k") as mounted:
        if not mounted:
            pytest.skip("needs mount privilege for a small tmpfs")
        res = ctbench("run", "-m", "no_transfer,target_only,sbc", "-t", TASK, "--shots", "5,10,20", "--reps", "5",
                      "--results-dir", str(results), "--no-mlflow")
        files = record_files(results)
        records = [json.loads(p.read_text()) for p in files]  # every file a whole record
        leftovers = list((results / "runs").rglob(".tmp-*"))
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in res.stderr
    assert 0 < len(records) < 45 and all(r["status"] == "ok" for r in records) and not leftovers


# --- thread variables ---------------------------------------------------------------------------


@pytest.mark.slow
def test_thread_variables_do_not_change_results_and_records_carry_them(tmp_path):
    """Before: MKL_NUM_THREADS=2 changed cnn's and lora_ct's numbers under the same record keys."""
    args = ["run", "-m", "cnn", "-t", TASK, "--shots", "10", "--reps", "1", "--no-mlflow"]
    a = ctbench(*args, "--results-dir", str(tmp_path / "a"))
    b = ctbench(*args, "--results-dir", str(tmp_path / "b"),
                env={"MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    ra, rb = (json.loads(record_files(tmp_path / d)[0].read_text()) for d in ("a", "b"))
    assert ra["key"] == rb["key"] and ra["metrics"] == rb["metrics"]
    from importlib.metadata import version

    assert ra["environment"]["torch"] == version("torch")
    assert ra["threads"]["torch"] == 1 and all(p.endswith(":1") for p in ra["threads"]["pools"])
    assert rb["threads"]["env"]["MKL_NUM_THREADS"] == "1"  # the workers run with one thread whatever the caller set


def test_experiment_creation_race_on_a_shared_server_uses_the_winners_experiment(tmp_path):
    """Two hosts (no common lock) looking up one missing experiment on one MLflow server: the second
    creation fails, and that host logs into the experiment the first one made instead of switching
    MLflow off (seen in test_two_hosts_tune_log_their_trials_to_one_mlflow_server). A creation that
    fails for another reason still raises."""
    from types import SimpleNamespace

    from ctbench.tracking import experiment_id

    class Server:
        def __init__(self, winner: bool):
            self.lookups = 0
            self.winner = winner

        def get_experiment_by_name(self, name):
            self.lookups += 1
            if self.lookups == 1 or not self.winner:
                return None  # missing when this host looked
            return SimpleNamespace(experiment_id="7")  # made by the other host meanwhile

        def create_experiment(self, name, artifact_location=None):
            raise RuntimeError("RESOURCE_ALREADY_EXISTS" if self.winner else "connection refused")

    assert experiment_id(Server(winner=True), tmp_path, "ctbench/tune/x") == "7"
    with pytest.raises(RuntimeError, match="connection refused"):
        experiment_id(Server(winner=False), tmp_path, "ctbench/tune/x")
