"""`ctbench tune`: validation on one outer split's calibration pool only (tuning nested in the
outer splits), search spaces, pruning, resume after a kill, several workers on one study with an
exact trial count, MLflow, and `run --params tuned` using split k's parameters on split k only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_plugins import env_with, write_plugin
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.method import Tags, TransferMethod
from ctbench.store import Store
from ctbench.tuning import A_WORKER, TuneConfig, TuningError, tune

runner = CliRunner()
TASK = "synthetic_a_b"  # 5 outer splits (grouped folds)
K = 5


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def load_study(results: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{results}/optuna.db")


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# --- probe methods (registered for one test with the extra_methods fixture) -----------------------

SHOWN: list[tuple[str, np.ndarray]] = []


class LeakProbe(TransferMethod):
    """Records every array it is shown; transductive, so it is given unlabelled spectra too."""

    name = "tune_probe"
    tags = Tags(min_shots=1, transductive=True)

    def __init__(self, shrink: float = 1.0, random_state: int = 0):
        self.shrink = shrink
        self.random_state = random_state

    def fit(self, source):
        SHOWN.extend([("spectra", source.X), ("y", source.y)])
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        SHOWN.extend([("spectra", standards.X_source), ("spectra", standards.X_target), ("y", standards.y)])
        if unlabelled is not None:
            SHOWN.append(("spectra", unlabelled))
        return self

    def predict(self, X_target):
        SHOWN.append(("spectra", X_target))
        return np.tile(self.mean_ * self.shrink, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        return {"shrink": trial.suggest_float("shrink", 0.5, 1.5)}


class NoSpace(TransferMethod):
    name = "no_space"
    tags = Tags(min_shots=1)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state


BUILT: list[dict] = []


class Conditional(TransferMethod):
    """A space with a categorical, an integer, a log-float only for kind 'a', a stepped int only for 'b'."""

    name = "conditional"
    tags = Tags(min_shots=1)

    def __init__(self, kind: str = "a", n: int = 1, alpha: float = 0.1, width: int = 2, random_state: int = 0):
        self.kind, self.n, self.alpha, self.width, self.random_state = kind, n, alpha, width, random_state

    def fit(self, source):
        BUILT.append(self.get_params())
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        return self

    def predict(self, X_target):
        penalty = self.alpha if self.kind == "a" else self.width / 8
        return np.tile(self.mean_ + penalty + self.n, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        params = {"kind": trial.suggest_categorical("kind", ["a", "b"]), "n": trial.suggest_int("n", 1, 4)}
        if params["kind"] == "a":
            params["alpha"] = trial.suggest_float("alpha", 1e-4, 1.0, log=True)
        else:
            params["width"] = trial.suggest_int("width", 2, 8, step=2)
        return params


class Iterative(TransferMethod):
    """Reports its parameter as the intermediate value of 20 'epochs' (worse for larger x)."""

    name = "iterative_probe"
    tags = Tags(min_shots=1, iterative=True)

    def __init__(self, x: float = 0.5, random_state: int = 0):
        self.x, self.random_state = x, random_state

    def fit(self, source):
        for epoch in range(20):
            self.report_intermediate(self.x + 1.0 / (epoch + 1), epoch)
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        return self

    def predict(self, X_target):
        return np.tile(self.mean_ + self.x, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        return {"x": trial.suggest_float("x", 0.0, 10.0)}


class Flaky(TransferMethod):
    """Raises for half of its space; `always` makes every trial fail."""

    name = "flaky"
    tags = Tags(min_shots=1)

    def __init__(self, x: float = 0.0, always: bool = False, random_state: int = 0):
        self.x, self.always, self.random_state = x, always, random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        if self.always or self.x > 0.5:
            raise np.linalg.LinAlgError("singular matrix")
        return self

    def predict(self, X_target):
        return np.tile(self.mean_ + self.x, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0), "always": trial.suggest_categorical("always", [FLAKY_ALWAYS[0]])}


FLAKY_ALWAYS = [False]


PLUGIN = """
import os
import time
from pathlib import Path

import numpy as np

from ctbench import hookimpl
from ctbench.method import Tags, TransferMethod

_GATED = []


