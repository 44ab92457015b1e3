"""The isolated worker: one process per work package, holding only what the protocol allows.

A *package* is one method configuration on one outer split of one task: the source calibration
(``SourceData``), the standards of each (N, rep) item, and, for methods tagged transductive, the
unlabelled spectra. The worker never receives test values, the pool's target spectra, cards or
Task objects; it starts from a clean process forked by multiprocessing's fork server (which
holds nothing but imported modules), sandboxes itself (:mod:`ctbench.sandbox`), then:

1. receives the package, fits once, transfers a copy of the fitted method per item
   (reporting after each step, so the parent can time every call);
2. says ``ready``; only then receives the spectra to predict (a non-transductive method never
   holds them while it transfers);
3. predicts per item and sends the predictions back. The parent validates them, computes the
   metrics and writes the records.

Every array handed to the method is a fresh read-only copy owned by this process alone.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Item:
    """One (N, rep) of a package: its standards, as positions in the package's ``bank`` (the
    standards of nested N overlap: each row travels once)."""

    index: int
    n: int
    rep: int
    rows: np.ndarray


@dataclass
class Package:
    """What a worker receives: protocol data only (see the module docstring)."""

    method: str
    """The class as 'module:qualname'."""
    name: str
    params: dict[str, Any]
    random_state: int | None
    source: Any
    """``ctbench.method.SourceData`` of the outer split's calibration pool."""
    bank: Any
    """``ctbench.method.Standards`` holding every row any item uses as a standard."""
    items: list[Item]
    unlabelled: np.ndarray | None = None
    """The spectra to predict, handed to ``transfer`` (methods tagged transductive only)."""
    wants_interval: bool = True
    warm: dict[str, Any] | None = None
    """``ctbench.pls`` fit-cache entries computed by built-in methods on this same source data
    (only ever derived from what ``source`` holds): the source PLS model is paid once per
    (task, outer split), as it was in-process."""
    share: bool = False
    """Send back the fit-cache entries this package's ``fit`` created (built-in methods only)."""


def _2d(y: Any) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return y[:, None] if y.ndim == 1 else y


def standards_of(pkg: Package, item: Item) -> Any:
    """Item ``item``'s standards (``ctbench.method.Standards``), in the split's order."""
    from dataclasses import replace

    bank, rows = pkg.bank, np.asarray(item.rows, dtype=int)
    return replace(bank, X_source=bank.X_source[rows], X_target=bank.X_target[rows], y=bank.y[rows],
                   groups=None if bank.groups is None else np.asarray(bank.groups)[rows])


def error_info(exc: BaseException, phase: str) -> dict[str, str]:
    return {
        "phase": phase,
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-20000:],
    }


def resolve_class(spec: str) -> Any:
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _fresh(value: Any) -> Any:
    """A deep copy whose arrays are read-only and owned by the copy."""
    def ro(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            a = np.array(a, copy=True)
            a.setflags(write=False)
        return a

    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**{k: ro(copy.deepcopy(getattr(value, k))) for k in value.__dataclass_fields__})
    return ro(value)


def _jsonable(value: Any) -> Any:
    from ctbench.store import canonical_json

    return json.loads(canonical_json(value))


