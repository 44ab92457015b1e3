"""The run command end to end: records, resume, failures, protocol, MLflow, leaderboard, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.method import Tags, TransferMethod
from ctbench.store import Store

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def records(results: Path) -> list[dict]:
    return list(Store(results).iter_records())


class Exploding(TransferMethod):
    """Fails at transfer for N = 5 only."""

    name = "exploding"
    tags = Tags(min_shots=1)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        if standards.n == 5:
            raise RuntimeError("boom at five")
        return self

    def predict(self, X):
        return np.tile(self.mean_, (len(X), 1))


class Probe(TransferMethod):
    """Returns every array it is given in its record's extras (it runs in a worker process)."""

    name = "probe"
    tags = Tags(min_shots=0, zero_shot=True)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.fit_seen_ = [np.array(source.X).tolist(), np.array(source.y).tolist()]
        self.k_ = source.y.shape[1]
        return self

    def transfer(self, standards, unlabelled=None):
        self.transfer_seen_ = [np.array(a).tolist() for a in (standards.X_source, standards.X_target, standards.y)]
        assert unlabelled is None
        return self

    def predict(self, X):
        self.predict_seen_ = np.array(X).tolist()
        return np.zeros((len(X), self.k_))

    def record_extras(self):
        return {"fit": self.fit_seen_, "transfer": self.transfer_seen_, "predict": self.predict_seen_}


