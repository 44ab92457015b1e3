"""The run grid: fit once per (method config, task), transfer and predict per (N, rep).

The runner owns the protocol (DESIGN section 2): a method is given the source calibration, the
N paired standards, and (only when tagged transductive) the unlabelled test spectra; it never
sees the test values nor target spectra of the pool outside the standards. Inputs are handed
over as read-only arrays. The runner also owns seeding, timing, output validation, metrics,
error capture (a failure becomes a ``failed`` record, the sweep goes on) and the records.
"""

from __future__ import annotations

import copy
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ctbench.cards import TaskCard, expand_tasks
from ctbench.method import SourceData, Standards
from ctbench.splits import ShotsError, make_split, stable_seed
from ctbench.store import SCHEMA_VERSION, Store, record_key, run_identity


class PlanError(ValueError):
    """The requested grid is invalid (unknown names, impossible shot counts)."""


@dataclass(frozen=True)
class MethodSpec:
    """A method name with the parameters the user (or a tuning study) set."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    params_source: str = "default"

    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) + "]"


@dataclass
class WorkUnit:
    spec: MethodSpec
    card: TaskCard
    items: list[tuple[int, int]]
    seed: int
    data_dir: str | None
    results_dir: str


@dataclass
class Plan:
    units: list[WorkUnit]
    n_total: int
    n_done: int
    skipped: list[str]
    done_records: list[tuple[dict, Path]]

    @property
    def n_todo(self) -> int:
        return sum(len(u.items) for u in self.units)


def resolved_params(cls: Any, spec: MethodSpec) -> dict[str, Any]:
    """Defaults overlaid with the spec's parameters (random_state is owned by the runner)."""
    valid = set(cls._param_names())
    unknown = sorted(set(spec.params) - valid)
    if unknown:
        from ctbench.names import did_you_mean

        raise PlanError(
            f"method {spec.name!r} has no parameter {unknown[0]!r}{did_you_mean(unknown[0], valid)}; "
            f"valid: {', '.join(sorted(valid - {'random_state'})) or '(none)'}"
        )
    params = {**cls.default_params(), **spec.params}
    params.pop("random_state", None)
    return params


def check_shots(cls: Any, method: str, task: Any, n: int) -> str | None:
    """Why N shots is impossible for this method on this task, or None."""
    tags = cls.tags
    n_pool = min(task.outer(k).n_pool_samples for k in range(task.n_outer))
    if n > n_pool:
        return f"task {task.name!r} has {n_pool} samples in its (smallest) calibration pool, {n} shots requested (allowed 0..{n_pool})"
    if n == 0 and not tags.zero_shot:
        return f"method {method!r} cannot run zero-shot (N = 0); its minimum is {tags.min_shots} shots"
    if n < tags.min_shots:
        return f"method {method!r} needs at least {tags.min_shots} shots, {n} requested"
    if tags.max_shots is not None and n > tags.max_shots:
        return f"method {method!r} accepts at most {tags.max_shots} shots, {n} requested"
    return None


def plan_runs(
    methods: list[MethodSpec],
    tasks: list[str],
    shots: list[int] | None,
    reps: int,
    seed: int,
    results_dir: Path,
    data_dir: str | None = None,
    force: bool = False,
    rep_filter: Callable[[int], bool] | None = None,
) -> Plan:
    """Expand the grid, validate it, and drop what the store already holds.

    ``rep_filter``: only the repetitions for which it returns True are planned (and counted in
    ``n_total``), e.g. those of one outer split for parameters tuned on that split."""
    from ctbench.plugins import get_method
    from ctbench.tasks import build_task

    if reps < 1:
        raise PlanError("--reps must be at least 1")
    infos = [(spec, get_method(spec.name)) for spec in methods]
    store = Store(results_dir)
    units: list[WorkUnit] = []
    skipped: list[str] = []
    done: list[tuple[dict, Path]] = []
    n_total = 0
    for card, explicit, suite_shots in expand_tasks(tasks):
        task = build_task(card, data_dir)
        grid = shots if shots is not None else list(suite_shots or card.shots)
        for spec, info in infos:
            params = resolved_params(info.cls, spec)
            items = []
            for n in grid:
                why = check_shots(info.cls, spec.name, task, n)
                if why:
                    if explicit and shots is not None:
                        raise PlanError(why)
                    skipped.append(why)
                    continue
                for rep in range(reps):
                    if rep_filter is not None and not rep_filter(rep):
                        continue
                    n_total += 1
                    ident = run_identity(spec.name, info.cls.version, params, card.name, card.version, n, rep, seed)
                    if not force:
                        rec = store.get(ident)
                        if rec is not None and rec.get("status") == "ok":
                            done.append((rec, store.path_for(ident)))
                            continue
                    items.append((n, rep))
            if items:
                units.append(WorkUnit(spec, card, items, seed, data_dir, str(results_dir)))
    return Plan(units=units, n_total=n_total, n_done=len(done), skipped=sorted(set(skipped)), done_records=done)


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    import numpy
    import scipy

    import ctbench

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "ctbench": ctbench.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float, copy=True)
    a.setflags(write=False)
    return a


