"""Runs a sweep's work packages on a Dask distributed cluster (``ctbench run --executor dask``).

The split of work is the local executor's (:func:`ctbench.runner.execute`), only spread over
hosts:

- **The client** (the ``ctbench run`` process, on the host with the result store) plans the
  sweep and builds the packages (:func:`ctbench.runner.plan_packages`). It submits one Dask task
  per package, about two per worker thread at a time (the scheduler holds a waiting package's
  data), and as results arrive it scores each item against the test values (which never
  leave it), writes the record and calls ``on_record`` (which logs MLflow): the store and MLflow
  keep one writer, and each record is written once (a set of written keys guards it).
- **A Dask worker** runs :func:`run_remote`: it computes the sandbox rules of *its own* host
  (its $CTBENCH_DATA, its data cache are hidden) and runs the package in a fresh isolated worker
  process (:func:`ctbench.executor.run_package`), with the same per-step ``timeout``. Worker hosts
  need no data at all, the package carries the protocol data; they need the same ctbench and
  plugin code, which :func:`run_remote` checks (the method's code hash must equal the client's).
- **Failures.** A Dask worker that dies mid-package (killed, out of memory, host lost) makes the
  scheduler run the package again on another worker (``distributed.scheduler.allowed-failures``
  deaths per task, 3 by default; past them the package's items become ``failed`` records saying
  so). An exception of the executor itself (not of the method: those are ``failed`` records
  already) is retried once (``retries``). A package's result comes back whole, so a rerun
  package cannot duplicate records.
- **Stopping.** Ctrl-C or SIGTERM cancels every future; each running package notices within a
  fraction of a second (its task is no longer wanted on its worker) and kills its isolated
  worker; the client closes (and so does the local cluster), and KeyboardInterrupt is raised.

Daemonic Dask workers: Dask's nanny starts each worker as a *daemonic* multiprocessing process
(``distributed.worker.daemon: True``), and multiprocessing refuses to let a daemonic process
start children, which the isolated workers are. :func:`run_remote` clears that flag in the Dask
worker process, so any worker works (``dask worker``, with or without a nanny, a LocalCluster,
dask-jobqueue ...) without configuration. What the flag protects against, children outliving
their parent, is handled otherwise: the fork server is started from a thread that lives as long
as the Dask worker process and dies with it (``PR_SET_PDEATHSIG``), and each isolated worker
dies with the fork server.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Callable

CONNECT_TIMEOUT = 10.0
"""Seconds to reach the scheduler before giving up with a one-line error."""
WORKERS_TIMEOUT = 60.0
"""Seconds to wait for the cluster's first worker."""
TASK_RETRIES = 1
"""Extra tries of a package whose Dask task raised (an executor error, not a method's)."""

INSTALL_HINT = "pip install 'ctbench[cluster]'"


class ClusterError(RuntimeError):
    """The Dask cluster cannot run the sweep (not installed, unreachable, no workers, lost)."""


def dask_missing() -> str | None:
    """Why the Dask executor cannot be used here (a one-line message), or None."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        return f"--executor dask needs dask and distributed ({exc}); install them with: {INSTALL_HINT}"
    return None


# --- on a Dask worker ------------------------------------------------------------------

_FORKSERVER_THREAD: threading.Thread | None = None
_FORKSERVER_LOCK = threading.Lock()


def _allow_children() -> None:
    """Let this (possibly daemonic) Dask worker process start the isolated workers (module
    docstring)."""
    import multiprocessing

    proc = multiprocessing.current_process()
    if proc._config.get("daemon"):
        proc._config["daemon"] = False


def _start_forkserver() -> None:
    """Start the isolated workers' fork server from a thread that never ends: the fork server
    dies with the thread that started it (``PR_SET_PDEATHSIG``), and Dask's task threads may
    come and go; this one lasts as long as the process."""
    global _FORKSERVER_THREAD
    from ctbench import executor

    ctx = executor._context()  # the fork server's preload (and its start, in a main thread)
    if ctx.get_start_method() != "forkserver" or threading.current_thread() is threading.main_thread():
        return
    with _FORKSERVER_LOCK:
        if _FORKSERVER_THREAD is not None and _FORKSERVER_THREAD.is_alive():
            return
        started = threading.Event()

        def hold() -> None:
            try:
                executor.ensure_forkserver()
            finally:
                started.set()
            threading.Event().wait()

        _FORKSERVER_THREAD = threading.Thread(target=hold, name="ctbench-forkserver", daemon=True)
        _FORKSERVER_THREAD.start()
        started.wait()


def _watch_cancel(cancelled: threading.Event) -> threading.Event | None:
    """Set ``cancelled`` once this Dask task is no longer wanted (its future was cancelled or
    released, the worker is closing); returns the event that ends the watch."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except Exception:  # not in a Dask task (a direct call)
        return None
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            ts = worker.state.tasks.get(key)
            status = getattr(worker.status, "name", str(worker.status))
            if ts is None or ts.state in ("cancelled", "released", "forgotten") or status in ("closing", "closed", "failed"):
                cancelled.set()
                return

    threading.Thread(target=watch, name="ctbench-cancel-watch", daemon=True).start()
    return done


