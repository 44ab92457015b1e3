"""The conformance kit for method authors: does a TransferMethod keep the contract?

    from ctbench.testing import check_method, assert_conforms

    report = check_method(MyMethod)          # or a registered name: check_method("pds")
    print(report)                            # one line per check, then the counts
    assert report.ok

    def test_my_method():                    # in a plugin's own test suite
        assert_conforms(MyMethod)

Each named check passes, fails with a one-line reason, or is skipped with the reason it does not
apply. API checks hold the method to ``ctbench.method``'s contract; numerical checks run it on
the embedded synthetic task (``synthetic_a_b``, N=10, repetition 0) with exactly the inputs the
runner gives. ``quick=True`` fits once (no determinism check, search space not fitted). Also on
the command line: ``ctbench check METHOD [--quick]`` (METHOD: a registered name, or
``package.module:Class`` for a class that is not installed).

Each check runs under a time budget (``timeout``, default :data:`CHECK_TIMEOUT` seconds; ``ctbench
check --timeout``): a check that overruns fails with one line naming the budget, and the checks
after it go on (those that need another fit of the method are skipped rather than hang again).

In a plugin's own pytest suite, one test per (method, check)::

    from ctbench.testing import parametrize_with_checks

    @parametrize_with_checks([MyMethod], xfail={"deterministic": "GPU kernels are not reproducible"})
    def test_ctbench(method, check):
        check(method)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ctbench.testing.bench import KIT_TASK, MAIN_SHOTS, Bench, Fail, Skip, one_line
from ctbench.testing.checks import CHECKS, Check
from ctbench.testing.report import CheckReport, CheckResult
from ctbench.testing.resolve import MethodImportError, import_method, resolve_method

__all__ = [
    "CHECKS",
    "CHECK_TIMEOUT",
    "Check",
    "CheckReport",
    "CheckResult",
    "ConformanceError",
    "KIT_TASK",
    "MAIN_SHOTS",
    "KitCheck",
    "MethodImportError",
    "assert_conforms",
    "check_method",
    "check_names",
    "import_method",
    "parametrize_with_checks",
    "resolve_method",
]

CHECK_TIMEOUT = 120.0
"""Default time budget of one check, in seconds (``ctbench check --timeout``)."""


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms`; the message is the report."""


def check_names() -> list[str]:
    """Names of every check, in the order they run."""
    return [c.name for c in CHECKS]


def _resolve(cls_or_name: Any) -> type:
    return resolve_method(cls_or_name)[0]


def _selected(checks: Iterable[str] | None) -> list[Check]:
    if checks is None:
        return list(CHECKS)
    wanted = list(checks)
    known = check_names()
    for name in wanted:
        if name not in known:
            from ctbench.names import did_you_mean

            raise ValueError(f"unknown check {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    return [c for c in CHECKS if c.name in wanted]


def _budget(timeout: float | None) -> float | None:
    if timeout is None or timeout <= 0:
        return None
    return float(timeout)


def run_check(chk: Check, bench: Bench, timeout: float | None = CHECK_TIMEOUT) -> CheckResult:
    """One check on a bench, under a time budget of ``timeout`` seconds (None or 0: none)."""
    from ctbench.method import TransferMethod
    from ctbench.timeouts import format_seconds, time_limit

    t0 = time.perf_counter()
    cls = bench.cls
    if chk.name != "declares_contract" and not (isinstance(cls, type) and issubclass(cls, TransferMethod)):
        return CheckResult(chk.name, chk.group, "skipped", "not a TransferMethod subclass (see declares_contract)", 0.0)
    budget = _budget(timeout)
    limit = time_limit(budget, f"check {chk.name!r}")
    bench.stopped_in = None
    try:
        with limit:
            status, detail = "passed", chk.func(bench) or ""
    except Fail as exc:
        status, detail = "failed", str(exc)
    except Skip as exc:
        status, detail = "skipped", str(exc)
    except Exception as exc:  # MethodTimeout included (a limit of the method's own, or ours: see below)
        status, detail = "failed", one_line(exc)
    if limit.expired and budget is not None:
        where = f", stopped in {bench.stopped_in}" if bench.stopped_in else ""
        status = "failed"
        detail = (f"timed out: check {chk.name!r} ran past its {format_seconds(budget)} budget{where} "
                  f"(ctbench check --timeout sets it)")
        bench.overran = f"check {chk.name!r}"
    return CheckResult(chk.name, chk.group, status, detail, time.perf_counter() - t0)


def check_method(
    cls_or_name: Any,
    *,
    quick: bool = False,
    params: dict[str, Any] | None = None,
    checks: Iterable[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    timeout: float | None = CHECK_TIMEOUT,
) -> CheckReport:
    """Run the conformance checks on a method class (or registered name, or ``module:Class``)
    and report each one.

    ``params`` are constructor arguments the kit uses for every instance it fits (e.g. fewer
    epochs for a slow network); ``checks`` selects checks by name; ``on_result`` is called as
    each check finishes; ``timeout`` is each check's time budget in seconds (None or 0: none;
    enforced in the main thread only, see :mod:`ctbench.timeouts`). Unknown names raise
    (``UnknownName`` for methods, MethodImportError for ``module:Class``, ValueError for checks).
    """
    cls = _resolve(cls_or_name)
    selected = _selected(checks)
    bench = Bench(cls, quick=quick, params=params)
    label = getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls))
    report = CheckReport(method=label, quick=quick)
    for chk in selected:
        result = run_check(chk, bench, timeout)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report


