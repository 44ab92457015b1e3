"""Optuna tuning of any method's ``search_space(trial)`` on validation splits of the calibration pool.

Tuning is nested in the task's outer splits: a study tunes on one outer split ``k``
(``TuneConfig.outer``) and its parameters are only ever used on the repetitions of that split,
since the pool of split k holds the test samples of the other splits. The objective of a trial
is the mean validation metric (RMSEP averaged over properties by default) over ``reps``
validation splits carved from outer split k's calibration pool only
(:func:`ctbench.splits.validation_splits`): the method is fitted on the inner pool's source
spectra, transferred with standards drawn from the inner pool, and scored on the held-out part
of the pool. The outer split's test rows are never read.

Studies live in an RDB storage (by default ``<results>/optuna.db``, SQLite) so a killed tune
resumes where it stopped and several workers (processes or hosts) can share one study. Each
worker runs one trial at a time and only while the study's COMPLETE + PRUNED count is below the
target; a trial is admitted only when fewer than ``target`` non-failed trials precede it, so the
final count is exact whatever the number of workers. The best parameters are written to
``<results>/tuned/{method}/{task}/N{n}-outer{k}.json`` (``N{n}.json`` for a task with a single
outer split) and used by ``ctbench run --params tuned`` on the repetitions of outer split k.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ctbench.runner import (
    MethodSpec,
    PlanError,
    _check_predictions,
    check_shots,
    resolved_params,
    standards_for,
    target_spectra,
)
from ctbench.splits import stable_seed, validation_splits
from ctbench.timeouts import MethodTimeout, defer_timeouts, time_limit

TUNED_DIR = "tuned"
STUDY_DB = "optuna.db"
DIRECTIONS = {"rmsep": "minimize", "sep": "minimize", "r2": "maximize", "rpd": "maximize"}
HELDOUT_FRACTION = 0.25
STEP_STRIDE = 1_000_000
"""Intermediate step of split v, phase p (0 fit, 1 transfer), method step s: v*STRIDE + p*STRIDE/2 + s."""
HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 30
POLL_S = 0.25

# user attribute names on trials / studies
A_WORKER = "ctbench.worker"
A_PARAMS = "ctbench.params"
A_SPLITS = "ctbench.split_values"
A_ERROR = "ctbench.error"
A_SURPLUS = "ctbench.surplus"
A_PROTOCOL = "ctbench.protocol"


class TuningError(ValueError):
    """A tuning request that cannot go on; the message is one line naming what to fix."""


# --- names and paths ---------------------------------------------------------------------------


def default_storage(results_dir: Path | str) -> str:
    """The study storage of a results directory: a SQLite file that survives a kill."""
    path = Path(results_dir).resolve() / STUDY_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def outer_suffix(outer: int | None) -> str:
    """``/outer{k}`` for outer split k of a task with several outer splits; '' for None (one split)."""
    return "" if outer is None else f"/outer{int(outer)}"


def default_study_name(method: str, task: str, n_shots: int, outer: int | None = None) -> str:
    """The study of (method, task, N[, outer split]); ``outer`` is None for a task with one outer split."""
    return f"ctbench/{method}/{task}/N{n_shots}{outer_suffix(outer)}"


def tuned_path(results_dir: Path | str, method: str, task: str, n_shots: int, outer: int | None = None) -> Path:
    """Where the best parameters of (method, task, N) tuned on outer split ``outer`` are saved
    (``outer`` None for a task with a single outer split: ``N{n}.json``)."""
    name = f"N{n_shots}.json" if outer is None else f"N{n_shots}-outer{int(outer)}.json"
    return Path(results_dir) / TUNED_DIR / method / task / name


def masked_url(url: str) -> str:
    """A storage URL with its password hidden (safe to write into files and MLflow)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --- configuration ------------------------------------------------------------------------------


@dataclass
class TuneConfig:
    """Everything a tuning worker needs (picklable: workers may run in other processes)."""

    method: str
    task: str
    n_shots: int
    trials: int = 50
    reps: int = 5
    seed: int = 0
    metric: str = "rmsep"
    results_dir: str = "results"
    data_dir: str | None = None
    storage: str | None = None
    study: str | None = None
    timeout: float | None = None
    """Start no new trial after this many seconds (``--timeout``; running trials finish)."""
    trial_timeout: float | None = None
    """A trial whose method calls run longer than this many seconds fails (``--trial-timeout``)."""
    pruner: str = "median"
    max_failures: int = 5
    invocation: str = ""
    worker: int = 0
    outer: int = 0
    """The outer split whose calibration pool is tuned on (its parameters serve its repetitions only)."""
    n_outer: int = 0
    """The task's number of outer splits, set by :func:`setup_task` (0 until the task is built)."""

    def storage_url(self) -> str:
        return self.storage or default_storage(self.results_dir)

    def outer_key(self) -> int | None:
        """The outer split in names and paths: None for a task with a single outer split."""
        return self.outer if self.n_outer > 1 else None

    def study_name(self) -> str:
        """The study (``--study`` or the default), with ``/outer{k}`` for a task with several outer splits."""
        if self.study:
            return self.study + outer_suffix(self.outer_key())
        return default_study_name(self.method, self.task, self.n_shots, self.outer_key())


# --- the objective: validation splits of the calibration pool -----------------------------------