def _code_root(module: str) -> list[str]:
    """The folder(s) of a method's top-level package, found without importing it (an editable
    install maps it outside sys.path): the isolated worker must read them."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [str(p) for p in spec.submodule_search_locations]
    return [spec.origin] if spec.origin and os.path.exists(spec.origin) else []


def worker_facts() -> dict[str, Any]:
    """Where a package ran: host, Dask worker address, the numeric stack's versions."""
    import socket

    from ctbench.runner import environment

    address = None
    try:
        from distributed import get_worker

        address = get_worker().address
    except Exception:
        pass
    return {"host": socket.gethostname(), "address": address, "environment": dict(environment())}


def run_remote(pkg: Any, X_predict: Any, timeout: float | None, readable: tuple[str, ...] = (),
               code_sha256: str | None = None) -> dict[str, Any]:
    """The Dask task of one package, run on a Dask worker: ``{"outcomes": {item index:
    outcome}, "worker": worker_facts()}`` (outcomes as :func:`ctbench.executor.run_package`).

    The sandbox hides this host's data folders and the result store's (there is none here);
    ``readable``: files a method's parameters name (checkpoints), where they exist on this host.
    ``code_sha256``: the client's hash of the method's code; other code here fails every item."""
    from ctbench import executor
    from ctbench.codehash import _hash_of

    facts = worker_facts()
    module = pkg.method.partition(":")[0]
    if code_sha256 is not None:
        here = _hash_of(module)
        if here != code_sha256:
            err = {"phase": "fit", "type": "CodeMismatch", "traceback": "",
                   "message": (f"the Dask worker {facts['address']} on {facts['host']} runs other code for method "
                               f"{pkg.name!r} (code hash {here}, the client's {code_sha256}); install the same "
                               f"ctbench and plugins on every host and restart its workers")}
            return {"outcomes": {it.index: {"status": "failed", "error": dict(err), "timings": {}, "isolation": None}
                                 for it in pkg.items}, "worker": facts}
    _allow_children()
    extra = [p for p in readable if os.path.exists(p)] + _code_root(module)
    rules = executor.sandbox_rules(None, None, readable=extra)
    _start_forkserver()
    cancelled = threading.Event()
    stop = _watch_cancel(cancelled)
    try:
        outcomes = executor.run_package(pkg, X_predict, timeout=timeout, rules=rules, cancelled=cancelled)
    finally:
        if stop is not None:
            stop.set()
    return {"outcomes": outcomes, "worker": facts}


# --- on the client ---------------------------------------------------------------------


def connect(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    """A Client of the scheduler at ``scheduler`` (an address or a scheduler file), or of a new
    local cluster of ``workers`` single-threaded worker processes; returns (client, cluster or
    None). Raises ClusterError with a one-line reason."""
    why = dask_missing()
    if why:
        raise ClusterError(why)
    import logging

    from distributed import Client, LocalCluster

    if scheduler is None:
        from ctbench.executor import _no_main

        try:
            # _no_main: the worker processes (spawned) do not re-run this program's __main__
            with _no_main():
                cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        except Exception as exc:
            raise ClusterError(f"could not start a local Dask cluster: {type(exc).__name__}: {exc}") from None
        try:
            return Client(cluster, timeout=CONNECT_TIMEOUT), cluster
        except BaseException:
            cluster.close()
            raise
    try:
        if os.path.isfile(scheduler):
            client = Client(scheduler_file=scheduler, timeout=CONNECT_TIMEOUT)
        else:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT:g} s ({msg})") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
    except (TimeoutError, OSError):
        client.close()
        raise ClusterError(f"the Dask scheduler at {scheduler} has no workers (waited {WORKERS_TIMEOUT:g} s); "
                           f"start some with: dask worker {scheduler} --nthreads 1") from None
    return client, None


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"status": "failed", "timings": {}, "isolation": None,
            "error": {"phase": "fit", "type": kind, "message": message, "traceback": ""}}


