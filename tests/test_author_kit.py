"""The author kit: time limits (ctbench.timeouts) in `ctbench check` and `ctbench tune`, the
protocol probe (hidden values changed after fit must not change predictions; three ways of
reaching them in-process are caught), `ctbench check package.module:Class`, the pytest helper
parametrize_with_checks, and methods tagged multi_target=False run one property at a time."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from fake_plugins import env_with, write_plugin
from test_conformance import OffsetPLS
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.method import Tags
from ctbench.pls import PLSCalibration
from ctbench.testing import (
    KIT_TASK,
    KitCheck,
    MethodImportError,
    check_method,
    check_names,
    import_method,
    parametrize_with_checks,
)
from ctbench.testing.resolve import is_import_path
from ctbench.timeouts import MethodTimeout, defer_timeouts, time_limit

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


# --- an honest method and its dishonest variants ---------------------------------------------


class HonestOffset(OffsetPLS):
    """test_conformance's OffsetPLS (source PLS on target spectra shifted by the standards' mean
    offset: fast, deterministic) with 5 latent variables by default."""

    name = "test_honest_offset"

    def __init__(self, n_components: int = 5, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    @classmethod
    def search_space(cls, trial) -> dict:
        return {"n_components": trial.suggest_int("n_components", 2, 8)}


def _rows_of(X_all: np.ndarray, X: np.ndarray) -> np.ndarray | None:
    """Rows of ``X_all`` equal to the rows of ``X`` (None unless every row is found)."""
    where = {row.tobytes(): i for i, row in enumerate(np.asarray(X_all, dtype=float))}
    rows = [where.get(np.asarray(r, dtype=float).tobytes()) for r in X]
    return None if any(r is None for r in rows) else np.asarray(rows)


def _labels_from(task, X: np.ndarray) -> np.ndarray | None:
    rows = _rows_of(task.X_target, X)
    return None if rows is None else np.array(task.y[rows], dtype=float)


class ReadsBuiltCache(HonestOffset):
    """Looks the test values up in the module cache ctbench.tasks._BUILT."""

    name = "test_cheat_built_cache"

    def predict(self, X_target):
        import ctbench.tasks

        for task in list(ctbench.tasks._BUILT.values()):
            y = _labels_from(task, X_target)
            if y is not None:
                return y
        return super().predict(X_target)


class WalksTheStack(HonestOffset):
    """Finds a Task among the callers' local variables (inspect.stack()) and reads its test values."""

    name = "test_cheat_stack"

    def predict(self, X_target):
        from ctbench.tasks import Task

        for info in inspect.stack(0):
            for value in list(info.frame.f_locals.values()):
                if isinstance(value, Task):
                    y = _labels_from(value, X_target)
                    if y is not None:
                        return y
        return super().predict(X_target)


class RebuildsTheTask(HonestOffset):
    """Rebuilds the task with the public load_card + build_task and reads its test values."""

    name = "test_cheat_rebuild"

    def predict(self, X_target):
        from ctbench.cards import all_card_names, load_card
        from ctbench.tasks import build_task

        for name in all_card_names():
            if not name.startswith("synthetic"):  # (a real cheat would try them all)
                continue
            y = _labels_from(build_task(load_card(name)), X_target)
            if y is not None:
                return y
        return super().predict(X_target)


class RebuildsAfresh(HonestOffset):
    """Builds its own copy of the task (another data_dir: the build cache does not have it)."""

    name = "test_cheat_fresh_build"

    def predict(self, X_target):
        from ctbench.cards import load_card
        from ctbench.tasks import build_task

        y = _labels_from(build_task(load_card(KIT_TASK), data_dir=os.environ.get("CTBENCH_DATA", "/nonexistent")), X_target)
        return y if y is not None else super().predict(X_target)


class ReadsPoolTargets(HonestOffset):
    """Recalibrates on every pool target spectrum (full recalibration in disguise), found via _BUILT."""

    name = "test_cheat_pool_targets"

    def transfer(self, standards, unlabelled=None):
        import ctbench.tasks

        super().transfer(standards, unlabelled)
        for task in list(ctbench.tasks._BUILT.values()):
            if _rows_of(task.X_target, standards.X_target) is not None:
                pool = task.pool_rows
                self.model_ = PLSCalibration(n_components=self.n_components).fit(task.X_target[pool], task.y[pool])
                self.offset_ = np.zeros_like(self.offset_)
        return self


