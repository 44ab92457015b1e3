"""Plugin integrity with real installed packages of the `ctbench` entry-point group: a third party
cannot shadow a built-in method silently, two plugins sharing a method name both need their
qualified name, a reused entry-point name is loaded under `name@distribution`, `sys.exit()` at
import or in a hook is reported, malformed classes are skipped and listed, misspelt hooks warn,
and CTBENCH_DISABLE_PLUGINS switches plugins off. Each throwaway package is pip-installed into
its own temporary folder (--target), never into the project's environment; ctbench runs as a
subprocess with PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_plugins import pip_install, wait_installed

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"

[project.entry-points.ctbench]
{entry_point} = "{module}"

[tool.setuptools]
packages = ["{module}"]
"""

# registers `pds` (version "2") under an entry-point name sorting before `classical`, and `twin`
IMPOSTOR = '''\
"""Registers a method called `pds`, like the built-in, and a `twin` that another plugin also has."""
import numpy as np

from ctbench import hookimpl
from ctbench.method import Tags, TransferMethod


class Impostor(TransferMethod):
    """Predicts the calibration mean whatever the spectra."""

    name = "pds"
    version = "2"
    tags = Tags(min_shots=1)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.mean_ = np.asarray(source.y, dtype=float).mean(axis=0)
        return self

    def transfer(self, standards, unlabelled=None):
        return self

    def predict(self, X_target):
        return np.tile(self.mean_, (np.asarray(X_target).shape[0], 1))


class Twin(Impostor):
    name = "twin"
    version = "1"


@hookimpl
def ctbench_register_methods():
    return [Impostor, Twin]
'''

# reuses the entry-point name `classical`; registers a `sbc` (clash) and a method of its own
EVIL_CLASSICAL = '''\
"""A third party whose entry point is also called `classical`."""
from ctbench import hookimpl
from ctbench.method import Tags, TransferMethod


class FakeSBC(TransferMethod):
    name = "sbc"
    version = "9"
    tags = Tags()

    def __init__(self):
        pass


class EvilOnly(TransferMethod):
    name = "evil_only"
    version = "1"
    tags = Tags()

    def __init__(self):
        pass


@hookimpl
def ctbench_register_methods():
    return [FakeSBC, EvilOnly]
'''

EXITS = '"""A plugin that ends the process at import."""\nimport sys\n\nsys.exit(3)\n'

# malformed classes, a misspelt hook, a hook that calls sys.exit(), a second `twin`
MALFORMED = '''\
"""Broken in every way a plugin can be broken after importing fine."""
import sys

from ctbench import hookimpl
from ctbench.method import Tags, TransferMethod


class StrTags(TransferMethod):
    name = "str_tags"
    tags = "fast"


class DictTags(TransferMethod):
    name = "dict_tags"
    tags = {"min_shots": 1}


class Spacey(TransferMethod):
    name = "has space"


class VarKw(TransferMethod):
    name = "var_kw"

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class NotAMethod:
    name = "not_a_method"


class Fine(TransferMethod):
    name = "fine_method"
    version = "1"
    tags = Tags()

    def __init__(self):
        pass


class Twin(TransferMethod):
    name = "twin"
    version = "1"
    tags = Tags()

    def __init__(self):
        pass


@hookimpl
def ctbench_register_methods():
    return [StrTags, DictTags, Spacey, VarKw, NotAMethod, Fine, Twin]


def ctbench_register_method():  # misspelt: never called
    return [Fine]


@hookimpl
def ctbench_register_corpora():
    sys.exit("corpora hook exits")
'''

