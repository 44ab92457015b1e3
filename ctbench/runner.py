"""The run grid: fit once per (method config, task), transfer and predict per (N, rep).

The runner owns the protocol (DESIGN section 2): a method is given the source calibration, the
N paired standards, and (only when tagged transductive) the unlabelled test spectra; it never
sees the test values nor target spectra of the pool outside the standards. Inputs are handed
over as read-only arrays. The runner also owns seeding, timing, output validation, metrics,
error capture (a failure becomes a ``failed`` record, the sweep goes on) and the records.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ctbench.cards import TaskCard, expand_tasks
from ctbench.codehash import method_code_hash
from ctbench.method import SourceData, Standards
from ctbench.splits import ShotsError, make_split, stable_seed
from ctbench.store import SCHEMA_VERSION, Store, record_key, run_identity
from ctbench.worker import error_info


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
    """Defaults overlaid with the spec's parameters, normalised to the defaults' types
    (:func:`ctbench.params.normalise_params`; random_state is owned by the runner: setting it is
    an error)."""
    from ctbench.params import normalise_params

    valid = set(cls._param_names())
    unknown = sorted(set(spec.params) - valid, key=str)
    if unknown:
        from ctbench.names import did_you_mean

        raise PlanError(
            f"method {spec.name!r} has no parameter {unknown[0]!r}{did_you_mean(str(unknown[0]), valid)}; "
            f"valid: {', '.join(sorted(valid - {'random_state'})) or '(none)'}"
        )
    params = {**cls.default_params(), **normalise_params(cls, spec.params, spec.name)}
    params.pop("random_state", None)
    return params


def canonical_name(name: str) -> str:
    """The name records use for a method: its plain name when that resolves to the same class,
    else its qualified ``plugin:method`` name (a third party's method whose plain name a
    built-in or another plugin also registers)."""
    from ctbench.plugins import get_method, record_name

    return record_name(get_method(name, quiet=True))


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
    codes = {spec.name: method_code_hash(info.cls) for spec, info in infos}
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
                    ident = run_identity(canonical_name(spec.name), info.cls.version, params, card.name, card.version, n, rep,
                                         seed, card_sha256=card.sha256, code_sha256=codes[spec.name])
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
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import scipy

    import ctbench

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "ctbench": ctbench.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    for dist in ("torch", "scikit-learn", "threadpoolctl"):  # read from metadata: nothing heavy is imported
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = None
    return env


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


def native_for(task: Any, cls: Any) -> Any:
    """The task's native axes if the method takes them (card ``alignment: native`` and the
    method tagged ``native_axes``), else None: the method gets the common grid."""
    native = getattr(task, "native", None)
    return native if native is not None and getattr(cls.tags, "native_axes", False) else None


def target_spectra(task: Any, cls: Any, rows: np.ndarray) -> np.ndarray:
    """Target spectra of ``rows`` as the method sees them (native axis or common grid)."""
    native = native_for(task, cls)
    return _readonly((task.X_target if native is None else native.X_target)[rows])


def source_for(task: Any, cls: Any, rows: np.ndarray | None = None) -> SourceData:
    """What ``fit`` sees: source spectra of the pool (target spectra for full recalibration);
    ``rows``: of these rows instead (the tuner's validation splits)."""
    pool = task.pool_rows if rows is None else rows
    native = None if cls.tags.uses_target_calibration else native_for(task, cls)
    if native is not None:
        X, axis = native.X_source[pool], native.axis_source
    else:
        X = task.X_target[pool] if cls.tags.uses_target_calibration else task.X_source[pool]
        axis = task.axis
    return SourceData(
        X=_readonly(X),
        y=_readonly(task.y[pool]),
        axis=_readonly(axis),
        axis_unit=task.axis_unit,
        properties=task.properties,
        instrument=task.card.target if cls.tags.uses_target_calibration else task.card.source,
        groups=np.array(task.groups[pool]),
    )


def standards_for(task: Any, rows: np.ndarray, cls: Any = None) -> Standards:
    """The standards of ``rows``; on the instruments' own axes for a method that takes them."""
    native = native_for(task, cls) if cls is not None else None
    spectra = task if native is None else native
    return Standards(
        X_source=_readonly(spectra.X_source[rows]),
        X_target=_readonly(spectra.X_target[rows]),
        y=_readonly(task.y[rows]),
        axis=_readonly(task.axis if native is None else native.axis_source),
        axis_unit=task.axis_unit,
        properties=task.properties,
        groups=np.array(task.groups[rows]),
        axis_target=None if native is None else _readonly(native.axis_target),
    )


def missing_references(task: Any, standard_rows: np.ndarray) -> dict[str, dict[str, int]] | None:
    """Per property with missing reference values: how many samples of the calibration pool,
    of the standards and of the test set have none (each left out of that property only)."""
    if not task.missing_references:
        return None
    parts = {"calibration": task.missing_in(task.pool_rows), "standards": task.missing_in(standard_rows),
             "test": task.missing_in(task.test_rows)}
    return {p: {part: counts[p] for part, counts in parts.items()} for p in task.missing_references}


# --- work packages ---------------------------------------------------------------------
# A sweep runs every method of a task on the same (N, rep) splits: the split and its manifest
# are computed once (in the parent); each package carries its own copy of the arrays.

_SPLITS: dict[tuple, tuple[Any, dict]] = {}
_CACHE_SIZE = 4096


def _split(task: Any, n: int, rep: int, seed: int) -> tuple[Any, dict]:
    """(split, manifest) of an (N, rep), cached per process (every method of a sweep uses it)."""
    key = (task.name, task.version, task.card.sha256, id(task), int(n), int(rep), int(seed))
    hit = _SPLITS.get(key)
    if hit is None:
        split = make_split(task, n, rep, seed)
        hit = (split, split.manifest())
        if len(_SPLITS) >= _CACHE_SIZE:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = hit
    return hit


def _residuals(task: Any, pred: np.ndarray) -> dict[str, Any]:
    """Per test row: its sample (index among the test set's samples) and predicted - reference
    per property (columns in ``properties`` order), to 7 significant digits (what the
    leaderboard's bootstrap resamples); null where the sample has no reference value."""
    y = task.y[task.test_rows]
    _, sample = np.unique(task.groups[task.test_rows], return_inverse=True)
    return {
        "properties": list(task.properties),
        "sample": [int(i) for i in sample],
        "values": [[None if v != v else float(f"{v:.7g}") for v in row] for row in (pred - y)],
    }


@dataclass
class PackageJob:
    """A worker's package, the spectra it predicts (sent after its transfers), and what the
    parent needs to turn each item's outcome into a record (kept in the parent)."""

    package: Any
    X_predict: np.ndarray
    task: Any
    records: dict[int, dict[str, Any]]
    results_dir: str
    group: tuple | None = None
    """The source data the package fits on (task, card, outer split, instrument); None for
    methods fitted on the target calibration, whose fits are never shared."""


def _method_class_path(cls: Any) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def unit_packages(unit: WorkUnit) -> list[PackageJob]:
    """The unit's work packages, one per outer split: protocol data for the worker, record
    skeletons for the parent."""
    from ctbench.plugins import get_method
    from ctbench.tasks import build_task
    from ctbench.worker import Item, Package

    t0 = time.perf_counter()
    base = build_task(unit.card, unit.data_dir)
    load_s = time.perf_counter() - t0
    info = get_method(unit.spec.name)
    cls = info.cls
    params = resolved_params(cls, unit.spec)
    random_state = stable_seed(unit.seed, "fit", base.name, base.version)
    has_rs = "random_state" in cls._param_names()
    code = method_code_hash(cls)
    by_outer: dict[int, list[tuple[int, int]]] = {}
    for n, rep in sorted(unit.items, key=lambda item: (base.outer_of_rep(item[1])[0], item[1], item[0])):
        by_outer.setdefault(base.outer_of_rep(rep)[0], []).append((n, rep))
    jobs = []
    for k, items in by_outer.items():
        task = base.outer(k)
        X_test = target_spectra(task, cls, task.test_rows)
        summary = {**task.summary(), "card_sha256": task.card.sha256}
        pkg_items, records = [], {}
        for i, (n, rep) in enumerate(items):
            ident = run_identity(canonical_name(unit.spec.name), cls.version, params, task.name, task.version, n, rep, unit.seed,
                                 card_sha256=task.card.sha256, code_sha256=code)
            split, manifest = _split(base, n, rep, unit.seed)
            pkg_items.append((i, n, rep, split.standard_rows))
            records[i] = {
                "schema": SCHEMA_VERSION,
                "key": record_key(ident),
                "identity": ident,
                "method": {
                    "name": cls.name,
                    "version": cls.version,
                    "plugin": info.plugin,
                    "qualified": getattr(info, "qualified", f"{info.plugin}:{cls.name}"),
                    "distribution": getattr(info, "distribution", ""),
                    "distribution_version": getattr(info, "distribution_version", ""),
                    "code_sha256": code,
                    "class": f"{cls.__module__}.{cls.__qualname__}",
                    "params_source": unit.spec.params_source,
                    "user_params": {k: params[k] for k in unit.spec.params if k in params},  # normalised values
                    "tags": {t: getattr(cls.tags, t) for t in cls.tags.__dataclass_fields__},
                },
                "task": dict(summary),
                "n_shots": n,
                "rep": rep,
                "outer": {"index": split.outer, "of": split.n_outer, "draw": split.draw},
                "seed": unit.seed,
                "random_state": random_state if has_rs else None,
                "transductive": bool(cls.tags.transductive),
                "reference": bool(cls.tags.reference),
                "split": dict(manifest),
                **({"missing_references": missing} if (missing := missing_references(task, split.standard_rows)) else {}),
                "data_sha256": task.data_sha256,
                "environment": environment(),
                "_load_s": load_s,
            }
            load_s = 0.0
        bank_rows = np.unique(np.concatenate([rows for *_, rows in pkg_items])) if pkg_items else np.zeros(0, int)
        position = {int(r): j for j, r in enumerate(bank_rows)}
        items = [Item(i, n, rep, np.array([position[int(r)] for r in rows], dtype=int)) for i, n, rep, rows in pkg_items]
        pkg = Package(
            method=_method_class_path(cls),
            name=cls.name,
            params=params,
            random_state=random_state if has_rs else None,
            source=source_for(task, cls),
            bank=standards_for(task, bank_rows, cls),
            items=items,
            unlabelled=X_test if cls.tags.transductive else None,
            share=bool(getattr(info, "builtin", False)) and not cls.tags.uses_target_calibration,
        )
        group = None if cls.tags.uses_target_calibration else (task.name, task.card.sha256, unit.data_dir, k)
        jobs.append(PackageJob(pkg, X_test, task, records, unit.results_dir, group))
    return jobs


def finish_record(job: PackageJob, index: int, outcome: dict[str, Any]) -> dict[str, Any]:
    """The record of item ``index`` from its worker outcome: predictions validated and scored
    here, in the parent, against the test values the worker never had."""
    from ctbench.metrics import evaluate

    task = job.task
    record = dict(job.records[index])
    timings = {"load_s": record.pop("_load_s", 0.0), **outcome.get("timings", {})}
    record["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["isolation"] = outcome.get("isolation")
    if outcome.get("threads") is not None:
        record["threads"] = outcome["threads"]
    if outcome["status"] != "ok":
        record.update(status="failed", error=outcome["error"], metrics=None, timings=timings)
        return record
    try:
        y = task.y[task.test_rows]
        pred = _check_predictions(outcome["pred"], task.test_rows.size, len(task.properties), record["method"]["name"])
        record.update(status="ok", metrics=evaluate(y, pred, task.properties))
        record["residuals"] = _residuals(task, pred)
        if outcome.get("interval") is not None:
            lo, hi = outcome["interval"]
            record["metrics"]["intervals"] = interval_metrics(y, lo, hi, task.properties)
        if outcome.get("chosen") is not None:
            record["chosen"] = outcome["chosen"]
        if outcome.get("extras") is not None:
            record["extras"] = outcome["extras"]
    except Exception as exc:
        record.update(status="failed", error=error_info(exc, "transfer/predict"), metrics=None)
        record.pop("residuals", None)
    record["timings"] = timings
    return record


# --- execution -------------------------------------------------------------------------


@contextmanager
def _one_thread() -> Iterator[None]:
    """One BLAS / OpenMP / torch thread for the duration of a block (in-process method calls:
    the report's refits, the deep bench), as in the isolated workers: torch's reductions (hence
    a trained network) differ with its thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    from ctbench.executor import one_thread_env

    with one_thread_env():  # read by torch / MKL if first imported inside
        torch = sys.modules.get("torch")
        old_torch = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(1)
        limits = threadpool_limits(1) if threadpool_limits is not None else None
        try:
            yield
        finally:
            if limits is not None:
                limits.restore_original_limits()
            if old_torch is not None:
                torch.set_num_threads(old_torch)


def plan_packages(plan: Plan) -> list[PackageJob]:
    """Every package of the plan: first one built-in package per source (its source PLS fit is
    then shared with the others of that source), then the rest; largest first within each."""
    jobs = sorted((job for unit in plan.units for job in unit_packages(unit)), key=lambda j: -len(j.package.items))
    leaders: dict[Any, PackageJob] = {}
    for job in jobs:
        if job.group is not None and job.package.share and job.group not in leaders:
            leaders[job.group] = job
    first = list(leaders.values())
    chosen = {id(j) for j in first}
    return first + [j for j in jobs if id(j) not in chosen]


def readable_files(packages: list[PackageJob]) -> list[str]:
    """Files the packages' method parameters name (a checkpoint, say): their workers may read
    them, unless they lie in a hidden folder."""
    return sorted({v for job in packages for v in job.package.params.values() if isinstance(v, str) and os.path.exists(v)})


def execute(plan: Plan, jobs: int, on_record: Callable[[str, str], None], timeout: float | None = None,
            data_dir: str | None = None) -> list[tuple[str, str]]:
    """Run every package of the plan in isolated workers, ``jobs`` at a time; every method call
    gets at most ``timeout`` seconds. The parent scores and writes each record, then calls
    ``on_record(status, path)``. Ctrl-C / SIGTERM stop every worker and raise KeyboardInterrupt
    (records written so far are kept)."""
    from ctbench.executor import run_packages, sandbox_rules

    packages = plan_packages(plan)
    if not packages:
        return []
    results_dirs = sorted({job.results_dir for job in packages})
    data_dirs = sorted({u.data_dir for u in plan.units if u.data_dir} | ({data_dir} if data_dir else set()))
    rules = sandbox_rules(results_dirs[0], data_dirs[0] if data_dirs else None,
                          extra=results_dirs[1:] + data_dirs[1:], readable=readable_files(packages))
    results: list[tuple[str, str]] = []
    stores = {d: Store(d) for d in results_dirs}

    def on_outcome(j: int, index: int, outcome: dict[str, Any]) -> None:
        job = packages[j]
        record = finish_record(job, index, outcome)
        path = stores[job.results_dir].write(record)
        results.append((record["status"], str(path)))
        on_record(record["status"], str(path))

    run_packages([(job.package, job.X_predict) for job in packages], jobs, timeout, rules, on_outcome,
                 groups=[job.group for job in packages])
    return results
