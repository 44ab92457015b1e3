"""A terminal that fits 80 columns (issue 15): the leaderboard and the catalogue tables at 80
columns (piped output, CI logs), labels never read as rich markup, tuned rows, partial cells,
blank gap-closed cells explained, synthetic tasks left out by default, --version, no <bool>."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.leaderboard import build_leaderboard, format_rows, method_label, partial_cells, rich_table, terminal_layout
from ctbench.store import Store, record_key

runner = CliRunner()
METHODS = "no_transfer,target_only,full_recalibration,sbc,model_update,pds"


def invoke(*args: str, columns: int = 80):
    return runner.invoke(app, list(args), env={"COLUMNS": str(columns), "NO_COLOR": "1"}, catch_exceptions=False)


def assert_fits(text: str, width: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, "\n".join(too_long)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The demo suite (synthetic), six methods and pds[half_window=5], N = 5, 10, 20, 2 reps."""
    results = tmp_path_factory.mktemp("term_store")
    for extra in ([], ["--param", "half_window=5"]):
        methods = "pds" if extra else METHODS
        res = runner.invoke(app, ["run", "-m", methods, "-t", "demo", "--reps", "2", "--results-dir", str(results),
                                  "--no-mlflow", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return results


@pytest.fixture
def copy_store(store, tmp_path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "store"))


def _rel(r: dict) -> str:
    return f"{r['rel_mean']:.2f} [{r['rel_lo']:.2f}, {r['rel_hi']:.2f}]"


def _rows(results: Path, *extra: str) -> list[dict]:
    res = invoke("leaderboard", "--results-dir", str(results), "--include-synthetic", "-f", "json", *extra)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# --- 1. 80 columns, numbers whole ------------------------------------------------------------------


def test_leaderboard_fits_80_columns_and_never_cuts_a_number(store):
    res = invoke("leaderboard", "--results-dir", str(store), "--include-synthetic")
    assert res.exit_code == 0, res.output
    assert_fits(res.stdout)
    assert "…" not in res.stdout
    rows = _rows(store)
    for r in rows:
        assert _rel(r) in res.stdout, _rel(r)  # the interval in full
    # compact by default: the raw RMSEP and R2 are left out, and the table says so
    assert "Not shown to fit the width: RMSEP mean±sd, R2 (--wide shows every column)." in " ".join(res.stdout.split())
    header = next(line for line in res.stdout.splitlines() if line.lstrip().startswith("grp"))
    assert header.split() == ["grp", "method", "rel.", "RMSEP", "[95%", "CI]", "reps"]


def test_wide_shows_every_column_with_numbers_whole(store):
    res = invoke("leaderboard", "--results-dir", str(store), "--include-synthetic", "--wide", "--per-property")
    assert res.exit_code == 0, res.output
    assert "RMSEP mean±sd" in res.stdout and "R2" in res.stdout and "gap closed" in res.stdout
    # numbers are never wrapped or cut: the lines get wider rather than that
    rows = _rows(store, "--per-property")
    for r in rows:
        assert _rel(r) in res.stdout
        assert f"{r['rmsep_mean']:.3g} ± " in res.stdout


def test_a_wide_terminal_shows_every_column_without_asking(store):
    res = invoke("leaderboard", "--results-dir", str(store), "--include-synthetic", columns=160)
    header = next(line for line in res.stdout.splitlines() if line.lstrip().startswith("grp"))
    assert "RMSEP mean±sd" in header and "R2" in header and "--wide" not in res.stdout
    assert_fits(res.stdout, 160)


def test_narrow_terminal_folds_labels_not_numbers(store):
    rows = _rows(store)
    cols, needed = terminal_layout(rows, width=50)
    assert [c[0] for c in cols] == ["grp", "method", "rel", "reps"] and needed <= 50
    from rich.console import Console

    console = Console(width=50, record=True, color_system=None)
    console.print(rich_table(rows, width=50))
    text = console.export_text()
    assert_fits(text, 50)
    for r in rows:
        assert _rel(r) in text
    # too narrow for whole numbers: the CLI widens its lines instead of cutting them
    res = invoke("leaderboard", "--results-dir", str(store), "--include-synthetic", columns=30)
    assert res.exit_code == 0
    for r in rows:
        assert _rel(r) in res.stdout


# --- 2. labels are never rich markup ------------------------------------------------------------------


def test_labels_in_brackets_survive(store):
    res = invoke("leaderboard", "--results-dir", str(store), "--include-synthetic")
    assert "pds[half_window=5]" in res.stdout
    rows = _rows(store)
    assert {"pds", "pds[half_window=5]"} <= {r["method"] for r in rows}


def _record(method: str, rep: int, residuals: np.ndarray, split: str = "s0", n: int = 10, task: str = "t",
            status: str = "ok", user_params: dict | None = None, source: str = "default", reference: bool = False,
            props: list[str] | None = None) -> dict:
    props = props or [f"p{j}" for j in range(residuals.shape[1])]
    per = {p: {"rmsep": float(np.sqrt(np.mean(residuals[:, j] ** 2))), "r2": 0.5, "rpd": 1.0, "bias": 0.0, "sep": 1.0}
           for j, p in enumerate(props)}
    mean = {k: float(np.mean([per[p][k] for p in props])) for k in ("rmsep", "r2", "rpd", "bias", "sep")}
    rec = {
        "identity": {"method": method, "method_version": "1", "params": dict(user_params or {}), "task": task,
                     "task_version": "1", "n_shots": n, "rep": rep, "seed": 0},
        "method": {"name": method, "user_params": dict(user_params or {}), "params_source": source},
        "task": {"dataset": "d"},
        "status": status,
        "reference": reference,
        "split": {"test_rows_hash": split},
    }
    if status == "ok":
        rec["metrics"] = {"per_property": per, "mean": mean}
        rec["residuals"] = {"sample": list(range(len(residuals))), "values": residuals.tolist(), "properties": props}
    return rec


def _render(rows: list[dict], width: int = 80, **kw) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None)
    console.print(rich_table(rows, width=width, **kw))
    return console.export_text()


