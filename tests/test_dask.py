"""`ctbench run --executor dask` on a real Dask cluster (issue 12, item 5): a scheduler and two
workers started on 127.0.0.1 as separate processes, each worker with its nanny (a daemonic
worker process, as `dask worker` starts it) and no data at all (its $CTBENCH_DATA is an empty
folder). The records must equal a local run's; a worker killed mid-package costs nothing (the
package runs again elsewhere: every record written exactly once); Ctrl-C stops the running
packages on the workers.

The test methods below live at module level: the isolated workers import them by name
(`test_dask:Sleepy`), which is why the Dask workers get this folder on their PYTHONPATH. This
module imports nothing heavy at the top, as each isolated worker imports it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ctbench.method import Tags, TransferMethod

TESTS = Path(__file__).resolve().parent
TASK = "corn_m5_mp6"
GRID = ["-m", "no_transfer,full_recalibration,sbc,pds", "-t", TASK, "--shots", "5,10", "--reps", "2", "--no-mlflow"]
COMPARED = ("status", "identity", "metrics", "residuals", "chosen")


class Sleepy(TransferMethod):
    """Predicts the calibration mean, after sleeping ``delay`` seconds in every transfer."""

    name = "sleepy"
    version = "1"
    tags = Tags(min_shots=1)

    def __init__(self, delay: float = 1.0, random_state: int = 0):
        self.delay = delay
        self.random_state = random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        time.sleep(self.delay)
        return self

    def predict(self, X):
        return np.tile(self.mean_, (len(X), 1))


@pytest.fixture(autouse=True)
def _needs_dask():
    pytest.importorskip("dask")
    pytest.importorskip("distributed")


def _invoke(*args: str):
    from typer.testing import CliRunner

    from ctbench.cli.main import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _records(results: Path) -> dict[str, dict]:
    from ctbench.store import Store

    return {r["key"]: r for r in Store(results).iter_records()}


def _compared(rec: dict) -> dict:
    return {k: rec.get(k) for k in COMPARED}


def _package_running(pid: int) -> list:
    """The processes a Dask worker (pid) runs a package with, [] when it runs none: its fork
    server and the fork server's children (the isolated workers)."""
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if "forkserver" in " ".join(child.cmdline()) and child.children():
                return [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return []


def _gone(procs: list, within: float) -> bool:
    import psutil

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.1)
    return False