def validation_source(task: Any, cls: Any, rows: np.ndarray) -> Any:
    """What ``fit`` sees in a validation split: the inner pool's source spectra (target spectra
    for methods calibrated on the target, i.e. full recalibration) and values."""
    from ctbench.runner import source_for

    return source_for(task, cls, rows)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class ValidationObjective:
    """Scores a method's parameters on K validation splits carved from the calibration pool of
    ``task`` (give it the outer split's view, ``task.outer(k)``: its pool is what is carved).

    Fitted methods are cached per (parameters, split), so a trial that repeats earlier
    parameters pays only for transfer and prediction.
    """

    def __init__(self, task: Any, cls: Any, method: str, n_shots: int, reps: int, seed: int = 0,
                 metric: str = "rmsep", cache_size: int | None = None):
        if metric not in DIRECTIONS:
            raise TuningError(f"--metric must be one of {', '.join(DIRECTIONS)}, got {metric!r}")
        self.task, self.cls, self.method, self.n_shots, self.metric = task, cls, method, n_shots, metric
        self.splits = validation_splits(task, reps, n_shots, seed, HELDOUT_FRACTION)
        pool = set(int(r) for r in task.pool_rows)
        test = set(int(r) for r in task.test_rows)
        where = f"outer split {getattr(task, 'outer_index', 0)} of task {task.name!r}"
        for s in self.splits:  # the protocol's invariant, checked rather than trusted
            rows = set(np.concatenate([s.pool_rows, s.standard_rows, s.heldout_rows]).astype(int).tolist())
            if not rows <= pool or rows & test or set(s.heldout_rows.tolist()) & set(s.pool_rows.tolist()):
                raise TuningError(f"validation split {s.index} of {where} leaves its calibration pool")
        self.random_state = stable_seed(seed, "fit", task.name, task.version)
        self.has_rs = "random_state" in cls._param_names()
        self._fits: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._cache_size = cache_size if cache_size is not None else 4 * max(1, reps)

    def protocol(self) -> dict[str, Any]:
        from ctbench.splits import hash_indices

        return {
            "kind": "validation splits of the calibration pool (test rows never used)",
            "n_splits": len(self.splits),
            "n_shots": self.n_shots,
            "heldout_fraction": HELDOUT_FRACTION,
            "metric": self.metric,
            "objective": f"mean {self.metric} over properties and validation splits",
            "direction": DIRECTIONS[self.metric],
            "split_hashes": [
                hash_indices(np.concatenate([s.pool_rows, [-1], s.standard_rows, [-1], s.heldout_rows])) for s in self.splits
            ],
        }

    def params_from(self, trial: Any) -> dict[str, Any]:
        """The parameters the method's search space suggests for this trial (validated)."""
        import optuna

        try:
            params = self.cls.search_space(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            raise TuningError(
                f"search_space of {self.method!r} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        if not isinstance(params, dict):
            raise TuningError(f"method {self.method!r}: search_space(trial) must return a dict, got {type(params).__name__}")
        params = _jsonable(dict(params))
        try:
            resolved_params(self.cls, MethodSpec(self.method, params))
        except PlanError as exc:
            raise TuningError(f"search_space of {self.method!r}: {exc}") from None
        params.pop("random_state", None)
        return params

    def _new_method(self, params: dict[str, Any]) -> Any:
        """A new method, fitted per group of properties where its tag or missing references ask
        (as in the runner's workers)."""
        from ctbench.property_groups import wrap

        full = resolved_params(self.cls, MethodSpec(self.method, params))
        extra = {"random_state": self.random_state} if self.has_rs else {}
        return wrap(self.cls, lambda: {**copy.deepcopy(full), **extra}, self.method, self.task.y[self.task.pool_rows])

    def _fitted(self, params: dict[str, Any], split: Any, report: Callable | None) -> Any:
        key = (json.dumps(params, sort_keys=True, default=str), split.index)
        if key in self._fits:
            self._fits.move_to_end(key)
            return self._fits[key]
        method = self._new_method(params)
        method._report_callback = _offset(report, split.index * STEP_STRIDE)
        fitted = method.fit(validation_source(self.task, self.cls, split.pool_rows))
        if fitted is None:
            raise TypeError(f"method {self.method!r}: fit() must return self")
        fitted._report_callback = None
        self._fits[key] = fitted
        while len(self._fits) > self._cache_size:
            self._fits.popitem(last=False)
        return fitted

    def score(self, params: dict[str, Any], report: Callable[[float, int], None] | None = None) -> tuple[float, list[float]]:
        """(mean metric over splits, metric per split) of the parameters."""
        from ctbench.metrics import evaluate

        task = self.task
        values = []
        for split in self.splits:
            m = copy.deepcopy(self._fitted(params, split, report))
            m._report_callback = _offset(report, split.index * STEP_STRIDE + STEP_STRIDE // 2)
            X_heldout = target_spectra(task, self.cls, split.heldout_rows)
            unlabelled = X_heldout if self.cls.tags.transductive else None
            if m.transfer(standards_for(task, split.standard_rows, self.cls), unlabelled) is None:
                raise TypeError(f"method {self.method!r}: transfer() must return self")
            pred = m.predict(X_heldout)
            pred = _check_predictions(pred, split.heldout_rows.size, len(task.properties), self.method)
            values.append(float(evaluate(task.y[split.heldout_rows], pred, task.properties)["mean"][self.metric]))
        return float(np.mean(values)), values


def _offset(report: Callable[[float, int], None] | None, offset: int) -> Callable[[float, int], None] | None:
    if report is None:
        return None

    def cb(value: float, step: int) -> None:
        report(value, offset + int(step))

    return cb


def pruning_reporter(trial: Any) -> Callable[[float, int], None]:
    """The ``_report_callback`` of an iterative method: report to the trial, stop when pruned."""
    import optuna

    def report(value: float, step: int) -> None:
        trial.report(float(value), int(step))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.6g})")

    return report


# --- storage, study, sampler ----------------------------------------------------------------------


def open_storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats (so trials of a dead worker become FAIL)."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = _sqlite_engine_kwargs(url)
    last: Exception | None = None
    for attempt in range(8):  # several processes may create the same fresh database at once
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=GRACE_PERIOD_S,
                )
        except Exception as exc:  # noqa: PERF203
            import sqlalchemy.exc

            last = exc
            transient = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, optuna.exceptions.StorageInternalError)
            # PostgreSQL: another worker created the tables of a fresh database at the same moment
            raced = isinstance(exc, sqlalchemy.exc.ProgrammingError) and "already exists" in str(exc)
            if not (isinstance(exc, transient) or raced):
                break  # a bad URL or a missing driver: retrying will not help
            time.sleep(0.2 * (attempt + 1))
    hint = ""
    if isinstance(last, ImportError) and url.startswith("postgres"):
        hint = " (install the PostgreSQL drivers: pip install 'ctbench[cluster]')"
    raise TuningError(
        f"cannot open the study storage {masked_url(url)}: {type(last).__name__}: {str(last).splitlines()[0] if last else ''}{hint}"
    )


