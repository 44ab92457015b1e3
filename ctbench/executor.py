"""Runs work packages in isolated worker processes, with a time limit on every method call.

One package (a method on one outer split of one task) runs in one fresh worker process
(:mod:`ctbench.worker`), forked by multiprocessing's fork server, which holds imported modules
and nothing else: no task, no result, no record. The parent (this module) sends the package,
watches each step (fit, every transfer, every predict) against ``timeout``, sends the spectra
to predict once every transfer is done, and hands each item's outcome back to the caller, who
validates the predictions, computes the metrics and writes the record.

A step that overruns the timeout, or a worker that dies (segfault, ``os._exit``, out of
memory), fails that step's item(s) with a one-line reason; the package's other items are run
again in a fresh worker (the fit is deterministic, so their numbers are unchanged). Stopping
(Ctrl-C, SIGTERM) kills every worker within a fraction of a second; a parent killed with
SIGKILL takes its workers with it (the fork server exits when its parent does, and each
worker dies with the fork server).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable, Iterable, Iterator

from ctbench.worker import Package

START_TIMEOUT = 120.0
"""Seconds a new worker may take to say hello (the fork server's first start imports a lot)."""

_LOCK = threading.Lock()
_LIVE: set[Any] = set()
_REAP: list[Any] = []
"""Workers that said 'done' and are exiting: reaped later, so the next package need not wait."""
_CTX = None


class Cancelled(Exception):
    """The run was stopped (Ctrl-C, SIGTERM) while this package ran."""


ONE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextmanager
def one_thread_env() -> Iterator[None]:
    """``ONE_THREAD_ENV`` set to 1 for the duration of a block (read by a BLAS, OpenMP or torch
    that starts inside it), the caller's values restored after."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    os.environ.update({k: "1" for k in ONE_THREAD_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _context() -> Any:
    """The fork server context; from the main thread, its server is started too (it dies with
    the thread that started it: see :func:`ensure_forkserver`)."""
    global _CTX
    if _CTX is None:
        import multiprocessing as mp

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["ctbench.worker_preload"])
        _CTX = ctx
    if threading.current_thread() is threading.main_thread():
        ensure_forkserver()
    return _CTX


def ensure_forkserver() -> None:
    """Start the fork server if it is not running, from this thread (it dies with it: call it
    from a thread that lives as long as the process), with one BLAS / OpenMP thread in its
    environment: a BLAS that starts multi-threaded and is limited afterwards re-creates its
    thread pool in every forked worker (measured: transfers 2x slower)."""
    ctx = _context() if _CTX is None else _CTX
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _LOCK, one_thread_env(), _no_main():
        forkserver.ensure_running()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the duration of a block, so a
    sweep stops the same way on Ctrl-C and on SIGTERM (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def sandbox_rules(results_dir: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None = None,
                  extra: Iterable[str | os.PathLike[str]] = (), readable: Iterable[str] = ()) -> dict[str, Any]:
    """The workers' sandbox (:func:`ctbench.sandbox.plan_rules`): they read the system and the
    code, never the result store, any data folder (--data-dir, CTBENCH_DATA, the cache) or the
    folders of the data files the cards read, even where those lie inside a code folder."""
    from ctbench.sandbox import SYSTEM_ROOTS, code_roots, plan_rules

    from ctbench.data.loaders import files_read
    from ctbench.data.mirror import search_places

    paths: list[Any] = [results_dir, *extra]
    paths += [place.folder for place in search_places(data_dir) if place.folder is not None]
    paths += [os.path.dirname(os.path.realpath(p)) for p in files_read()]
    return plan_rules([str(p) for p in paths if p], roots=[*SYSTEM_ROOTS, *code_roots(), *readable])


def reap(block: bool = False) -> None:
    """Collect exited workers; with ``block``, wait up to 5 s for the rest, then kill them."""
    with _LOCK:  # take them: one thread reaps a given worker
        procs = list(_REAP)
        _REAP.clear()
    alive = []
    for proc in procs:
        proc.join(timeout=5 if block else 0)
        if block and proc.is_alive():
            _kill(proc)
        if proc.is_alive():
            alive.append(proc)
        else:
            _forget(proc)
    if alive:
        with _LOCK:
            _REAP.extend(alive)


def _forget(proc: Any) -> None:
    """A worker that has exited: no longer live, its resources released."""
    with _LOCK:
        _LIVE.discard(proc)
    try:
        proc.close()
    except ValueError:
        pass


def kill_all() -> int:
    """Kill every live worker (and whatever it started); returns how many there were."""
    with _LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _kill(proc)
    return len(procs)


def _kill(proc: Any) -> None:
    try:
        pid = proc.pid
    except ValueError:  # closed meanwhile by its package thread (_forget): already gone
        return
    if pid is None:
        return
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.join(timeout=5)
    except ValueError:  # closed meanwhile
        pass


@contextmanager
def _no_main() -> Iterator[None]:
    """Start a worker without re-running the parent's ``__main__`` in it (multiprocessing would
    import the ``ctbench`` script, hence the whole CLI, in every worker: 0.2 s each)."""
    import sys
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _Stop(Exception):
    def __init__(self, why: str, kind: str):
        super().__init__(why)
        self.kind = kind


def _died(proc: Any) -> str:
    proc.join(timeout=1)
    code = proc.exitcode
    if code is None:
        return "the worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed by {name}"
    return f"the worker process exited with code {code}"


def _recv(conn: Any, proc: Any, timeout: float | None, cancelled: threading.Event | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled()
        step = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
        ready = mp_wait([conn, proc.sentinel], timeout=step)
        if conn in ready:
            try:
                return conn.recv()
            except (EOFError, OSError):
                raise _Stop(_died(proc), "died") from None
        if proc.sentinel in ready:
            raise _Stop(_died(proc), "died")
        if deadline is not None and time.monotonic() >= deadline:
            raise _Stop("", "timeout")


def run_package(pkg: Package, X_predict: Any, *, timeout: float | None, rules: dict[str, Any],
                on_outcome: Callable[[int, dict[str, Any]], None] | None = None,
                cancelled: threading.Event | None = None,
                warm: Callable[[], dict[str, Any]] | None = None,
                on_cache: Callable[[dict[str, Any]], None] | None = None) -> dict[int, dict[str, Any]]:
    """Run one package in isolated worker(s); returns {item index: outcome}.

    An outcome holds ``status`` ('ok' or 'failed'), ``error`` (failed), ``timings``, and, when
    ok, ``pred`` (the raw predictions), optional ``interval`` (lo, hi), ``chosen``, ``extras``;
    every outcome has ``isolation`` (what the sandbox applied)."""
    outcomes: dict[int, dict[str, Any]] = {}
    fit_s = 0.0
    level: dict[str, Any] | None = None

    def finish(index: int, outcome: dict[str, Any]) -> None:
        outcome["isolation"] = level
        outcomes[index] = outcome
        if on_outcome is not None:
            on_outcome(index, outcome)

    def failed(err: dict[str, Any], **timings: float) -> dict[str, Any]:
        return {"status": "failed", "error": err, "timings": {"fit_s": fit_s, **timings}}

    ctx = _context()
    ensure_forkserver()  # already running in a sweep: started by the main or a long-lived thread
    stalled = 0
    while True:
        todo = [it for it in pkg.items if it.index not in outcomes]
        if not todo:
            return outcomes
        if stalled >= 2:  # died twice without finishing anything: blame what is left
            err = {"phase": "transfer/predict", "type": "WorkerDied", "traceback": "",
                   "message": "the worker process died twice between steps without finishing a record"}
            for it in todo:
                finish(it.index, failed(err))
            return outcomes
        n_before = len(outcomes)
        sub = replace(pkg, items=todo, warm=warm() if warm is not None else pkg.warm)
        transfer_s: dict[int, float] = {}
        to_transfer = [it.index for it in todo]
        to_predict: list[int] = []
        phase = "start"
        finished = False
        reap()
        tmpdir = tempfile.mkdtemp(prefix="ctbench-worker-")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        from ctbench.worker import child_main

        proc = ctx.Process(target=child_main, args=(child_conn, rules, tmpdir), daemon=True)
        with _LOCK:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled()
            with _no_main():
                proc.start()
            _LIVE.add(proc)
        child_conn.close()
        try:
            msg = _recv(parent_conn, proc, START_TIMEOUT, cancelled)
            level = msg[1] if isinstance(msg, tuple) and msg and msg[0] == "hello" else None
            parent_conn.send(("package", sub))
            phase = "fit"
            while True:
                msg = _recv(parent_conn, proc, timeout, cancelled)
                kind = msg[0]
                if kind == "fit":
                    err, seconds = msg[1], msg[2]
                    if err is not None:
                        for it in todo:
                            finish(it.index, failed(err))
                        break
                    fit_s, phase = float(seconds), "transfer"
                elif kind == "transfer":
                    _, index, err, seconds = msg
                    to_transfer.remove(index)
                    if err is not None:
                        finish(index, failed(err, transfer_s=0.0))
                    else:
                        transfer_s[index] = float(seconds)
                        to_predict.append(index)
                elif kind == "ready":
                    phase = "predict"
                    parent_conn.send(("predict", X_predict))
                elif kind == "predict":
                    _, index, err, out = msg
                    to_predict.remove(index)
                    timings = {"fit_s": fit_s, "transfer_s": transfer_s[index]}
                    timings.update({k: float(v) for k, v in out.items() if k.endswith("_s")})
                    if err is not None:
                        finish(index, {"status": "failed", "error": err, "timings": timings})
                    else:
                        finish(index, {"status": "ok", "timings": timings, **{k: v for k, v in out.items() if not k.endswith("_s")}})
                elif kind == "cache":
                    if on_cache is not None and isinstance(msg[1], dict):
                        on_cache(msg[1])
                elif kind == "done":
                    finished = True
                    break
                else:
                    raise _Stop(f"the worker sent an unknown message {kind!r}", "died")
        except _Stop as stop:
            what = {"start": "starting", "fit": "fit", "transfer": "transfer", "predict": "predict"}[phase]
            if stop.kind == "timeout":
                why = f"{what} exceeded the {timeout:g} s time limit (--timeout); the worker was stopped"
                err_type = "Timeout"
            else:
                why = f"{stop} during {what}"
                err_type = "WorkerDied"
            err = {"phase": what if what != "predict" else "transfer/predict", "type": err_type, "message": why, "traceback": ""}
            if phase in ("start", "fit"):
                for it in todo:
                    finish(it.index, failed(err))
            elif phase == "transfer" and to_transfer:
                finish(to_transfer[0], failed(err, transfer_s=float(timeout or 0.0)))
            elif phase == "predict" and to_predict:
                index = to_predict[0]
                finish(index, {"status": "failed", "error": err, "timings": {"fit_s": fit_s, "transfer_s": transfer_s[index]}})
            else:  # died between steps: nothing to blame, the rest is retried
                pass
            stalled = stalled + 1 if len(outcomes) == n_before else 0
        finally:
            parent_conn.close()
            if finished and proc.is_alive():  # exiting on its own: reaped later
                with _LOCK:
                    _REAP.append(proc)
            else:
                if proc.is_alive():
                    _kill(proc)
                proc.join(timeout=5)
                _forget(proc)
            shutil.rmtree(tmpdir, ignore_errors=True)


def run_packages(jobs: list[tuple[Package, Any]], workers: int, timeout: float | None, rules: dict[str, Any],
                 on_outcome: Callable[[int, int, dict[str, Any]], None],
                 groups: list[Any] | None = None) -> None:
    """Run packages ``[(package, X_predict)]`` with up to ``workers`` at once; ``on_outcome(job,
    item, outcome)`` is called in *this* thread, in completion order. Ctrl-C / SIGTERM kill
    every worker and raise KeyboardInterrupt here."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    if not jobs:
        return
    _context()  # the fork server, from this (main) thread
    cancelled = threading.Event()
    q: queue.Queue = queue.Queue()
    remaining = sum(len(p.items) for p, _ in jobs)

    shared: dict[Any, dict[str, Any]] = {}

    def one(j: int) -> None:
        pkg, X = jobs[j]
        group = groups[j] if groups is not None else None

        def warm() -> dict[str, Any]:
            with _LOCK:
                return dict(shared.get(group, {})) if group is not None else {}

        def on_cache(entries: dict[str, Any]) -> None:
            if group is not None and pkg.share:
                with _LOCK:
                    shared.setdefault(group, {}).update(entries)

        try:
            run_package(pkg, X, timeout=timeout, rules=rules, cancelled=cancelled,
                        on_outcome=lambda i, out: q.put((j, i, out)), warm=warm, on_cache=on_cache)
        except Cancelled:
            pass
        except BaseException as exc:  # an executor bug must not hang the sweep: report it
            q.put((j, None, exc))

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ctbench-package")
    try:
        with sigterm_as_interrupt():
            futures = [pool.submit(one, j) for j in range(len(jobs))]
            while remaining > 0:
                try:
                    j, i, out = q.get(timeout=0.2)
                except queue.Empty:
                    if all(f.done() for f in futures) and q.empty():
                        break
                    continue
                if i is None:
                    raise out
                remaining -= 1
                on_outcome(j, i, out)
    except BaseException:
        cancelled.set()
        kill_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        reap(block=True)
