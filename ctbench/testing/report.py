"""The outcome of a conformance run: one result per named check, and the counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    """One check: ``passed``, ``failed`` (detail = the one-line reason) or ``skipped`` (detail = why)."""

    name: str
    group: str
    status: Status
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[self.status]
        return f"{mark}  {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class CheckReport:
    """Every check run on one method. ``ok`` is True when none failed and at least one ran."""

    method: str
    quick: bool = False
    results: list[CheckResult] = field(default_factory=list)

    def _with(self, status: Status) -> list[CheckResult]:
        return [r for r in self.results if r.status == status]

    @property
    def passed(self) -> list[CheckResult]:
        return self._with("passed")

    @property
    def failed(self) -> list[CheckResult]:
        return self._with("failed")

    @property
    def skipped(self) -> list[CheckResult]:
        return self._with("skipped")

    @property
    def n_run(self) -> int:
        """Checks that ran to a verdict (passed or failed); skipped ones do not count."""
        return len(self.passed) + len(self.failed)

    @property
    def ok(self) -> bool:
        return self.n_run > 0 and not self.failed

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r} in this report")

    def summary(self) -> str:
        text = f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"
        if self.n_run == 0:
            text += " (no checks ran: that counts as a failure)"
        return text

    def __str__(self) -> str:
        head = f"conformance of method {self.method!r}" + (" (quick)" if self.quick else "")
        lines = [head] + ["  " + r.line() for r in self.results] + [self.summary()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "quick": self.quick,
            "ok": self.ok,
            "counts": {"passed": len(self.passed), "failed": len(self.failed), "skipped": len(self.skipped)},
            "results": [r.__dict__.copy() for r in self.results],
        }