class NoisyHonest(HonestOffset):
    """Honest, but its transfer adds unseeded noise: not bit-reproducible."""

    name = "test_noisy_honest"

    def transfer(self, standards, unlabelled=None):
        super().transfer(standards, unlabelled)
        self.offset_ = self.offset_ + np.random.default_rng().normal(scale=1e-4, size=self.offset_.shape)
        return self


CHEATERS = [ReadsBuiltCache, WalksTheStack, RebuildsTheTask, RebuildsAfresh, ReadsPoolTargets]


def _kit_task_values() -> list[tuple[np.ndarray, np.ndarray]]:
    import ctbench.tasks

    return [(np.array(t.y), np.array(t.X_target)) for t in ctbench.tasks._BUILT.values() if t.card.name == KIT_TASK]


# --- the protocol probe ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CHEATERS, ids=[c.__name__ for c in CHEATERS])
def test_the_probe_catches_each_route_to_hidden_values(cls: type) -> None:
    from ctbench.cards import load_card
    from ctbench.tasks import build_task

    build_task(load_card(KIT_TASK))
    before = _kit_task_values()
    report = check_method(cls, checks=["fit_returns_self", "protocol_probe"])
    probe = report["protocol_probe"]
    assert probe.status == "failed", str(report)
    assert "predictions changed" in probe.detail or "moved" in probe.detail, probe.detail
    assert "reads test values or pool target spectra" in probe.detail and "\n" not in probe.detail
    after = _kit_task_values()
    # every value is restored (a fresh build made during the probe is in the cache now, restored too)
    for (y0, X0), (y1, X1) in zip(before, after):
        assert np.array_equal(y0, y1) and np.array_equal(X0, X1)
    for y1, X1 in after[len(before):]:
        assert np.array_equal(before[0][0], y1) and np.array_equal(before[0][1], X1)


def test_the_cheaters_really_cheat_outside_the_probe() -> None:
    """Without the probe each of them gets the test values right (the routes exist in-process)."""
    from ctbench.testing.bench import Bench

    for cls in (ReadsBuiltCache, RebuildsTheTask, RebuildsAfresh):
        bench = Bench(cls)
        assert np.allclose(bench.predictions(bench.main.method), bench.y_test), cls.__name__


@pytest.mark.parametrize("name", ["sbc", "pds", "model_update", "no_transfer", "target_only", "full_recalibration"])
def test_honest_builtins_pass_the_probe(name: str) -> None:
    report = check_method(name, checks=["protocol_probe"])
    assert report["protocol_probe"].status == "passed", report["protocol_probe"].detail
    assert "bit-identical" in report["protocol_probe"].detail


def test_probe_details_and_reproducibility() -> None:
    detail = check_method(HonestOffset, checks=["protocol_probe"])["protocol_probe"].detail
    assert re.search(r"bit-identical after 48 test values and \d+ pool target spectra \(not the 10 standards'\)", detail), detail
    noisy = check_method(NoisyHonest, checks=["protocol_probe"])["protocol_probe"]
    assert noisy.status == "passed" and "run-to-run variation" in noisy.detail


# --- multi_target ---------------------------------------------------------------------------------

SEEN_PROPERTIES: list[tuple[str, ...]] = []


class OnePropertyOnly(HonestOffset):
    """Tagged multi_target=False: refuses more than one property."""

    name = "test_one_property_only"
    tags = Tags(min_shots=1, multi_target=False)

    def fit(self, source):
        if source.y.shape[1] != 1 or len(source.properties) != 1:
            raise ValueError(f"one property at a time, got {source.properties}")
        SEEN_PROPERTIES.append(tuple(source.properties))
        return super().fit(source)

    def transfer(self, standards, unlabelled=None):
        if standards.y.shape[1] != 1:
            raise ValueError("one property at a time")
        return super().transfer(standards, unlabelled)


def test_multi_target_false_is_run_one_property_at_a_time() -> None:
    SEEN_PROPERTIES.clear()
    report = check_method(OnePropertyOnly)
    assert report.ok, str(report)
    mt = report["multi_target"]
    assert mt.status == "passed" and "2 properties, one at a time" in mt.detail
    assert set(SEEN_PROPERTIES) == {("analyte_a",), ("analyte_b",)}
    assert report["protocol_probe"].status == "passed"
    assert "vs no_transfer" in report["beats_calibration_mean"].detail