def _sqlite_engine_kwargs(url: str) -> dict[str, Any]:
    """SQLite in WAL mode with synchronous=NORMAL: a commit survives a killed process (it is in
    the operating system's hands), without an fsync per commit; readers never block the writer;
    writers wait up to two minutes for the lock. Several processes of one host can share it."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return {"connect_args": {"timeout": 120}}

    def connect() -> Any:
        import sqlite3

        conn = sqlite3.connect(database, timeout=120, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return {"creator": connect}


def _sampler(seed: int) -> Any:
    import optuna

    class PerTrialSeededTPE(optuna.samplers.BaseSampler):
        """TPE whose random state is reseeded from (seed, trial number) at each trial: a single
        worker is reproducible, a resumed study does not replay its first suggestions, and
        concurrent workers (distinct trial numbers) never draw the same random numbers."""

        def __init__(self) -> None:
            self._inner = optuna.samplers.TPESampler(seed=seed)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._inner = optuna.samplers.TPESampler(seed=stable_seed(seed, "sampler", trial.number))
            self._inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._inner.after_trial(study, trial, state, values)

    return PerTrialSeededTPE()


def _pruner(kind: str) -> Any:
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise TuningError(f"--pruner takes 'median' or 'none', got {kind!r}")


def _counted_states() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def count_trials(study: Any) -> dict[str, int]:
    """Trials per state name (complete, pruned, fail, running, waiting), plus ``counted``."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    out["counted"] = out.get("complete", 0) + out.get("pruned", 0)
    return out


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _process_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] in ("Z", "X"):
        return False  # a killed process not yet reaped
    return start is None or rest[19] == start


def fail_stale_trials(study: Any) -> int:
    """Mark RUNNING trials whose worker is gone as FAIL: workers on this host that no longer
    exist (at once), and any worker whose heartbeat stopped (after the grace period).
    Returns how many this call marked."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    marked = 0
    running = set()
    now = datetime.now()  # Optuna keeps naive local start times
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(A_WORKER) or {}
        # a worker killed between creating the trial and naming itself on it left no heartbeat
        # either (Optuna would wait on it forever): past the grace period it is dead
        orphan = not w and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > GRACE_PERIOD_S
        dead = w.get("host") == host and w.get("pid") is not None and not _process_alive(w["pid"], w.get("start"))
        if orphan or dead:
            try:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                marked += 1
            except Exception:  # another worker marked it first
                pass
        else:
            running.add(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if running:  # heartbeat-stale ones: now FAIL without an error of their own
        marked += sum(
            1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in running and A_ERROR not in t.user_attrs and A_SURPLUS not in t.user_attrs
        )
    return marked


def prepare_study(cfg: TuneConfig, protocol: dict[str, Any]) -> tuple[Any, int]:
    """Create or load the study, check it was made with the same protocol, fail stale trials.

    Returns (study, number of stale trials marked FAIL)."""
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    storage = open_storage(cfg.storage_url())
    name = cfg.study_name()
    study = None
    for attempt in range(5):
        try:
            study = optuna.create_study(
                study_name=name, storage=storage, direction=protocol["direction"], load_if_exists=True,
                sampler=_sampler(cfg.seed), pruner=_pruner(cfg.pruner),
            )
            break
        except Exception as exc:
            if attempt == 4 or "locked" not in str(exc):
                raise
            time.sleep(0.3 * (attempt + 1))
    existing = study.user_attrs.get(A_PROTOCOL)
    if existing is None:
        study.set_user_attr(A_PROTOCOL, protocol)
    else:
        legacy = {"outer": 0, "n_outer": 1}  # studies made before tuning was nested in the outer splits
        for key in ("method", "method_version", "task", "task_version", "outer", "n_outer", "n_shots", "n_splits", "seed",
                    "metric", "heldout_fraction", "split_hashes"):
            if existing.get(key, legacy.get(key)) != protocol.get(key):
                raise TuningError(
                    f"study {name!r} in {masked_url(cfg.storage_url())} was made with {key}={existing.get(key, legacy.get(key))!r}, "
                    f"this request has {protocol.get(key)!r}; use the same options or another --study name"
                )
    return study, fail_stale_trials(study)


# --- a worker ---------------------------------------------------------------------------------------


class _Surplus(Exception):
    """The trial would exceed the study's target: it is closed as FAIL and not counted."""