PACKAGES = {
    # key: (distribution, version, entry-point name, module, source)
    "impostor": ("ctbench-aaa-impostor", "0.1.0", "aaa_impostor", "aaa_impostor", IMPOSTOR),
    "evil": ("ctbench-evil-classical", "1.0.0", "classical", "evil_classical", EVIL_CLASSICAL),
    "exits": ("ctbench-exits", "0.0.1", "exits", "ctbench_exits_plugin", EXITS),
    "malformed": ("ctbench-malformed", "0.2.0", "malformed", "ctbench_malformed", MALFORMED),
}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every throwaway package, each installed into its own target folder, in parallel."""
    base = tmp_path_factory.mktemp("plugin_integrity")
    procs, out = [], {}
    for key, (dist, version, ep, module, source) in PACKAGES.items():
        src = base / f"{key}-src"
        (src / module).mkdir(parents=True)
        (src / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, version=version, entry_point=ep, module=module))
        (src / module / "__init__.py").write_text(source)
        out[key] = base / f"{key}-target"
        procs.append(pip_install(src, out[key]))
    for p in procs:
        wait_installed(p)
    return out


def ctbench(paths: list[Path], *args: str, cwd: Path, disable: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["COLUMNS"] = "1000"  # rich tables: one line per row
    env["NO_COLOR"] = "1"
    env.pop("CTBENCH_RESULTS", None)
    env.pop("CTBENCH_DISABLE_PLUGINS", None)
    if disable is not None:
        env["CTBENCH_DISABLE_PLUGINS"] = disable
    return subprocess.run([sys.executable, "-m", "ctbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _line(text: str, *needles: str) -> str:
    """The one line holding every needle (fails with the whole text otherwise)."""
    for line in text.splitlines():
        if all(n in line for n in needles):
            return line
    raise AssertionError(f"no line with {needles!r} in:\n{text}")


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]


@pytest.fixture(scope="module")
def everything(targets: dict[str, Path]) -> list[Path]:
    return list(targets.values())


def test_methods_listing_resolves_every_clash_visibly(everything: list[Path], tmp_path: Path) -> None:
    res = ctbench(everything, "methods", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    # the built-in keeps `pds`; the impostor is listed (and reachable) only qualified
    assert rows["pds"]["plugin"] == "classical" and rows["pds"]["builtin"] is True
    assert rows["pds"]["class"] == "ctbench_classical.pds.PDS" and rows["pds"]["distribution"] == "ctbench"
    imp = rows["aaa_impostor:pds"]
    assert imp["plugin"] == "aaa_impostor" and imp["version"] == "2" and imp["method"] == "pds"
    assert imp["distribution"] == "ctbench-aaa-impostor" and imp["distribution_version"] == "0.1.0"
    assert imp["builtin"] is False and imp["class"] == "aaa_impostor.Impostor"
    # two third parties: neither gets the plain name
    assert "twin" not in rows and {"aaa_impostor:twin", "malformed:twin"} <= set(rows)
    # the reused entry-point name `classical` is loaded under its own name; the built-in keeps `sbc`
    evil = "classical@ctbench-evil-classical"
    assert rows["sbc"]["plugin"] == "classical" and rows["sbc"]["class"].startswith("ctbench_classical.")
    assert rows[f"{evil}:sbc"]["class"] == "evil_classical.FakeSBC"
    assert rows["evil_only"]["plugin"] == evil and rows["evil_only"]["qualified"] == f"{evil}:evil_only"
    # malformed classes are skipped, the good one of the same plugin is listed
    assert rows["fine_method"]["plugin"] == "malformed"
    assert not {"str_tags", "dict_tags", "var_kw", "has space", "not_a_method"} & set(rows)
    assert {"no_transfer", "cca", "full_recalibration"} <= set(rows)  # the built-ins are all there
    assert all(r["qualified"].endswith(":" + r["method"]) for r in rows.values())

    err = res.stderr
    _line(err, "plugin 'aaa_impostor'", "'pds'", "built-in 'classical:pds'", "reachable only as 'aaa_impostor:pds'")
    _line(err, "plugin 'exits'", "failed to load", "SystemExit: 3", "sys.exit()")
    _line(err, "plugin 'malformed'", "StrTags", "`tags`", "'fast'")
    _line(err, "plugin 'malformed'", "DictTags", "`tags`")
    _line(err, "plugin 'malformed'", "VarKw", "*args or **kwargs")
    _line(err, "plugin 'malformed'", "Spacey", "whitespace")
    _line(err, "plugin 'malformed'", "Spacey", "defines no __init__")
    _line(err, "plugin 'malformed'", "NotAMethod", "not a TransferMethod subclass")
    _line(err, "plugin 'malformed'", "'ctbench_register_method'", "did you mean 'ctbench_register_methods'")
    _line(err, "plugin 'malformed'", "ctbench_register_corpora raised SystemExit", "corpora hook exits")
    _line(err, f"plugin '{evil}'", "entry-point name 'classical' is already used by plugin 'classical' (ctbench")
    _line(err, f"plugin '{evil}'", "'sbc'", f"reachable only as '{evil}:sbc'")
    twin = _line(err, "'twin'", "'aaa_impostor:twin'", "'malformed:twin'")
    assert err.count(twin) == 1  # one line per problem

    table = ctbench(everything, "methods", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    _line(table.stdout, "aaa_impostor:pds", "2", "ctbench-aaa-impostor 0.1.0")
    _line(table.stdout, " pds ", "classical", "built-in")
    _line(table.stderr, "reachable only as 'aaa_impostor:pds'")


def test_plugins_listing_shows_status_distribution_and_problems(everything: list[Path], tmp_path: Path) -> None:
    res = ctbench(everything, "plugins", "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    st = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert st["classical"]["builtin"] and st["classical"]["status"] == "ok" and st["classical"]["distribution"] == "ctbench"
    assert "method:pds" in st["classical"]["provides"]
    evil = st["classical@ctbench-evil-classical"]
    assert evil["entry_point"] == "classical" and evil["distribution"] == "ctbench-evil-classical"
    assert evil["version"] == "1.0.0" and evil["status"] == "warnings" and not evil["builtin"]
    assert "method:evil_only" in evil["provides"]
    imp = st["aaa_impostor"]
    assert imp["status"] == "warnings" and "method:aaa_impostor:pds" in imp["provides"]
    assert any("aaa_impostor:pds" in w for w in imp["warnings"])
    assert st["exits"]["status"] == "failed" and "SystemExit: 3" in st["exits"]["errors"][0]
    mal = st["malformed"]
    assert mal["status"] == "errors" and {"method:fine_method", "method:malformed:twin"} <= set(mal["provides"])
    assert len([e for e in mal["errors"] if "skipped" in e]) == 5

    table = ctbench(everything, "plugins", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    row = _line(out, "ctbench_exits_plugin")
    assert "exits" in row and "failed" in row and "SystemExit: 3" in row and "ctbench-exits 0.0.1" in row
    row = _line(out, "evil_classical")
    assert "classical@ctbench-evil-classical" in row and "ctbench-evil-classical 1.0.0" in row
    assert " warnings " in row
    assert " ok " in _line(out, "ctbench_classical", "ctbench 0.1.0", "(built-in)")
    _line(out, "warning:", "'ctbench_register_method'", "did you mean 'ctbench_register_methods'")
    _line(out, "warning:", "reachable only as 'aaa_impostor:pds'")


def test_run_uses_the_builtin_and_the_qualified_name_runs_the_impostor(everything: list[Path], tmp_path: Path) -> None:
    common = ("--task", "demo", "--shots", "5", "--reps", "1", "--no-mlflow")
    res = ctbench(everything, "run", "-m", "pds", *common, "--results-dir", str(tmp_path / "builtin"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    _line(res.stderr, "'pds'", "built-in 'classical:pds'", "'aaa_impostor:pds'")  # the run says so
    (rec,) = _records(tmp_path / "builtin")
    assert rec["status"] == "ok"
    assert rec["method"]["class"] == "ctbench_classical.pds.PDS" and rec["method"]["plugin"] == "classical"

    res = ctbench(everything, "run", "-m", "aaa_impostor:pds", *common, "--results-dir", str(tmp_path / "impostor"),
                  cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    (rec,) = _records(tmp_path / "impostor")
    assert rec["status"] == "ok" and rec["method"]["version"] == "2"
    assert rec["method"]["class"] == "aaa_impostor.Impostor" and rec["method"]["plugin"] == "aaa_impostor"


def test_qualified_and_ambiguous_names_everywhere(everything: list[Path], tmp_path: Path) -> None:
    res = ctbench(everything, "check", "classical:pds", "--only", "declares_contract,fit_returns_self", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    res = ctbench(everything, "check", "twin", "--only", "declares_contract", cwd=tmp_path)
    assert res.returncode == 2
    line = _line(res.stderr, "error:", "'twin'", "ambiguous")
    assert "'aaa_impostor:twin'" in line and "'malformed:twin'" in line
    res = ctbench(everything, "run", "-m", "twin", "--task", "demo", "--shots", "5", "--reps", "1", "--no-mlflow",
                  "--results-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2 and "ambiguous" in res.stderr and "'malformed:twin'" in res.stderr
    assert not (tmp_path / "r" / "runs").exists() or not _records(tmp_path / "r")
    res = ctbench(everything, "check", "exits:anything", cwd=tmp_path)
    assert res.returncode == 2 and "plugin 'exits' failed to load" in res.stderr


def test_disable_plugins(everything: list[Path], tmp_path: Path) -> None:
    off = "aaa_impostor,exits,malformed,classical@ctbench-evil-classical,no_such_plugin"
    res = ctbench(everything, "plugins", "--format", "json", cwd=tmp_path, disable=off)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    st = {p["name"]: p for p in data["plugins"]}
    for name in ("aaa_impostor", "exits", "malformed", "classical@ctbench-evil-classical"):
        assert st[name]["status"] == "disabled" and st[name]["errors"] == [] and st[name]["provides"] == []
    assert st["classical"]["status"] == "ok"
    assert any("no_such_plugin" in w for w in data["warnings"])

    res = ctbench(everything, "methods", "--format", "json", cwd=tmp_path, disable=off)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["pds"]["plugin"] == "classical" and not any(":" in n for n in rows)
    assert "fine_method" not in rows and "evil_only" not in rows
    assert "SystemExit" not in res.stderr and "reachable only" not in res.stderr  # never imported
    _line(res.stderr, "note:", "plugin 'exits'", "disabled by CTBENCH_DISABLE_PLUGINS")

    # a built-in may be switched off too; the listing says so
    res = ctbench(everything[:0], "plugins", cwd=tmp_path, disable="classical")
    assert res.returncode == 0, res.stderr
    row = _line(res.stdout, "ctbench_classical")
    assert "disabled" in row and "built-in" in row
    res = ctbench(everything[:0], "check", "pds", cwd=tmp_path, disable="classical")
    assert res.returncode == 2 and "disabled by CTBENCH_DISABLE_PLUGINS: classical" in res.stderr


API_PROBE = """
import json, sys
from ctbench.plugins import UnknownName, get_method, load_methods, record_name
out = {}
for name in ("pds", "classical:pds", "aaa_impostor:pds", "malformed:twin", "evil_only"):
    info = get_method(name, quiet=True)
    out[name] = {"class": info.cls.__module__ + "." + info.cls.__qualname__, "plugin": info.plugin,
                 "qualified": info.qualified, "distribution": info.distribution,
                 "distribution_version": info.distribution_version, "builtin": info.builtin,
                 "listed_name": info.listed_name, "record_name": record_name(info)}
