"""Wall-clock time limits for a method's calls (``ctbench check --timeout``, ``ctbench tune
--trial-timeout``).

    from ctbench.timeouts import MethodTimeout, time_limit

    with time_limit(30, "fit"):
        method.fit(source)            # raises MethodTimeout("fit exceeded the 30 s time limit")

The limit is a ``SIGALRM`` from ``setitimer(ITIMER_REAL)``: it interrupts Python code (a busy
loop, ``time.sleep``, a blocking read) but a single long call into C code that does not return
to the interpreter (one huge BLAS call) is interrupted only when it returns. A method that
catches the exception and carries on is hit again every second after the limit, and when its
block ends the limit still counts as exceeded (``MethodTimeout`` is raised on leaving the
block). Only a separate process can stop code that swallows every exception or never returns
to Python; ``ctbench run``'s isolated workers are such processes.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

__all__ = ["MethodTimeout", "defer_timeouts", "format_seconds", "time_limit"]

_REFIRE_S = 1.0
"""After the limit, the alarm fires again at this interval until the block ends."""


class MethodTimeout(TimeoutError):
    """A block ran past its time limit. ``what`` names the block, ``seconds`` is the limit."""

    def __init__(self, what: str, seconds: float):
        self.what = what
        self.seconds = seconds
        super().__init__(f"{what} exceeded the {format_seconds(seconds)} time limit")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.what, self.seconds))


def format_seconds(seconds: float) -> str:
    """``30 s``, ``0.5 s``, ``1.25 s``."""
    return f"{seconds:g} s"


def _supported() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


# While a deferring block runs (e.g. a write to a tuning study's storage) an alarm only marks
# the limit as exceeded; MethodTimeout is raised when the deferring block ends.
_defer_depth = 0
_deferred: MethodTimeout | None = None


@contextmanager
def defer_timeouts() -> Iterator[None]:
    """Hold back a time limit's exception until this block ends (for code that must not be cut
    half-way, such as a database write); a no-op when no limit is running."""
    global _defer_depth, _deferred
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0 and _deferred is not None:
            exc, _deferred = _deferred, None
            raise exc


class time_limit:
    """Context manager: raise :class:`MethodTimeout` when the block runs longer than ``seconds``.

    ``seconds=None`` (or a limit that cannot be armed) means no limit. The limit uses
    ``SIGALRM``/``setitimer(ITIMER_REAL)`` and therefore works only in the main thread of a
    process (in a worker process: in that process's main thread); anywhere else the block runs
    without a limit and :attr:`armed` is False. A handler or timer already installed (an outer
    ``time_limit``, or someone else's alarm) is restored when the block ends, with the time it
    had left; an outer limit that expires first still fires inside the block. ``expired`` tells
    afterwards whether the limit was exceeded (even if the block swallowed the exception).
    """

    def __init__(self, seconds: float | None, what: str = "the call"):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"a time limit must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self.what = what
        self.armed = False
        self.expired = False
        self.elapsed = 0.0
        self._t0 = 0.0
        self._deadline = 0.0
        self._active = False
        self._prev_handler: Any = None
        self._prev_deadline: float | None = None
        self._prev_interval = 0.0

    def error(self) -> MethodTimeout:
        return MethodTimeout(self.what, float(self.seconds or 0))

    # --- the alarm -----------------------------------------------------------------------
    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        global _deferred
        now = time.monotonic()
        if not self._active:
            return
        if now + 1e-3 < self._deadline:
            # not ours yet: an outer timer that expires before us
            signal.setitimer(signal.ITIMER_REAL, self._deadline - now, min(_REFIRE_S, float(self.seconds or 1)))
            if self._prev_deadline is not None and now + 1e-3 >= self._prev_deadline:
                self._prev_deadline = None  # it fired: do not re-arm it on exit
                if callable(self._prev_handler):
                    self._prev_handler(signum, frame)
            return
        self.expired = True
        exc = self.error()
        if _defer_depth > 0:
            _deferred = exc
            return
        raise exc

    def __enter__(self) -> time_limit:
        self._t0 = time.monotonic()
        if self.seconds is None or not _supported():
            return self
        seconds = float(self.seconds)
        prev_remaining, prev_interval = signal.getitimer(signal.ITIMER_REAL)
        self._prev_handler = signal.getsignal(signal.SIGALRM)
        self._prev_deadline = self._t0 + prev_remaining if prev_remaining > 0 else None
        self._prev_interval = prev_interval
        self._deadline = self._t0 + seconds
        first = seconds if self._prev_deadline is None else max(1e-6, min(seconds, prev_remaining))
        self._active = True
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, first, min(_REFIRE_S, seconds))
        self.armed = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.elapsed = time.monotonic() - self._t0
        if self.armed:
            self._active = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._prev_handler if self._prev_handler is not None else signal.SIG_DFL)
            if self._prev_deadline is not None:
                left = self._prev_deadline - time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, max(1e-6, left), self._prev_interval)
            self.armed = False
        if self.seconds is not None and self.elapsed >= float(self.seconds):
            self.expired = True
        if self.expired and exc_type is None:
            raise self.error()  # the block swallowed the alarm (or could not be interrupted)
        return False
