"""MLflow at the speed of the sweep (issue 17): records are copied by a writer thread, a batch per
SQL transaction, into the installed MLflow's own tables; what MLflow's UI and client read is the
same as when MLflow's client writes each run; nothing half-written, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.mlflow_sink import ClientRuns, MlflowSink, SqlRuns, count_runs, draft, item, record_sha
from ctbench.store import Store
from ctbench.tracking import mlflow_schema_head, open_client

TASK = "synthetic_a_b"
GRID = ["-m", "no_transfer,target_only,sbc", "-t", TASK, "--shots", "5,10", "--reps", "2"]  # 12 records


def run(*args: str):
    return CliRunner().invoke(app, ["run", *args], catch_exceptions=False)


def stored(results: Path) -> list[dict]:
    return list(Store(results).iter_records())


def mlflow_runs(results: Path) -> dict[str, tuple[str, str]]:
    """key -> (status, sha) of the active record runs, read straight from the SQLite file."""
    con = sqlite3.connect(results / "mlflow.db")
    try:
        rows = con.execute(
            "SELECT k.value, r.status, COALESCE(s.value, '') FROM runs r "
            "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'ctbench.record_key' "
            "LEFT JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'ctbench.record_sha' "
            "WHERE r.lifecycle_stage = 'active'").fetchall()
    finally:
        con.close()
    assert len({k for k, _, _ in rows}) == len(rows), "a key logged twice"
    return {k: (status, sha) for k, status, sha in rows}


def assert_mirrors_store(results: Path) -> None:
    recs = stored(results)
    runs = mlflow_runs(results)
    assert {r["key"]: ("FINISHED" if r["status"] == "ok" else "FAILED", record_sha(Path(r["_path"]).read_bytes()))
            for r in recs} == runs


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("logged")
    res = run(*GRID, "--results-dir", str(results))
    assert res.exit_code == 0, res.output
    return results


def test_a_sweep_gives_one_complete_run_per_record(logged):
    assert_mirrors_store(logged)
    assert count_runs(logged) == len(stored(logged)) == 12


def test_sql_and_client_runs_read_the_same_in_mlflow(logged):
    """The SQL writer against MLflow's own client, record for record: what MLflow's client and
    UI read (params, metrics, tags, status, name, artifacts, search) must not differ. This holds
    the SQL writer to the schema of whichever MLflow is installed."""
    from mlflow.tracking import MlflowClient

    client, _ = open_client(logged)
    assert isinstance(client, MlflowClient)
    sql, api = SqlRuns(logged, logged / "mlflow.db", client), ClientRuns(logged, client)
    recs = stored(logged)[:3]
    failed = dict(recs[0], status="failed")  # a failed record becomes a FAILED run
    exp_sql, exp_api = sql.experiment("check/sql"), api.experiment("check/client")  # both new
    ea, eb = client.get_experiment(exp_sql), client.get_experiment(exp_api)
    assert (ea.name, eb.name) == ("check/sql", "check/client")
    for field in ("artifact_location", "lifecycle_stage", "tags"):
        assert getattr(ea, field) == getattr(eb, field), field
    assert ea.creation_time and ea.last_update_time and client.get_experiment_by_name("check/sql").experiment_id == exp_sql
    pairs = []
    for rec in [*recs, failed]:
        path = Path(rec.pop("_path", None) or next((logged / "runs").rglob("*.json")))
        data = path.read_bytes()
        a, b = draft(rec, path, data, rec["key"]), draft(rec, path, data, rec["key"])
        sql.write(exp_sql, [a], [])
        api.write(exp_api, [b], [])
        pairs.append((a.run_id, b.run_id))
    sql.close()
    for a, b in pairs:
        ra, rb = client.get_run(a), client.get_run(b)
        assert ra.data.params == rb.data.params and ra.data.metrics == rb.data.metrics
        assert ra.data.tags == rb.data.tags
        for field in ("status", "lifecycle_stage", "run_name", "user_id", "artifact_uri"):
            va, vb = getattr(ra.info, field), getattr(rb.info, field)
            assert (va.replace(a, b) if field == "artifact_uri" else va) == vb, field
        assert [f.path for f in client.list_artifacts(a)] == [f.path for f in client.list_artifacts(b)]
        assert ra.info.end_time is not None and ra.info.start_time is not None
        for key, value in ra.data.metrics.items():  # metric history too (what the UI's charts read)
            assert [(m.value, m.step) for m in client.get_metric_history(a, key)] == [(value, 0)]
    found_sql = client.search_runs([exp_sql], filter_string="metrics.rmsep > 0 and params.method = 'no_transfer'"
                                                            " and tags.`ctbench.status` = 'ok'")
    found_api = client.search_runs([exp_api], filter_string="metrics.rmsep > 0 and params.method = 'no_transfer'"
                                                            " and tags.`ctbench.status` = 'ok'")
    assert len(found_sql) == len(found_api) >= 1
    # deletion as MLflow's delete_run does it
    sql = SqlRuns(logged, logged / "mlflow.db", client)
    sql.delete([pairs[0][0]])
    sql.close()
    assert client.get_run(pairs[0][0]).info.lifecycle_stage == "deleted"


def test_the_schema_revision_is_read_without_importing_mlflow(logged):
    code = ("import sys; from ctbench.tracking import mlflow_schema_head; print(mlflow_schema_head()); "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    con = sqlite3.connect(logged / "mlflow.db")
    (version,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    con.close()
    assert out == [version, "False"]
    assert mlflow_schema_head() == version


def test_a_sweep_on_an_existing_store_does_not_import_mlflow(tmp_path):
    """Importing MLflow costs about a second; with the schema current and the experiment there,
    the records go in by SQL alone."""
    results = tmp_path / "r"
    assert run(*GRID, "--results-dir", str(results)).exit_code == 0
    code = ("import sys; from typer.testing import CliRunner; from ctbench.cli.main import app; "
            f"res = CliRunner().invoke(app, ['run', '-m', 'ds', '-t', '{TASK}', '--shots', '5', '--reps', '2', "
            f"'--results-dir', {str(results)!r}]); print(res.exit_code, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr
    assert_mirrors_store(results)
    assert count_runs(results) == 14


def test_a_batch_fails_whole_and_the_next_run_copies_it(tmp_path):
    """A fault inside a batch's transaction (here a trigger that refuses params) leaves no run of
    the batch behind, costs one warning, and the next run copies every record."""
    results = tmp_path / "r"
    assert run("-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)).exit_code == 0
    con = sqlite3.connect(results / "mlflow.db")
    con.execute("CREATE TRIGGER refuse BEFORE INSERT ON params BEGIN SELECT RAISE(ABORT, 'refused by a test'); END")
    con.commit()
    con.close()
    res = run(*GRID, "--results-dir", str(results))
    assert res.exit_code == 0, res.output
    warns = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warns) == 1 and "refused by a test" in warns[0] and "the records are safe" in warns[0], res.output
    assert len(stored(results)) == 12 and len(mlflow_runs(results)) == 1  # nothing half-written
    con = sqlite3.connect(results / "mlflow.db")
    con.execute("DROP TRIGGER refuse")
    con.commit()
    con.close()
    res = run(*GRID, "--results-dir", str(results))
    assert res.exit_code == 0 and "MLflow: logged 11 record(s) it was missing" in res.output, res.output
    assert_mirrors_store(results)


def _schema(path: Path, extra: dict[str, str]) -> Path:
    con = sqlite3.connect(path)
    for table, cols in {**SqlRuns.WRITTEN, **SqlRuns.READ}.items():
        con.execute(f"CREATE TABLE {table} ({', '.join([*cols, *([extra[table]] if table in extra else [])])})")
    con.commit()
    con.close()
    return path


def test_the_sql_writer_checks_the_columns_it_writes(tmp_path):
    assert SqlRuns.fits(_schema(tmp_path / "a.db", {}))
    assert SqlRuns.fits(_schema(tmp_path / "b.db", {"params": "extra TEXT"}))  # nullable: left empty
    assert SqlRuns.fits(_schema(tmp_path / "c.db", {"params": "extra TEXT NOT NULL DEFAULT 'x'"}))
    assert not SqlRuns.fits(_schema(tmp_path / "d.db", {"latest_metrics": "model_id VARCHAR(32) NOT NULL"}))
    assert SqlRuns.fits(_schema(tmp_path / "e.db", {"experiments": "workspace TEXT NOT NULL"}))  # read only
    con = sqlite3.connect(tmp_path / "a.db")
    con.execute("ALTER TABLE metrics DROP COLUMN is_nan")
    con.commit()
    con.close()
    assert not SqlRuns.fits(tmp_path / "a.db")


def test_a_schema_the_sql_writer_does_not_know_is_written_by_mlflows_client(tmp_path, monkeypatch):
    monkeypatch.setattr(SqlRuns, "fits", classmethod(lambda cls, path: False))
    results = tmp_path / "r"
    res = run(*GRID, "--results-dir", str(results))
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert_mirrors_store(results)
    sink = MlflowSink(results)
    path = next((results / "runs").rglob("*.json"))
    assert sink.write([item(json.loads(path.read_text()), path, stored=True)]) == 0 and sink.backend == "client"


def test_a_new_store_is_a_copy_of_the_empty_one_mlflow_made(tmp_path, monkeypatch):
    """MLflow's migrations take over a second; the first new store of an MLflow version is kept
    (in the user cache) and copied for the next ones. A broken copy is replaced."""
    from ctbench.tracking import _template

    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))
    template = _template()
    assert template is not None and not template.exists()
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(*GRID, "--results-dir", str(first)).exit_code == 0
    assert template.is_file()
    made = template.stat().st_mtime_ns
    assert run(*GRID, "--results-dir", str(second)).exit_code == 0
    assert template.stat().st_mtime_ns == made
    assert_mirrors_store(second)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{second / 'mlflow.db'}")
    assert client.get_experiment("0").artifact_location == (second / "mlartifacts").resolve().as_uri() + "/0"
    assert client.get_experiment_by_name(f"ctbench/{TASK}").artifact_location == (second / "mlartifacts").resolve().as_uri()
    template.write_bytes(b"not a database")
    third = tmp_path / "third"
    res = run(*GRID, "--results-dir", str(third))
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert_mirrors_store(third)
    assert SqlRuns.fits(template)  # replaced by the fresh store MLflow made


def test_ctrl_c_mid_sweep_keeps_mlflow_consistent_and_the_rerun_completes_it(tmp_path):
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "ctbench", "run", "-m", "no_transfer,target_only,full_recalibration,sbc",
           "-t", TASK, "--shots", "5,10,20", "--reps", "6", "--results-dir", str(results)]  # 72 records
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((results / "runs").rglob("*.json")) if (results / "runs").exists() else []) < 10:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "Traceback" not in err
    kept = stored(results)
    runs = mlflow_runs(results)  # a subset of the records, each complete
    assert set(runs) <= {r["key"] for r in kept} and all(status == "FINISHED" and sha for status, sha in runs.values())
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(stored(results)) == 72
    assert_mirrors_store(results)


def test_runs_tagged_by_earlier_versions_stay_current(logged):
    """Earlier versions tagged the hash of the record's canonical JSON; hashing the file's bytes
    gives the same value, so an existing MLflow store is not copied again."""
    import hashlib

    from ctbench.store import canonical_json

    for rec in stored(logged):
        data = Path(rec.pop("_path")).read_bytes()
        assert record_sha(data) == hashlib.sha256(canonical_json(rec).encode()).hexdigest()[:16]


def test_bench_sweep_measures_mlflow_when_asked(tmp_path):
    out = tmp_path / "r"
    args = ["bench", "sweep", "-t", TASK, "-m", "no_transfer,sbc", "-n", "5,10", "-r", "2", "-j", "1", "--results-dir", str(out)]
    res = CliRunner().invoke(app, [*args, "--mlflow"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "records: 8 (8 ok, 0 failed)" in res.output
    assert "MLflow (sql): 8 record runs for 8 records in the store;" in res.output
    assert_mirrors_store(out)
    res = CliRunner().invoke(app, [*args[:-2], "--results-dir", str(tmp_path / "plain")], catch_exceptions=False)
    assert res.exit_code == 0 and "MLflow" not in res.output and not (tmp_path / "plain" / "mlflow.db").exists()