def assert_conforms(cls_or_name: Any, *, quick: bool = False, params: dict[str, Any] | None = None,
                    timeout: float | None = CHECK_TIMEOUT) -> CheckReport:
    """pytest helper: run :func:`check_method` and raise ConformanceError (the report) unless ok."""
    report = check_method(cls_or_name, quick=quick, params=params, timeout=timeout)
    if not report.ok:
        failed = "\n".join("  " + r.line() for r in report.failed) or "  (no checks ran)"
        raise ConformanceError(f"method {report.method!r} does not conform: {report.summary()}\n{failed}\n\n{report}")
    return report


# --- pytest: one test per (method, check) --------------------------------------------------


class KitCheck:
    """One named check, bound to the bench of the method it was parametrized with; call it with
    that method (``check(method)``). Benches are shared by the checks of one method, so the
    method is fitted once for all of them. A failed check raises AssertionError (its one-line
    reason), a check that does not apply calls ``pytest.skip``."""

    def __init__(self, chk: Check, shared: _SharedBench, timeout: float | None):
        self.check = chk
        self.name = chk.name
        self._shared = shared
        self.timeout = timeout

    def __call__(self, method: Any = None) -> CheckResult:
        shared = self._shared
        if method is not None and _resolve(method) is not shared.cls:
            shared = _SharedBench(_resolve(method), shared.quick, shared.params)
        result = run_check(self.check, shared.bench, self.timeout)
        if result.status == "failed":
            raise AssertionError(f"{shared.label}: {result.line()}")
        if result.status == "skipped":
            import pytest

            pytest.skip(f"{self.name}: {result.detail}")
        return result

    def __repr__(self) -> str:
        return f"<ctbench check {self.name!r} of {self._shared.label}>"


class _SharedBench:
    def __init__(self, cls: type, quick: bool, params: dict[str, Any] | None):
        self.cls, self.quick, self.params = cls, quick, params
        self.label = getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls))
        self._bench: Bench | None = None

    @property
    def bench(self) -> Bench:
        if self._bench is None:
            self._bench = Bench(self.cls, quick=self.quick, params=self.params)
        return self._bench


def parametrize_with_checks(
    methods: Iterable[Any],
    *,
    select: Iterable[str] | None = None,
    xfail: dict[str, str] | None = None,
    quick: bool = False,
    params: dict[str, Any] | None = None,
    timeout: float | None = CHECK_TIMEOUT,
    strict: bool = True,
) -> Any:
    """A ``pytest.mark.parametrize`` over ``(method, check)``: one test per method and check::

        @parametrize_with_checks([MyMethod], select=["fit_returns_self", "protocol_probe"])
        def test_ctbench(method, check):
            check(method)

    ``methods``: classes, registered names or ``module:Class`` strings. ``select``: run only
    these checks (names as in :func:`check_names`; default all). ``xfail``: check name -> reason
    for checks expected to fail (marked ``pytest.mark.xfail``; with ``strict`` an unexpected pass
    fails, so a fixed check is noticed). ``quick``, ``params`` and ``timeout`` are those of
    :func:`check_method`. Test ids are ``<method>-<check>``.
    """
    import pytest

    selected = _selected(select)
    xfail = dict(xfail or {})
    unknown = sorted(set(xfail) - set(check_names()))
    if unknown:
        from ctbench.names import did_you_mean

        raise ValueError(f"xfail names unknown check {unknown[0]!r}{did_you_mean(unknown[0], check_names())}")
    not_selected = sorted(set(xfail) - {c.name for c in selected})
    if not_selected:
        raise ValueError(f"xfail names check(s) not selected: {', '.join(not_selected)}")
    cases = []
    for m in methods:
        cls = _resolve(m)
        shared = _SharedBench(cls, quick, params)
        for chk in selected:
            marks = [pytest.mark.xfail(reason=xfail[chk.name], strict=strict, raises=AssertionError)] if chk.name in xfail else []
            cases.append(pytest.param(cls, KitCheck(chk, shared, timeout), id=f"{shared.label}-{chk.name}", marks=marks))
    return pytest.mark.parametrize(("method", "check"), cases)