class _MethodFailed(Exception):
    """The method raised on these parameters: the trial is FAIL, tuning goes on."""


@dataclass
class WorkerResult:
    ran: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    surplus: int = 0
    last_error: str = ""
    trials: list[int] = field(default_factory=list)


def load_task(task: str, data_dir: str | None = None) -> Any:
    """The built task of a name or card path (one task, not a suite: a one-line TuningError)."""
    from ctbench.cards import SuiteCard, load_card
    from ctbench.tasks import build_task

    card = load_card(task)
    if isinstance(card, SuiteCard):
        raise TuningError(f"{task!r} is a suite; tune one task at a time (e.g. {card.tasks[0]!r})")
    return build_task(card, data_dir)


def n_outer_splits(task: str, data_dir: str | None = None) -> int:
    """How many outer splits a task has (each is tuned on its own: ``TuneConfig.outer``)."""
    return load_task(task, data_dir).n_outer


def setup_task(cfg: TuneConfig) -> tuple[Any, Any, Any]:
    """(outer split ``cfg.outer``'s view of the task, method class, objective) for a config, with
    one-line errors for bad requests; sets ``cfg.n_outer``."""
    from ctbench.plugins import get_method

    if cfg.metric not in DIRECTIONS:
        raise TuningError(f"--metric must be one of {', '.join(DIRECTIONS)}, got {cfg.metric!r}")
    info = get_method(cfg.method)
    cls = info.cls
    if not cls.has_search_space():
        raise TuningError(
            f"method {cfg.method!r} has no search space to tune: its class {cls.__name__} does not define "
            f"the classmethod search_space(trial)"
        )
    base = load_task(cfg.task, cfg.data_dir)
    if isinstance(cfg.outer, bool) or not isinstance(cfg.outer, (int, np.integer)) or not 0 <= cfg.outer < base.n_outer:
        raise TuningError(
            f"--outer must be 'all' or an outer split of task {base.name!r} (0..{base.n_outer - 1}), got {cfg.outer!r}"
        )
    cfg.outer, cfg.n_outer = int(cfg.outer), base.n_outer
    why = check_shots(cls, cfg.method, base, cfg.n_shots)
    if why:
        raise TuningError(why)
    task = base.outer(cfg.outer)
    objective = ValidationObjective(task, cls, cfg.method, cfg.n_shots, cfg.reps, cfg.seed, cfg.metric)
    return task, cls, objective


def study_protocol(cfg: TuneConfig, task: Any, cls: Any, objective: ValidationObjective) -> dict[str, Any]:
    return {
        "method": cfg.method,
        "method_version": str(cls.version),
        "task": task.name,
        "task_version": str(task.version),
        "seed": cfg.seed,
        "outer": cfg.outer,
        "n_outer": cfg.n_outer,
        **objective.protocol(),
    }


def run_worker(
    cfg: TuneConfig,
    on_trial: Callable[[Any, Any], None] | None = None,
    prepared: tuple[Any, Any, Any, Any] | None = None,
) -> WorkerResult:
    """Run trials one at a time until the study holds ``cfg.trials`` COMPLETE + PRUNED trials
    (or the timeout passes). Safe to run in several processes / hosts on one storage.

    Trials run with one BLAS / OpenMP / torch thread, as sweeps do: a validation score must
    not depend on the thread variables of the environment (torch's reductions do)."""
    from ctbench.runner import _one_thread

    with _one_thread():
        return _run_worker(cfg, on_trial, prepared)


