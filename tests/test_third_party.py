"""A third-party method package (examples/ctbench-example-method) installed next to ctbench
shows up, runs and passes the conformance kit; a plugin that fails to import is reported
without breaking the others. Packages are pip-installed into temporary folders (--target),
never into the project's environment, and ctbench runs as a subprocess with PYTHONPATH."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_plugins import pip_install, wait_installed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ctbench-example-method"

BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ctbench-broken-plugin"
version = "0.0.1"

[project.entry-points.ctbench]
broken = "ctbench_broken_plugin"

[tool.setuptools]
packages = ["ctbench_broken_plugin"]
"""
BROKEN_MODULE = '"""A plugin whose import fails."""\nimport ctbench_missing_dependency_xyz  # noqa: F401\n'


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both packages, installed in parallel into their own target folders."""
    base = tmp_path_factory.mktemp("third_party")
    broken_src = base / "broken-plugin"
    (broken_src / "ctbench_broken_plugin").mkdir(parents=True)
    (broken_src / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken_src / "ctbench_broken_plugin" / "__init__.py").write_text(BROKEN_MODULE)
    targets = {"example": base / "example-target", "broken": base / "broken-target"}
    procs = [pip_install(EXAMPLE, targets["example"], copy=True), pip_install(broken_src, targets["broken"], copy=True)]
    for p in procs:
        wait_installed(p)
    return targets


def ctbench(target: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["COLUMNS"] = "250"  # rich tables: no truncated names
    env["NO_COLOR"] = "1"
    env.pop("CTBENCH_RESULTS", None)
    return subprocess.run([sys.executable, "-m", "ctbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_example_package_is_installed_outside_the_project(installed: dict[str, Path]) -> None:
    target = installed["example"]
    assert (target / "ctbench_example_method" / "mean_offset.py").is_file()
    eps = next(target.glob("ctbench_example_method-*.dist-info")) / "entry_points.txt"
    assert "[ctbench]" in eps.read_text() and "example = ctbench_example_method" in eps.read_text()


def test_example_method_appears_runs_and_conforms(installed: dict[str, Path], tmp_path: Path) -> None:
    target = installed["example"]
    res = ctbench(target, "methods", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mean_offset"]["plugin"] == "example"
    assert "corrects spectra" in rows["mean_offset"]["flags"] and "tunable" in rows["mean_offset"]["flags"]
    assert "no_transfer" in rows  # the built-ins are still there

    results = tmp_path / "results"
    res = ctbench(target, "run", "--method", "mean_offset", "--task", "synthetic_a_b", "--shots", "5", "--reps", "2",
                  "--results-dir", str(results), "--no-mlflow", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]
    assert len(records) == 2
    for rec in records:
        assert rec["status"] == "ok"
        assert rec["method"]["name"] == "mean_offset" and rec["method"]["plugin"] == "example"
        assert rec["n_shots"] == 5 and rec["task"]["name"] == "synthetic_a_b"
        assert rec["metrics"]["mean"]["rmsep"] > 0
    assert sorted(r["rep"] for r in records) == [0, 1]

    res = ctbench(target, "check", "mean_offset", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 failed" in res.stdout and "beats_calibration_mean" in res.stdout


def test_example_package_own_tests_pass_against_the_installed_package(installed: dict[str, Path], tmp_path: Path) -> None:
    """The example's tests (parametrize_with_checks over the kit) run, outside this project,
    against the package installed in its target folder (not its source tree)."""
    tests = tmp_path / "example-tests"
    shutil.copytree(EXAMPLE / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(installed["example"])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
                          "--rootdir", str(tmp_path), str(tests)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\b\d+ passed, \d+ skipped\b", res.stdout) and "failed" not in res.stdout, res.stdout
    res = subprocess.run([sys.executable, "-c", "import ctbench_example_method as m; print(m.__file__)"], env=env,
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.stdout.startswith(str(installed["example"])), res.stdout + res.stderr


def test_broken_plugin_is_reported_and_harmless(installed: dict[str, Path], tmp_path: Path) -> None:
    target = installed["broken"]
    res = ctbench(target, "plugins", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if "ctbench_broken_plugin" in l)
    assert "broken" in line and "failed" in line
    assert "ModuleNotFoundError" in line and "ctbench_missing_dependency_xyz" in line
    assert "ctbench-broken-plugin 0.0.1" in line
    ok_line = next(l for l in res.stdout.splitlines() if "ctbench_reference" in l)
    assert " ok " in ok_line

    res = ctbench(target, "methods", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert {"no_transfer", "target_only", "full_recalibration"} <= {r["name"] for r in json.loads(res.stdout)}
    res = ctbench(target, "methods", cwd=tmp_path)  # the table also warns about the broken plugin
    assert res.returncode == 0, res.stderr
    assert "no_transfer" in res.stdout
    assert "plugin 'broken'" in res.stderr and "ctbench_missing_dependency_xyz" in res.stderr

    res = ctbench(target, "check", "no_transfer", "--only", "declares_contract,fit_returns_self", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