def _gate():
    # with TUNE_PROBE_GATE=folder:n, a process's first trial waits until n processes are in one
    spec = os.environ.get("TUNE_PROBE_GATE")
    if not spec or _GATED:
        return
    _GATED.append(1)
    folder, n = spec.rsplit(":", 1)
    Path(folder, str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(Path(folder).iterdir())) < int(n) and time.time() < deadline:
        time.sleep(0.02)


class SleepyMean(TransferMethod):
    name = "sleepy_mean"
    tags = Tags(min_shots=1)

    def __init__(self, x: float = 0.0, random_state: int = 0):
        self.x, self.random_state = x, random_state

    def fit(self, source):
        _gate()
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        time.sleep(0.02)
        return self

    def predict(self, X_target):
        return np.tile(self.mean_ + self.x, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        return {"x": trial.suggest_float("x", -1.0, 1.0)}


@hookimpl
def ctbench_register_methods():
    return [SleepyMean]
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment of subprocesses that see a cheap method, installed as a third party would be
    (a distribution with a `ctbench` entry point on PYTHONPATH): workers start fast."""
    site = write_plugin(tmp_path_factory.mktemp("site"), "ctbench_tune_probe", PLUGIN, "ctbench-tune-probe",
                        "tune_probe_plugin")
    return env_with(site, PYTHONUNBUFFERED="1")


def single_split_card(folder: Path) -> str:
    """The demo task's card with a single outer split (a seeded random test set), as a path."""
    import yaml

    from ctbench.cards import load_card

    doc = yaml.safe_load(Path(load_card(TASK).path).read_text())
    doc.update(name="synthetic_single", version="1", test={"strategy": "random", "fraction": 0.25, "seed": 0})
    path = folder / "synthetic_single.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# --- tests ---------------------------------------------------------------------------------------


def test_objective_never_sees_the_test_rows(tmp_path, extra_methods):
    from ctbench.cards import load_card
    from ctbench.splits import validation_splits
    from ctbench.tasks import build_task

    extra_methods(LeakProbe)
    SHOWN.clear()
    out = tune(TuneConfig("tune_probe", TASK, 5, trials=4, reps=3, results_dir=str(tmp_path)), mlflow=False)
    assert out.counts["counted"] == 4 and out.summary["params"]["shrink"] > 0
    task = build_task(load_card(TASK))

    def rows(a):
        a = np.ascontiguousarray(np.atleast_2d(np.asarray(a, dtype=np.float64)))
        return {r.tobytes() for r in a}

    test = task.test_rows
    forbidden = rows(task.X_target[test]) | rows(task.X_source[test]) | rows(task.y[test])
    pool = task.pool_rows
    allowed = rows(task.X_target[pool]) | rows(task.X_source[pool]) | rows(task.y[pool])
    kinds = {k for k, _ in SHOWN}
    assert kinds == {"spectra", "y"} and len(SHOWN) > 20
    for _, a in SHOWN:
        assert not rows(a) & forbidden  # no test target spectrum, test source spectrum or test y
        assert rows(a) <= allowed
    # predictions were asked for the held-out part of the pool, never the test rows
    held = set().union(*(rows(task.X_target[s.heldout_rows]) for s in validation_splits(task, 3, 5)))
    predicted = [a for k, a in SHOWN if k == "spectra" and rows(a) <= held]
    assert predicted and all(not rows(a) & rows(task.X_target[test]) for a in predicted)
    saved = json.loads(out.path.read_text())
    assert saved["validation"]["n_splits"] == 3 and "test rows never used" in saved["validation"]["kind"]
    assert (saved["outer"], saved["n_outer"]) == (0, K) and out.path.name == "N5-outer0.json"
    assert out.study == saved["study"] == f"ctbench/tune_probe/{TASK}/N5/outer0"


def test_each_outer_split_is_tuned_on_its_own_pool_only(tmp_path, extra_methods):
    """Outer split k's study never sees split k's test rows (which lie in the other splits'
    pools): neither in its validation splits nor in what the method is shown."""
    from ctbench.cards import load_card
    from ctbench.tasks import build_task
    from ctbench.tuning import setup_task

    extra_methods(LeakProbe)
    base = build_task(load_card(TASK))
    assert base.n_outer == K

    def rows(a):
        a = np.ascontiguousarray(np.atleast_2d(np.asarray(a, dtype=np.float64)))
        return {r.tobytes() for r in a}

    seen_tests = set()
    for k in range(K):
        view = base.outer(k)
        test, pool = set(view.test_rows.tolist()), set(view.pool_rows.tolist())
        assert not test & pool and test - set(base.pool_rows.tolist()) == (test if k == 0 else set())
        cfg = TuneConfig("tune_probe", TASK, 5, trials=2, reps=3, results_dir=str(tmp_path), outer=k)
        task, _, objective = setup_task(cfg)
        assert task.outer_index == k and (cfg.outer, cfg.n_outer) == (k, K)
        for split in objective.splits:
            used = set(np.concatenate([split.pool_rows, split.standard_rows, split.heldout_rows]).tolist())
            assert used <= pool and not used & test
        SHOWN.clear()
        out = tune(cfg, mlflow=False)
        forbidden = rows(base.X_target[view.test_rows]) | rows(base.X_source[view.test_rows]) | rows(base.y[view.test_rows])
        assert SHOWN and not any(rows(a) & forbidden for _, a in SHOWN)
        assert all(rows(a) <= rows(base.X_target[view.pool_rows]) | rows(base.X_source[view.pool_rows]) | rows(base.y[view.pool_rows])
                   for _, a in SHOWN)
        saved = json.loads(out.path.read_text())
        assert out.path.name == f"N5-outer{k}.json" and (saved["outer"], saved["n_outer"]) == (k, K)
        assert out.study == f"ctbench/tune_probe/{TASK}/N5/outer{k}" and out.counts["counted"] == 2
        seen_tests |= test
    assert seen_tests == set(range(base.y.shape[0]))  # every sample is a test sample of one split
    with pytest.raises(TuningError, match=r"--outer .*0\.\.4.*got 5"):
        tune(TuneConfig("tune_probe", TASK, 5, trials=1, results_dir=str(tmp_path), outer=K), mlflow=False)


def test_method_without_search_space_is_a_one_line_error(tmp_path, extra_methods):
    extra_methods(NoSpace)
    res = runner.invoke(app, ["tune", "-m", "no_space", "-t", TASK, "-n", "5", "--results-dir", str(tmp_path), "--no-mlflow"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no search space" in lines[0] and "search_space(trial)" in lines[0]
    res = runner.invoke(app, ["tune", "-m", "no_transfr", "-t", TASK, "-n", "5", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'no_transfer'" in res.output
    res = runner.invoke(app, ["tune", "-m", "target_only", "-t", TASK, "-n", "2", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "at least 3 shots" in res.output
    res = runner.invoke(app, ["tune", "-m", "target_only", "-t", TASK, "-n", "80", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "error:" in res.output


def test_conditional_space_categorical_int_logfloat(tmp_path, extra_methods):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    extra_methods(Conditional)
    BUILT.clear()
    out = tune(TuneConfig("conditional", TASK, 5, trials=14, reps=1, results_dir=str(tmp_path), seed=3), mlflow=False)
    study = load_study(tmp_path, out.study)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 14 and {t.params["kind"] for t in trials} == {"a", "b"}
    for t in trials:
        assert isinstance(t.distributions["kind"], CategoricalDistribution)
        assert isinstance(t.distributions["n"], IntDistribution) and isinstance(t.params["n"], int)
        if t.params["kind"] == "a":
            assert set(t.params) == {"kind", "n", "alpha"}
            assert isinstance(t.distributions["alpha"], FloatDistribution) and t.distributions["alpha"].log
            assert 1e-4 <= t.params["alpha"] <= 1.0
        else:
            assert set(t.params) == {"kind", "n", "width"} and t.params["width"] in (2, 4, 6, 8)
        assert t.user_attrs["ctbench.params"] == t.params  # what the method was built with
    random_state = BUILT[0]["random_state"]  # the method was built with each trial's suggestions
    for t in trials:
        assert {**Conditional.default_params(), **t.params, "random_state": random_state} in BUILT
    best = json.loads(out.path.read_text())["params"]
    assert best == study.best_trial.params


def test_iterative_method_is_pruned(tmp_path, extra_methods):
    extra_methods(Iterative)
    out = tune(TuneConfig("iterative_probe", TASK, 5, trials=16, reps=1, results_dir=str(tmp_path), seed=1), mlflow=False)
    study = load_study(tmp_path, out.study)
    s = states(study)
    assert s.get("PRUNED", 0) >= 1 and s.get("COMPLETE", 0) + s.get("PRUNED", 0) == 16
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED"]
    assert all(len(t.intermediate_values) < 20 for t in pruned)  # stopped early
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert all(len(t.intermediate_values) == 20 for t in complete)


def test_resume_counts_existing_trials_and_fails_stale_ones(tmp_path):
    base = ["tune", "-m", "target_only", "-t", TASK, "-n", "5", "--outer", "0", "--reps", "2", "--results-dir", str(tmp_path),
            "--no-mlflow"]
    res = invoke(*base, "--trials", "3")
    assert res.exit_code == 0, res.output
    name = f"ctbench/target_only/{TASK}/N5/outer0"
    assert states(load_study(tmp_path, name)) == {"COMPLETE": 3}
    # a worker killed mid-trial leaves a RUNNING trial behind: fake one whose process is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = load_study(tmp_path, name)
    trial = study.ask()
    trial.set_user_attr(A_WORKER, {"host": socket.gethostname(), "pid": dead.pid, "start": None})
    res = invoke(*base, "--trials", "5")
    assert res.exit_code == 0, res.output
    assert "3 trial(s) already" in res.output and "1 stale running trial(s)" in res.output
    assert "running up to 2 more to reach 5" in res.output
    assert states(load_study(tmp_path, name)) == {"COMPLETE": 5, "FAIL": 1}
    res = invoke(*base, "--trials", "5")
    assert "5 trial(s) already" in res.output and "nothing to run" in res.output
    # another protocol on the same study is refused
    res = runner.invoke(app, [*base[:-5], "--reps", "3", "--results-dir", str(tmp_path), "--no-mlflow", "--trials", "6"])
    assert res.exit_code == 2 and "n_splits=2" in res.output


def test_sigkill_then_resume(tmp_path, plugin_env):
    cmd = [sys.executable, "-m", "ctbench", "tune", "-m", "sleepy_mean", "-t", TASK, "-n", "5", "--outer", "0", "--reps", "2",
           "--trials", "400", "--results-dir", str(tmp_path), "--no-mlflow"]
    proc = subprocess.Popen(cmd, env=plugin_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"ctbench/sleepy_mean/{TASK}/N5/outer0"
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and done < 3 and proc.poll() is None:
        time.sleep(0.1)
        try:
            done = states(load_study(tmp_path, name)).get("COMPLETE", 0)
        except Exception:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = load_study(tmp_path, name)
    before = states(study)
    done = before.get("COMPLETE", 0)
    assert done >= 3 and before.get("RUNNING", 0) <= 1
    # killed after creating a trial but before naming itself on it: that trial is failed after the grace period
    named = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and A_WORKER in t.user_attrs]
    res = subprocess.run([*cmd[:-5], "--trials", str(done + 2), *cmd[-3:]], env=plugin_env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"{done} trial(s) already" in res.stderr and f"running up to 2 more to reach {done + 2}" in res.stderr
    if named:
        assert "1 stale running trial(s) of a dead worker marked failed" in res.stderr
    after = states(load_study(tmp_path, name))
    assert after["COMPLETE"] == done + 2 and "RUNNING" not in after


def test_a_trial_whose_worker_never_named_itself_fails_after_the_grace_period(tmp_path, monkeypatch):
    """A worker SIGKILLed between Optuna creating its trial and the objective's first line leaves
    a RUNNING trial with no worker and no heartbeat; waiting on it would hang a resumed tune."""
    import optuna

    from ctbench import tuning

    storage = tuning.open_storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="orphan", storage=storage)
    orphan = study.ask()
    live = study.ask()
    live.set_user_attr(A_WORKER, {"host": socket.gethostname(), "pid": os.getpid(), "start": tuning._process_start(os.getpid())})
    assert tuning.fail_stale_trials(study) == 0  # young: it may still be starting
    monkeypatch.setattr(tuning, "GRACE_PERIOD_S", 0)
    time.sleep(0.01)
    assert tuning.fail_stale_trials(study) == 1
    st = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert st == {orphan.number: "FAIL", live.number: "RUNNING"}


def test_two_worker_processes_and_jobs_share_one_study_exactly(tmp_path, plugin_env):
    """Two `ctbench tune` processes on one SQLite study, each asked for the same total, one of
    them with --jobs 2 (worker processes of its own): three workers, the total is exact. The
    study is outer split 2's: the worker processes receive the outer split."""
    args = [sys.executable, "-m", "ctbench", "tune", "-m", "sleepy_mean", "-t", TASK, "-n", "5", "--outer", "2", "--reps", "1",
            "--trials", "16", "--results-dir", str(tmp_path), "--no-mlflow"]
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**plugin_env, "TUNE_PROBE_GATE": f"{gate}:3"}  # every worker is in a trial before any ends
    procs = [subprocess.Popen(args + extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in ([], ["--jobs", "2"])]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = load_study(tmp_path, f"ctbench/sleepy_mean/{TASK}/N5/outer2")
    assert study.user_attrs["ctbench.protocol"]["outer"] == 2
    s = states(study)
    assert s["COMPLETE"] == 16 and "RUNNING" not in s and "PRUNED" not in s
    fails = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("ctbench.surplus") for t in fails)  # only trials refused at the target
    pids = {t.user_attrs[A_WORKER]["pid"] for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    assert len(pids) == 3 and procs[1].pid not in pids  # --jobs ran its trials in its own two workers
    assert "with 2 workers" in outs[1]
    assert all("16 trials (16 complete" in o for o in outs)
    assert [p.name for p in (tmp_path / "tuned" / "sleepy_mean" / TASK).iterdir()] == ["N5-outer2.json"]


def test_tune_all_outer_splits_then_run_uses_each_splits_params(tmp_path):
    """`tune --outer all` makes one study and one file per outer split; `run --params tuned` gives
    the repetitions of outer split k exactly split k's parameters, and the defaults (with a
    warning) to those of a split without a tuned file."""
    res = invoke("tune", "-m", "no_transfer", "-t", TASK, "-n", "5", "--reps", "1", "--trials", "2",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "tuned" / "no_transfer" / TASK
    paths = [folder / f"N5-outer{k}.json" for k in range(K)]
    assert sorted(folder.iterdir()) == paths
    for k, path in enumerate(paths):
        tuned = json.loads(path.read_text())
        assert tuned["n_trials"] == 2 and (tuned["outer"], tuned["n_outer"]) == (k, K)
        assert tuned["study"] == f"ctbench/no_transfer/{TASK}/N5/outer{k}"
        assert {"params", "best_value", "storage", "timestamp", "validation"} <= set(tuned)
        assert f"study 'ctbench/no_transfer/{TASK}/N5/outer{k}': 2 trials (2 complete" in res.output
        # distinct parameters per split, so that each record shows which split's file it used
        tuned["params"] = {"max_components": 3 + k, "cv": 5}
        path.write_text(json.dumps(tuned))
    last = res.output.strip().splitlines()[-1]
    assert last.startswith(f"saved {K} files, one per outer split:") and all(str(p) in res.output for p in paths)
    paths[3].unlink()
    res = invoke("run", "-m", "no_transfer", "-t", TASK, "--shots", "5,10", "--reps", str(2 * K), "--params", "tuned",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"{4 * K} runs in the grid" in out
    assert f"no tuned parameters for no_transfer on {TASK} N=5 outer split 3 ({paths[3]} missing; " \
           f"run `ctbench tune --method no_transfer --task {TASK} --shots 5 --outer 3`)" in out
    assert "outer split 0 " not in out and "outer split 4 " not in out
    assert f"no tuned parameters for no_transfer on {TASK} N=10 in any of its {K} outer splits" in out
    recs = list(Store(tmp_path).iter_records())
    assert len(recs) == 4 * K and all(r["status"] == "ok" for r in recs)
    from ctbench.plugins import get_method

    defaults = get_method("no_transfer").cls.default_params()
    defaults.pop("random_state", None)
    for r in recs:
        k = r["outer"]["index"]
        assert k == r["rep"] % K
        if r["n_shots"] == 5 and k != 3:
            want = {"max_components": 3 + k, "cv": 5}
            assert r["method"]["params_source"] == f"tuned:{paths[k]}"
            assert r["method"]["user_params"] == want
            assert {key: r["identity"]["params"][key] for key in want} == want
        else:
            assert r["method"]["params_source"] == "default" and r["method"]["user_params"] == {}
            assert r["identity"]["params"] == defaults
    res = invoke("leaderboard", "--include-synthetic", "--results-dir", str(tmp_path), "-f", "md")
    rows = [line for line in res.output.splitlines() if "(tuned)" in line]
    assert len(rows) == 1 and f"| {2 * (K - 1)} |" in rows[0]  # the tuned splits' records form one row


def test_plan_runs_rep_filter(tmp_path):
    from ctbench.runner import MethodSpec, plan_runs
    from ctbench.tuning import OuterReps

    plan = plan_runs([MethodSpec("no_transfer")], [TASK], [5, 10], 12, 0, tmp_path, rep_filter=OuterReps(2, K))
    assert plan.n_total == 4 and [sorted(u.items) for u in plan.units] == [[(5, 2), (5, 7), (10, 2), (10, 7)]]
    assert plan_runs([MethodSpec("no_transfer")], [TASK], [5], 12, 0, tmp_path).n_total == 12


def test_tuned_specs_shape_and_stale_versions(tmp_path):
    from ctbench.cards import load_card
    from ctbench.runner import MethodSpec
    from ctbench.tuning import OuterReps, tuned_path, tuned_specs

    from ctbench.plugins import get_method

    version, mversion = load_card(TASK).version, get_method("target_only").cls.version
    paths = [tuned_path(tmp_path, "target_only", TASK, 5, k) for k in range(K)]
    paths[0].parent.mkdir(parents=True)
    for k in (0, 1, 2, 4):
        paths[k].write_text(json.dumps({"params": {"max_components": 4 + k}, "task_version": version,
                                        "method_version": mversion, "outer": k, "n_outer": K}))
    warned: list[str] = []
    specs = tuned_specs(["target_only"], [TASK], [5, 10], tmp_path, {"cv": 5}, None, warn=warned.append)
    cli = MethodSpec("target_only", {"cv": 5}, "cli")
    assert specs == [
        *[(MethodSpec("target_only", {"max_components": 4 + k, "cv": 5}, f"tuned:{paths[k]}+cli") if k != 3 else cli,
           [TASK], [5], OuterReps(k, K)) for k in range(K)],
        (cli, [TASK], [10], OuterReps(0, 1)),
    ]
    assert len(warned) == 2 and "outer split 3" in warned[0] and "--outer 3`" in warned[0] and "--outer all`" in warned[1]
    assert [r for r in range(12) if OuterReps(3, K)(r)] == [3, 8] and all(OuterReps(0, 1)(r) for r in range(12))
    paths[1].write_text(json.dumps({"params": {"max_components": 4}, "task_version": "0", "method_version": mversion, "outer": 1}))
    paths[2].write_text(json.dumps({"params": {"max_components": 4}, "task_version": version, "method_version": mversion, "outer": 0}))
    warned.clear()
    specs = tuned_specs(["target_only"], [TASK], [5], tmp_path, {}, None, warn=warned.append)
    assert [s.params_source for s, *_ in specs] == [f"tuned:{paths[0]}", "default", "default", "default", f"tuned:{paths[4]}"]
    assert "task version 0" in warned[0] and "tuned on outer split 0, not 2" in warned[1] and "outer split 3" in warned[2]
    # a task with a single outer split: N{n}.json, every repetition
    card = single_split_card(tmp_path)
    single = tuned_path(tmp_path, "target_only", "synthetic_single", 5)
    assert single.name == "N5.json"
    single.parent.mkdir(parents=True)
    single.write_text(json.dumps({"params": {"max_components": 6}, "task_version": "1", "method_version": mversion}))
    specs = tuned_specs(["target_only"], [card], [5, 10], tmp_path, {}, None, warn=warned.append)
    assert specs == [(MethodSpec("target_only", {"max_components": 6}, f"tuned:{single}"), ["synthetic_single"], [5], OuterReps(0, 1)),
                     (MethodSpec("target_only", {}, "default"), ["synthetic_single"], [10], OuterReps(0, 1))]
    assert "N5.json" not in warned[-1] and f"{single.with_name('N10.json')} missing" in warned[-1] and "--outer" not in warned[-1]


def test_a_single_outer_split_task_is_tuned_once(tmp_path):
    card = single_split_card(tmp_path)
    res = invoke("tune", "-m", "target_only", "-t", card, "-n", "5", "--reps", "1", "--trials", "2",
                 "--results-dir", str(tmp_path), "--no-mlflow")
    assert res.exit_code == 0, res.output
    path = tmp_path / "tuned" / "target_only" / "synthetic_single" / "N5.json"
    assert [p.name for p in path.parent.iterdir()] == ["N5.json"]
    tuned = json.loads(path.read_text())
    assert (tuned["outer"], tuned["n_outer"]) == (0, 1) and tuned["study"] == f"ctbench/target_only/{card}/N5"
    assert " ".join(res.output.split()).endswith(f"saved to {path}; use them with `ctbench run --method target_only "
                                                 f"--task synthetic_single --shots 5 --params tuned`")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy deprecations inside MLflow
def test_mlflow_nested_runs_and_errors_are_warnings(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    res = invoke("tune", "-m", "target_only", "-t", TASK, "-n", "5", "--outer", "0", "--reps", "1", "--trials", "3",
                 "--results-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output.lower(), res.output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(f"ctbench-tune/{TASK}")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all("val_rmsep" in c.data.metrics and "max_components" in c.data.params for c in children)
    assert parents[0].data.params["best.max_components"] and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["outer"] == "0" and parents[0].data.tags["ctbench.study"].endswith("/N5/outer0")
    # a broken tracking server is a warning, the study and the tuned file are still written
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    res = invoke("tune", "-m", "target_only", "-t", TASK, "-n", "5", "--outer", "0", "--reps", "1", "--trials", "4",
                 "--results-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "warning: MLflow" in res.output and "4 trials (4 complete" in res.output


def test_failing_trials_do_not_count_and_a_broken_method_stops(tmp_path, extra_methods):
    extra_methods(Flaky)
    FLAKY_ALWAYS[0] = False
    out = tune(TuneConfig("flaky", TASK, 5, trials=6, reps=1, results_dir=str(tmp_path), max_failures=50), mlflow=False)
    s = states(load_study(tmp_path, out.study))
    assert s["COMPLETE"] == 6 and s.get("FAIL", 0) >= 1 and out.summary["params"]["x"] <= 0.5
    FLAKY_ALWAYS[0] = True
    res = runner.invoke(app, ["tune", "-m", "flaky", "-t", TASK, "-n", "5", "--outer", "0", "--reps", "1", "--trials", "3",
                              "--study", "broken", "--results-dir", str(tmp_path), "--no-mlflow"])
    assert res.exit_code == 2 and "5 trials in a row failed (last: LinAlgError: singular matrix)" in res.output


def test_bad_requests(tmp_path):
    with pytest.raises(TuningError, match="--metric"):
        tune(TuneConfig("target_only", TASK, 5, trials=2, metric="bias", results_dir=str(tmp_path)), mlflow=False)
    with pytest.raises(TuningError, match="suite"):
        tune(TuneConfig("target_only", "demo", 5, trials=2, results_dir=str(tmp_path)), mlflow=False)
    with pytest.raises(TuningError, match=r"outer split of task 'synthetic_a_b' \(0\.\.4\), got -1"):
        tune(TuneConfig("target_only", TASK, 5, trials=2, results_dir=str(tmp_path), outer=-1), mlflow=False)
    base = ["tune", "-m", "target_only", "-t", TASK, "-n", "5", "--results-dir", str(tmp_path), "--no-mlflow"]
    for outer, why in (("5", "(0..4), got 5"), ("one", "--outer takes 'all' or an outer split index")):
        res = runner.invoke(app, [*base, "--outer", outer])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and why in lines[0], res.output
    res = runner.invoke(app, ["tune", "-m", "target_only", "-t", "demo", "-n", "5", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "is a suite" in res.output