def test_multi_target_true_must_handle_one_property() -> None:
    report = check_method(HonestOffset, checks=["multi_target"])
    assert report["multi_target"].status == "passed" and "one (analyte_a) alone" in report["multi_target"].detail
    assert check_method(HonestOffset, checks=["multi_target"], quick=True)["multi_target"].status == "skipped"


# --- time limits ----------------------------------------------------------------------------------


def test_time_limit_interrupts_and_restores() -> None:
    calls = []
    old = signal.signal(signal.SIGALRM, lambda s, f: calls.append(s))
    try:
        t0 = time.monotonic()
        with pytest.raises(MethodTimeout, match=r"^fit exceeded the 0.2 s time limit$") as err:
            with time_limit(0.2, "fit"):
                while True:
                    pass
        assert 0.15 < time.monotonic() - t0 < 2.0
        assert isinstance(err.value, TimeoutError) and err.value.seconds == 0.2
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        # an outer alarm keeps its handler and its remaining time
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with time_limit(1, "quick"):
            pass
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 4.0 < left <= 5.0
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert not calls
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_time_limit_nested_swallowed_none_threads_deferred() -> None:
    t0 = time.monotonic()
    with pytest.raises(MethodTimeout, match="outer"):
        with time_limit(0.2, "outer"):
            with time_limit(30, "inner"):
                time.sleep(5)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(MethodTimeout, match="inner"):  # the inner limit fires first, the outer is re-armed
        with time_limit(30, "outer"):
            with time_limit(0.2, "inner"):
                time.sleep(5)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    # a block that swallows the exception still ends as timed out
    limit = time_limit(0.2, "transfer")
    with pytest.raises(MethodTimeout):
        with limit:
            for _ in range(8):
                try:
                    time.sleep(0.1)
                except MethodTimeout:
                    pass
    assert limit.expired
    with time_limit(None, "anything") as nolimit:  # no limit
        time.sleep(0.01)
    assert not nolimit.armed and not nolimit.expired
    seen = {}

    def in_thread():
        with time_limit(0.05, "thread") as tl:
            seen["armed"] = tl.armed
    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == {"armed": False}  # not the main thread: no limit (documented)
    done = []
    with pytest.raises(MethodTimeout):
        with time_limit(0.1, "trial"):
            with defer_timeouts():
                time.sleep(0.3)
                done.append(True)  # not cut half-way
    assert done == [True]
    with pytest.raises(ValueError):
        time_limit(0, "zero")


class HangsInTransfer(HonestOffset):
    name = "test_hangs_in_transfer"

    def transfer(self, standards, unlabelled=None):
        while True:
            time.sleep(0.01)


def test_a_hung_transfer_ends_the_check_and_the_others_go_on() -> None:
    t0 = time.monotonic()
    report = check_method(HangsInTransfer, timeout=1)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed  # one budget spent, not one per check
    first = report["fit_returns_self"]
    assert first.status == "failed"
    assert first.detail == ("timed out: check 'fit_returns_self' ran past its 1 s budget, stopped in transfer "
                            "(ctbench check --timeout sets it)")
    assert report["declares_contract"].status == "passed" and report["tags_consistent"].status == "passed"
    assert report["transfer_returns_self"].status == "failed" and "MethodTimeout" in report["transfer_returns_self"].detail
    assert report["inputs_not_mutated"].status == "skipped"
    assert "ran past its time budget" in report["inputs_not_mutated"].detail
    assert [r.name for r in report.results] == check_names()


HANG_MODULE = '''
import time
import numpy as np
from ctbench.method import Tags, TransferMethod
from ctbench.pls import PLSCalibration


class Good(TransferMethod):
    name = "kit_good"
    tags = Tags(min_shots=1)

    def __init__(self, n_components: int = 5, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, source):
        self.model_ = PLSCalibration(n_components=self.n_components).fit(source.X, source.y)
        return self

    def transfer(self, standards, unlabelled=None):
        self.offset_ = standards.X_source.mean(axis=0) - standards.X_target.mean(axis=0)
        return self

    def predict(self, X_target):
        return self.model_.predict(X_target + self.offset_)


class Spins(Good):
    name = "kit_spins"

    def transfer(self, standards, unlabelled=None):
        while True:
            pass


class NotAMethod:
    pass


def helper():
    return 1
'''