def _run_worker(cfg: TuneConfig, on_trial: Callable[[Any, Any], None] | None,
                prepared: tuple[Any, Any, Any, Any] | None) -> WorkerResult:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if prepared is None:
        task, cls, objective = setup_task(cfg)
        study, _ = prepare_study(cfg, study_protocol(cfg, task, cls, objective))
    else:
        task, cls, objective, study = prepared
    me = {**_this_process(), "invocation": cfg.invocation, "worker": cfg.worker}
    deadline = time.monotonic() + cfg.timeout if cfg.timeout else None
    result = WorkerResult()
    consecutive = 0
    target = cfg.trials
    alive_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)

    def objective_fn(trial: Any) -> float:
        trial.set_user_attr(A_WORKER, me)
        ahead = sum(1 for t in study.get_trials(deepcopy=False, states=alive_states) if t.number < trial.number)
        if ahead >= target:
            trial.set_user_attr(A_SURPLUS, True)
            raise _Surplus()
        params = objective.params_from(trial)  # a broken search space stops the worker
        trial.set_user_attr(A_PARAMS, params)
        report = pruning_reporter(trial) if cls.tags.iterative else None
        if report is not None and cfg.trial_timeout:
            report = _storage_safe(report)
        try:
            # --trial-timeout: armed here, in the process (main thread) that runs the method
            with time_limit(cfg.trial_timeout, "the trial's method calls"):
                value, per_split = objective.score(params, report)
        except optuna.TrialPruned:
            raise
        except MethodTimeout as exc:
            trial.set_user_attr(A_ERROR, f"timed out: {exc} (--trial-timeout)"[:500])
            raise _MethodFailed() from exc
        except Exception as exc:
            trial.set_user_attr(A_ERROR, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
            raise _MethodFailed() from exc
        trial.set_user_attr(A_SPLITS, per_split)
        if not math.isfinite(value):
            trial.set_user_attr(A_ERROR, f"non-finite {cfg.metric}: {value}")
            raise _MethodFailed()
        return value

    finished: list[Any] = []

    def callback(study_: Any, frozen: Any) -> None:
        finished.append(frozen)

    while True:
        if deadline is not None and time.monotonic() >= deadline:
            break
        counts = count_trials(study)
        if counts["counted"] >= target:
            break
        if counts["counted"] + counts.get("running", 0) >= target:
            # others run the last trials: wait in case one fails, or its worker died
            if fail_stale_trials(study) == 0:
                time.sleep(POLL_S)
            continue
        finished.clear()
        study.optimize(objective_fn, n_trials=1, catch=(_Surplus, _MethodFailed), callbacks=[callback], gc_after_trial=False)
        for frozen in finished:
            if frozen.user_attrs.get(A_SURPLUS):
                result.surplus += 1
                continue
            result.ran += 1
            result.trials.append(frozen.number)
            if frozen.state == TrialState.COMPLETE:
                result.complete += 1
                consecutive = 0
            elif frozen.state == TrialState.PRUNED:
                result.pruned += 1
                consecutive = 0
            else:
                result.failed += 1
                consecutive += 1
                result.last_error = frozen.user_attrs.get(A_ERROR, "failed")
            if on_trial is not None:
                on_trial(study, frozen)
        if consecutive >= cfg.max_failures:
            raise TuningError(
                f"{consecutive} trials in a row failed (last: {result.last_error}); fix the method or its search space"
            )
    return result


def _storage_safe(report: Callable[[float, int], None]) -> Callable[[float, int], None]:
    """A pruning reporter that a trial's time limit never cuts half-way through its write to the
    study's storage (the limit is raised when the write is done)."""

    def safe(value: float, step: int) -> None:
        with defer_timeouts():
            report(value, step)

    return safe


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: a worker process is killed when the tune that started it dies (even by SIGKILL),
    so no orphan keeps running; the next tune marks its unfinished trial failed."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before prctl
        os._exit(1)


def _worker_process(cfg_dict: dict[str, Any], parent_pid: int | None = None) -> None:
    """Entry point of a worker process started by ``tune(jobs > 1)``."""
    import sys

    cfg = TuneConfig(**cfg_dict)
    _die_with_parent(parent_pid)
    try:
        run_worker(cfg)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from ctbench.cli.common import user_errors

        if isinstance(exc, (TuningError, *user_errors())):
            sys.stderr.write(f"error: worker {cfg.worker}: {exc}\n")
            sys.exit(2)
        raise


# --- results --------------------------------------------------------------------------------------


def best_summary(study: Any, cfg: TuneConfig, protocol: dict[str, Any]) -> dict[str, Any]:
    """The tuned-parameters document of a study (what is written under ``tuned/``)."""
    from optuna.trial import TrialState

    import ctbench

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TuningError(f"study {cfg.study_name()!r} has no completed trial yet; nothing to save")
    best = study.best_trial
    counts = count_trials(study)
    return {
        "method": cfg.method,
        "method_version": protocol["method_version"],
        "task": protocol["task"],
        "task_version": protocol["task_version"],
        "n_shots": cfg.n_shots,
        "outer": protocol["outer"],
        "n_outer": protocol["n_outer"],
        "params": best.user_attrs.get(A_PARAMS, best.params),
        "best_value": best.value,
        "metric": cfg.metric,
        "direction": protocol["direction"],
        "best_trial": best.number,
        "study": cfg.study_name(),
        "storage": masked_url(cfg.storage_url()),
        "n_trials": counts["counted"],
        "n_trials_target": cfg.trials,
        "n_complete": counts.get("complete", 0),
        "n_pruned": counts.get("pruned", 0),
        "n_failed": counts.get("fail", 0),
        "validation": {**{k: v for k, v in protocol.items()
                          if k not in ("method", "method_version", "task", "task_version", "outer", "n_outer")},
                       "seed": cfg.seed, "best_split_values": best.user_attrs.get(A_SPLITS)},
        "ctbench": ctbench.__version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_tuned(results_dir: Path | str, summary: dict[str, Any]) -> Path:
    """Write the tuned-parameters JSON atomically; returns its path."""
    outer = summary.get("outer", 0) if summary.get("n_outer", 1) > 1 else None
    path = tuned_path(results_dir, summary["method"], summary["task"], summary["n_shots"], outer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class OuterReps:
    """The repetitions of outer split ``index`` of ``of``: ``rep % of == index`` (a ``rep_filter``
    for :func:`ctbench.runner.plan_runs`)."""

    index: int
    of: int

    def __call__(self, rep: int) -> bool:
        return int(rep) % self.of == self.index


def _read_tuned(path: Path, card: Any, cls: Any, outer: int) -> tuple[dict[str, Any] | None, str | None]:
    """(tuned parameters, None) of a usable tuned file, else (None, why not)."""
    try:
        doc = json.loads(path.read_text())
        if str(doc.get("task_version")) != str(card.version):
            return None, f"{path} was tuned for task version {doc.get('task_version')}, the task is at version {card.version}; re-tune"
        if str(doc.get("method_version")) != str(cls.version):
            return None, f"{path} was tuned for {cls.name} version {doc.get('method_version')}, the method is at version {cls.version}; re-tune"
        if int(doc.get("outer", 0)) != outer:
            return None, f"{path} was tuned on outer split {doc.get('outer')}, not {outer}; re-tune"
        return dict(doc["params"]), None
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{path} is not a tuned-parameters file ({type(exc).__name__}: {exc})"


def tuned_specs(
    methods: list[str],
    tasks: list[str],
    shots: list[int] | None,
    results_dir: Path | str,
    user_params: dict[str, Any] | None = None,
    data_dir: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[tuple[MethodSpec, list[str], list[int], OuterReps]]:
    """Method specs with the tuned parameters of each (method, task, N, outer split), for
    ``run --params tuned``.

    One ``(MethodSpec, [task], [N], OuterReps(k, K))`` per combination: outer split k's
    repetitions use the parameters tuned on split k's pool (``params_source`` ``tuned:<path>``),
    never another split's (whose pool holds split k's test samples). Splits without a usable
    tuned file fall back to default parameters with a warning; when none of a (method, task, N)'s
    K splits has one, a single default spec ``OuterReps(0, 1)`` (every repetition) and a single
    warning stand for them. ``--param`` values given by the user override tuned ones.
    """
    from ctbench.cards import expand_tasks
    from ctbench.plugins import get_method
    from ctbench.tasks import build_task

    if warn is None:
        import typer

        def warn(msg: str) -> None:
            typer.echo(f"warning: {msg}", err=True)

    user_params = dict(user_params or {})
    out: list[tuple[MethodSpec, list[str], list[int], OuterReps]] = []
    expanded = expand_tasks(tasks)
    for method in methods:
        cls = get_method(method).cls
        fallback = MethodSpec(method, dict(user_params), "cli" if user_params else "default")
        for card, _explicit, suite_shots in expanded:
            n_outer = build_task(card, data_dir).n_outer
            grid = shots if shots is not None else list(suite_shots or card.shots)
            for n in grid:
                found: list[tuple[int, MethodSpec | None, str | None]] = []
                for k in range(n_outer):
                    path = tuned_path(results_dir, method, card.name, n, k if n_outer > 1 else None)
                    if not path.is_file():
                        found.append((k, None, None))
                        continue
                    params, problem = _read_tuned(path, card, cls, k)
                    if params is None:
                        found.append((k, None, problem))
                        continue
                    source = f"tuned:{path}"
                    if user_params:
                        params.update(user_params)
                        source += "+cli"
                    found.append((k, MethodSpec(method, params, source), None))
                command = f"ctbench tune --method {method} --task {card.name} --shots {n}"
                if all(spec is None and problem is None for _, spec, problem in found):
                    if n_outer == 1:
                        path = tuned_path(results_dir, method, card.name, n)
                        warn(f"no tuned parameters for {method} on {card.name} N={n} ({path} missing; run `{command}`); "
                             f"using default parameters")
                    else:
                        path = tuned_path(results_dir, method, card.name, n, 0).with_name(f"N{n}-outer{{0..{n_outer - 1}}}.json")
                        warn(f"no tuned parameters for {method} on {card.name} N={n} in any of its {n_outer} outer splits "
                             f"({path} missing; run `{command} --outer all`); using default parameters")
                    out.append((fallback, [card.name], [n], OuterReps(0, 1)))
                    continue
                for k, spec, problem in found:
                    if spec is None:
                        where = f" on the repetitions of outer split {k}" if n_outer > 1 else ""
                        if problem is None:
                            path = tuned_path(results_dir, method, card.name, n, k if n_outer > 1 else None)
                            problem = (f"no tuned parameters for {method} on {card.name} N={n}"
                                       + (f" outer split {k}" if n_outer > 1 else "")
                                       + f" ({path} missing; run `{command}" + (f" --outer {k}" if n_outer > 1 else "") + "`)")
                            where = " on its repetitions" if n_outer > 1 else ""
                        warn(f"{problem}; using default parameters{where}")
                        spec = fallback
                    out.append((spec, [card.name], [n], OuterReps(k, n_outer)))
    return out


# --- MLflow ---------------------------------------------------------------------------------------


def tune_experiment_name(task: str) -> str:
    return f"ctbench-tune/{task}"


class TuneTracker:
    """One MLflow parent run per tune invocation, one nested run per trial it ran.

    Every MLflow error becomes a warning (the study in the RDB storage is the source of truth)
    and turns further logging off.
    """

    def __init__(self, results_dir: Path | str, warn: Callable[[str], None] | None = None, enabled: bool = True):
        self.results_dir = Path(results_dir)
        self.enabled = enabled
        self.warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        self.client = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.logged: set[int] = set()

    def _fail(self, what: str, exc: BaseException) -> None:
        self.warn(f"MLflow {what} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                  f"the study is safe, MLflow logging is off for this run")
        self.enabled = False

    def start(self, cfg: TuneConfig, protocol: dict[str, Any], jobs: int) -> None:
        if not self.enabled:
            return
        try:
            from mlflow.entities import Param

            from ctbench.tracking import experiment_id, open_client, tracking_lock

            # created, migrated or repaired under the results dir's lock (concurrent tune workers
            # and sweeps on a fresh store raced the schema migration)
            self.client, note = open_client(self.results_dir)
            if note:
                self.warn(note)
            name = tune_experiment_name(protocol["task"])
            with tracking_lock(self.results_dir):
                self.experiment_id = experiment_id(self.client, self.results_dir, name)
            self._close_dead_parents(cfg)
            me = _this_process()
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"tune-{cfg.method}-N{cfg.n_shots}" + (f"-outer{cfg.outer}" if cfg.n_outer > 1 else ""),
                tags={"ctbench.study": cfg.study_name(), "ctbench.invocation": cfg.invocation, "ctbench.kind": "tune",
                      "ctbench.host": me["host"], "ctbench.pid": str(me["pid"]), "ctbench.pid_start": str(me["start"])},
            )
            self.parent_id = run.info.run_id
            params = {
                "method": cfg.method, "method_version": protocol["method_version"], "task": protocol["task"],
                "task_version": protocol["task_version"], "n_shots": cfg.n_shots, "reps": cfg.reps, "seed": cfg.seed,
                "metric": cfg.metric, "study": cfg.study_name(), "storage": masked_url(cfg.storage_url()),
                "trials_target": cfg.trials, "jobs": jobs, "pruner": cfg.pruner,
                "outer": cfg.outer, "n_outer": cfg.n_outer,
            }
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        except Exception as exc:
            self._fail("start", exc)

    def _close_dead_parents(self, cfg: TuneConfig) -> None:
        """Mark KILLED the parent runs of this study left RUNNING by a tune of this host that died."""
        study = cfg.study_name().replace("'", "\\'")
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`ctbench.study` = '{study}' and attributes.status = 'RUNNING'",
            max_results=200,
        )
        host = socket.gethostname()
        for run in runs:
            tags = run.data.tags
            if tags.get("ctbench.kind") != "tune" or tags.get("ctbench.host") != host or not tags.get("ctbench.pid"):
                continue
            start = tags.get("ctbench.pid_start")
            if not _process_alive(int(tags["ctbench.pid"]), None if start in (None, "None") else start):
                self.client.set_terminated(run.info.run_id, status="KILLED")

    def log_trial(self, frozen: Any, cfg: TuneConfig) -> None:
        if not self.enabled or self.parent_id is None or frozen.number in self.logged:
            return
        try:
            from mlflow.entities import Metric, Param

            ts = int(time.time() * 1000)
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{frozen.number}",
                tags={
                    "mlflow.parentRunId": self.parent_id,
                    "optuna.trial_number": str(frozen.number),
                    "optuna.state": frozen.state.name,
                    "ctbench.study": cfg.study_name(),
                    **({"ctbench.error": frozen.user_attrs[A_ERROR][:500]} if A_ERROR in frozen.user_attrs else {}),
                },
            )
            params = frozen.user_attrs.get(A_PARAMS) or frozen.params
            metrics = []
            if frozen.value is not None:
                metrics.append(Metric(f"val_{cfg.metric}", float(frozen.value), ts, 0))
            for i, v in enumerate(frozen.user_attrs.get(A_SPLITS) or []):
                metrics.append(Metric(f"val_{cfg.metric}.split{i}", float(v), ts, 0))
            for step, v in sorted(frozen.intermediate_values.items()):
                metrics.append(Metric("intermediate", float(v), ts, int(step)))
            if frozen.duration is not None:
                metrics.append(Metric("duration_s", frozen.duration.total_seconds(), ts, 0))
            self.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)[:500]) for k, v in sorted(params.items())])
            status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(frozen.state.name, "FAILED")
            self.client.set_terminated(run.info.run_id, status=status)
            self.logged.add(frozen.number)
        except Exception as exc:
            self._fail("trial logging", exc)

    def sync(self, study: Any, cfg: TuneConfig) -> None:
        """Log this invocation's finished trials that MLflow does not have yet."""
        if not self.enabled or self.parent_id is None:
            return
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            w = t.user_attrs.get(A_WORKER) or {}
            if w.get("invocation") == cfg.invocation and not t.user_attrs.get(A_SURPLUS) and t.number not in self.logged:
                self.log_trial(t, cfg)

    def finish(self, summary: dict[str, Any] | None, path: Path | None, status: str = "FINISHED") -> None:
        if not self.enabled or self.parent_id is None:
            return
        try:
            from mlflow.entities import Metric, Param

            if summary is not None:
                ts = int(time.time() * 1000)
                metrics = [Metric(f"best_val_{summary['metric']}", float(summary["best_value"]), ts, 0)]
                metrics += [Metric(k, float(summary[k]), ts, 0) for k in ("n_trials", "n_complete", "n_pruned", "n_failed")]
                params = [Param(f"best.{k}", str(v)[:500]) for k, v in sorted(summary["params"].items())]
                self.client.log_batch(self.parent_id, metrics=metrics, params=params)
                if path is not None:
                    self.client.log_artifact(self.parent_id, str(path))
            self.client.set_terminated(self.parent_id, status=status)
        except Exception as exc:
            self._fail("finish", exc)