def _one_thread(limit_blas: bool = True) -> None:
    """One BLAS / OpenMP / torch thread: a method's numbers must not depend on how many workers
    share the cores (torch's reductions differ with its thread count). The fork server limits
    the BLAS libraries it loaded (``limit_blas``); a worker inherits that and only sets what
    it imports later (``OMP_NUM_THREADS`` is read by torch at import)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if limit_blas:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:  # pragma: no cover
            pass
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def thread_settings() -> dict[str, Any]:
    """The thread counts in force in this process (recorded with every result): each BLAS /
    OpenMP pool threadpoolctl finds, torch's intra-op threads (when torch is loaded) and the
    thread variables of the environment."""
    import sys

    from ctbench.executor import ONE_THREAD_ENV

    out: dict[str, Any] = {"env": {k: os.environ.get(k) for k in ONE_THREAD_ENV}}
    try:
        from threadpoolctl import threadpool_info

        out["pools"] = sorted({f"{d.get('internal_api')}:{d.get('num_threads')}" for d in threadpool_info()})
    except Exception:  # noqa: BLE001 - a record must not fail for its bookkeeping
        out["pools"] = None
    torch = sys.modules.get("torch")
    out["torch"] = torch.get_num_threads() if torch is not None else None
    return out


def child_main(conn: Any, rules: dict[str, Any], tmpdir: str) -> None:
    """Entry point of a worker process (started by ``ctbench.executor``): sandbox, then serve
    one package. ``rules`` come from :func:`ctbench.sandbox.plan_rules`; ``tmpdir`` is the
    package's private temporary folder, the one place it may write."""
    import sys

    from ctbench import sandbox

    sys.dont_write_bytecode = True
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent, which ends the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sandbox.die_with_parent()
    for var in ("TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCH_HOME", "HOME"):
        os.environ[var] = tmpdir
    import tempfile

    tempfile.tempdir = None
    for var in ("CTBENCH_DATA", "CTBENCH_CACHE", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    try:
        level = sandbox.restrict(rules, writable=tmpdir)
    except OSError as exc:
        level = {"landlock_abi": 0, "filesystem": None, "tcp": "allowed", "error": str(exc)}
    import sys as _sys

    _one_thread(limit_blas=not getattr(_sys.modules.get("ctbench.worker_preload"), "BLAS_LIMITED", False))
    conn.send(("hello", level))
    try:
        serve(conn)
    except (EOFError, BrokenPipeError):
        pass
    finally:
        os._exit(0)


def serve(conn: Any) -> None:
    """The package protocol (module docstring); any exception of the method is reported."""
    kind, pkg = conn.recv()
    assert kind == "package"
    pls = None
    if pkg.warm or pkg.share:
        import ctbench.pls as pls

        pls._FIT_CACHE.update(pkg.warm or {})
    try:
        cls = resolve_class(pkg.method)
        kwargs = copy.deepcopy(pkg.params)
        if pkg.random_state is not None:
            kwargs["random_state"] = pkg.random_state
        source = pkg.source
        # one copy per property (multi_target=False) or per pattern of missing references
        from ctbench.property_groups import wrap

        method = wrap(cls, lambda: copy.deepcopy(kwargs), pkg.name, np.vstack([_2d(source.y), _2d(pkg.bank.y)]), _fresh)
        t0 = time.perf_counter()
        fitted = method.fit(_fresh(source))
        fit_s = time.perf_counter() - t0
        if fitted is None:
            raise TypeError(f"method {pkg.name!r}: fit() must return self")
    except BaseException as exc:  # SystemExit from a method is its failure, not the worker's
        conn.send(("fit", error_info(exc, "fit"), 0.0))
        return
    conn.send(("fit", None, fit_s))
    if pkg.share and pls is not None:
        conn.send(("cache", {k: v for k, v in pls._FIT_CACHE.items() if k not in (pkg.warm or {})}))
    transferred: dict[int, Any] = {}
    for item in pkg.items:
        try:
            m = copy.deepcopy(fitted)
            unlabelled = _fresh(pkg.unlabelled) if pkg.unlabelled is not None else None
            t0 = time.perf_counter()
            if m.transfer(_fresh(standards_of(pkg, item)), unlabelled) is None:
                raise TypeError(f"method {pkg.name!r}: transfer() must return self")
            transferred[item.index] = m
            conn.send(("transfer", item.index, None, time.perf_counter() - t0))
        except BaseException as exc:
            conn.send(("transfer", item.index, error_info(exc, "transfer"), 0.0))
    del fitted
    conn.send(("ready",))
    kind, X = conn.recv()
    assert kind == "predict"
    threads = thread_settings()  # after fit and transfer: whatever the method imported is loaded
    for item in pkg.items:
        m = transferred.pop(item.index, None)
        if m is None:
            continue
        out: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            pred = np.array(m.predict(_fresh(X)), dtype=float)
            out["predict_s"] = time.perf_counter() - t0
            out["pred"] = pred
            out["threads"] = threads
            if pkg.wants_interval and callable(getattr(m, "predict_interval", None)):
                t0 = time.perf_counter()
                lo, hi = m.predict_interval(_fresh(X))
                out["interval_s"] = time.perf_counter() - t0
                out["interval"] = (np.array(lo, dtype=float), np.array(hi, dtype=float))
            chosen = getattr(m, "chosen_params", None)
            if callable(chosen):
                out["chosen"] = _jsonable(chosen())
            extras = getattr(m, "record_extras", None)
            if callable(extras):
                out["extras"] = _jsonable(extras())
            conn.send(("predict", item.index, None, out))
        except BaseException as exc:
            conn.send(("predict", item.index, error_info(exc, "transfer/predict"), out if "pred" in out else {}))
        del m
    conn.send(("done",))


def warm_up() -> None:
    """Run the numeric paths methods use once, in the fork server: BLAS buffers, LAPACK
    wrappers and first-call dispatch are initialised there and inherited by every worker
    (otherwise each worker's first transfer paid ~20 ms of set-up)."""
    try:
        rng = np.random.default_rng(0)
        A = rng.standard_normal((120, 80))
        b = rng.standard_normal((120, 3))
        A @ A.T
        np.linalg.lstsq(A, b, rcond=None)
        np.linalg.svd(A, full_matrices=False)
        np.linalg.pinv(A)
        np.linalg.solve(A.T @ A + np.eye(80), A.T @ b)
        np.linalg.eigh(A.T @ A)
        import scipy.linalg

        scipy.linalg.lstsq(A, b)
        scipy.linalg.svd(A, full_matrices=False)
        scipy.linalg.solve(A.T @ A + np.eye(80), A.T @ b, assume_a="pos")
        from ctbench.pls import PLSCalibration

        PLSCalibration(max_components=5, cv=3, random_state=0).fit(A, b)
        import ctbench.pls

        ctbench.pls._FIT_CACHE.clear()
    except BaseException:  # noqa: BLE001 - an optimisation only
        pass


def preload() -> None:
    """Imports done once in the fork server, so each worker starts warm: the numeric stack and
    the built-in plugins' modules (a third party's module is imported in its own workers only)."""
    for mod in ("numpy", "scipy.linalg", "sklearn.cross_decomposition", "threadpoolctl",
                "ctbench.method", "ctbench.store", "ctbench.sandbox"):
        try:
            importlib.import_module(mod)
        except BaseException:  # noqa: BLE001 - preloading is an optimisation only
            pass
    try:
        from importlib import metadata

        from ctbench.plugins import ENTRY_POINT_GROUP, _distribution_of, disabled_plugins, is_builtin_distribution

        disabled = set(disabled_plugins())
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            # built-in plugins only: a third party's import-time code must not run in the
            # process every worker is forked from (it would run in every other method's worker)
            if ep.name in disabled or not is_builtin_distribution(_distribution_of(ep)[0]):
                continue
            try:
                ep.load()
            except BaseException:  # noqa: BLE001
                pass
    except BaseException:  # noqa: BLE001
        pass
    warm_up()