try:
    get_method("twin")
except UnknownName as exc:
    out["twin_error"] = str(exc)
out["listed"] = sorted(load_methods())
json.dump(out, sys.stdout)
"""


def test_python_api_names_and_method_info_fields(everything: list[Path], tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in everything))
    env.pop("CTBENCH_DISABLE_PLUGINS", None)
    res = subprocess.run([sys.executable, "-c", API_PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["pds"] == out["classical:pds"]
    assert out["pds"] == {"class": "ctbench_classical.pds.PDS", "plugin": "classical", "qualified": "classical:pds",
                          "distribution": "ctbench", "distribution_version": out["pds"]["distribution_version"],
                          "builtin": True, "listed_name": "pds", "record_name": "pds"}
    imp = out["aaa_impostor:pds"]
    assert imp["class"] == "aaa_impostor.Impostor" and imp["qualified"] == "aaa_impostor:pds"
    assert imp["distribution"] == "ctbench-aaa-impostor" and imp["distribution_version"] == "0.1.0"
    assert imp["listed_name"] == imp["record_name"] == "aaa_impostor:pds" and not imp["builtin"]
    assert out["malformed:twin"]["record_name"] == "malformed:twin"
    assert out["evil_only"]["plugin"] == "classical@ctbench-evil-classical" and out["evil_only"]["record_name"] == "evil_only"
    assert "ambiguous" in out["twin_error"] and "'aaa_impostor:twin' or 'malformed:twin'" in out["twin_error"]
    assert "twin" not in out["listed"] and "aaa_impostor:pds" in out["listed"]
    assert "warning" not in res.stderr  # quiet=True: no note about the shadowed name

    # `ctbench --help` imports no plugin (and so stays instant whatever is installed)
    code = ("import sys; from typer.testing import CliRunner; from ctbench.cli.main import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('ctbench.plugins', 'aaa_impostor', 'ctbench_exits_plugin', 'ctbench_classical') "
            "if m in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
