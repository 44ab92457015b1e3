"""Cross-host tuning and tracking against real servers started by the tests (tests/servers.py):
two `ctbench tune` processes, as two hosts would run them, share one study in PostgreSQL and
together reach exactly the requested trial count; `ctbench run` logs a sweep to a real
`mlflow server` through MLFLOW_TRACKING_URI, one run per record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_plugins import env_with, write_plugin
from servers import mlflow_server, postgres_server, postgres_url  # noqa: F401  (pytest fixtures)

TASK = "synthetic_a_b"  # the embedded demo task (the `demo` suite), 5 outer splits
STUDY = f"ctbench/gated_sbc/{TASK}/N5/outer0"
TRIALS = 12

# sbc under another name whose first fit in each process waits (up to a minute) until two
# processes are inside a trial: both workers surely overlap, however unevenly they start
GATE_PLUGIN = """
import os
import time
from pathlib import Path

from ctbench import hookimpl
from ctbench_classical.sbc import SBC

_waited = []


def _wait_for_peers():
    spec = os.environ.get("CTBENCH_TEST_GATE")
    if not spec or _waited:
        return
    _waited.append(True)
    folder, peers = spec.rsplit(":", 1)
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < int(peers) and time.monotonic() < deadline:
        time.sleep(0.02)


class GatedSBC(SBC):
    name = "gated_sbc"

    def fit(self, source):
        _wait_for_peers()
        return super().fit(source)


@hookimpl
def ctbench_register_methods():
    return [GatedSBC]
"""


@pytest.fixture(scope="module")
def gated_env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment with the gated sbc installed as a third-party plugin would be."""
    site = write_plugin(tmp_path_factory.mktemp("gate_site"), "ctbench_gate_probe", GATE_PLUGIN,
                        "ctbench-gate-probe", "gate_probe")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env_with(site, base, PYTHONUNBUFFERED="1")


def tune_cmd(storage: str, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ctbench", "tune", "-m", "gated_sbc", "-t", TASK, "-n", "5", "--outer", "0",
            "--reps", "2", "--trials", str(TRIALS), "--storage", storage, "--results-dir", str(results), *extra]


def two_hosts(storage: str, tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[list[subprocess.Popen], list[str], float]:
    """Start two `ctbench tune` processes at once on one storage, each with its own results
    folder (as on two hosts); returns (processes, outputs, wall seconds)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**env, "CTBENCH_TEST_GATE": f"{gate}:2"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(tune_cmd(storage, tmp_path / f"host{k}", *extra), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in range(2)]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return procs, outs, time.perf_counter() - t0


def check_exact(storage: str, procs: list[subprocess.Popen]):
    """The study holds exactly TRIALS counted trials, run by both processes; returns it."""
    import optuna

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == TRIALS, states
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert all(t.user_attrs.get("ctbench.surplus") for t in trials if t.state.name == "FAIL")  # only refused at the target
    by_pid = Counter(t.user_attrs["ctbench.worker"]["pid"] for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    assert set(by_pid) == {p.pid for p in procs}, by_pid  # both hosts ran trials
    return study, states, by_pid


def test_two_hosts_tune_one_postgresql_study_to_the_exact_trial_count(postgres_url, postgres_server, gated_env, tmp_path):
    storage = postgres_url  # this module's own database; the other tests make theirs
    procs, outs, wall = two_hosts(storage, tmp_path, gated_env, "--no-mlflow")
    assert [p.returncode for p in procs] == [0, 0], outs
    study, states, by_pid = check_exact(storage, procs)
    print(f"\n[postgres] requested {TRIALS} trials, study holds {states['COMPLETE'] + states['PRUNED']} "
          f"({dict(states)}; per worker {sorted(by_pid.values())}) in {wall:.1f} s wall")
    assert study.user_attrs["ctbench.protocol"]["method"] == "gated_sbc"
    password = postgres_server.password
    for k, out in enumerate(outs):
        assert f"{TRIALS} trials ({TRIALS} complete" in out, out
        assert password not in out and "ctbench:***@127.0.0.1" in out  # the URL is shown masked
        tuned = json.loads((tmp_path / f"host{k}" / "tuned" / "gated_sbc" / TASK / "N5-outer0.json").read_text())
        assert tuned["n_trials"] == TRIALS and tuned["n_trials_target"] == TRIALS
        assert password not in tuned["storage"] and tuned["storage"].startswith("postgresql://ctbench:***@")
        assert tuned["best_trial"] == study.best_trial.number
    # a third host joining later finds the target reached and runs nothing
    again = subprocess.run(tune_cmd(storage, tmp_path / "host2", "--no-mlflow"), env=gated_env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"the target of {TRIALS} is reached, nothing to run" in again.stderr
    assert len(study.get_trials(deepcopy=False)) == sum(states.values())
    late = json.loads((tmp_path / "host2" / "tuned" / "gated_sbc" / TASK / "N5-outer0.json").read_text())
    assert late["best_trial"] == study.best_trial.number  # it still writes the shared study's best parameters


OPEN_AT_ONCE = """
import os, sys, time
from pathlib import Path
import optuna.storages, sqlalchemy.engine  # imported before the barriers: the opens then coincide
from ctbench.tuning import open_storage
folder, n, urls = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
sqlalchemy.engine.make_url(urls[0]).get_dialect().import_dbapi()
for i, url in enumerate(urls):  # one fresh database per round, opened by all n processes at once
    barrier = folder / str(i)
    barrier.mkdir(exist_ok=True)
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier)) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    open_storage(url).engine.dispose()
"""


def test_workers_opening_a_fresh_postgresql_database_at_once_all_succeed(postgres_server, tmp_path):
    """Several workers creating the study tables of an empty database at the same moment: the
    losers of PostgreSQL's races (duplicate table / type / key) retry and then open it."""
    n = 6
    urls = [postgres_server.create_database() for _ in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(tmp_path), str(n), *urls], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outs


