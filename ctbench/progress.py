"""Progress of a long command: a rich bar on a terminal, plain lines when stderr is not one.

Without a terminal (a batch job, ``nohup``, ``| tee log``, CI) rich draws its bar only once, at
the end, so a long command looked dead. There :class:`Progress` prints plain lines to stderr
instead, e.g.::

    run: 120/400 records (30 %), 1 failed, 2m10s elapsed, ~5m left

one every ``CTBENCH_PROGRESS_SECONDS`` seconds (default 30; 0 = a line for every item), also
while no item finishes (a heartbeat thread), and one at the end. On a terminal the rich bar is
kept. Used by ``ctbench run``, ``tune``, ``pretrain`` (the Spektron plugin's loop) and ``bench
sweep``; ``ctbench report`` prints a line per stage through :func:`stage_printer`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

ENV_INTERVAL = "CTBENCH_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 30.0


def interval_seconds() -> float:
    """Seconds between plain progress lines: ``$CTBENCH_PROGRESS_SECONDS`` (0 = every item), else
    30. A value that is not a number >= 0 is ignored (the default holds)."""
    text = os.environ.get(ENV_INTERVAL, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 and value == value and value != float("inf") else DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """``45s``, ``2m10s``, ``1h05m``: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _remaining(seconds: float) -> str:
    """A rounded estimate: ``40s``, ``5m``, ``1h05m`` (an estimate shows no false precision)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{max(s, 1)}s"
    if s < 3600:
        return f"{int(round(s / 60))}m"
    return duration(s)


def is_terminal(console: Any = None) -> bool:
    """Whether stderr is a terminal (as the rich console that would draw the bar sees it)."""
    if console is not None:
        return bool(getattr(console, "is_terminal", False))
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _print(text: str, console: Any = None, write: Callable[[str], None] | None = None) -> None:
    """One plain line: to ``write`` if given, else the command's console (never read as markup), else stderr."""
    if write is not None:
        write(text)
    elif console is not None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        print(text, file=sys.stderr, flush=True)


