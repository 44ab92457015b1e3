"""Methods run where the labels are not (issue 12): every route a cheating plugin took to the
test values must now fail, a method that scribbles on its inputs cannot change another method's
numbers, a hung or crashing method costs one failed record, and stopping a sweep stops its
workers. The cheating classes live at module level: a worker imports them by name."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ctbench import sandbox
from ctbench.method import Tags, TransferMethod
from ctbench.runner import MethodSpec, execute, plan_runs

TASK = "corn_m5_mp6"
LANDLOCK = sandbox.landlock_abi() > 0


class _Cheat(TransferMethod):
    """Predicts the test values if its route reaches them, else raises 'route closed'."""

    version = "1"
    tags = Tags(min_shots=1)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.k_ = source.y.shape[1]
        return self

    def transfer(self, standards, unlabelled=None):
        return self

    def route(self, X):  # the test values of the rows of X, or None
        raise NotImplementedError

    def predict(self, X):
        y = self.route(X)
        if y is None:
            raise RuntimeError("route closed")
        return y


def _test_values_of(task, X):
    """The values of the rows of ``task`` whose target spectra are X (a cheater's matching)."""
    for k in range(task.n_outer):
        view = task.outer(k)
        Xt = view.X_target[view.test_rows]
        if Xt.shape == X.shape and np.allclose(Xt, X):
            return view.y[view.test_rows]
    return None


class CheatBuiltCache(_Cheat):
    name = "cheat_built_cache"

    def route(self, X):
        import ctbench.tasks

        for task in list(ctbench.tasks._BUILT.values()):
            y = _test_values_of(task, X)
            if y is not None:
                return y
        return None


class CheatStack(_Cheat):
    name = "cheat_stack"

    def route(self, X):
        import inspect

        from ctbench.tasks import Task

        for frame in inspect.stack():
            for value in list(frame.frame.f_locals.values()):
                if isinstance(value, Task):
                    y = _test_values_of(value, X)
                    if y is not None:
                        return y
        return None


class CheatRebuild(_Cheat):
    name = "cheat_rebuild"

    def route(self, X):
        from ctbench.cards import load_card
        from ctbench.tasks import build_task

        return _test_values_of(build_task(load_card(TASK)), X)


class CheatRecords(_Cheat):
    """Reads the result store (residuals + a reproducible method's predictions give y)."""

    name = "cheat_records"

    def route(self, X):
        for path in glob.glob(os.environ.get("CHEAT_RESULTS", "/nonexistent") + "/runs/*/*/*.json"):
            with open(path) as fh:
                json.load(fh)
            return np.zeros((X.shape[0], self.k_))
        return None


class CheatParentMemory(_Cheat):
    """Reads another ctbench process's memory through /proc."""

    name = "cheat_parent_memory"

    def route(self, X):
        me = os.getpid()
        for d in glob.glob("/proc/[0-9]*"):
            pid = int(d.rsplit("/", 1)[1])
            if pid == me:
                continue
            try:
                with open(f"{d}/cmdline", "rb") as fh:
                    if b"pytest" not in fh.read():
                        continue
                with open(f"{d}/maps") as fh:
                    start = int(fh.readline().split("-")[0], 16)
                with open(f"{d}/mem", "rb") as fh:
                    fh.seek(start)
                    fh.read(16)
                return np.zeros((X.shape[0], self.k_))  # read another process's memory
            except (OSError, ValueError):
                continue
        return None


class Scribbler(TransferMethod):
    """Makes its read-only inputs writable and shifts them (standards, source, test spectra)."""

    name = "scribbler"
    version = "1"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        for a in (source.X, source.y):
            a.setflags(write=True)
            a += 100.0
        self.mean_ = source.y.mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        for a in (standards.X_source, standards.X_target, standards.y):
            a.setflags(write=True)
            a += 100.0
        return self

    def predict(self, X):
        X.setflags(write=True)
        X += 100.0
        return np.tile(self.mean_, (X.shape[0], 1))


class Hanger(TransferMethod):
    """Hangs in transfer for rep 0 (prints its pid first), fine otherwise."""

    name = "hanger"
    version = "1"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        if standards.n == 5:
            print(f"HANGER_PID {os.getpid()}", flush=True)
            while True:
                time.sleep(0.05)
        return self

    def predict(self, X):
        return np.tile(self.mean_, (X.shape[0], 1))


class Crasher(Hanger):
    """Dies in transfer at N = 5 (os._exit), or by SIGSEGV at N = 10."""

    name = "crasher"

    def transfer(self, standards, unlabelled=None):
        if standards.n == 5:
            os._exit(3)
        if standards.n == 10:
            import ctypes

            ctypes.string_at(0)
        return self


def _records(results: Path, method: str | None = None) -> list[dict]:
    pattern = f"{results}/runs/*/{method or '*'}/*.json"
    return [json.loads(Path(p).read_text()) for p in sorted(glob.glob(pattern))]


def _run(tmp_path: Path, methods: list[str], shots=(5,), reps=1, jobs=1, timeout=None) -> list[dict]:
    plan = plan_runs([MethodSpec(m) for m in methods], [TASK], list(shots), reps, 0, tmp_path)
    execute(plan, jobs, lambda status, path: None, timeout=timeout)
    return _records(tmp_path)


@pytest.mark.parametrize("cls", [CheatBuiltCache, CheatStack, CheatRebuild, CheatRecords, CheatParentMemory])
def test_every_route_to_the_test_values_is_closed(cls, extra_methods, mirror, tmp_path, monkeypatch):
    """Each route gave RMSEP 0 and rank 1 in-process; in the worker it finds nothing."""
    if cls in (CheatRebuild, CheatRecords, CheatParentMemory) and not LANDLOCK:
        pytest.skip("this kernel has no Landlock: files and /proc are reachable from the worker")
    extra_methods(cls)
    monkeypatch.setenv("CHEAT_RESULTS", str(tmp_path))
    # an earlier record in the store (what CheatRecords would read)
    _run(tmp_path, ["no_transfer"])
    _run(tmp_path, [cls.name])
    recs = _records(tmp_path, cls.name)
    assert recs, "no record written"
    for rec in recs:
        assert rec["status"] == "failed", f"{cls.name} reached the test values: {rec.get('metrics')}"
        msg = rec["error"]["message"]
        assert "route closed" in msg or "Permission denied" in msg or "DataError" in rec["error"]["type"] or "not found" in msg, msg


def test_the_routes_work_in_process_so_the_tests_above_can_fail(extra_methods, mirror):
    """Sanity: the same cheats do reach the values when method code runs beside a Task."""
    from ctbench.cards import load_card
    from ctbench.tasks import build_task

    task = build_task(load_card(TASK)).outer(0)
    X = task.X_target[task.test_rows]
    np.testing.assert_array_equal(CheatBuiltCache().fit(_src(task)).predict(X), task.y[task.test_rows])
    np.testing.assert_array_equal(CheatRebuild().fit(_src(task)).predict(X), task.y[task.test_rows])


def _src(task):
    from ctbench.runner import source_for

    return source_for(task, CheatBuiltCache)


def test_a_scribbling_method_cannot_change_another_methods_numbers(extra_methods, mirror, tmp_path):
    extra_methods(Scribbler)
    clean = _run(tmp_path / "clean", ["pds", "sbc"], shots=(5, 10), reps=2)
    mixed = _run(tmp_path / "mixed", ["scribbler", "pds", "sbc", "scribbler"], shots=(5, 10), reps=2, jobs=2)

    def metrics(recs):
        return {(r["identity"]["method"], r["n_shots"], r["rep"]): r["metrics"] for r in recs if r["identity"]["method"] != "scribbler"}

    assert len(metrics(clean)) == 8
    assert metrics(clean) == metrics(mixed)
    assert all(r["status"] == "ok" for r in _records(tmp_path / "mixed", "scribbler"))


def test_timeout_fails_one_record_and_the_sweep_goes_on(extra_methods, mirror, tmp_path):
    extra_methods(Hanger)
    t0 = time.monotonic()
    recs = _run(tmp_path, ["hanger", "sbc"], shots=(5, 10), reps=2, timeout=2)
    elapsed = time.monotonic() - t0
    by = {(r["identity"]["method"], r["n_shots"], r["rep"]): r for r in recs}
    assert len(by) == 8
    for rep in (0, 1):
        bad = by[("hanger", 5, rep)]
        assert bad["status"] == "failed" and bad["error"]["type"] == "Timeout"
        assert "exceeded the 2 s time limit" in bad["error"]["message"]
        assert by[("hanger", 10, rep)]["status"] == "ok"  # run again in a fresh worker
    assert all(by[("sbc", n, rep)]["status"] == "ok" for n in (5, 10) for rep in (0, 1))
    assert elapsed < 30


def test_a_dying_worker_fails_its_record_only(extra_methods, mirror, tmp_path):
    extra_methods(Crasher)
    recs = _run(tmp_path, ["crasher"], shots=(5, 10, 20), reps=1)
    by = {r["n_shots"]: r for r in recs}
    assert by[5]["status"] == "failed" and "exited with code 3" in by[5]["error"]["message"]
    assert by[10]["status"] == "failed" and "SIGSEGV" in by[10]["error"]["message"]
    assert by[20]["status"] == "ok"


def test_records_say_how_the_worker_was_isolated(mirror, tmp_path):
    (rec,) = _run(tmp_path, ["sbc"])
    iso = rec["isolation"]
    if LANDLOCK:
        assert str(tmp_path.resolve()) in iso["filesystem"]
        assert any(str(Path(p).resolve()) in iso["filesystem"] for p in [os.environ["CTBENCH_DATA"]])
    assert rec["identity"]["code_sha256"] and rec["identity"]["card_sha256"]
    assert rec["method"]["code_sha256"] == rec["identity"]["code_sha256"]


def test_sigterm_stops_the_sweep_and_its_workers(extra_methods, mirror, tmp_path):
    """SIGTERM in the middle of a sweep: KeyboardInterrupt within a second or two, no worker left."""
    from ctbench import executor

    extra_methods(Hanger)
    plan = plan_runs([MethodSpec("hanger")], [TASK], [5], 2, 0, tmp_path)
    seen: list[int] = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with executor._LOCK:
                pids = [p.pid for p in executor._LIVE]
            if len(pids) >= 2:
                seen.extend(pids)
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        execute(plan, 2, lambda s, p: None)
    assert time.monotonic() - t0 < 60
    stop = time.monotonic()
    assert seen
    for pid in seen:
        while _alive(pid) and time.monotonic() - stop < 5:
            time.sleep(0.05)
        assert not _alive(pid), f"worker {pid} still running"
    assert time.monotonic() - stop < 5


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_parent_killed_with_sigkill_leaves_no_orphan_worker(mirror, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_isolation import Hanger
        from ctbench import plugins
        from ctbench.method import MethodInfo
        real = plugins.load_methods()
        plugins.load_methods = lambda: {{**real, "hanger": MethodInfo(cls=Hanger, plugin="tests")}}
        from ctbench.runner import MethodSpec, execute, plan_runs
        plan = plan_runs([MethodSpec("hanger")], [{TASK!r}], [5], 1, 0, {str(tmp_path)!r})
        execute(plan, 1, lambda s, p: None)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "HANGER_PID" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "HANGER_PID" in line, "the worker never started"
        worker = int(line.split()[1])
        assert _alive(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        while _alive(worker) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not _alive(worker), "orphan worker left running after its parent was killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_holds_no_test_spectra_before_its_transfers_are_done(extra_methods, mirror, tmp_path):
    """A non-transductive method sees the spectra to predict only after every transfer."""
    extra_methods(SpectraHunter)
    (rec,) = _run(tmp_path, ["spectra_hunter"])
    assert rec["status"] == "ok"
    assert rec["extras"]["found_in_transfer"] == 0
    assert rec["extras"]["found_in_predict"] >= 1  # the hunt itself works


class SpectraHunter(TransferMethod):
    """Looks, during transfer and predict, for any array shaped like the spectra to predict."""

    name = "spectra_hunter"
    version = "1"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    @staticmethod
    def _hunt(shape) -> int:
        import gc

        import sys

        found = set()
        frame = sys._getframe()
        while frame is not None:  # every frame's locals, then every container
            for r in list(frame.f_locals.values()):
                if isinstance(r, np.ndarray) and r.shape == shape:
                    found.add(id(r))
            frame = frame.f_back
        for o in gc.get_objects():  # arrays are not tracked themselves: look at what refers to them
            for r in gc.get_referents(o):
                if isinstance(r, np.ndarray) and r.shape == shape:
                    found.add(id(r))
        return len(found)

    def fit(self, source):
        self.mean_ = np.asarray(source.y).mean(axis=0)
        self.p_ = source.X.shape[1]
        return self

    def transfer(self, standards, unlabelled=None):
        self.n_test_guess_ = 16  # corn: 80 samples, 5 outer folds
        self.found_in_transfer_ = self._hunt((self.n_test_guess_, self.p_))
        return self

    def predict(self, X):
        self.found_in_predict_ = self._hunt(X.shape)
        return np.tile(self.mean_, (X.shape[0], 1))

    def record_extras(self):
        return {"found_in_transfer": self.found_in_transfer_, "found_in_predict": self.found_in_predict_}


class ThreadReporter(Hanger):
    """Reports the BLAS thread pools and OMP_NUM_THREADS its worker runs with."""

    name = "thread_reporter"

    def transfer(self, standards, unlabelled=None):
        return self

    def record_extras(self):
        from threadpoolctl import threadpool_info

        return {"pools": sorted({p["num_threads"] for p in threadpool_info()}), "omp": os.environ.get("OMP_NUM_THREADS")}


def test_workers_run_one_blas_thread(extra_methods, mirror, tmp_path):
    """A method's numbers must not depend on --jobs: every worker runs one BLAS/OpenMP thread."""
    extra_methods(ThreadReporter)
    (rec,) = _run(tmp_path, ["thread_reporter"])
    assert rec["status"] == "ok"
    assert rec["extras"] == {"pools": [1], "omp": "1"}


class SingleTarget(TransferMethod):
    """Tagged multi_target=False: refuses more than one property at a time."""

    name = "single_target"
    version = "1"
    tags = Tags(min_shots=1, multi_target=False)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        assert source.y.shape[1] == 1 and len(source.properties) == 1, source.y.shape
        self.mean_ = float(np.mean(source.y))
        self.prop_ = source.properties[0]
        return self

    def transfer(self, standards, unlabelled=None):
        assert standards.y.shape[1] == 1
        return self

    def predict(self, X):
        return np.full(X.shape[0], self.mean_)

    def chosen_params(self):
        return {"property": self.prop_}


def test_a_single_target_method_runs_one_property_at_a_time(extra_methods, mirror, tmp_path):
    extra_methods(SingleTarget)
    (rec,) = _run(tmp_path, ["single_target"])
    assert rec["status"] == "ok", rec.get("error")
    props = rec["task"]["properties"]
    assert len(props) == 4 and set(rec["metrics"]["per_property"]) == set(props)
    assert rec["chosen"] == {p: {"property": p} for p in props}