def test_a_table_created_by_another_worker_meanwhile_is_retried(monkeypatch):
    """The rare loser of that race gets 'relation ... already exists' (a ProgrammingError, not an
    IntegrityError): open_storage retries it like the other transient errors. No server needed."""
    import optuna
    import sqlalchemy.exc

    from ctbench import tuning

    calls = []

    class Racing:
        def __init__(self, url, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, Exception('relation "studies" already exists'))

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(tuning.time, "sleep", lambda s: None)
    assert isinstance(tuning.open_storage("postgresql://u:pw@db/x"), Racing) and len(calls) == 2

    class Denied:
        def __init__(self, url, **kwargs):
            calls.append(url)
            raise sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("permission denied for table studies"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", Denied)
    with pytest.raises(tuning.TuningError, match="permission denied"):
        tuning.open_storage("postgresql://u:pw@db/x")
    assert len(calls) == 1  # other programming errors are not retried


def test_a_missing_postgresql_driver_is_a_one_line_error(gated_env, tmp_path):
    res = subprocess.run(tune_cmd("postgresql+nodriver://u:secret@127.0.0.1:1/db", tmp_path, "--no-mlflow"),
                         env=gated_env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "cannot open the study storage postgresql+nodriver://u:***@127.0.0.1:1/db" in res.stderr
    assert "secret" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # ~15 s for the server to start, ~15 s of tuning with HTTP logging
def test_two_hosts_tune_log_their_trials_to_one_mlflow_server(postgres_server, mlflow_server, gated_env, tmp_path):
    """Both hosts log to the shared MLflow server: one parent run each, one nested run per
    counted trial, the storage URL masked."""
    storage = postgres_server.create_database()
    env = {**gated_env, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    procs, outs, wall = two_hosts(storage, tmp_path, env)
    assert [p.returncode for p in procs] == [0, 0], outs
    _, states, _ = check_exact(storage, procs)
    from ctbench.tuning import tune_experiment_name

    client = mlflow_server.client()
    exp = client.get_experiment_by_name(tune_experiment_name(TASK))
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`ctbench.study` = '{STUDY}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ctbench.kind") == "tune"]
    children = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {r.info.run_id for r in parents}
    counted = states["COMPLETE"] + states["PRUNED"]
    assert len(children) == counted == TRIALS
    assert len({r.data.tags["optuna.trial_number"] for r in children}) == TRIALS
    assert all("val_rmsep" in r.data.metrics for r in children)
    for r in parents:
        assert r.data.params["storage"].startswith("postgresql://ctbench:***@")
        assert postgres_server.password not in json.dumps(r.data.params)
    print(f"\n[postgres+mlflow] {len(children)} trial runs under {len(parents)} parents for {TRIALS} trials, {wall:.1f} s wall")
    assert not any((tmp_path / f"host{k}" / "mlflow.db").exists() for k in range(2))  # nothing went to a local store


@pytest.mark.slow  # the server's start (~15 s) and two sweeps
def test_a_sweep_logged_to_a_real_mlflow_server(mlflow_server, tmp_path):
    """`ctbench run` with MLFLOW_TRACKING_URI=http://...: the server holds one run per record,
    with its params, metrics and the record as an artifact uploaded through the server; a rerun
    adds nothing."""
    from ctbench.mlflow_sink import MlflowSink
    from ctbench.store import Store
    from ctbench.tracking import experiment_name

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    cmd = [sys.executable, "-m", "ctbench", "run", "-m", "sbc", "-t", "demo", "--shots", "5", "--reps", "2",
           "--results-dir", str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    records = list(Store(tmp_path).iter_records())
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    assert not (tmp_path / "mlflow.db").exists()  # tracking went to the server only

    client = mlflow_server.client()

    def runs_of_records():
        exps = {client.get_experiment_by_name(experiment_name(r["identity"]["task"])).experiment_id for r in records}
        return client.search_runs(sorted(exps), max_results=1000)

    runs = runs_of_records()
    print(f"\n[mlflow] server runs {len(runs)} == records {len(records)}")
    assert len(runs) == len(records)
    by_key = {r.data.tags[MlflowSink.KEY_TAG]: r for r in runs}
    assert set(by_key) == {r["key"] for r in records}
    for rec in records:
        run = by_key[rec["key"]]
        ident = rec["identity"]
        assert run.info.status == "FINISHED"
        assert run.data.params["method"] == "sbc" and run.data.params["n_shots"] == "5"
        assert run.data.params["rep"] == str(ident["rep"]) and run.data.params["task"] == ident["task"]
        assert all(run.data.params[f"param.{k}"] == str(v) for k, v in ident["params"].items())
        for name, value in rec["metrics"]["mean"].items():
            assert run.data.metrics[name] == pytest.approx(value)
        assert "time.fit_s" in run.data.metrics
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"{rec['key']}.json"]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    exp_dirs = {mlflow_server.artifacts / r.info.experiment_id for r in runs}
    assert sum(len(list(d.rglob("*.json"))) for d in exp_dirs) == len(records)  # in the server's folder

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(runs_of_records()) == len(records)