def test_markup_like_labels_tasks_and_properties_are_printed_as_they_are():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 1))
    task, prop = "t[bold]", "[red]conc"
    recs = []
    for rep in range(2):
        recs.append(_record("full_recalibration", rep, base, task=task, reference=True, props=[prop]))
        recs.append(_record("pds", rep, 2 * base, task=task, props=[prop]))
        recs.append(_record("pds", rep, 2.5 * base, task=task, user_params={"half_window": 5}, props=[prop]))
        recs.append(_record("pds", rep, base, task=task, status="failed", user_params={"half_window": "abc"},
                            props=[prop]))
    rows = build_leaderboard(recs, per_property=True, replicates=50)
    text = _render(rows)
    assert "pds[half_window=5]" in text and "pds[half_window=abc]" in text and "(2 failed)" in text
    assert "t[bold] · N = 10 · [red]conc" in text
    labels = [line.split()[1] for line in text.splitlines() if line.strip()[:2] in ("1 ", "1=", "2 ", "2=", "- ")]
    assert "pds" in labels and "pds[half_window=5]" in labels  # two rows, not one shown twice as "pds"
    assert_fits(text)


# --- 3. tuned labels ------------------------------------------------------------------------------------


def test_tuned_rows_have_one_label_per_method_across_n():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 2))
    recs = []
    for n, comps in ((5, 3), (10, 4), (20, 6)):
        for rep in range(2):
            recs.append(_record("full_recalibration", rep, base, n=n, reference=True))
            recs.append(_record("sbc", rep, 1.5 * base, n=n, source=f"tuned:/r/tuned/sbc/t/N{n}-outer{rep}.json",
                                user_params={"max_components": comps + rep}))
            recs.append(_record("sbc", rep, 1.2 * base, n=n, source="tuned:/x.json+cli",
                                user_params={"max_components": comps, "cv": 3}))
    assert {method_label(r) for r in recs if r["identity"]["method"] == "sbc"} == {"sbc (tuned)"}
    rows = build_leaderboard(recs, replicates=50)
    tuned = [r for r in rows if r["method"].startswith("sbc")]
    assert [r["method"] for r in tuned] == ["sbc (tuned)"] * 3 and all(r["reps"] == 4 for r in tuned)
    assert "max_components" not in _render(rows)
    # a default run of the same method stays its own row
    plain = _record("sbc", 0, base, n=5)
    assert method_label(plain) == "sbc" and method_label(dict(plain, method=dict(plain["method"], params_source="cli",
                                                                                 user_params={"cv": 3}))) == "sbc[cv=3]"