class Progress:
    """One command's progress over ``total`` items (``unit``: "records", "trials", "steps").

    ``label`` starts each plain line (``run``, ``tune``); ``bar_label`` is the bar's caption on a
    terminal (default: ``label``). ``console``: the rich console of the command (stderr);
    ``plain``: force plain lines (True) or the bar (False) instead of asking the console;
    ``interval``: seconds between plain lines (default :func:`interval_seconds`). ``enabled``
    False shows nothing. ``start()`` before the first item (``completed``: items already done,
    not counted in the rate), ``update()`` / ``advance()`` as items finish, ``stop()`` at the end
    (the final plain line); also a context manager.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items", *, console: Any = None,
                 bar_label: str | None = None, plain: bool | None = None, interval: float | None = None,
                 enabled: bool = True, completed: int = 0, write: Callable[[str], None] | None = None):
        self.label = label
        self.bar_label = bar_label or label
        self.unit = unit
        self.total = total
        self.completed = completed
        self.failed = 0
        self.info = ""
        self.description = ""
        self.enabled = enabled
        self.console = console
        self.plain = (not is_terminal(console)) if plain is None else plain
        self.interval = interval_seconds() if interval is None else max(0.0, float(interval))
        self._write = write
        self._lock = threading.Lock()
        self._bar = None
        self._task = None
        self._started = False
        self._stopped = False
        self._t0 = 0.0
        self._done0 = completed
        self._last_line = 0.0
        self._last_state: tuple[int, int] | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------------

    def start(self, total: int | None = None, completed: int | None = None) -> "Progress":
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = self._done0 = completed
        if not self.enabled or self._started:
            return self
        self._started = True
        self._t0 = self._last_line = time.monotonic()
        if self.plain:
            if self.interval > 0:
                self._thread = threading.Thread(target=self._heartbeat, name=f"ctbench-progress-{self.label}",
                                                daemon=True)
                self._thread.start()
        else:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{self.bar_label}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.description}"), console=self.console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total, completed=self.completed)
        return self

    def stop(self) -> None:
        """Stop the bar, or print the last plain line (once; only when the progress started)."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.stop()
        elif self.plain:
            self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- updates ----------------------------------------------------------------------------------

    def update(self, completed: int | None = None, *, advance: int = 0, failed: int | None = None,
               description: str | None = None, info: str | None = None, total: int | None = None) -> None:
        """Set what is done (``completed`` or ``advance``), failures so far, the bar's
        description and the plain line's extra ``info`` (a loss, the best value so far)."""
        if not self.enabled:
            return
        with self._lock:
            if total is not None:
                self.total = total
            if completed is not None:
                self.completed = completed
            self.completed += advance
            if failed is not None:
                self.failed = failed
            if description is not None:
                self.description = description
            if info is not None:
                self.info = info
        if not self._started or self._stopped:
            return
        if self._bar is not None:
            shown = " · ".join(t for t in (self.description, self.info) if t)
            self._bar.update(self._task, completed=self.completed, total=self.total, description=shown)
        elif self.plain and self.interval == 0:  # a line per item: when the count moves, not on every refresh
            state = (self.completed, self.failed)
            if state != self._last_state and not (self.total and self.completed >= self.total):  # stop() says it
                self._last_state = state
                self._emit()
        elif self.plain and time.monotonic() - self._last_line >= self.interval:
            self._emit()

    def advance(self, n: int = 1, **kw: Any) -> None:
        self.update(advance=n, **kw)

    # --- plain lines --------------------------------------------------------------------------------

    def line(self, final: bool = False) -> str:
        """The plain progress line as it stands."""
        with self._lock:
            done, total, failed, info = self.completed, self.total, self.failed, self.info
        elapsed = time.monotonic() - self._t0 if self._started else 0.0
        parts = []
        if total:
            pct = int(100 * done / total) if total else 0
            parts.append(f"{done}/{total} {self.unit} ({pct} %)")
        else:
            parts.append(f"{done} {self.unit}")
        if failed:
            parts.append(f"{failed} failed")
        parts.append(f"{duration(elapsed)} elapsed")
        if final:
            parts.append("done" if total is None or done >= total else "stopped")
        else:
            new = done - self._done0
            if total and new > 0 and done < total and elapsed > 0:
                parts.append(f"~{_remaining(elapsed / new * (total - done))} left")
        text = f"{self.label}: " + ", ".join(parts)
        return text + (f"; {info}" if info else "")

    def _emit(self, final: bool = False) -> None:
        text = self.line(final)
        with self._lock:
            self._last_line = time.monotonic()
        self._print(text)

    def _print(self, text: str) -> None:
        _print(text, self.console, self._write)

    def _heartbeat(self) -> None:
        """A line every ``interval`` seconds even while no item finishes (a slow item, a hang)."""
        while not self._wake.wait(timeout=max(0.05, self.interval - (time.monotonic() - self._last_line))):
            if time.monotonic() - self._last_line >= self.interval:
                self._emit()


def stage_printer(label: str, console: Any = None, plain: bool | None = None,
                  write: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A ``say(stage)`` for commands made of stages (``ctbench report``): without a terminal each
    stage is one plain line ``report: <stage> (<elapsed> elapsed)``; on a terminal a transient
    rich status line shows the current stage. Call the returned function with ``None`` at the
    end (it stops the status line)."""
    t0 = time.monotonic()
    plain = (not is_terminal(console)) if plain is None else plain
    status: list[Any] = []

    def say(stage: str | None) -> None:
        if stage is None:
            if status:
                status.pop().stop()
            return
        if plain:
            _print(f"{label}: {stage} ({duration(time.monotonic() - t0)} elapsed)", console, write)
            return
        from rich.text import Text

        text = Text(f"{label}: {stage}")  # not markup: a method label may hold [brackets]
        if not status and console is not None:
            status.append(console.status(text))
            status[0].start()
        elif status:
            status[0].update(text)

    return say
