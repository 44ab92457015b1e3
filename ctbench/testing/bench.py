"""The kit's test bench: the embedded synthetic task, handed to a method the way the runner does.

Inputs come from :func:`ctbench.runner.source_for` / :func:`ctbench.runner.standards_for`
(read-only arrays, target spectra for methods tagged ``uses_target_calibration``, unlabelled
test spectra only for transductive methods), the fitted method is deep-copied before each
transfer, and ``random_state`` is the seed the runner would pass. A *watched* run gives writable
copies instead and records which input a phase modified.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ctbench.method import SourceData, Standards

KIT_TASK = "synthetic_a_b"
"""The task every method is checked on (embedded, needs no files)."""
MAIN_SHOTS = 10
"""Shot count of the main run (raised to the method's min_shots / lowered to its max_shots)."""
KIT_SEED = 0
"""Master seed, as ``ctbench run --seed 0``."""


class Fail(Exception):
    """The check failed; the message is the one-line reason."""


class Skip(Exception):
    """The check does not apply (or cannot run); the message says why."""


def readonly(a: Any) -> np.ndarray:
    out = np.array(a, dtype=float, copy=True)
    out.setflags(write=False)
    return out


def arrays_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # non-numeric (sample ids)
        return bool(np.array_equal(a, b))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def same_predictions(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float round-off (relative 1e-9 of the predictions' scale); NaN equals NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return False
    finite = np.isfinite(a) & np.isfinite(b)
    scale = max(1.0, float(np.max(np.abs(a[finite]))) if finite.any() else 1.0)
    with np.errstate(invalid="ignore"):
        close = finite & (np.abs(a - b) <= 1e-9 * scale)
    return bool(np.all(close | (a == b) | (np.isnan(a) & np.isnan(b))))


def rmsep(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """RMSEP per property (columns)."""
    return np.sqrt(np.mean((np.asarray(y_pred, dtype=float) - y_true) ** 2, axis=0))


@dataclass
class Run:
    """One fit -> deep copy -> transfer -> predict pass of the protocol, and what it left behind."""

    instance: Any = None
    fitted: Any = None
    """The fitted method (never transferred: transfer happened on a deep copy)."""
    method: Any = None
    """The transferred copy that predicted."""
    fit_returned: Any = None
    transfer_returned: Any = None
    pred: Any = None
    error: tuple[str, BaseException] | None = None
    """(phase, exception) of the first phase that raised: init, fit, transfer or predict."""
    mutated: dict[str, str] = field(default_factory=dict)
    """Input name -> the phase after which it was found modified (watched runs only)."""
    reports: list[tuple[float, int]] = field(default_factory=list)
    """report_intermediate calls seen during fit (watched runs only)."""
    timed_out: str | None = None
    """The phase a time limit stopped (the check's budget ran out there)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure(self) -> str:
        phase, exc = self.error  # type: ignore[misc]
        return f"{phase} raised {one_line(exc)}"


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0]}" if msg and msg[0] else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def single_target(cls: Any) -> bool:
    """True for a class tagged ``multi_target=False``: whoever calls it gives it one property at a time."""
    tags = getattr(cls, "tags", None)
    return getattr(tags, "multi_target", True) is False


class Bench:
    """A method class, its parameters for the kit, and the synthetic task's inputs and runs.

    A method tagged ``multi_target=False`` is run one property at a time: its bench sees the task
    restricted to property ``prop`` (0 unless given), and the check ``multi_target`` runs the
    others. ``overran`` names the check (and phase) that ran past its time budget: later protocol
    runs are then skipped instead of hanging again.
    """

    def __init__(self, cls: type, quick: bool = False, params: dict[str, Any] | None = None,
                 prop: int | None = None):
        self.cls = cls
        self.quick = quick
        self.params = dict(params or {})
        self.prop = prop if prop is not None else (0 if single_target(cls) else None)
        self.overran: str | None = None
        self.stopped_in: str | None = None
        """The phase of the last protocol run a time limit stopped."""

    # --- the task and its inputs ---
    @cached_property
    def full_task(self) -> Any:
        """The kit's task with every property (what ``build_task`` returns and caches)."""
        from ctbench.cards import load_card
        from ctbench.tasks import build_task

        return build_task(load_card(KIT_TASK))

    @cached_property
    def task(self) -> Any:
        """The task the method is run on: the full task, or one property of it (``prop``)."""
        task = self.full_task
        if self.prop is None:
            return task
        j = self.prop
        # a view (basic slicing): the same memory as the full task's values
        return dataclasses.replace(task, y=task.y[:, j:j + 1], properties=(task.properties[j],))

    @property
    def tags(self) -> Any:
        return self.cls.tags

    @cached_property
    def n_shots(self) -> int:
        n = max(MAIN_SHOTS, self.tags.min_shots)
        if self.tags.max_shots is not None:
            n = min(n, self.tags.max_shots)
        return min(n, self.task.n_pool_samples)

    def split(self, n: int, rep: int = 0) -> Any:
        from ctbench.splits import make_split

        # repetitions of the kit stay on outer split 0 (the task the kit fits on): rep r is draw r there
        return make_split(self.task, n, rep * self.task.n_outer, KIT_SEED)

    def source(self, writable: bool = False) -> SourceData:
        from ctbench.runner import source_for

        src = source_for(self.task, self.cls)
        if writable:
            src = dataclasses.replace(src, X=np.array(src.X), y=np.array(src.y), axis=np.array(src.axis),
                                      groups=None if src.groups is None else np.array(src.groups))
        return src

    def standards(self, n: int | None = None, rep: int = 0, writable: bool = False) -> Standards:
        from ctbench.runner import standards_for

        std = standards_for(self.task, self.split(self.n_shots if n is None else n, rep).standard_rows, self.cls)
        if writable:
            std = dataclasses.replace(std, X_source=np.array(std.X_source), X_target=np.array(std.X_target),
                                      y=np.array(std.y), axis=np.array(std.axis),
                                      groups=None if std.groups is None else np.array(std.groups))
        return std

    def x_test(self, writable: bool = False) -> np.ndarray:
        from ctbench.runner import target_spectra

        X = target_spectra(self.task, self.cls, self.task.test_rows)
        return np.array(X, dtype=float) if writable else readonly(X)

    def unlabelled(self, writable: bool = False) -> np.ndarray | None:
        """What the runner passes as ``unlabelled``: the test spectra, for transductive methods only."""
        return self.x_test(writable) if self.tags.transductive else None

    @property
    def y_test(self) -> np.ndarray:
        return self.task.y[self.task.test_rows]

    @property
    def y_pool(self) -> np.ndarray:
        return self.task.y[self.task.pool_rows]

    @property
    def n_properties(self) -> int:
        return len(self.task.properties)

    # --- instances ---
    @cached_property
    def random_state(self) -> int:
        from ctbench.splits import stable_seed

        return stable_seed(KIT_SEED, "fit", self.task.name, self.task.version)

    @property
    def has_random_state(self) -> bool:
        return "random_state" in self.cls._param_names()

    def kwargs(self, **extra: Any) -> dict[str, Any]:
        """Constructor arguments: the kit's parameters, ``extra``, and the runner's random_state."""
        kw = {**copy.deepcopy(self.params), **extra}
        if self.has_random_state and "random_state" not in kw:
            kw["random_state"] = self.random_state
        return kw

    def new(self, **extra: Any) -> Any:
        return self.cls(**self.kwargs(**extra))

    # --- protocol runs ---
    def run(self, params: dict[str, Any] | None = None, *, writable: bool = False, n: int | None = None,
            rep: int = 0, watch_reports: bool = False) -> Run:
        """A fresh instance (kit parameters overlaid with ``params``): fit on the source, deep-copy,
        transfer the (n, rep) standards, predict the test spectra."""
        run = Run()
        watched: dict[str, tuple[Any, np.ndarray]] = {}

        def watch(name: str, value: Any) -> None:
            if writable and value is not None:
                watched[name] = (value, np.array(value, copy=True))

        def look(phase: str) -> None:
            for name, (live, snap) in watched.items():
                if name not in run.mutated and not arrays_equal(live, snap):
                    run.mutated[name] = phase

        if self.overran is not None:
            raise Skip(f"not run: {self.overran} ran past its time budget")
        phase = "init"
        try:
            run.instance = self.new(**(params or {}))
            source = self.source(writable)
            for f in ("X", "y", "axis", "groups"):
                watch(f"source.{f}", getattr(source, f))
            if watch_reports:
                run.instance._report_callback = lambda v, s: run.reports.append((v, s))
            phase = "fit"
            try:
                run.fit_returned = run.instance.fit(source)
            finally:
                if watch_reports:
                    vars(run.instance).pop("_report_callback", None)
                look("fit")
            run.fitted = run.instance
            phase = "transfer"
            standards = self.standards(n, rep, writable)
            unlabelled = self.unlabelled(writable)
            for f in ("X_source", "X_target", "y", "axis", "groups"):
                watch(f"standards.{f}", getattr(standards, f))
            watch("unlabelled", unlabelled)
            run.method = copy.deepcopy(run.fitted)
            try:
                run.transfer_returned = run.method.transfer(standards, unlabelled)
            finally:
                look("transfer")
            phase = "predict"
            X = self.x_test(writable)
            watch("X_target (predict)", X)
            try:
                run.pred = run.method.predict(X)
            finally:
                look("predict")
        except Exception as exc:
            run.error = (phase, exc)
            from ctbench.timeouts import MethodTimeout

            if isinstance(exc, MethodTimeout):
                run.timed_out = self.stopped_in = phase
        return run

    @cached_property
    def main(self) -> Run:
        """The runner's protocol exactly (read-only inputs); in quick mode also the watched run."""
        return self.run(writable=self.quick, watch_reports=self.quick and self.tags.iterative)

    @cached_property
    def watched(self) -> Run:
        """A fresh instance given writable copies (full mode: a second, independent fit)."""
        if self.quick:
            return self.main
        return self.run(writable=True, watch_reports=self.tags.iterative)

    def require_main(self) -> Run:
        run = self.main
        if not run.ok:
            raise Skip(f"needs a working fit/transfer/predict ({run.failure()})")
        return run

    def require_predictions(self, finite: bool = True) -> Run:
        """The main run, when it gave (n, k) predictions (and, with ``finite``, no NaN or inf)."""
        run = self.require_main()
        pred = np.asarray(run.pred)
        if pred.ndim == 1 and self.n_properties == 1:
            pred = pred[:, None]
        if pred.shape != (self.task.test_rows.size, self.n_properties):
            raise Skip(f"predictions have shape {pred.shape} (see predict_shape)")
        if finite and not np.isfinite(pred.astype(float)).all():
            raise Skip("predictions are not all finite (see finite_predictions)")
        return run

    def predictions(self, method: Any, X: np.ndarray | None = None) -> np.ndarray:
        """Predictions as the runner accepts them: (n, k), a 1-D vector allowed when k = 1."""
        X = self.x_test() if X is None else X
        pred = np.asarray(method.predict(X), dtype=float)
        if pred.ndim == 1 and self.n_properties == 1:
            pred = pred[:, None]
        return pred

    def transfer_copy(self, n: int, rep: int = 0) -> np.ndarray:
        """Deep-copy the main run's fitted method, transfer (n, rep) standards, predict the test set."""
        m = copy.deepcopy(self.require_main().fitted)
        m.transfer(self.standards(n, rep), self.unlabelled())
        return self.predictions(m)

    # --- baselines ---
    @cached_property
    def mean_rmsep(self) -> np.ndarray:
        """RMSEP per property of predicting the calibration pool's mean for every test sample."""
        return rmsep(self.y_test, np.broadcast_to(self.y_pool.mean(axis=0), self.y_test.shape))

    @cached_property
    def no_transfer_rmsep(self) -> np.ndarray:
        """RMSEP per property of the registered ``no_transfer`` reference (source PLS model)."""
        key = (self.task.name, self.task.version, self.task.card.sha256, self.prop)
        if key not in _NO_TRANSFER:
            _NO_TRANSFER[key] = rmsep(self.y_test, no_transfer_predictions(self))
        return _NO_TRANSFER[key]


_NO_TRANSFER: dict[tuple[str, str, str, int | None], np.ndarray] = {}


def no_transfer_predictions(bench: Bench) -> np.ndarray:
    """The registered ``no_transfer`` method's test predictions, else a default source PLS model's."""
    from ctbench.plugins import load_methods

    info = load_methods().get("no_transfer")
    if info is not None:
        other = Bench(info.cls, prop=bench.prop)
        run = other.main
        if run.ok:
            return other.predictions(run.method)
    from ctbench.pls import PLSCalibration

    task = bench.task
    model = PLSCalibration().fit(task.X_source[task.pool_rows], task.y[task.pool_rows])
    return model.predict(bench.x_test())