# --- 4. partial cells -----------------------------------------------------------------------------------


def test_partial_cells_are_marked_in_table_and_md_with_one_warning(copy_store):
    st = Store(copy_store)
    sbc5 = [r for r in st.iter_records() if r["identity"]["method"] == "sbc" and r["identity"]["n_shots"] == 5]
    Path(sbc5[0]["_path"]).unlink()  # as if read while the run is still going
    res = invoke("leaderboard", "--results-dir", str(copy_store), "--include-synthetic")
    assert res.exit_code == 0, res.output
    line = next(line for line in res.stdout.splitlines() if " sbc " in f" {line} " and "1/2" in line)
    assert line.rstrip().endswith("1/2 partial")
    assert sum("1/2 partial" in line for line in res.stdout.splitlines()) == 1
    assert "partial = fewer repetitions than the most any row of the task has (synthetic_a_b: 2)" in " ".join(
        res.stdout.split())
    warnings = [line for line in res.stderr.splitlines() if "partial" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 21 cells") and "partial" in warnings[0]
    assert_fits(res.stdout)
    md = invoke("leaderboard", "--results-dir", str(copy_store), "--include-synthetic", "-f", "md")
    assert "| 1/2 partial |" in md.stdout and "partial = fewer repetitions" in md.stdout
    # complete cells: no marker, no warning
    res = invoke("leaderboard", "--results-dir", str(copy_store), "--include-synthetic", "--shots", "10")
    assert "partial" not in res.stdout and "partial" not in res.stderr


def test_tuned_and_default_rows_of_one_method_count_together():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(20, 1))
    recs = []
    for rep in range(4):
        recs.append(_record("full_recalibration", rep, base, reference=True))
        # outer split 3 had no tuned parameters: run --params tuned ran it with the defaults
        source = "default" if rep == 3 else f"tuned:/r/N10-outer{rep}.json"
        recs.append(_record("sbc", rep, 2 * base, source=source, user_params={} if rep == 3 else {"cv": 3}))
    rows = build_leaderboard(recs, replicates=50)
    assert partial_cells(rows) == []
    rows = build_leaderboard(recs[:-1], replicates=50)
    assert partial_cells(rows) == [("t", 10, "sbc (tuned)")]


# --- 5. blank gap closed ----------------------------------------------------------------------------------


def test_blank_gap_closed_is_explained(copy_store):
    for path in (copy_store / "runs").rglob("*.json"):
        if json.loads(path.read_text())["identity"]["method"] == "no_transfer":
            path.unlink()
    for fmt in ("table", "md"):
        res = invoke("leaderboard", "--results-dir", str(copy_store), "--include-synthetic", "--per-property",
                     "--wide", "-f", fmt)
        assert res.exit_code == 0, res.output
        text = " ".join(res.stdout.split())
        assert "gap closed is blank on the mean rows" in text
        assert "gap closed is blank for task synthetic_a_b: no no_transfer records" in text
        assert "ctbench run -m no_transfer -t synthetic_a_b" in text
    # a --method filter that hides the references is not a missing reference
    res = invoke("leaderboard", "--results-dir", str(copy_store), "--include-synthetic", "--per-property", "--wide",
                 "-m", "sbc")
    assert "no full_recalibration records" not in " ".join(res.stdout.split())