def _check_predictions(pred: Any, n: int, k: int, method: str) -> np.ndarray:
    pred = np.asarray(pred, dtype=float)
    if pred.ndim == 1 and k == 1:
        pred = pred[:, None]
    if pred.shape != (n, k):
        raise ValueError(f"method {method!r} returned predictions of shape {pred.shape}, expected {(n, k)}")
    if not np.isfinite(pred).all():
        raise ValueError(f"method {method!r} returned NaN or inf predictions")
    return pred


def interval_metrics(y: np.ndarray, lo: Any, hi: Any, properties: tuple[str, ...]) -> dict[str, Any]:
    """Coverage (share of test values inside [lo, hi]) and mean width per property, and their means."""
    lo, hi = np.asarray(lo, dtype=float).reshape(y.shape), np.asarray(hi, dtype=float).reshape(y.shape)
    inside = (y >= lo) & (y <= hi)
    per = {p: {"coverage": float(inside[:, j].mean()), "mean_width": float(np.mean(hi[:, j] - lo[:, j]))}
           for j, p in enumerate(properties)}
    return {"per_property": per, "mean": {k: float(np.mean([per[p][k] for p in properties])) for k in ("coverage", "mean_width")}}


def source_for(task: Any, cls: Any) -> SourceData:
    """What ``fit`` sees: source spectra of the pool (target spectra for full recalibration)."""
    pool = task.pool_rows
    X = task.X_target[pool] if cls.tags.uses_target_calibration else task.X_source[pool]
    return SourceData(
        X=_readonly(X),
        y=_readonly(task.y[pool]),
        axis=_readonly(task.axis),
        axis_unit=task.axis_unit,
        properties=task.properties,
        instrument=task.card.target if cls.tags.uses_target_calibration else task.card.source,
        groups=np.array(task.groups[pool]),
    )


def standards_for(task: Any, rows: np.ndarray) -> Standards:
    return Standards(
        X_source=_readonly(task.X_source[rows]),
        X_target=_readonly(task.X_target[rows]),
        y=_readonly(task.y[rows]),
        axis=_readonly(task.axis),
        axis_unit=task.axis_unit,
        properties=task.properties,
        groups=np.array(task.groups[rows]),
    )


# --- per-process caches (performance only) --------------------------------------------
# A sweep runs every method of a task on the same (N, rep) splits: the split, its manifest,
# the standards' read-only arrays, the test spectra and the task summary are computed once
# per process and shared. Everything shared is read-only (or copied per record), so a
# method still sees exactly what it saw before.

_SPLITS: dict[tuple, tuple[Any, dict, np.ndarray, np.ndarray, np.ndarray]] = {}
_TASK_VIEWS: dict[tuple, tuple[np.ndarray, dict]] = {}
_CACHE_SIZE = 4096


def _task_key(task: Any) -> tuple:
    return (task.name, task.version, task.card.sha256, id(task), task.outer_index)


def _split_and_arrays(task: Any, n: int, rep: int, seed: int) -> tuple[Any, dict, np.ndarray, np.ndarray, np.ndarray]:
    """(split, manifest, read-only X_source[S], X_target[S], y[S]) of an (N, rep), cached per process."""
    key = _task_key(task) + (int(n), int(rep), int(seed))
    hit = _SPLITS.get(key)
    if hit is None:
        split = make_split(task, n, rep, seed)
        rows = split.standard_rows
        hit = (split, split.manifest(), _readonly(task.X_source[rows]), _readonly(task.X_target[rows]), _readonly(task.y[rows]))
        if len(_SPLITS) >= _CACHE_SIZE:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = hit
    return hit


