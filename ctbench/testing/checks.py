"""The named conformance checks. Each returns a detail line (passed), or raises Fail / Skip.

API checks hold a method to the contract of ``ctbench.method`` (scikit-learn shaped parameters,
fit/transfer return self, (n, k) predictions, read-only inputs left alone, pickling, deep
copies, seeding, search space, tags, one property at a time for multi_target=False); the
protocol probe (:mod:`ctbench.testing.probe`) changes what a method must never see after fit
and requires unchanged predictions; numerical checks run it on the synthetic task with the
runner's protocol and ask for sane results.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ctbench.method import Tags, TransferMethod
from ctbench.testing.bench import Bench, Fail, Skip, max_abs_diff, one_line, rmsep, same_predictions, single_target

REFERENCE_NAMES = ("no_transfer", "target_only", "full_recalibration")


@dataclass(frozen=True)
class Check:
    name: str
    group: str
    doc: str
    func: Callable[[Bench], str | None]


CHECKS: list[Check] = []


def check(name: str, group: str = "api") -> Callable[[Callable[[Bench], str | None]], Callable[[Bench], str | None]]:
    def register(func: Callable[[Bench], str | None]) -> Callable[[Bench], str | None]:
        doc = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        CHECKS.append(Check(name, group, doc, func))
        return func

    return register


# --- helpers ---------------------------------------------------------------------------


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _params_equal(p: dict[str, Any], q: dict[str, Any]) -> list[str]:
    """Names whose values differ between two get_params() dicts."""
    return sorted(k for k in set(p) | set(q) if k not in p or k not in q or not _same_value(p[k], q[k]))


def _fitted_attributes(obj: Any) -> list[str]:
    return sorted(k for k in getattr(obj, "__dict__", {}) if k.endswith("_") and not k.startswith("__"))


def _shape_and_finite(b: Bench, pred: Any, n: int, what: str, finite: bool = True) -> None:
    pred = np.asarray(pred)
    if pred.ndim == 1 and b.n_properties == 1:
        pred = pred[:, None]
    want = (n, b.n_properties)
    if pred.shape != want:
        raise Fail(f"{what}: predict returned shape {pred.shape}, expected {want}")
    if not np.issubdtype(pred.dtype, np.number) or np.iscomplexobj(pred):
        raise Fail(f"{what}: predict returned dtype {pred.dtype}, expected real numbers")
    if finite and not np.isfinite(pred.astype(float)).all():
        raise Fail(f"{what}: {int((~np.isfinite(pred.astype(float))).sum())} predictions are NaN or inf")


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(TransferMethod, name, None)


def _fmt(values: np.ndarray, props: tuple[str, ...]) -> str:
    return ", ".join(f"{p} {v:.4g}" for p, v in zip(props, values))


# --- API checks ------------------------------------------------------------------------


@check("declares_contract")
def declares_contract(b: Bench) -> str:
    """A TransferMethod subclass with a usable name, a version, Tags, and fit/transfer/predict."""
    cls = b.cls
    if not (isinstance(cls, type) and issubclass(cls, TransferMethod)):
        raise Fail(f"{cls!r} is not a subclass of ctbench.method.TransferMethod")
    problems = []
    if not isinstance(cls.name, str) or not cls.name:
        problems.append("class attribute `name` is empty")
    elif re.search(r"[\s,\[\]=]", cls.name):
        problems.append(f"name {cls.name!r} contains whitespace or one of , [ ] = (the CLI cannot address it)")
    if not isinstance(cls.version, str) or not cls.version:
        problems.append("class attribute `version` must be a non-empty string")
    if not isinstance(cls.tags, Tags):
        problems.append(f"`tags` must be a ctbench.method.Tags, got {type(cls.tags).__name__}")
    for meth, args in (("fit", 1), ("transfer", 2), ("predict", 1)):
        if not _overrides(cls, meth):
            problems.append(f"does not implement {meth}()")
            continue
        try:
            inspect.signature(getattr(cls, meth)).bind(None, *([None] * args))
        except TypeError:
            call = {"fit": "fit(source)", "transfer": "transfer(standards, unlabelled=None)", "predict": "predict(X_target)"}
            problems.append(f"{meth} cannot be called as {call[meth]}")
    if cls.__init__ is object.__init__:
        problems.append("define __init__ (its keyword arguments are the parameters; `def __init__(self): pass` if none)")
    else:
        try:
            cls._param_names()
        except TypeError as exc:
            problems.append(str(exc))
    if problems:
        raise Fail("; ".join(problems))
    return f"{cls.__module__}.{cls.__qualname__}: name {cls.name!r}, version {cls.version!r}"


@check("init_stores_params")
def init_stores_params(b: Bench) -> str:
    """__init__ only stores its parameters: cls() sets exactly them, unchanged, and nothing fitted."""
    cls = b.cls
    names = cls._param_names()
    defaults = cls.default_params()
    missing = [n for n in names if n not in defaults]
    if missing:
        raise Fail(f"parameter(s) without a default: {', '.join(missing)} (cls() must work)")
    try:
        obj = cls()
    except Exception as exc:
        raise Fail(f"{cls.__name__}() raised {one_line(exc)}") from exc
    attrs = set(getattr(obj, "__dict__", {}))
    problems = []
    fitted = _fitted_attributes(obj)
    if fitted:
        problems.append(f"__init__ sets fitted attribute(s) {', '.join(fitted)} (only fit/transfer may)")
    extra = sorted(attrs - set(names) - set(fitted))
    if extra:
        problems.append(f"__init__ sets attribute(s) that are not parameters: {', '.join(extra)}")
    absent = [n for n in names if not hasattr(obj, n)]
    if absent:
        problems.append(f"parameter(s) not stored as attributes: {', '.join(absent)}")
    changed = [n for n in names if hasattr(obj, n) and not _same_value(getattr(obj, n), defaults[n])]
    if changed:
        problems.append(f"__init__ changes parameter value(s) {', '.join(changed)} (store them as given; validate in fit)")
    if not problems and b.params:
        given = cls(**copy.deepcopy(b.params))
        changed = [k for k, v in b.params.items() if not _same_value(getattr(given, k, None), v)]
        if changed:
            problems.append(f"__init__ changes the given value(s) of {', '.join(changed)}")
    if problems:
        raise Fail("; ".join(problems))
    return f"{len(names)} parameter(s) stored unchanged"


@check("get_params_roundtrip")
def get_params_roundtrip(b: Bench) -> str:
    """get_params lists every parameter; cls(**get_params()) and set_params reproduce them."""
    cls = b.cls
    names = set(cls._param_names())
    obj = b.new()
    p = obj.get_params()
    if set(p) != names:
        raise Fail(f"get_params keys {sorted(p)} differ from the __init__ parameters {sorted(names)}")
    diff = _params_equal(p, cls(**copy.deepcopy(p)).get_params())
    if diff:
        raise Fail(f"cls(**get_params()).get_params() differs in {', '.join(diff)}")
    if obj.set_params(**copy.deepcopy(p)) is not obj:
        raise Fail("set_params must return self")
    diff = _params_equal(p, obj.get_params())
    if diff:
        raise Fail(f"set_params(**get_params()) changed {', '.join(diff)}")
    sentinels = {k: object() for k in names}
    fresh = b.new()
    try:
        fresh.set_params(**sentinels)
    except Exception as exc:
        raise Fail(f"set_params validates or converts values ({one_line(exc)}); store them and validate in fit") from exc
    lost = sorted(k for k, v in fresh.get_params().items() if v is not sentinels[k])
    if lost:
        raise Fail(f"set_params did not store the given value of {', '.join(lost)}")
    return f"{len(names)} parameter(s)"


@check("set_params_rejects_unknown")
def set_params_rejects_unknown(b: Bench) -> str:
    """set_params raises on a name that is not a parameter."""
    obj = b.new()
    bogus = "not_a_parameter_of_this_method"
    try:
        obj.set_params(**{bogus: 1})
    except (ValueError, TypeError, KeyError) as exc:
        return f"raises {type(exc).__name__}"
    raise Fail(f"set_params({bogus}=1) was accepted; unknown names must raise ValueError")


@check("fit_returns_self")
def fit_returns_self(b: Bench) -> str:
    """fit(source) works on the synthetic task and returns self."""
    run = b.main
    if run.error and run.error[0] in ("init", "fit"):
        raise Fail(run.failure())
    if run.fit_returned is not run.instance:
        got = "None" if run.fit_returned is None else type(run.fit_returned).__name__
        raise Fail(f"fit returned {got}, not self")
    return f"source calibration of {b.source().X.shape[0]} spectra"


@check("transfer_returns_self")
def transfer_returns_self(b: Bench) -> str:
    """transfer(standards, unlabelled) works and returns self."""
    run = b.main
    if run.error and run.error[0] in ("init", "fit"):
        raise Skip(f"fit failed ({run.failure()})")
    if run.error and run.error[0] == "transfer":
        raise Fail(f"N={b.n_shots}: {run.failure()}")
    if run.transfer_returned is not run.method:
        got = "None" if run.transfer_returned is None else type(run.transfer_returned).__name__
        raise Fail(f"transfer returned {got}, not self")
    return f"N={b.n_shots} standards" + (", with unlabelled test spectra" if b.tags.transductive else "")


@check("predict_shape")
def predict_shape(b: Bench) -> str:
    """predict returns (n, k) real numbers, also for a single spectrum (finiteness: finite_predictions)."""
    run = b.main
    if run.error and run.error[0] != "predict":
        raise Skip(f"earlier phase failed ({run.failure()})")
    if run.error:
        raise Fail(run.failure())
    n = b.task.test_rows.size
    _shape_and_finite(b, run.pred, n, f"{n} test spectra", finite=False)
    try:
        one = run.method.predict(b.x_test()[:1])
    except Exception as exc:
        raise Fail(f"predict of a single spectrum (1, p) raised {one_line(exc)}") from exc
    _shape_and_finite(b, one, 1, "one spectrum", finite=False)
    return f"({n}, {b.n_properties}) and (1, {b.n_properties})"


@check("clone_unfitted")
def clone_unfitted(b: Bench) -> str:
    """clone() of a fitted method: a new unfitted instance of the same class with equal parameters."""
    m = b.require_main().method
    c = m.clone()
    if c is m or type(c) is not type(m):
        raise Fail(f"clone returned {'the same object' if c is m else type(c).__name__}")
    diff = _params_equal(m.get_params(), c.get_params())
    if diff:
        raise Fail(f"clone has different parameter(s): {', '.join(diff)}")
    fitted = _fitted_attributes(c)
    if fitted:
        raise Fail(f"clone carries fitted attribute(s) {', '.join(fitted)}")
    return "unfitted, equal parameters"


@check("inputs_not_mutated")
def inputs_not_mutated(b: Bench) -> str:
    """fit/transfer/predict leave their (writable) input arrays unchanged."""
    run = b.watched
    if run.mutated:
        raise Fail("; ".join(f"{phase} modified {name}" for name, phase in run.mutated.items()))
    if not run.ok:
        raise Skip(f"the run with writable inputs failed ({run.failure()})")
    return "source, standards" + (", unlabelled" if b.tags.transductive else "") + " and predict input unchanged"


def _probe_pass(task: Any, fitted: Any, standards: Any, unlabelled: Any, X: np.ndarray, b: Bench) -> np.ndarray:
    """transfer + predict from a deep copy of the fitted state. ``task``, the Task the inputs come
    from, is a local of this frame (as it was in the in-process runner), so a method that walks
    the stack looking for one finds it, with its hidden values changed."""
    method = copy.deepcopy(fitted)
    method.transfer(standards, unlabelled)
    return b.predictions(method, X)


@check("protocol_probe", "protocol")
def protocol_probe(b: Bench) -> str:
    """Hidden values (test values, the pool's target spectra but the standards') changed after fit leave predictions unchanged."""
    from ctbench.testing.bench import arrays_equal
    from ctbench.testing.probe import hidden_values_changed

    run = b.require_main()
    task = b.task
    rows = b.split(b.n_shots, 0).standard_rows
    standards, unlabelled, X = b.standards(), b.unlabelled(), b.x_test()

    def again() -> np.ndarray:
        try:
            return _probe_pass(task, run.fitted, standards, unlabelled, X, b)
        except Exception as exc:
            raise Fail(f"transfer/predict from the fitted state raised {one_line(exc)}") from exc

    before = again()
    with hidden_values_changed(task, rows, also=(b.full_task,)) as changed:
        try:
            probed = _probe_pass(task, run.fitted, standards, unlabelled, X, b)
        except Exception as exc:
            raise Fail(
                f"transfer/predict raised {one_line(exc)} once hidden values were changed: the method reads them"
            ) from exc
    what = (f"{changed.test_values} test values and {changed.pool_spectra} pool target spectra "
            f"(not the {len(rows)} standards') changed in {changed.tasks} task cop{'y' if changed.tasks == 1 else 'ies'}")
    if changed.unreachable:
        what += f"; could not change {', '.join(changed.unreachable)}"
    if arrays_equal(before, probed):
        return f"predictions bit-identical after {what}"
    noise = again()  # unchanged inputs again: is the method simply not reproducible?
    if arrays_equal(before, noise):
        raise Fail(
            f"predictions changed (max |diff| {max_abs_diff(before, probed):.3g}) when hidden values were changed "
            "after fit: the method reads test values or pool target spectra it is not given"
        )
    jitter = max_abs_diff(before, noise)
    moved = max_abs_diff(before, probed)
    if moved > 10 * jitter + 1e-12:
        raise Fail(
            f"predictions moved by {moved:.3g} when hidden values were changed after fit, {moved / jitter:.0f}x its "
            f"run-to-run variation ({jitter:.3g}): the method reads test values or pool target spectra it is not given"
        )
    return (f"predictions within run-to-run variation ({moved:.3g} vs {jitter:.3g}; transfer is not bit-reproducible) "
            f"after {what}")


@check("multi_target")
def multi_target(b: Bench) -> str:
    """multi_target=False: run one property at a time, each works; multi_target=True: one property (k=1) works too."""
    b.require_main()
    if not single_target(b.cls):
        if b.quick:
            raise Skip("quick mode (needs a fit on one property); tagged multi_target")
        one = Bench(b.cls, quick=b.quick, params=b.params, prop=0)
        one.overran = b.overran
        run = one.main
        if not run.ok:
            raise Fail(f"tagged multi_target but fails on a task with one property: {run.failure()}")
        try:
            _shape_and_finite(one, run.pred, one.task.test_rows.size, f"{one.task.properties[0]} alone")
        except Fail as exc:
            raise Fail(f"tagged multi_target but fails on a task with one property: {exc}") from None
        return f"{b.n_properties} properties at once, and one ({one.task.properties[0]}) alone"
    names = b.full_task.properties
    errors = []
    parts = []
    for j, prop in enumerate(names):
        sub = b if j == b.prop else Bench(b.cls, quick=b.quick, params=b.params, prop=j)
        sub.overran = b.overran
        run = sub.main
        if not run.ok:
            errors.append(f"property {prop!r} alone: {run.failure()}")
            continue
        try:
            _shape_and_finite(sub, run.pred, sub.task.test_rows.size, f"property {prop!r} alone")
        except Fail as exc:
            errors.append(str(exc))
            continue
        parts.append(f"{prop} {rmsep(sub.y_test, sub.predictions(run.method))[0]:.4g}")
    if errors:
        raise Fail("; ".join(errors))
    return f"{len(names)} properties, one at a time: RMSEP {', '.join(parts)}"


@check("pickle_roundtrip")
def pickle_roundtrip(b: Bench) -> str:
    """A fitted and transferred method pickles, and the copy predicts identically."""
    run = b.require_main()
    try:
        blob = pickle.dumps(run.method)
        back = pickle.loads(blob)
    except Exception as exc:
        raise Fail(f"pickling the transferred method raised {one_line(exc)}") from exc
    pred = b.predictions(back)
    if not same_predictions(run.pred, pred):
        raise Fail(f"the unpickled method predicts differently (max |diff| {max_abs_diff(run.pred, pred):.3g})")
    return f"{len(blob) / 1024:.0f} KiB"


@check("deepcopy_isolation")
def deepcopy_isolation(b: Bench) -> str:
    """Transferring a deep copy of the fitted method never affects the original or other copies."""
    run = b.require_main()
    try:
        other = copy.deepcopy(run.fitted)
        other.transfer(b.standards(b.n_shots, rep=1), b.unlabelled())
        b.predictions(other)
    except Exception as exc:
        raise Fail(f"deep copy of the fitted method, transferred with other standards (rep 1): {one_line(exc)}") from exc
    first = b.predictions(run.method)
    if not same_predictions(run.pred, first):
        raise Fail(
            f"a transferred copy changed its predictions (max |diff| {max_abs_diff(run.pred, first):.3g}) "
            "when another copy of the fitted method was transferred: copies share state"
        )
    again = b.transfer_copy(b.n_shots, 0)
    if not same_predictions(run.pred, again):
        raise Fail(
            "a new copy transferred with the same standards predicts differently "
            f"(max |diff| {max_abs_diff(run.pred, again):.3g}): transferring copies changed the fitted original, "
            "or transfer is not deterministic"
        )
    return "3 copies transferred independently"


@check("deterministic")
def deterministic(b: Bench) -> str:
    """Two fresh instances with the same random_state give identical predictions."""
    if b.quick:
        raise Skip("quick mode (needs a second fit)")
    run = b.require_main()
    second = b.watched
    if not second.ok:
        raise Fail(f"a second fresh instance failed: {second.failure()}")
    if not same_predictions(np.asarray(run.pred, dtype=float), np.asarray(second.pred, dtype=float)):
        raise Fail(
            f"two fits with random_state={b.kwargs().get('random_state')} predict differently "
            f"(max |diff| {max_abs_diff(run.pred, second.pred):.3g})"
        )
    return f"random_state={b.kwargs()['random_state']}" if b.has_random_state else "no random_state parameter; deterministic"


@check("search_space")
def search_space(b: Bench) -> str:
    """search_space(trial) suggests parameters the class accepts, and one set fits/transfers/predicts."""
    cls = b.cls
    if not cls.has_search_space():
        raise Skip("no search_space(trial) defined (the method is not tunable)")
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        names = set(cls._param_names())
        n_trials = 2 if b.quick else 3
        worked: int | None = None
        errors: list[str] = []
        for i in range(n_trials):
            trial = study.ask()
            params = cls.search_space(trial)
            if not isinstance(params, dict):
                raise Fail(f"search_space returned {type(params).__name__}, expected a dict of parameters")
            unknown = sorted(set(params) - names)
            if unknown:
                raise Fail(f"search_space suggests unknown parameter(s) {', '.join(unknown)}")
            try:
                cls(**copy.deepcopy(params))
            except Exception as exc:
                raise Fail(f"cls(**{params}) raised {one_line(exc)}") from exc
            try:
                b.new().set_params(**copy.deepcopy(params))
            except Exception as exc:
                raise Fail(f"set_params(**{params}) raised {one_line(exc)}") from exc
            if b.quick or worked is not None:
                continue
            run = b.run(params)
            if run.ok:  # shapes and values are predict_shape's and finite_predictions' business
                worked = i
            else:
                errors.append(f"trial {i} {params}: {run.failure()}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    if b.quick:
        return f"{n_trials} trial(s): parameters accepted (quick mode: not fitted)"
    if worked is None:
        raise Fail(f"none of {n_trials} suggested parameter sets worked; first: {errors[0]}")
    return f"{n_trials} trial(s) accepted; trial {worked} fitted, transferred and predicted"


@check("tags_consistent")
def tags_consistent(b: Bench) -> str:
    """The tags agree with each other and with what the class implements."""
    t = b.tags
    problems = []
    if t.min_shots < 0:
        problems.append(f"min_shots={t.min_shots} is negative")
    if t.min_shots == 0 and not t.zero_shot:
        problems.append("min_shots=0 but zero_shot=False (the runner refuses N=0): set zero_shot=True or min_shots>=1")
    if t.max_shots is not None and t.max_shots < max(t.min_shots, 1):
        problems.append(f"max_shots={t.max_shots} is below min_shots={t.min_shots}")
    if t.corrects_spectra and not _overrides(b.cls, "transform_target"):
        problems.append("tagged corrects_spectra but does not implement transform_target")
    if t.uses_target_calibration and not t.reference:
        problems.append("uses_target_calibration (privileged target spectra of the pool) is for reference rows only")
    if t.iterative and not callable(getattr(b.cls, "report_intermediate", None)):
        problems.append("tagged iterative but has no report_intermediate")
    if problems:
        raise Fail("; ".join(problems))
    on = [k for k in ("zero_shot", "transductive", "multi_target", "corrects_spectra", "reference", "iterative") if getattr(t, k)]
    return f"min_shots={t.min_shots}" + (f", max_shots={t.max_shots}" if t.max_shots is not None else "") + (
        f"; {', '.join(on)}" if on else "")


@check("zero_shot")
def zero_shot(b: Bench) -> str:
    """Methods tagged zero_shot transfer with N = 0 standards."""
    if not b.tags.zero_shot:
        raise Skip("not tagged zero_shot")
    b.require_predictions()
    try:
        pred = b.transfer_copy(0)
    except Exception as exc:
        raise Fail(f"transfer with 0 standards raised {one_line(exc)}") from exc
    _shape_and_finite(b, pred, b.task.test_rows.size, "N=0")
    return "N=0 works"


@check("min_shots")
def min_shots(b: Bench) -> str:
    """The method works with its declared minimum number of standards."""
    n = max(b.tags.min_shots, 1)
    if n > b.task.n_pool_samples:
        raise Fail(f"min_shots={n} exceeds the synthetic task's pool of {b.task.n_pool_samples} samples")
    if b.tags.max_shots is not None and n > b.tags.max_shots:
        raise Skip("min_shots above max_shots (see tags_consistent)")
    b.require_predictions()
    try:
        pred = b.transfer_copy(n)
    except Exception as exc:
        raise Fail(f"transfer with N={n} (min_shots) raised {one_line(exc)}") from exc
    _shape_and_finite(b, pred, b.task.test_rows.size, f"N={n}")
    return f"N={n} works"


@check("transductive")
def transductive(b: Bench) -> str:
    """Methods tagged transductive transfer with the unlabelled test spectra given."""
    if not b.tags.transductive:
        raise Skip("not tagged transductive (the runner passes unlabelled=None)")
    b.require_main()
    n = b.x_test().shape[0]
    return f"transfer received the {n} unlabelled test spectra (read-only) and worked"


@check("reports_intermediate")
def reports_intermediate(b: Bench) -> str:
    """Methods tagged iterative call report_intermediate(value, step) during fit."""
    if not b.tags.iterative:
        raise Skip("not tagged iterative")
    run = b.watched
    if not run.ok:
        raise Skip(f"the watched run failed ({run.failure()})")
    if not run.reports:
        raise Fail("tagged iterative but fit never called report_intermediate(value, step)")
    bad = [v for v, _ in run.reports if not np.isfinite(v)]
    if bad:
        raise Fail(f"{len(bad)} of {len(run.reports)} reported values are NaN or inf")
    return f"{len(run.reports)} report(s) during fit"


@check("transform_target")
def transform_target(b: Bench) -> str:
    """Methods tagged corrects_spectra map target spectra to finite spectra of the same shape."""
    if not b.tags.corrects_spectra:
        raise Skip("not tagged corrects_spectra")
    if not _overrides(b.cls, "transform_target"):
        raise Skip("not implemented (see tags_consistent)")
    run = b.require_main()
    X = b.x_test()
    try:
        Z = np.asarray(run.method.transform_target(X), dtype=float)
    except Exception as exc:
        raise Fail(f"transform_target raised {one_line(exc)}") from exc
    if Z.shape != X.shape:
        raise Fail(f"transform_target returned shape {Z.shape} for input {X.shape}")
    if not np.isfinite(Z).all():
        raise Fail("transform_target returned NaN or inf")
    Xs = b.task.X_source[b.task.test_rows]
    before = float(np.sqrt(np.mean((X - Xs) ** 2)))
    after = float(np.sqrt(np.mean((Z - Xs) ** 2)))
    return f"shape {Z.shape}; RMS distance to the source spectra {before:.3g} -> {after:.3g}"


# --- numerical checks on the synthetic task --------------------------------------------


@check("finite_predictions", "numerical")
def finite_predictions(b: Bench) -> str:
    """Predictions on the synthetic task (runner protocol, N=10, rep 0) are finite."""
    run = b.require_predictions(finite=False)
    pred = np.asarray(run.pred, dtype=float)
    if not np.isfinite(pred).all():
        raise Fail(f"{int((~np.isfinite(pred)).sum())} of {pred.size} predictions are NaN or inf")
    return f"{pred.shape[0]} x {pred.shape[1] if pred.ndim > 1 else 1} predictions"


def _ratios(b: Bench, err: np.ndarray) -> str:
    return (
        f"RMSEP {_fmt(err, b.task.properties)}; vs calibration mean x{np.mean(err / b.mean_rmsep):.2f}; "
        f"vs no_transfer x{np.mean(err / b.no_transfer_rmsep):.2f}"
    )


@check("beats_calibration_mean", "numerical")
def beats_calibration_mean(b: Bench) -> str:
    """At N=10, RMSEP is below that of predicting the calibration mean, for every property."""
    if b.tags.reference:
        raise Skip("reference row (see reference_property)")
    run = b.require_predictions()
    err = rmsep(b.y_test, b.predictions(run.method))
    worse = [p for p, e, m in zip(b.task.properties, err, b.mean_rmsep) if not e < m]
    if worse:
        raise Fail(f"no better than predicting the calibration mean for {', '.join(worse)}: {_ratios(b, err)}")
    return f"N={b.n_shots}: {_ratios(b, err)}"


@check("reference_property", "numerical")
def reference_property(b: Bench) -> str:
    """Reference rows keep their definition (no_transfer = source model; full_recalibration beats it; ...)."""
    if not b.tags.reference:
        raise Skip("not a reference row")
    name = b.cls.name
    if name not in REFERENCE_NAMES:
        raise Skip(f"no defining property known for reference row {name!r}")
    run = b.require_predictions()
    pred = b.predictions(run.method)
    err = rmsep(b.y_test, pred)
    if name == "no_transfer":
        from ctbench.pls import PLSCalibration

        params = run.method.get_params()
        pls = PLSCalibration(**{k: params[k] for k in ("max_components", "cv", "random_state") if k in params})
        src = b.source()
        expected = pls.fit(src.X, src.y).predict(b.x_test())
        if not same_predictions(expected, pred):
            raise Fail(f"predictions differ from the source PLS model's (max |diff| {max_abs_diff(expected, pred):.3g})")
        other = b.transfer_copy(b.n_shots, rep=1)
        if not same_predictions(pred, other):
            raise Fail("predictions depend on the standards; no_transfer must ignore them")
        return f"equals the source PLS model; RMSEP {_fmt(err, b.task.properties)}"
    if name == "full_recalibration":
        worse = [p for p, e, m in zip(b.task.properties, err, b.no_transfer_rmsep) if not e < m]
        if worse:
            raise Fail(f"not better than no_transfer for {', '.join(worse)}: {_ratios(b, err)}")
        if not b.tags.uses_target_calibration:
            raise Fail("full_recalibration must be tagged uses_target_calibration")
        return _ratios(b, err)
    # target_only: a model of the standards alone, whatever the source calibration was
    src = b.source()
    import dataclasses

    shuffled = dataclasses.replace(src, X=src.X[::-1] * 2.0 + 1.0, y=src.y[::-1] + 1.0)
    m = b.new().fit(shuffled)
    m.transfer(b.standards(), b.unlabelled())
    if not same_predictions(pred, b.predictions(m)):
        raise Fail("predictions change with the source calibration; target_only must use the standards only")
    return f"independent of the source calibration; {_ratios(b, err)}"
