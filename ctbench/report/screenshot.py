"""A PNG of the whole report page with headless Chromium (``ctbench report --screenshot``).

Chromium's ``--screenshot`` captures the window only, and the window's height must be given
(``--window-size=W,H``): a fixed 3000 px caught less than half of a report. The page's
``<html data-page-height>`` (set by a one-line script once the page has loaded, see
``ctbench.report.page.PAGE_HEIGHT_SCRIPT``) tells the full height at a given width; Chromium's
``--dump-dom`` reads it, and the screenshot is then taken with a window that tall.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAX_HEIGHT = 100_000
TIMEOUT_S = 120.0
COMMON = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--hide-scrollbars"]


class ScreenshotError(RuntimeError):
    """The screenshot could not be taken; one line says why."""


def find_chromium() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ScreenshotError(f"{Path(args[0]).name} took over {TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise ScreenshotError(f"cannot start {args[0]} ({exc})") from None


def page_height(browser: str, page: Path, width: int = 1400) -> int:
    """The page's full height in pixels at ``width``, as the loaded page reports it."""
    url = Path(page).resolve().as_uri()
    res = _run([browser, *COMMON, f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom", url])
    found = re.search(r'data-page-height="(\d+)"', res.stdout)
    if found is None:
        why = (res.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ScreenshotError(f"could not measure {page} with {Path(browser).name} (no data-page-height in the page; "
                              f"a report written by an older ctbench? write it again) [{why}]")
    return int(found.group(1))


def take_screenshot(browser: str, page: Path, shot: Path, width: int = 1400) -> int:
    """Write a PNG of the whole page to ``shot``; returns its height in pixels."""
    height = page_height(browser, page, width)
    if height > MAX_HEIGHT:
        raise ScreenshotError(f"the page is {height} px tall (over {MAX_HEIGHT}); report fewer tasks with --task")
    shot = Path(shot).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)  # so that an old file is never taken for the new one
    res = _run([browser, *COMMON, f"--window-size={width},{height}", f"--screenshot={shot}",
                Path(page).resolve().as_uri()])
    if res.returncode != 0 or not shot.is_file():
        why = (res.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise ScreenshotError(f"{Path(browser).name} did not write {shot} (exit code {res.returncode}: {why})")
    return height