@pytest.fixture
def author_module(tmp_path, monkeypatch):
    """A package of method classes in the current directory, not installed: returns its name."""
    pkg = f"authorpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "methods.py").write_text(HANG_MODULE)
    (tmp_path / f"{pkg}_exits.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield pkg
    for mod in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[mod]


def test_cli_check_a_class_that_is_not_installed(author_module: str) -> None:
    res = cli("check", f"{author_module}.methods:Good", "--quick")
    assert res.exit_code == 0, res.output
    assert "0 failed" in res.output and f"module {author_module}.methods, not installed" in res.output
    assert check_method(f"{author_module}.methods:Good", checks=["declares_contract"]).ok


def test_cli_check_timeout_ends_a_spinning_method(author_module: str) -> None:
    t0 = time.monotonic()
    res = cli("check", f"{author_module}.methods:Spins", "--timeout", "1", "--format", "json")
    elapsed = time.monotonic() - t0
    assert res.exit_code == 1 and elapsed < 10, (elapsed, res.output)
    data = json.loads(res.stdout)
    by_name = {r["name"]: r for r in data["results"]}
    assert "ran past its 1 s budget, stopped in transfer" in by_name["fit_returns_self"]["detail"]
    assert by_name["declares_contract"]["status"] == "passed"
    assert len(data["results"]) == len(check_names())


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nosuchmodule_xyz:Thing", "no module named 'nosuchmodule_xyz' in the current directory or on PYTHONPATH"),
        ("{pkg}.methods:Godo", "has no class 'Godo' (did you mean 'Good'?)"),
        ("{pkg}.methods:NotAMethod", "is class NotAMethod, not a subclass of ctbench.method.TransferMethod"),
        ("{pkg}.methods:helper", "is a function, not a subclass of ctbench.method.TransferMethod"),
        ("{pkg}_exits:Thing", "raised SystemExit: 3"),
    ],
)
def test_cli_check_import_errors_are_one_line(author_module: str, spec: str, words: str) -> None:
    spec = spec.format(pkg=author_module)
    res = cli("check", spec)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.output
    with pytest.raises(MethodImportError):
        import_method(spec)


def test_registered_names_with_a_colon_are_not_import_paths() -> None:
    from ctbench.plugins import get_registry

    plugin = get_registry().plugins[0].name
    assert not is_import_path(f"{plugin}:pds") and is_import_path("my.module:Class") and not is_import_path("pds")


# --- parametrize_with_checks ----------------------------------------------------------------------


class ReturnsNone(HonestOffset):
    name = "test_returns_none"

    def fit(self, source):
        super().fit(source)


@parametrize_with_checks(
    [HonestOffset, "target_only"],
    select=["declares_contract", "fit_returns_self", "protocol_probe", "transductive"],
    quick=True,
)
def test_parametrize_with_checks(method, check) -> None:
    check(method)


@parametrize_with_checks(
    [ReturnsNone], select=["declares_contract", "fit_returns_self"], xfail={"fit_returns_self": "fit returns None"},
)
def test_parametrize_with_expected_failures(method, check) -> None:
    check(method)


def test_parametrize_with_checks_ids_marks_and_errors() -> None:
    mark = parametrize_with_checks([HonestOffset], select=["fit_returns_self", "deterministic"],
                                   xfail={"deterministic": "not yet"})
    names, cases = mark.args
    assert names == ("method", "check")
    assert [c.id for c in cases] == ["test_honest_offset-fit_returns_self", "test_honest_offset-deterministic"]
    assert [len(c.marks) for c in cases] == [0, 1] and cases[1].marks[0].kwargs["reason"] == "not yet"
    assert cases[1].marks[0].kwargs["strict"] is True
    method, check = cases[0].values
    assert method is HonestOffset and isinstance(check, KitCheck) and "fit_returns_self" in repr(check)
    assert all(len(c.values) == 2 for c in cases)
    with pytest.raises(ValueError, match="unknown check 'determinism'"):
        parametrize_with_checks([HonestOffset], select=["determinism"])
    with pytest.raises(ValueError, match="unknown check 'fit_return_self'"):
        parametrize_with_checks([HonestOffset], xfail={"fit_return_self": "x"})
    with pytest.raises(ValueError, match="not selected: deterministic"):
        parametrize_with_checks([HonestOffset], select=["fit_returns_self"], xfail={"deterministic": "x"})
    # a failing check raises AssertionError with its one line; one that does not apply skips
    _, (case,) = parametrize_with_checks([ReturnsNone], select=["fit_returns_self"]).args
    with pytest.raises(AssertionError, match=r"test_returns_none: FAIL  fit_returns_self: fit returned None, not self"):
        case.values[1](case.values[0])
    _, (case,) = parametrize_with_checks([HonestOffset], select=["zero_shot"]).args
    with pytest.raises(pytest.skip.Exception, match="not tagged zero_shot"):
        case.values[1](case.values[0])


