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
the command line: ``ctbench check METHOD [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ctbench.testing.bench import KIT_TASK, MAIN_SHOTS, Bench, Fail, Skip, one_line
from ctbench.testing.checks import CHECKS, Check
from ctbench.testing.report import CheckReport, CheckResult

__all__ = [
    "CHECKS",
    "Check",
    "CheckReport",
    "CheckResult",
    "ConformanceError",
    "KIT_TASK",
    "MAIN_SHOTS",
    "assert_conforms",
    "check_method",
    "check_names",
]


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms`; the message is the report."""


def check_names() -> list[str]:
    """Names of every check, in the order they run."""
    return [c.name for c in CHECKS]


def _resolve(cls_or_name: Any) -> type:
    if isinstance(cls_or_name, str):
        from ctbench.plugins import get_method

        return get_method(cls_or_name).cls
    cls = getattr(cls_or_name, "cls", cls_or_name)  # a MethodInfo
    if not isinstance(cls, type):
        raise TypeError(f"check_method takes a method class or a registered method name, got {cls_or_name!r}")
    return cls


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


def check_method(
    cls_or_name: Any,
    *,
    quick: bool = False,
    params: dict[str, Any] | None = None,
    checks: Iterable[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> CheckReport:
    """Run the conformance checks on a method class (or registered name) and report each one.

    ``params`` are constructor arguments the kit uses for every instance it fits (e.g. fewer
    epochs for a slow network); ``checks`` selects checks by name; ``on_result`` is called as
    each check finishes. Unknown names raise (``UnknownName`` for methods, ValueError for checks).
    """
    cls = _resolve(cls_or_name)
    selected = _selected(checks)
    bench = Bench(cls, quick=quick, params=params)
    label = getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls))
    report = CheckReport(method=label, quick=quick)
    from ctbench.method import TransferMethod

    not_a_method = not (isinstance(cls, type) and issubclass(cls, TransferMethod))
    for chk in selected:
        t0 = time.perf_counter()
        if not_a_method and chk.name != "declares_contract":
            status, detail = "skipped", "not a TransferMethod subclass (see declares_contract)"
        else:
            try:
                status, detail = "passed", chk.func(bench) or ""
            except Fail as exc:
                status, detail = "failed", str(exc)
            except Skip as exc:
                status, detail = "skipped", str(exc)
            except Exception as exc:
                status, detail = "failed", one_line(exc)
        result = CheckResult(chk.name, chk.group, status, detail, time.perf_counter() - t0)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report


def assert_conforms(cls_or_name: Any, *, quick: bool = False, params: dict[str, Any] | None = None) -> CheckReport:
    """pytest helper: run :func:`check_method` and raise ConformanceError (the report) unless ok."""
    report = check_method(cls_or_name, quick=quick, params=params)
    if not report.ok:
        failed = "\n".join("  " + r.line() for r in report.failed) or "  (no checks ran)"
        raise ConformanceError(f"method {report.method!r} does not conform: {report.summary()}\n{failed}\n\n{report}")
    return report