def _task_view(task: Any) -> tuple[np.ndarray, dict]:
    """(read-only X_target[T], task summary) of a task, cached per process."""
    key = _task_key(task)
    hit = _TASK_VIEWS.get(key)
    if hit is None:
        hit = (_readonly(task.X_target[task.test_rows]), {**task.summary(), "card_sha256": task.card.sha256})
        _TASK_VIEWS[key] = hit
    return hit


def _standards_from(task: Any, rows: np.ndarray, Xs: np.ndarray, Xt: np.ndarray, y: np.ndarray) -> Standards:
    """``standards_for`` with the cached read-only arrays (the sample ids are a fresh copy, as before)."""
    return Standards(
        X_source=Xs,
        X_target=Xt,
        y=y,
        axis=_readonly(task.axis),
        axis_unit=task.axis_unit,
        properties=task.properties,
        groups=np.array(task.groups[rows]),
    )


def _error_info(exc: BaseException, phase: str) -> dict[str, str]:
    return {
        "phase": phase,
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-20000:],
    }


def _residuals(task: Any, pred: np.ndarray) -> dict[str, Any]:
    """Per test row: its sample (index among the test set's samples) and predicted - reference
    per property (columns in ``properties`` order), to 7 significant digits (what the
    leaderboard's bootstrap resamples)."""
    y = task.y[task.test_rows]
    _, sample = np.unique(task.groups[task.test_rows], return_inverse=True)
    return {
        "properties": list(task.properties),
        "sample": [int(i) for i in sample],
        "values": [[float(f"{v:.7g}") for v in row] for row in (pred - y)],
    }


def _fit(cls: Any, params: dict, random_state: int, has_rs: bool, task: Any, name: str) -> tuple[Any, float, dict | None]:
    """(fitted method, fit seconds, error info) on the task's (outer split's) calibration pool."""
    try:
        method = cls(**copy.deepcopy(params), **({"random_state": random_state} if has_rs else {}))
        t0 = time.perf_counter()
        fitted = method.fit(source_for(task, cls))
        fit_s = time.perf_counter() - t0
        if fitted is None:
            raise TypeError(f"method {name!r}: fit() must return self")
        return fitted, fit_s, None
    except Exception as exc:
        return None, 0.0, _error_info(exc, "fit")


def _chosen(m: Any) -> dict[str, Any] | None:
    chosen = getattr(m, "chosen_params", None)
    if not callable(chosen):
        return None
    from ctbench.store import canonical_json
    import json

    return json.loads(canonical_json(chosen()))