class Cluster:
    """A scheduler and two `dask worker` processes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        data = base / "worker-data"  # the workers' data folder: empty, and hidden from methods
        data.mkdir()
        self.env = {**os.environ, "CTBENCH_DATA": str(data), "CTBENCH_CACHE": str(base / "worker-cache"),
                    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("DASK_DISTRIBUTED__WORKER__DAEMON", None)
        self.scheduler_file = base / "scheduler.json"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.base / f"{name}.log", "w")
        self.logs.append(log)
        self.procs.append(subprocess.Popen([sys.executable, "-m", *args], cwd=self.base, env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> "Cluster":
        self._start("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--scheduler-file", str(self.scheduler_file))
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("the Dask scheduler did not start:\n" + (self.base / "scheduler.log").read_text())
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            (self.base / name).mkdir()
            self._start(name, "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--name", name,
                        "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(self.base / name))
        self.wait_for_workers()
        return self

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=10)

    def wait_for_workers(self, n: int = 2, timeout: float = 120) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=timeout)

    def pids(self, client) -> dict[str, int]:
        return client.run(os.getpid)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("distributed")
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_dask_sweep_equals_local_run(tmp_path, mirror, cluster):
    local, remote = tmp_path / "local", tmp_path / "dask"
    t0 = time.perf_counter()
    res = _invoke("run", *GRID, "--results-dir", str(local))
    t_local = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    t0 = time.perf_counter()
    res = _invoke("run", *GRID, "--results-dir", str(remote), "--executor", "dask", "--scheduler", cluster.address)
    t_dask = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    a, b = _records(local), _records(remote)
    assert len(a) == 16 and set(a) == set(b)
    assert all(r["status"] == "ok" for r in b.values())
    for key in a:
        assert _compared(a[key]) == _compared(b[key]), key
    # the packages ran on both workers, each isolated on its host: the worker's own (empty)
    # data folder hidden, no TCP
    assert {r["executor"]["kind"] for r in b.values()} == {"dask"}
    assert len({r["executor"]["worker"] for r in b.values()}) == 2
    hidden = os.path.realpath(cluster.env["CTBENCH_DATA"])
    for r in b.values():
        assert r["isolation"]["tcp"] == "denied" or not r["isolation"].get("landlock_abi")
        if r["isolation"].get("filesystem") is not None:
            assert hidden in r["isolation"]["filesystem"]
    print(f"\n16 records: local executor {t_local:.1f} s, dask (2 workers) {t_dask:.1f} s; equal: yes")
    # a rerun finds everything done, and --executor dask does not even connect
    res = _invoke("run", *GRID, "--results-dir", str(remote), "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert res.exit_code == 0 and "16 already in" in res.output


def test_the_client_logs_mlflow(tmp_path, mirror, cluster):
    from mlflow.tracking import MlflowClient

    res = _invoke("run", "-m", "no_transfer,pds", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir", str(tmp_path),
                  "--executor", "dask", "--scheduler", cluster.address)
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(f"ctbench/{TASK}")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(_records(tmp_path)) == 4
    assert {r.data.tags["ctbench.split_hash"] for r in runs}


def test_killed_worker_costs_no_record(tmp_path, mirror, cluster, extra_methods, monkeypatch):
    from ctbench.dask_executor import execute_dask
    from ctbench.runner import MethodSpec, plan_runs
    from ctbench.store import Store

    extra_methods(Sleepy)
    writes: dict[str, int] = {}
    real_write = Store.write

    def counting_write(self, record):
        writes[record["key"]] = writes.get(record["key"], 0) + 1
        return real_write(self, record)

    monkeypatch.setattr(Store, "write", counting_write)
    cluster.wait_for_workers(2)
    plan = plan_runs([MethodSpec("sleepy", {"delay": 1.0})], [TASK], [5, 10], 4, 0, tmp_path)
    assert plan.n_todo == 8
    killed: dict = {}

    def killer() -> None:
        with cluster.client() as client:
            pids = cluster.pids(client)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for addr, pid in pids.items():
                    procs = _package_running(pid)
                    if procs:
                        time.sleep(0.3)
                        os.kill(pid, signal.SIGKILL)
                        killed.update(address=addr, pid=pid, procs=procs)
                        return
                time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    seen: list[tuple[str, str]] = []
    thread.start()
    execute_dask(plan, lambda status, path: seen.append((status, path)), scheduler=cluster.address)
    thread.join(timeout=5)
    assert killed, "no package was seen running"
    recs = _records(tmp_path)
    expected = 8
    print(f"\nkilled worker {killed['address']} (pid {killed['pid']}) mid-package: records expected {expected}, "
          f"written {sum(writes.values())}, distinct {len(writes)}, duplicated {sum(v - 1 for v in writes.values())}")
    assert len(recs) == expected and all(r["status"] == "ok" for r in recs.values())
    assert len(seen) == expected and len({p for _, p in seen}) == expected
    assert sorted(writes) == sorted(recs) and set(writes.values()) == {1}
    # the killed worker's fork server and isolated worker died with it
    assert _gone(killed["procs"], within=10)
    cluster.wait_for_workers(2)  # its nanny restarts it


def test_ctrl_c_stops_the_packages_on_the_workers(tmp_path, mirror, cluster, extra_methods):
    import _thread

    from ctbench.dask_executor import execute_dask
    from ctbench.runner import MethodSpec, plan_runs

    extra_methods(Sleepy)
    cluster.wait_for_workers(2)
    plan = plan_runs([MethodSpec("sleepy", {"delay": 20.0})], [TASK], [5], 4, 0, tmp_path)
    with cluster.client() as client:
        pids = cluster.pids(client)
    running: list = []

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            procs = [p for pid in pids.values() for p in _package_running(pid)[1:]]  # not the fork servers
            if procs:
                running.extend(procs)
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        execute_dask(plan, lambda status, path: None, scheduler=cluster.address)
    assert time.monotonic() - t0 < 60 and running
    # the isolated workers of the running packages are stopped, the Dask workers are idle again
    assert _gone(running, within=10)
    with cluster.client() as client:
        deadline = time.monotonic() + 20
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values())
    assert not _records(tmp_path)


def test_timeout_applies_on_the_workers(tmp_path, mirror, cluster, extra_methods):
    from ctbench.dask_executor import execute_dask
    from ctbench.runner import MethodSpec, plan_runs

    extra_methods(Sleepy)
    cluster.wait_for_workers(2)
    plan = plan_runs([MethodSpec("sleepy", {"delay": 30.0})], [TASK], [5], 1, 0, tmp_path)
    t0 = time.monotonic()
    out = execute_dask(plan, lambda status, path: None, scheduler=cluster.address, timeout=1.0)
    assert time.monotonic() - t0 < 25
    (rec,) = _records(tmp_path).values()
    assert [s for s, _ in out] == ["failed"] and rec["error"]["type"] == "Timeout"
    assert "1 s time limit" in rec["error"]["message"]


def test_local_dask_cluster_without_scheduler(tmp_path, mirror):
    args = ["run", "-m", "no_transfer,sbc", "-t", TASK, "--shots", "5", "--reps", "2", "--no-mlflow"]
    t0 = time.perf_counter()
    res = _invoke(*args, "--results-dir", str(tmp_path / "dask"), "--executor", "dask", "--jobs", "2")
    t_dask = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert _invoke(*args, "--results-dir", str(tmp_path / "local")).exit_code == 0
    a, b = _records(tmp_path / "local"), _records(tmp_path / "dask")
    assert len(a) == 4 and set(a) == set(b)
    assert all(_compared(a[k]) == _compared(b[k]) for k in a)
    assert all(r["executor"]["worker"].startswith("tcp://127.0.0.1:") for r in b.values())
    print(f"\nlocal Dask cluster (2 workers, started and closed by the run): 4 records in {t_dask:.1f} s, equal to local")


def test_a_package_that_keeps_killing_its_workers_becomes_failed_records(tmp_path, mirror, extra_methods):
    """Past distributed.scheduler.allowed-failures worker deaths (0 here) the scheduler gives the
    package up: its items become failed records saying so, written once, and the sweep ends."""
    import dask
    import psutil

    from ctbench.dask_executor import execute_dask
    from ctbench.runner import MethodSpec, plan_runs

    extra_methods(Sleepy)
    plan = plan_runs([MethodSpec("sleepy", {"delay": 5.0})], [TASK], [5, 10], 1, 0, tmp_path)
    me = psutil.Process()
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for proc in me.children(recursive=True):
                if _package_running(proc.pid):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        out = execute_dask(plan, lambda status, path: None, workers=1)
    assert killed
    recs = _records(tmp_path)
    assert len(out) == len(recs) == 2 and len({p for _, p in out}) == 2
    for rec in recs.values():
        assert rec["status"] == "failed" and rec["error"]["type"] == "WorkerDied"
        assert "allowed-failures" in rec["error"]["message"]


def test_code_mismatch_on_a_worker_fails_the_items(mirror):
    from ctbench.dask_executor import run_remote
    from ctbench.runner import MethodSpec, plan_packages, plan_runs

    plan = plan_runs([MethodSpec("no_transfer")], [TASK], [5], 1, 0, Path("/nonexistent-results"))
    (job,) = plan_packages(plan)
    out = run_remote(job.package, job.X_predict, None, (), "0" * 16)
    (outcome,) = out["outcomes"].values()
    assert outcome["status"] == "failed" and outcome["error"]["type"] == "CodeMismatch"
    assert "same ctbench and plugins on every host" in outcome["error"]["message"]


def test_cli_errors(tmp_path, mirror, monkeypatch):
    import ctbench.dask_executor as dx

    base = ["run", "-m", "no_transfer", "-t", TASK, "--shots", "5", "--reps", "1", "--no-mlflow",
            "--results-dir", str(tmp_path)]
    res = _invoke(*base, "--scheduler", "tcp://127.0.0.1:9")
    assert res.exit_code == 2 and "--scheduler needs --executor dask" in res.output
    res = _invoke(*base, "--executor", "ray")
    assert res.exit_code == 2 and "'local' or 'dask'" in res.output
    monkeypatch.setattr(dx, "CONNECT_TIMEOUT", 1.0)
    res = _invoke(*base, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert res.exit_code == 2
    line = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 1 s" in line[0]
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = _invoke(*base, "--executor", "dask")
    assert res.exit_code == 2 and "pip install 'ctbench[cluster]'" in res.output
    assert not (tmp_path / "runs").exists()