# --- tune --trial-timeout -------------------------------------------------------------------------

TRANSFERS = [0]


class HangsOnce(HonestOffset):
    """The first transfer of the process hangs; every other one is instant."""

    name = "test_hangs_once"

    def transfer(self, standards, unlabelled=None):
        TRANSFERS[0] += 1
        if TRANSFERS[0] == 1:
            while True:
                time.sleep(0.01)
        return super().transfer(standards, unlabelled)


def test_trial_timeout_fails_the_trial_and_the_study_goes_on(tmp_path, extra_methods) -> None:
    import optuna

    from ctbench.tuning import A_ERROR, TuneConfig, tune

    extra_methods(HangsOnce)
    TRANSFERS[0] = 0
    t0 = time.monotonic()
    out = tune(TuneConfig("test_hangs_once", KIT_TASK, 5, trials=3, reps=1, outer=0, results_dir=str(tmp_path),
                          trial_timeout=1.0), mlflow=False)
    assert time.monotonic() - t0 < 30
    study = optuna.load_study(study_name=out.study, storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs[A_ERROR] == "timed out: the trial's method calls exceeded the 1 s time limit (--trial-timeout)"
    assert out.counts["counted"] == 3


PLUGIN = '''
import os, time
import numpy as np
import ctbench
from ctbench.method import Tags, TransferMethod


class HangsFirst(TransferMethod):
    """The first transfer of all processes (a marker file decides) hangs."""

    name = "kit_hangs_first"
    tags = Tags(min_shots=1)

    def __init__(self, x: float = 0.0, random_state: int = 0):
        self.x, self.random_state = x, random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        try:
            os.close(os.open(os.environ["KIT_HANG_MARKER"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return self
        while True:
            pass

    def predict(self, X_target):
        return np.tile(self.mean_ + self.x, (len(X_target), 1))

    @classmethod
    def search_space(cls, trial):
        return {"x": trial.suggest_float("x", -1.0, 1.0)}


@ctbench.hookimpl
def ctbench_register_methods():
    return [HangsFirst]
'''


def test_cli_trial_timeout_in_worker_processes(tmp_path) -> None:
    import optuna

    site = write_plugin(tmp_path / "site", "kit_hang_plugin", PLUGIN, "kit-hang-plugin", "kit_hang_plugin")
    env = env_with(site, KIT_HANG_MARKER=str(tmp_path / "hung"), COLUMNS="200")
    res = subprocess.run(
        [sys.executable, "-m", "ctbench", "tune", "-m", "kit_hangs_first", "-t", KIT_TASK, "-n", "5", "--outer", "0",
         "--reps", "1", "--trials", "4", "--jobs", "2", "--trial-timeout", "1", "--results-dir", str(tmp_path / "r"),
         "--no-mlflow"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 trials (4 complete, 0 pruned; 1 failed, not counted)" in res.stderr + res.stdout
    study = optuna.load_study(study_name=f"ctbench/kit_hangs_first/{KIT_TASK}/N5/outer0",
                              storage=f"sqlite:///{tmp_path}/r/optuna.db")
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    assert len(failed) == 1 and "timed out" in failed[0].user_attrs["ctbench.error"]
    assert failed[0].user_attrs["ctbench.worker"]["pid"] != os.getpid()


def test_tune_help_tells_the_two_timeouts_apart(tmp_path) -> None:
    res = runner.invoke(app, ["tune", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    text = re.sub(r"[\s│]+", " ", res.output)
    assert "--timeout SECONDS Study budget, per outer split: start no new trial" in text
    assert "--trial-timeout SECONDS Per-trial limit" in text and "recorded as a failed trial" in text
    res = runner.invoke(app, ["check", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    text = re.sub(r"[\s│]+", " ", res.output)
    assert "package.module:Class" in text and "Time budget of each check" in text
    res = cli("tune", "-m", "target_only", "-t", KIT_TASK, "-n", "5", "--trial-timeout", "-1", "--no-mlflow",
              "--results-dir", str(tmp_path))
    assert res.exit_code == 2 and "--trial-timeout must be a positive number of seconds" in res.output