# --- the whole tune ---------------------------------------------------------------------------------


@dataclass
class TuneOutcome:
    study: str
    storage: str
    existing: int
    stale_failed: int
    target: int
    counts: dict[str, int]
    summary: dict[str, Any] | None
    path: Path | None
    worker_results: list[WorkerResult]
    elapsed_s: float


def tune(
    cfg: TuneConfig,
    jobs: int = 1,
    mlflow: bool = True,
    say: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Any = None,
) -> TuneOutcome:
    """Tune ``cfg.method`` on outer split ``cfg.outer`` of ``cfg.task`` at N = ``cfg.n_shots``
    until the study holds ``cfg.trials`` trials (resuming an existing study), with ``jobs``
    worker processes; save the best parameters (for that outer split's repetitions). ``say``
    prints a line, ``progress`` is an optional :class:`ctbench.progress.Progress` (one per call:
    a bar on a terminal, plain lines otherwise), started here only when there are trials to run."""
    import uuid

    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    if cfg.trials < 1:
        raise TuningError("--trials must be at least 1")
    if cfg.reps < 1:
        raise TuningError("--reps must be at least 1")
    if jobs < 1:
        raise TuningError("--jobs must be at least 1")
    if cfg.timeout is not None and cfg.timeout <= 0:
        raise TuningError("--timeout must be a positive number of seconds")
    if cfg.trial_timeout is not None and cfg.trial_timeout <= 0:
        raise TuningError("--trial-timeout must be a positive number of seconds")
    _pruner(cfg.pruner)
    if not cfg.invocation:
        cfg.invocation = uuid.uuid4().hex[:12]
    task, cls, objective = setup_task(cfg)
    protocol = study_protocol(cfg, task, cls, objective)
    study, stale = prepare_study(cfg, protocol)
    counts = count_trials(study)
    existing = counts["counted"]
    todo = max(0, cfg.trials - existing)
    say(
        f"study {cfg.study_name()!r} in {masked_url(cfg.storage_url())}: {existing} trial(s) already (complete or pruned)"
        + (f", {stale} stale running trial(s) of a dead worker marked failed" if stale else "")
        + (f"; running up to {todo} more to reach {cfg.trials}" + (f" with {jobs} workers" if jobs > 1 else "") if todo
           else f"; the target of {cfg.trials} is reached, nothing to run")
    )
    tracker = TuneTracker(cfg.results_dir, warn=warn, enabled=mlflow and todo > 0)
    tracker.start(cfg, protocol, jobs)
    bar = None
    failed_before = 0
    if progress is not None and todo:
        from optuna.trial import TrialState

        failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        bar = progress.start(total=cfg.trials, completed=existing)

    def refresh() -> None:
        if bar is None:
            return
        from optuna.trial import TrialState

        every = study.get_trials(deepcopy=False)
        counted = _counted_states()
        done = [t for t in every if t.state in counted]
        n_failed = sum(1 for t in every if t.state == TrialState.FAIL)
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        desc = ""
        if complete:
            pick = min if protocol["direction"] == "minimize" else max
            best = pick(complete, key=lambda t: t.value)
            desc = f"best {cfg.metric} {best.value:.4g} (trial {best.number})"
        n_pruned = len(done) - len(complete)
        if n_pruned:
            desc += f" · {n_pruned} pruned"
        progress.update(min(len(done), cfg.trials), failed=max(0, n_failed - failed_before), info=desc)

    results: list[WorkerResult] = []
    status = "FINISHED"
    try:
        if todo and jobs == 1:
            def on_trial(study_: Any, frozen: Any) -> None:
                tracker.log_trial(frozen, cfg)
                refresh()

            results.append(run_worker(cfg, on_trial=on_trial, prepared=(task, cls, objective, study)))
        elif todo:
            results = _run_processes(cfg, jobs, study, tracker, refresh)
        refresh()
    except BaseException:
        status = "KILLED"
        tracker.sync(study, cfg)
        tracker.finish(None, None, status="KILLED")
        raise
    finally:
        if bar is not None:
            progress.stop()
    counts = count_trials(study)
    summary = best_summary(study, cfg, protocol)
    path = save_tuned(cfg.results_dir, summary)
    tracker.sync(study, cfg)
    tracker.finish(summary, path, status=status)
    return TuneOutcome(
        study=cfg.study_name(), storage=masked_url(cfg.storage_url()), existing=existing, stale_failed=stale,
        target=cfg.trials, counts=counts, summary=summary, path=path, worker_results=results,
        elapsed_s=time.perf_counter() - t0,
    )


def _run_processes(cfg: TuneConfig, jobs: int, study: Any, tracker: TuneTracker, refresh: Callable[[], None]) -> list[WorkerResult]:
    """Run ``jobs`` worker processes on the study; the caller's process logs and shows progress."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for k in range(jobs):
        d = asdict(cfg)
        d["worker"] = k
        p = ctx.Process(target=_worker_process, args=(d, os.getpid()), name=f"ctbench-tune-{k}")
        p.start()
        procs.append(p)
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5 / jobs)
            tracker.sync(study, cfg)
            refresh()
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        raise
    bad = [p for p in procs if p.exitcode != 0]
    if bad:
        raise TuningError(
            f"{len(bad)} of {jobs} worker process(es) stopped with an error (exit code {bad[0].exitcode}; see above); "
            f"rerun the same command to resume"
        )
    return []