def test_zero_gap_is_explained():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 2))
    recs = []
    for rep in range(2):
        recs.append(_record("full_recalibration", rep, base, reference=True))
        recs.append(_record("no_transfer", rep, base, reference=True))
        recs.append(_record("sbc", rep, 2 * base))
    rows = build_leaderboard(recs, per_property=True, replicates=50)
    assert all(np.isnan(r["gap_closed"]) for r in rows)
    md = " ".join(format_rows(rows, "md", records=recs).split())
    assert "gap closed is blank for task t, p0, p1: no_transfer and full_recalibration have the same RMSEP" in md
    text = " ".join(_render(rows, width=120, wide=True).split())
    assert "have the same RMSEP there (no gap to close)" in text


# --- 6. synthetic tasks -----------------------------------------------------------------------------------


def test_synthetic_tasks_are_left_out_unless_asked(copy_store):
    res = invoke("leaderboard", "--results-dir", str(copy_store))
    assert res.exit_code == 2
    assert "only synthetic tasks (synthetic_a_b)" in res.stderr and "--include-synthetic" in res.stderr
    assert "--task synthetic_a_b" in res.stderr
    for asked in (["--include-synthetic"], ["--task", "synthetic_a_b"], ["--task", "demo"]):
        res = invoke("leaderboard", "--results-dir", str(copy_store), "-f", "md", *asked)
        assert res.exit_code == 0 and "synthetic_a_b" in res.stdout and "left out" not in res.stderr, asked
    # a real task next to it: the synthetic one is left out with one note
    st = Store(copy_store)
    for rec in list(st.iter_records()):
        real = copy.deepcopy(rec)
        real.pop("_path")
        real["identity"]["task"] = "real_task"
        real["task"] = dict(real["task"], name="real_task", synthetic=False)
        real["key"] = record_key(real["identity"])
        st.write(real)
    res = invoke("leaderboard", "--results-dir", str(copy_store), "-f", "md")
    assert res.exit_code == 0, res.output
    assert "real_task" in res.stdout and "synthetic_a_b" not in res.stdout
    notes = [line for line in res.stderr.splitlines() if "synthetic" in line]
    assert notes == ["note: 1 synthetic task left out (synthetic_a_b); add --include-synthetic to rank it"]
    res = invoke("leaderboard", "--results-dir", str(copy_store), "-f", "md", "--include-synthetic")
    assert "real_task" in res.stdout and "synthetic_a_b" in res.stdout and "synthetic" not in res.stderr


# --- 7. catalogue tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["methods"], ["plugins"], ["tasks"]])
def test_catalogue_tables_fit_80_columns_with_names_whole(command):
    res = invoke(*command)
    assert res.exit_code == 0, res.output
    assert_fits(res.stdout)
    assert "…" not in res.stdout
    starts = {line.split()[0] for line in res.stdout.splitlines() if line[:1] == " " and line[1:2].strip()}
    if command == ["methods"]:
        names = {r["name"] for r in json.loads(invoke("methods", "-f", "json").stdout)}
        assert names <= starts, names - starts
        assert "description" in res.stdout
    elif command == ["plugins"]:
        names = {p["name"] for p in json.loads(invoke("plugins", "-f", "json").stdout)["plugins"]}
        assert names <= starts
    else:
        assert {"synthetic_a_b", "corn_m5_mp6", "demo"} <= starts
    wide = invoke(*command, "--wide")
    assert wide.exit_code == 0
    header = {"methods": "distribution", "plugins": "module", "tasks": "version"}[command[0]]
    assert header in wide.stdout.split()


# --- 8, 9. --version, no <bool> ---------------------------------------------------------------------------


def test_version():
    from importlib import metadata

    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"ctbench {metadata.version('ctbench')}"


def _command_paths(cmd, path=()):
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _command_paths(sub, path + (name,))


def test_no_bool_metavar_in_any_help():
    import typer

    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("leaderboard",) in paths and ("tasks", "show") in paths and len(paths) > 10
    for path in paths:
        res = invoke(*path, "--help")
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.stdout, path
    out = invoke("run", "--help").stdout
    assert "--force" in out and "<int>" in out  # options that take a value keep their type