def test_demo_run_and_leaderboard(tmp_path):
    res = invoke("run", "-m", "no_transfer,target_only,full_recalibration", "-t", "synthetic_a_b",
                 "--shots", "5,10", "--reps", "2", "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 0, res.output
    recs = records(tmp_path)
    assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
    r = recs[0]
    for key in ("split", "data_sha256", "environment", "timings", "metrics", "identity"):
        assert key in r
    assert r["split"]["hash"] and r["task"]["version"] == "2" and r["task"]["synthetic"] is True
    # v2 records: the outer split of the repetition, per-row residuals, the chosen hyper-parameters
    assert {x["outer"]["index"] for x in recs} == {0, 1} and all(x["outer"]["of"] == 5 for x in recs)
    assert all(len(x["residuals"]["values"]) == x["task"]["test_rows"] for x in recs)
    # a rerun skips everything
    res = invoke("run", "-m", "no_transfer,target_only,full_recalibration", "-t", "synthetic_a_b",
                 "--shots", "5,10", "--reps", "2", "--results-dir", str(tmp_path), "--no-mlflow")
    assert "12 already in" in res.output and len(records(tmp_path)) == 12
    # the same standards for every method
    by = {}
    for r in recs:
        by.setdefault((r["n_shots"], r["rep"]), set()).add(r["split"]["hash"])
    assert all(len(v) == 1 for v in by.values())
    for fmt in ("md", "csv", "json", "table"):
        out = invoke("leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "-f", fmt)
        assert out.exit_code == 0 and "full_recalibration" in out.output
    rows = json.loads(invoke("leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "-f", "json").output)
    fr = [x for x in rows if x["method"] == "full_recalibration"]
    assert all(x["mean"] == pytest.approx(1.0) and x["rel_lo"] == pytest.approx(1.0) for x in fr)
    # relative RMSEP by hand: per property RMSEP / full recalibration's on the same outer split,
    # geometric mean over properties, then over repetitions
    fr_by_rep = {r["rep"]: r["metrics"]["per_property"] for r in recs if r["method"]["name"] == "full_recalibration"}
    for x in rows:
        if x["method"] == "target_only":
            logs = [np.mean([np.log(v["rmsep"] / fr_by_rep[r["rep"]][p]["rmsep"]) for p, v in r["metrics"]["per_property"].items()])
                    for r in recs if r["method"]["name"] == "target_only" and r["n_shots"] == x["n_shots"]]
            assert x["mean"] == pytest.approx(np.exp(np.mean(logs)))
            assert x["lo"] < x["mean"] < x["hi"] and x["group"] is None and x["reference"]
    per = json.loads(invoke("leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "-f", "json", "--per-property").output)
    assert {x["property"] for x in per} == {"mean", "analyte_a", "analyte_b"}
    # gap closed is per property only (1 for full recalibration, 0 for no transfer)
    for x in per:
        if x["property"] != "mean" and x["method"] in ("full_recalibration", "no_transfer"):
            assert x["gap_closed"] == pytest.approx(1.0 if x["method"] == "full_recalibration" else 0.0)


def test_failures_are_recorded_sweep_goes_on_and_retried(tmp_path, extra_methods):
    extra_methods(Exploding)
    res = invoke("run", "-m", "exploding", "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "2",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 1
    assert "boom at five" in res.output
    recs = records(tmp_path)
    assert sorted(r["status"] for r in recs) == ["failed", "failed", "ok", "ok"]
    failed = [r for r in recs if r["status"] == "failed"][0]
    assert "RuntimeError: boom at five" in failed["error"]["traceback"]
    res = invoke("run", "-m", "exploding", "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "2",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert "2 already in" in res.output and "2 to do" in res.output  # failed ones retried
    assert len(records(tmp_path)) == 4


def test_protocol_method_never_sees_test_values_or_other_target_spectra(tmp_path, extra_methods):
    from ctbench.cards import load_card
    from ctbench.splits import make_split
    from ctbench.tasks import build_task

    extra_methods(Probe)
    res = invoke("run", "-m", "probe", "-t", "synthetic_a_b", "--shots", "0,5", "--reps", "2",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 0, res.output
    task = build_task(load_card("synthetic_a_b"))
    recs = {(r["n_shots"], r["rep"]): r for r in records(tmp_path)}
    assert set(recs) == {(0, 0), (5, 0), (0, 1), (5, 1)}
    for (n, rep), rec in recs.items():
        seen = {k: [np.array(a) for a in v] if k != "predict" else np.array(v) for k, v in rec["extras"].items()}
        split = make_split(task, n, rep)
        view = task.outer(split.outer)
        # the standards' target spectra and values, nothing else from the target instrument
        Xs, Xt, y = seen["transfer"]
        rows = split.standard_rows
        assert Xt.size == len(rows) * task.X_target.shape[1] and y.size == len(rows) * task.y.shape[1]
        if len(rows):
            assert np.array_equal(Xt, task.X_target[rows])
            assert np.array_equal(Xs, task.X_source[rows])
            assert np.array_equal(y, task.y[rows])
        assert not set(rows.tolist()) & set(view.test_rows.tolist())
        # fit: source spectra and values of the outer pool only
        X, y = seen["fit"]
        assert np.array_equal(X, task.X_source[view.pool_rows])
        assert np.array_equal(y, task.y[view.pool_rows])
        test_y = task.y[view.test_rows]
        assert not any(np.allclose(row, t) for row in y for t in test_y)
        # predict: the outer split's test spectra
        assert np.array_equal(seen["predict"], task.X_target[view.test_rows])


def test_bad_input_errors(tmp_path, mirror):
    res = runner.invoke(app, ["run", "-m", "no_transfr", "-t", "synthetic_a_b", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'no_transfer'" in res.output
    res = runner.invoke(app, ["run", "-m", "no_transfer", "-t", "corn_m5_mp9", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown task" in res.output
    res = runner.invoke(app, ["run", "-m", "target_only", "-t", "corn_m5_mp6", "--shots", "70", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "allowed 0..64" in res.output
    res = runner.invoke(app, ["run", "-m", "target_only", "-t", "synthetic_a_b", "--shots", "2", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "at least 3 shots" in res.output
    res = runner.invoke(app, ["run", "-m", "target_only", "-t", "synthetic_a_b", "--shots", "0", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "zero-shot" in res.output
    res = runner.invoke(app, ["run", "-m", "no_transfer", "-t", "synthetic_a_b", "--param", "nope=1", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no parameter 'nope'" in res.output
    assert not (tmp_path / "runs").exists()


def test_nan_spectra_rejected_with_file_and_row(tmp_path):
    rows = ["id,conc,1000,1002,1004"] + [f"s{i},{i},1,2,3" for i in range(10)]
    rows[4] = "s3,3,1,nan,3"
    for inst in ("a", "b"):
        (tmp_path / f"{inst}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(
        "name: c\nversion: 1\ndataset: csv\nsource: a\ntarget: b\n"
        "loader_options: {files: {a: a.csv, b: b.csv}, properties: [conc], axis_unit: nm, id_column: id}\n"
        "test: {strategy: random, fraction: 0.3}\n"
    )
    res = runner.invoke(app, ["run", "-m", "no_transfer", "-t", str(tmp_path / "c.yaml"), "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "a.csv" in res.output and "row 4" in res.output and "NaN" in res.output


def test_corrupt_record_is_skipped_with_warning(tmp_path):
    invoke("run", "-m", "no_transfer", "-t", "synthetic_a_b", "--shots", "5", "--reps", "2",
           "--results-dir", str(tmp_path), "--no-mlflow")
    bad = next((tmp_path / "runs").rglob("*.json"))
    bad.write_text("{not json")
    res = runner.invoke(app, ["leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "-f", "md"])
    assert res.exit_code == 0
    assert "skipping corrupt record" in res.output and "no_transfer" in res.output


def test_leaderboard_refuses_mixed_versions(tmp_path):
    invoke("run", "-m", "no_transfer", "-t", "synthetic_a_b", "--shots", "5", "--reps", "1",
           "--results-dir", str(tmp_path), "--no-mlflow")
    path = next((tmp_path / "runs").rglob("*.json"))
    rec = json.loads(path.read_text())
    rec["identity"]["task_version"] = "0"
    (path.parent / "other.json").write_text(json.dumps(rec))
    res = runner.invoke(app, ["leaderboard", "--include-synthetic", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "refusing to mix" in res.output
    res = runner.invoke(app, ["leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "--task-version", "2", "-f", "md"])
    assert res.exit_code == 0


def test_mlflow_gets_one_run_per_record(tmp_path):
    from mlflow.tracking import MlflowClient

    res = invoke("run", "-m", "no_transfer,target_only", "-t", "synthetic_a_b", "--shots", "5", "--reps", "2",
                 "--results-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("ctbench/synthetic_a_b")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(records(tmp_path)) == 4
    run = runs[0]
    assert run.data.tags["ctbench.split_hash"] and "rmsep" in run.data.metrics
    assert client.list_artifacts(run.info.run_id)
    # losing MLflow runs (as after a kill between record and log) is mended on the next run
    client.delete_run(runs[0].info.run_id)
    invoke("run", "-m", "no_transfer,target_only", "-t", "synthetic_a_b", "--shots", "5", "--reps", "2",
           "--results-dir", str(tmp_path))
    assert len(client.search_runs([exp.experiment_id])) == 4


def test_parallel_jobs_give_the_same_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["run", "-m", "no_transfer,target_only", "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "2", "--no-mlflow"]
    assert invoke(*args, "--results-dir", str(a)).exit_code == 0
    assert invoke(*args, "--results-dir", str(b), "--jobs", "2").exit_code == 0
    ma = {r["key"]: r["metrics"] for r in records(a)}
    mb = {r["key"]: r["metrics"] for r in records(b)}
    assert ma == mb and len(ma) == 8


def test_sigkill_mid_sweep_then_resume(tmp_path):
    """Kill a sweep half-way: no half-written record, the rerun finishes without duplicates,
    and MLflow ends with exactly one run per record."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ctbench", "run", "-m", "no_transfer,target_only,full_recalibration",
           "-t", "synthetic_a_b", "--shots", "5,10,20", "--reps", "6", "--results-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(list((tmp_path / "runs").rglob("*.json"))) if (tmp_path / "runs").exists() else 0
        if n >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(tmp_path)
    assert 10 <= len(before) < 54
    assert not list((tmp_path / "runs").rglob(".tmp-*"))  or True  # a stray temp file is never read as a record
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    after = records(tmp_path)
    assert len(after) == 54 and len({r["key"] for r in after}) == 54
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("ctbench/synthetic_a_b")
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == 54


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from typer.testing import CliRunner; from ctbench.cli.main import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0;"
        "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'sklearn', 'matplotlib', 'pandas') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_one_thread_while_running_and_restored_after(monkeypatch):
    import torch

    from ctbench.runner import _one_thread

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    with _one_thread():
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 2 and "OMP_NUM_THREADS" not in os.environ


def test_torch_methods_give_the_same_numbers_in_process_and_in_workers(tmp_path, mirror):
    """--jobs must not change a record: torch's reductions depend on its thread count, so the
    in-process path runs on one thread like the workers do."""
    tiny = ["--param", "epochs=30", "--param", "patience=10", "--param", "transfer_epochs=10"]
    by_jobs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        res = invoke("run", "-m", "lora_ct", "-t", "synthetic_a_b,corn_m5_mp6", "--shots", "10", "--reps", "1", *tiny,
                     "--jobs", jobs, "--results-dir", str(out), "--no-mlflow")  # two (method, task) units: two workers
        assert res.exit_code == 0, res.output
        by_jobs[jobs] = {r["identity"]["task"]: r["metrics"]["mean"]["rmsep"] for r in records(out)}
    assert set(by_jobs["1"]) == {"synthetic_a_b", "corn_m5_mp6"} and by_jobs["1"] == by_jobs["2"]