def run_unit(unit: WorkUnit, progress: Callable[[dict, str], None] | None = None) -> list[tuple[str, str]]:
    """Per outer split: fit once, then transfer/predict/score/store each (N, rep) of that split.
    Returns [(status, record path)]."""
    from ctbench.metrics import evaluate
    from ctbench.plugins import get_method
    from ctbench.tasks import build_task

    store = Store(unit.results_dir)
    t0 = time.perf_counter()
    base = build_task(unit.card, unit.data_dir)
    load_s = time.perf_counter() - t0
    info = get_method(unit.spec.name)
    cls = info.cls
    params = resolved_params(cls, unit.spec)
    random_state = stable_seed(unit.seed, "fit", base.name, base.version)
    has_rs = "random_state" in cls._param_names()
    out = []
    items = sorted(unit.items, key=lambda item: (base.outer_of_rep(item[1])[0], item[1], item[0]))
    fits: dict[int, tuple[Any, float, dict | None]] = {}
    for n, rep in items:
        k, _ = base.outer_of_rep(rep)
        task = base.outer(k)
        if k not in fits:
            fits.clear()  # one fitted model alive at a time
            fits[k] = _fit(cls, params, random_state, has_rs, task, unit.spec.name)
        fitted, fit_s, fit_error = fits[k]
        X_test, task_summary = _task_view(task)
        ident = run_identity(cls.name, cls.version, params, task.name, task.version, n, rep, unit.seed)
        split, manifest, std_Xs, std_Xt, std_y = _split_and_arrays(base, n, rep, unit.seed)
        record: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "key": record_key(ident),
            "identity": ident,
            "method": {
                "name": cls.name,
                "version": cls.version,
                "plugin": info.plugin,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "params_source": unit.spec.params_source,
                "user_params": unit.spec.params,
                "tags": {k: getattr(cls.tags, k) for k in cls.tags.__dataclass_fields__},
            },
            "task": dict(task_summary),
            "n_shots": n,
            "rep": rep,
            "outer": {"index": split.outer, "of": split.n_outer, "draw": split.draw},
            "seed": unit.seed,
            "random_state": random_state if has_rs else None,
            "transductive": bool(cls.tags.transductive),
            "reference": bool(cls.tags.reference),
            "split": dict(manifest),
            "data_sha256": task.data_sha256,
            "environment": environment(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        timings = {"load_s": load_s, "fit_s": fit_s}
        if fit_error is not None:
            record.update(status="failed", error=fit_error, metrics=None, timings=timings)
        else:
            try:
                m = copy.deepcopy(fitted)
                unlabelled = X_test if cls.tags.transductive else None
                t0 = time.perf_counter()
                if m.transfer(_standards_from(task, split.standard_rows, std_Xs, std_Xt, std_y), unlabelled) is None:
                    raise TypeError(f"method {cls.name!r}: transfer() must return self")
                timings["transfer_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                pred = m.predict(X_test)
                timings["predict_s"] = time.perf_counter() - t0
                pred = _check_predictions(pred, task.test_rows.size, len(task.properties), cls.name)
                record.update(status="ok", metrics=evaluate(task.y[task.test_rows], pred, task.properties))
                record["residuals"] = _residuals(task, pred)
                if callable(getattr(m, "predict_interval", None)):  # uncertainty-aware methods
                    t0 = time.perf_counter()
                    lo, hi = m.predict_interval(_readonly(task.X_target[task.test_rows]))
                    timings["interval_s"] = time.perf_counter() - t0
                    record["metrics"]["intervals"] = interval_metrics(task.y[task.test_rows], lo, hi, task.properties)
                chosen = _chosen(m)
                if chosen is not None:
                    record["chosen"] = chosen
                extra = getattr(m, "record_extras", None)
                if callable(extra):
                    record["extras"] = extra()
            except Exception as exc:
                record.update(status="failed", error=_error_info(exc, "transfer/predict"), metrics=None)
            record["timings"] = timings
        path = store.write(record)
        out.append((record["status"], str(path)))
        if progress is not None:
            progress(record, str(path))
    return out


# --- parallel execution ---------------------------------------------------------------

_QUEUE = None


def _one_thread_now() -> Callable[[], None]:
    """One BLAS / OpenMP / torch thread from now on, in a worker or in this process alike;
    returns the function that restores the previous settings.

    --jobs processes share the cores, and a method's numbers must not depend on --jobs: torch's
    reductions (hence a trained network) differ with its thread count. ``OMP_NUM_THREADS`` is
    read by torch when a method first imports it; a torch already imported is set directly.
    """
    import os

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    old_env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    old_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    limits = threadpool_limits(1) if threadpool_limits is not None else None

    def restore() -> None:
        if limits is not None:
            limits.restore_original_limits()
        if old_torch is not None:
            torch.set_num_threads(old_torch)
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env

    return restore


@contextmanager
def _one_thread() -> Iterator[None]:
    """``_one_thread_now`` for the duration of a block."""
    restore = _one_thread_now()
    try:
        yield
    finally:
        restore()


def _worker_init(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue
    _one_thread_now()  # for the worker's whole life


def _worker_run(unit: WorkUnit) -> list[tuple[str, str]]:
    def progress(record: dict, path: str) -> None:
        _QUEUE.put((record["status"], path))

    return run_unit(unit, progress)


def execute(plan: Plan, jobs: int, on_record: Callable[[str, str], None]) -> list[tuple[str, str]]:
    """Run every unit of the plan (in ``jobs`` processes); ``on_record(status, path)`` per record."""
    results: list[tuple[str, str]] = []
    if jobs <= 1 or len(plan.units) <= 1:
        # as in the workers (the matrices of a calibration-transfer run are small: threads only contend)
        with _one_thread():
            for unit in plan.units:
                results += run_unit(unit, lambda rec, path: on_record(rec["status"], path))
        return results
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
    q = ctx.Queue()
    units = sorted(plan.units, key=lambda u: -len(u.items))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(q,)) as pool:
        pending = {pool.submit(_worker_run, u) for u in units}

        received = 0

        def drain(timeout: float) -> None:
            nonlocal received
            while True:
                try:
                    status, path = q.get(timeout=timeout)
                except queue_mod.Empty:
                    return
                received += 1
                on_record(status, path)
                timeout = 0.001

        while pending:
            drain(0.05)
            finished, pending = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
            for fut in finished:
                results += fut.result()
        deadline = time.monotonic() + 10.0
        while received < len(results) and time.monotonic() < deadline:
            drain(0.1)
    return results
