"""Installing throwaway plugins the way a third party's would be, for tests that run ctbench
as a subprocess: pip into a --target folder, or a one-module distribution written by hand
(module + .dist-info with a `ctbench` entry point) when no build is needed. Never into the
project's environment: the folder goes on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def pip_install(src: Path, target: Path, copy: bool = False) -> subprocess.Popen:
    """Start `pip install --no-deps --no-build-isolation --target` of ``src`` (of a copy of it
    beside ``target`` with ``copy``: pip leaves build folders in the source)."""
    if copy:
        build = target.parent / f"{target.name}-src"
        shutil.copytree(src, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        src = build
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
           "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_installed(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{out}"


def write_plugin(site: Path, module: str, source: str, dist: str, entry_point: str) -> Path:
    """A one-module distribution ``dist`` 0.1 in ``site`` whose entry point ``entry_point`` of
    the `ctbench` group is ``module`` (with ``source``). Returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ctbench]\n{entry_point} = {module}\n")
    return site


def env_with(site: Path, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this environment) with ``site`` first on PYTHONPATH, plus ``extra``."""
    env = {**(os.environ if base is None else base), **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env