def execute_dask(plan: Any, on_record: Callable[[str, str], None], scheduler: str | None = None, workers: int = 1,
                 timeout: float | None = None, data_dir: str | None = None) -> list[tuple[str, str]]:
    """:func:`ctbench.runner.execute` on a Dask cluster: the scheduler at ``scheduler``, or a
    local cluster of ``workers`` processes. ``data_dir`` is accepted for symmetry: workers hide
    their own data folders, the client's are not theirs. Returns [(status, path)] of the records
    written; Ctrl-C / SIGTERM cancel the sweep and raise KeyboardInterrupt (records written so
    far are kept); a cluster that cannot run it raises ClusterError."""
    from ctbench.executor import sigterm_as_interrupt

    if plan.n_todo == 0:
        return []
    client, cluster = connect(scheduler, workers)
    futures: dict[Any, int] = {}
    try:
        with sigterm_as_interrupt():
            return _sweep(client, plan, on_record, timeout, futures)
    except BaseException:
        if futures:
            try:
                client.cancel(list(futures), force=True)
            except Exception:
                pass
        raise
    finally:
        try:
            client.close(timeout=10)
        except Exception:
            pass
        if cluster is not None:
            try:
                cluster.close(timeout=10)
            except Exception:
                pass


def _sweep(client: Any, plan: Any, on_record: Callable[[str, str], None], timeout: float | None,
           futures: dict[Any, int]) -> list[tuple[str, str]]:
    """Submit the plan's packages (a window at a time) and write each record as its package
    returns; ``futures`` holds those in flight (the caller cancels them on an error)."""
    import warnings
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    from ctbench.runner import finish_record, plan_packages, readable_files
    from ctbench.store import Store

    results: list[tuple[str, str]] = []
    stores: dict[str, Store] = {}
    packages = plan_packages(plan)
    readable = tuple(readable_files(packages))
    sweep = uuid.uuid4().hex[:12]
    queue = iter(range(len(packages)))
    arrived = as_completed()

    def submit_more() -> None:
        """Keep about two packages per worker thread on the cluster (the scheduler holds a
        package's data while it waits), more as workers join."""
        window = max(2, 2 * sum(client.nthreads().values()))
        while len(futures) < window:
            j = next(queue, None)
            if j is None:
                return
            job = packages[j]
            code = next(iter(job.records.values()))["method"]["code_sha256"]
            with warnings.catch_warnings():  # a package carries its data: "large graph" is expected
                warnings.filterwarnings("ignore", message="Sending large graph")
                fut = client.submit(run_remote, job.package, job.X_predict, timeout, readable, code,
                                    key=f"ctbench-package-{sweep}-{j:05d}", retries=TASK_RETRIES)
            futures[fut] = j
            arrived.add(fut)

    submit_more()
    written: set[str] = set()
    for fut in arrived:
        job = packages[futures.pop(fut)]
        outcomes: dict[int, dict[str, Any]] = {}
        facts: dict[str, Any] | None = None
        fallback = None
        try:
            answer = fut.result()
            outcomes, facts = answer["outcomes"], answer["worker"]
        except KilledWorker as exc:
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            fallback = _failure("WorkerDied", f"every Dask worker that ran this package died while running it "
                                              f"({getattr(exc, 'allowed_failures', 0) + 1} time(s), the last {last}); "
                                              f"given up after distributed.scheduler.allowed-failures; see the workers' logs")
        except CancelledError as exc:  # the scheduler lost, or the sweep's tasks cancelled by someone else
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"the Dask cluster dropped a package ({why}); {len(results)} new record(s) kept; "
                               f"run the same command again to resume") from None
        except Exception as exc:  # the executor failed on the worker (not the method): say so
            fallback = _failure("ExecutorError", f"running the package on the Dask cluster failed: "
                                                 f"{type(exc).__name__}: {str(exc)[:1000]}")
        fut.release()
        for item in job.package.items:
            outcome = outcomes.get(item.index) or fallback or _failure(
                "ExecutorError", "the Dask worker returned no outcome for this item")
            record = finish_record(job, item.index, outcome)
            if record["key"] in written:  # cannot happen (one result per package); never write twice
                continue
            if facts is not None:
                record["environment"] = facts["environment"]
                record["executor"] = {"kind": "dask", "host": facts["host"], "worker": facts["address"]}
            path = stores.setdefault(job.results_dir, Store(job.results_dir)).write(record)
            written.add(record["key"])
            results.append((record["status"], str(path)))
            on_record(record["status"], str(path))
        submit_more()
    return results
