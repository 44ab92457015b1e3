"""Issue 15 polish: plain progress lines without a terminal (run, tune, report, pretrain, bench
sweep), record files with a normal open()'s permissions, .gitignore, synthetic tasks out of the
report by default, figure axes with units and labelled reference lines, a whole-page screenshot,
and how ctbench's experiments look in MLflow (tags, rel_rmsep, the hidden Default experiment)."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.store import Store

REPO = Path(__file__).resolve().parent.parent
TASK = "synthetic_a_b"
runner = CliRunner()


def invoke(*args: str, **env: str):
    return runner.invoke(app, list(args), env={"CTBENCH_PROGRESS_SECONDS": "0", **env}, catch_exceptions=False)


def plain_lines(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{label}: ")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The synthetic task with the two anchors and three transfer methods, N = 5, 10, 2 reps,
    copied to two made-up non-synthetic tasks (fake_x, fake_y of dataset 'fake'), without MLflow."""
    results = tmp_path_factory.mktemp("polish_store")
    res = invoke("run", "-m", "no_transfer,full_recalibration,sbc,ds,pds", "-t", TASK, "--shots", "5,10", "--reps", "2",
                 "--results-dir", str(results), "--no-mlflow")
    assert res.exit_code == 0, res.output
    st = Store(results)
    for rec in list(st.iter_records(TASK)):
        for name in ("fake_x", "fake_y"):
            r = copy.deepcopy(rec)
            r.pop("_path")
            r["identity"]["task"] = name
            r["task"] = dict(r["task"], name=name, dataset="fake", synthetic=False)
            st.write(r)
    return results


# --- 1. progress ------------------------------------------------------------------------------------------


def test_progress_line_format(monkeypatch):
    from ctbench import progress as prog

    clock = [1000.0]
    monkeypatch.setattr(prog.time, "monotonic", lambda: clock[0])
    lines: list[str] = []
    p = prog.Progress("run", 400, "records", plain=True, interval=3600, write=lines.append).start()
    clock[0] += 130
    p.update(120, failed=1)
    assert lines == []  # within the interval: nothing yet
    assert p.line() == "run: 120/400 records (30 %), 1 failed, 2m10s elapsed, ~5m left"
    p.stop()
    assert lines == ["run: 120/400 records (30 %), 1 failed, 2m10s elapsed, stopped"]
    assert prog.duration(45) == "45s" and prog.duration(3725) == "1h02m"


def test_progress_interval_from_the_environment(monkeypatch):
    from ctbench.progress import DEFAULT_INTERVAL_S, interval_seconds

    for value, want in (("", DEFAULT_INTERVAL_S), ("0", 0.0), ("2.5", 2.5), ("-1", DEFAULT_INTERVAL_S),
                        ("soon", DEFAULT_INTERVAL_S), ("nan", DEFAULT_INTERVAL_S)):
        monkeypatch.setenv("CTBENCH_PROGRESS_SECONDS", value)
        assert interval_seconds() == want, value


def test_progress_heartbeat_while_no_item_finishes():
    """A slow item still gives a line every interval (a 27-minute run printed nothing)."""
    from ctbench.progress import Progress

    lines: list[str] = []
    with Progress("run", 3, "records", plain=True, interval=0.05, write=lines.append):
        time.sleep(0.4)
    assert len(lines) >= 3 and lines[0].startswith("run: 0/3 records (0 %), ") and lines[-1].endswith("stopped")


def test_progress_keeps_the_rich_bar_on_a_terminal():
    from rich.console import Console

    from ctbench.progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with Progress("run", 2, "records", bar_label="running", console=console) as p:
        assert not p.plain
        p.advance(description="sbc · demo · N=5")
        p.advance()
    out = buf.getvalue()
    assert "running" in out and "2/2" in out and "run: " not in out


def test_run_prints_progress_lines_before_the_end_without_a_terminal(tmp_path):
    """Through a real pipe (stderr is not a terminal): one line per record with the interval at 0,
    each before the final summary, in order, then the last line."""
    env = dict(os.environ, CTBENCH_PROGRESS_SECONDS="0", COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "ctbench", "run", "-m", "sbc,ds", "-t", TASK, "--shots", "5",
                           "--reps", "2", "--results-dir", str(tmp_path / "r"), "--no-mlflow"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    ours = plain_lines(proc.stderr, "run")
    assert [line.split(" records")[0] for line in ours] == ["run: 1/4", "run: 2/4", "run: 3/4", "run: 4/4"]
    assert "elapsed" in ours[0] and "left" in ours[0] and ours[-1].endswith(", done")
    done = next(i for i, line in enumerate(lines) if line.startswith("done in"))
    assert all(lines.index(line) < done for line in ours)


def test_run_with_the_default_interval_prints_one_closing_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CTBENCH_PROGRESS_SECONDS", raising=False)
    res = runner.invoke(app, ["run", "-m", "sbc", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir",
                              str(tmp_path / "r"), "--no-mlflow"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert plain_lines(res.output, "run") == [next(x for x in res.output.splitlines() if x.startswith("run: 2/2"))]


def test_tune_prints_progress_lines(tmp_path):
    res = invoke("tune", "-m", "pds", "-t", TASK, "-n", "5", "--outer", "0", "--trials", "3", "--reps", "2",
                 "--results-dir", str(tmp_path / "r"), "--no-mlflow")
    assert res.exit_code == 0, res.output
    lines = plain_lines(res.output, "tune")
    assert [line.split(" trials")[0] for line in lines] == ["tune: 1/3", "tune: 2/3", "tune: 3/3"]
    assert "best rmsep" in lines[-1] and ", done;" in lines[-1]
    assert res.output.index(lines[-1]) < res.output.index("saved to")


def test_bench_sweep_prints_progress_lines(tmp_path):
    res = invoke("bench", "sweep", "-m", "sbc", "-t", TASK, "--shots", "5", "--reps", "2", "-j", "1",
                 "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    assert [line.split(" records")[0] for line in plain_lines(res.output, "sweep")] == ["sweep: 1/2", "sweep: 2/2"]


def test_pretrain_prints_progress_lines(tmp_path):
    pytest.importorskip("torch")
    res = invoke("pretrain", "-m", "spektron-lora", "--size", "tiny", "--steps", "3", "--batch-size", "4", "--corpus",
                 "synthetic", "--no-mlflow", "--out", str(tmp_path / "p"), "--param", "log_every=1", "--threads", "1")
    assert res.exit_code == 0, res.output
    lines = plain_lines(res.output, "pretrain")
    assert [line.split(" steps")[0] for line in lines] == ["pretrain: 1/3", "pretrain: 2/3", "pretrain: 3/3"]
    assert "loss" in lines[0] and "spectra/s" in lines[0] and ", done;" in lines[-1]


def test_report_prints_a_line_per_stage_in_order(store, tmp_path):
    res = invoke("report", "--results-dir", str(store), "--out", str(tmp_path / "rep"), "--no-spectra")
    assert res.exit_code == 0, res.output
    lines = plain_lines(res.output, "report")
    stages = [line.split(" (")[0] for line in lines]
    assert stages[0] == f"report: loading records from {store}"
    assert stages[1].startswith("report: leaderboards of ")
    assert "report: figure: sample-efficiency curves of fake_x" in stages[2]
    assert "report: figure: sample-efficiency curves of fake_y" in stages[3]
    assert any("critical-difference diagram" in s for s in stages) and any("heatmap" in s for s in stages)
    assert stages[-1].startswith("report: writing ") and all("elapsed)" in line for line in lines)
    assert res.output.index(lines[-1]) < res.output.index("wrote ")


# --- 2. permissions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_file_the_store_writes_has_a_normal_opens_permissions(store, tmp_path, mask):
    from ctbench.cli.bench import _publish
    from ctbench.tuning import save_tuned

    old = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as fh:
            fh.write("x")
        rec = next(Store(store).iter_records())
        rec.pop("_path")
        record = Store(tmp_path / "s").write(rec)
        tuned = save_tuned(tmp_path / "s", {"method": "pds", "task": TASK, "n_shots": 5, "params": {}})
        _publish(tmp_path / "pub", list(Store(store).iter_records(TASK)), "ctbench bench sweep")
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~mask
    for path in (record, tuned, tmp_path / "pub" / "reference_leaderboard.md", tmp_path / "pub" / "reference_leaderboard.json"):
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    assert not list(record.parent.glob(".tmp-*"))


# --- 3. .gitignore -------------------------------------------------------------------------------------------


def test_gitignore_covers_the_report_and_the_stores_not_the_package():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO).returncode == 0

    for path in ("report/index.html", "report/figures/a.png", "results/mlartifacts/1/x/artifacts/a.json",
                 "results/runs/t/m/k.json", "results/mlflow.db", "results/demo/runs/t/m/k.json",
                 "results/demo/mlflow.db", "results/demo/mlartifacts/1/a.json", "results/demo/.mlflow.lock",
                 "results/demo/.mlflow.journal", "results/demo/tuned/pds/t/N5.json", "results/demo/optuna.db"):
        assert ignored(path), path
    for path in ("ctbench/report/new_module.py", "ctbench/report/build.py", "results/reference_leaderboard.md",
                 "results/spektron/headtohead.md", "docs/report.md"):
        assert not ignored(path), path


# --- 4. synthetic tasks in the report --------------------------------------------------------------------------


def test_report_leaves_synthetic_tasks_out_unless_asked(store, tmp_path):
    res = invoke("report", "--results-dir", str(store), "--out", str(tmp_path / "a"), "--no-spectra")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:") and "synthetic" in line]
    assert len(notes) == 1 and TASK in notes[0] and "--include-synthetic" in notes[0], res.output
    md = (tmp_path / "a" / "summary.md").read_text()
    assert f"### {TASK}" not in md and "### fake_x" in md and "### fake_y" in md
    blocks = [line for line in md.splitlines() if line.startswith("Blocks (")]
    assert blocks and all(line == "Blocks (2): fake_x, fake_y." for line in blocks)  # Friedman without it
    assert not list((tmp_path / "a" / "figures").glob(f"*{TASK}*"))

    res = invoke("report", "--results-dir", str(store), "--out", str(tmp_path / "b"), "--no-spectra",
                 "--include-synthetic")
    assert res.exit_code == 0 and "synthetic task" not in res.output, res.output
    md = (tmp_path / "b" / "summary.md").read_text()
    assert f"### {TASK}" in md and "Blocks (3): fake_x, fake_y, synthetic_a_b." in md

    res = invoke("report", "--results-dir", str(store), "--out", str(tmp_path / "c"), "--no-spectra", "--task", TASK)
    assert res.exit_code == 0 and "synthetic task" not in res.output, res.output
    assert f"### {TASK}" in (tmp_path / "c" / "summary.md").read_text()


def test_report_on_only_synthetic_records_is_a_one_line_error(tmp_path):
    res = invoke("run", "-m", "sbc", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(tmp_path / "r"),
                 "--no-mlflow")
    assert res.exit_code == 0
    res = invoke("report", "--results-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o"))
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert "only synthetic tasks (synthetic_a_b)" in errors[0] and "--include-synthetic" in errors[0]
    assert not (tmp_path / "o" / "index.html").exists()


# --- 5. figures -----------------------------------------------------------------------------------------


def _efficiency_axes(store: Path, metric: str, units: object = None, monkeypatch=None):
    """The axes of the efficiency figure of fake_x, drawn (the figure is kept, not only saved)."""
    import ctbench.report.efficiency as eff
    from ctbench.leaderboard import build_leaderboard
    from ctbench.report.collect import reference_rmsep

    recs = [r for r in Store(store).iter_records("fake_x")]
    if units is not None:
        for r in recs:
            r["task"]["units"] = units
    kept = {}
    real_save = eff.save_figure

    def keep(fig, out_dir, name, caption):
        kept["fig"], kept["caption"] = fig, caption
        return real_save(fig, out_dir, name, caption)

    monkeypatch.setattr(eff, "save_figure", keep)
    rows = [r for r in build_leaderboard(recs, metric=metric, per_property=True) if r["property"] != "mean"]
    eff.efficiency_figure("fake_x", recs, metric, reference_rmsep(recs), store.parent / f"fig-{metric}", rows=rows)
    fig = kept["fig"]
    fig.canvas.draw()
    return [ax for ax in fig.axes if ax.get_visible()], kept["caption"], fig


def test_rmsep_axes_have_units(store, monkeypatch):
    axes, caption, _ = _efficiency_axes(store, "rmsep", monkeypatch=monkeypatch)
    assert [ax.get_ylabel() for ax in axes] == ["RMSEP (property units)"] * len(axes)
    axes, _, _ = _efficiency_axes(store, "rmsep", units={"analyte_a": "g/L"}, monkeypatch=monkeypatch)
    assert [ax.get_title() for ax in axes] == ["analyte_a", "analyte_b"]
    assert [ax.get_ylabel() for ax in axes] == ["RMSEP (g/L)", "RMSEP (property units)"]
    axes, caption, _ = _efficiency_axes(store, "rel_rmsep", monkeypatch=monkeypatch)
    assert {ax.get_ylabel() for ax in axes} == {"RMSEP / RMSEP(full recalibration)"}
    assert "floor" not in caption and "ceiling" not in caption


@pytest.mark.parametrize("metric", ["rel_rmsep", "rmsep", "r2"])
def test_reference_lines_are_labelled_on_their_own_line_inside_the_axes(store, monkeypatch, metric):
    """no_transfer and full_recalibration are named at their dashed lines, the upper line's label
    above it and the lower one's below, every label inside its panel."""
    axes, caption, fig = _efficiency_axes(store, metric, monkeypatch=monkeypatch)
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        labels = {t.get_text().split(" (")[0]: t for t in ax.texts}
        assert set(labels) == {"no_transfer", "full_recalibration"}, [t.get_text() for t in ax.texts]
        box = ax.get_window_extent(renderer)
        levels = {}
        for name, t in labels.items():
            ext = t.get_window_extent(renderer)
            assert box.x0 <= ext.x0 and ext.x1 <= box.x1 + 1 and box.y0 <= ext.y0 and ext.y1 <= box.y1 + 1, (name, metric)
            y = ax.transData.transform((0, t.xy[1]))[1]  # the line's height in pixels
            levels[name] = (y, ext)
        (lo_name, (lo_y, lo_ext)), (hi_name, (hi_y, hi_ext)) = sorted(levels.items(), key=lambda kv: kv[1][0])
        assert hi_ext.y0 >= hi_y - 1 and lo_ext.y1 <= lo_y + 1, (metric, hi_name, lo_name)
    assert "no_transfer (the source model without correction" in caption


# --- 6. the whole page as a PNG --------------------------------------------------------------------------------


FAKE_CHROMIUM = """#!/bin/sh
echo "$@" >> "{log}"
for a in "$@"; do
  case "$a" in
    --dump-dom) echo '<html data-page-height="4321"><body>ok</body></html>'; exit 0;;
    --screenshot=*) printf '\\211PNG\\r\\n\\032\\n' > "${{a#--screenshot=}}"; exit 0;;
  esac
done
exit 3
"""


def test_screenshot_measures_the_page_then_captures_that_height(store, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    exe = bin_dir / "chromium"
    exe.write_text(FAKE_CHROMIUM.format(log=log))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "rep"
    res = invoke("report", "--results-dir", str(store), "--out", str(out), "--no-spectra", "--screenshot",
                 str(tmp_path / "shot.png"))
    assert res.exit_code == 0, res.output
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "--dump-dom" in calls[0] and "--window-size=1400,1000" in calls[0]
    assert f"--window-size=1400,4321 --screenshot={tmp_path / 'shot.png'}" in calls[1]
    assert "1400 x 4321 pixels" in res.output
    assert 'data-page-height' in (out / "index.html").read_text()  # what --dump-dom reads


def test_screenshot_without_chromium_is_a_one_line_error(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    res = invoke("report", "--results-dir", str(store), "--out", str(tmp_path / "o"), "--screenshot", "x.png")
    assert res.exit_code == 2 and "--screenshot needs headless Chromium on PATH" in res.output
    assert not (tmp_path / "o").exists()  # refused before any work


def test_screenshot_with_real_chromium_holds_the_whole_page(store, tmp_path):
    from ctbench.report.screenshot import find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium installed (Debian: apt-get install chromium)")
    from PIL import Image

    out = tmp_path / "rep"
    shot = tmp_path / "shot.png"
    res = invoke("report", "--results-dir", str(store), "--out", str(out), "--no-spectra", "--screenshot", str(shot))
    assert res.exit_code == 0, res.output
    with Image.open(shot) as im:
        width, height = im.size
        assert width == 1400 and height > 3000, im.size  # the old fixed 3000 px cut the page
        assert f"1400 x {height} pixels" in res.output
        bottom = np.asarray(im.convert("L").crop((0, height - 400, width, height)))
    assert (bottom < 128).any()  # the page's last section (dark text), not an empty window


# --- 8. MLflow --------------------------------------------------------------------------------------------------


def _db(results: Path) -> sqlite3.Connection:
    return sqlite3.connect(results / "mlflow.db")


def _experiments(results: Path) -> dict[str, tuple[str, dict[str, str]]]:
    con = _db(results)
    try:
        exps = {i: (n, s) for i, n, s in con.execute("SELECT experiment_id, name, lifecycle_stage FROM experiments")}
        tags: dict[int, dict[str, str]] = {}
        for i, k, v in con.execute("SELECT experiment_id, key, value FROM experiment_tags"):
            tags.setdefault(i, {})[k] = v
    finally:
        con.close()
    return {n: (s, tags.get(i, {})) for i, (n, s) in exps.items()}


def test_experiments_open_on_their_runs_with_a_description_and_default_is_hidden(tmp_path):
    from ctbench.tracking import KIND, KIND_TAG, NOTE_TAG, experiment_tags

    results = tmp_path / "r"
    res = invoke("run", "-m", "sbc,full_recalibration", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir",
                 str(results))
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    exps = _experiments(results)
    assert exps["Default"][0] == "deleted"
    stage, tags = exps[f"ctbench/{TASK}"]
    assert stage == "active" and tags == experiment_tags(f"ctbench/{TASK}")
    assert tags[KIND_TAG] == KIND == "custom_model_development"
    assert "rel_rmsep" in tags[NOTE_TAG] and TASK in tags[NOTE_TAG]
    view = json.loads(tags["mlflow.sharedViewState.ctbench"])
    assert view["name"] == "ctbench: headline metrics" and isinstance(view["createdAt"], int)
    assert "metrics.`rel_rmsep`" in json.loads(view["state"])["selectedColumns"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == [f"ctbench/{TASK}"]  # what the UI lists
    assert client.get_experiment("0").lifecycle_stage == "deleted"


def test_existing_experiments_get_the_tags_they_lack_and_a_used_default_stays(tmp_path):
    from ctbench.tracking import NOTE_TAG, experiment_tags

    results = tmp_path / "r"
    assert invoke("run", "-m", "sbc", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)).exit_code == 0
    con = _db(results)
    con.execute("DELETE FROM experiment_tags")  # a store written by an earlier ctbench
    con.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, 'my own notes', 1)", (NOTE_TAG,))
    con.execute("UPDATE experiments SET lifecycle_stage = 'active' WHERE experiment_id = 0")
    con.execute("UPDATE runs SET experiment_id = 0")  # Default now holds a run
    con.commit()
    con.close()
    assert invoke("run", "-m", "ds", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir", str(results)).exit_code == 0
    exps = _experiments(results)
    want = dict(experiment_tags(f"ctbench/{TASK}"), **{NOTE_TAG: "my own notes"})  # an edited description stays
    assert exps[f"ctbench/{TASK}"][1] == want
    assert exps["Default"][0] == "active"  # it holds a run: never hidden


def test_tune_and_pretrain_experiments_get_their_tags(tmp_path):
    from ctbench.tracking import KIND_TAG, NOTE_TAG

    results = tmp_path / "r"
    res = invoke("tune", "-m", "pds", "-t", TASK, "-n", "5", "--outer", "0", "--trials", "2", "--reps", "2",
                 "--results-dir", str(results))
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    exps = _experiments(results)
    stage, tags = exps[f"ctbench-tune/{TASK}"]
    assert tags[KIND_TAG] == "custom_model_development" and "ctbench tune" in tags[NOTE_TAG]
    assert exps["Default"][0] == "deleted"


def test_runs_carry_rel_rmsep_as_the_report_computes_it_also_when_the_reference_comes_later(tmp_path):
    from ctbench.report.collect import record_value, reference_rmsep

    results = tmp_path / "r"
    grid = ["-t", TASK, "--shots", "5,10", "--reps", "2", "--results-dir", str(results)]
    assert invoke("run", "-m", "sbc,no_transfer", *grid).exit_code == 0
    con = _db(results)
    assert con.execute("SELECT COUNT(*) FROM latest_metrics WHERE key = 'rel_rmsep'").fetchone() == (0,)
    con.close()
    assert invoke("run", "-m", "full_recalibration", *grid).exit_code == 0  # the reference, in a later command
    recs = list(Store(results).iter_records())
    refs = reference_rmsep(recs)
    want = {r["key"]: record_value(r, "rel_rmsep", None, refs) for r in recs}
    con = _db(results)
    got = dict(con.execute("SELECT k.value, m.value FROM latest_metrics m JOIN tags k ON k.run_uuid = m.run_uuid "
                           "AND k.key = 'ctbench.record_key' WHERE m.key = 'rel_rmsep'").fetchall())
    hist = con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'rel_rmsep' AND step = 0").fetchone()[0]
    con.close()
    assert set(got) == set(want) and hist == len(want) == 12
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_rel_rmsep_and_experiment_tags_read_the_same_through_mlflows_client(tmp_path):
    """The SQL writer against MLflow's client for what this issue adds: a new ctbench experiment's
    tags, a run's rel_rmsep written with it and rel_rmsep added later."""
    from ctbench.mlflow_sink import ClientRuns, SqlRuns, draft
    from ctbench.tracking import experiment_tags, open_client

    results = tmp_path / "r"
    assert invoke("run", "-m", "sbc", "-t", TASK, "--shots", "5", "--reps", "2", "--results-dir", str(results)).exit_code == 0
    client, _ = open_client(results)
    sql, api = SqlRuns(results, results / "mlflow.db", client), ClientRuns(results, client)
    ea, eb = sql.experiment("ctbench/check_sql"), api.experiment("ctbench/check_api")
    assert client.get_experiment(ea).tags == experiment_tags("ctbench/check_sql")
    assert client.get_experiment(eb).tags == experiment_tags("ctbench/check_api")
    recs = list(Store(results).iter_records())
    ids = []
    for rec, rel in zip(recs, (1.25, None)):
        path = Path(rec.pop("_path"))
        a, b = (draft(rec, path, path.read_bytes(), rec["key"], rel) for _ in range(2))
        sql.write(ea, [a], [])
        api.write(eb, [b], [])
        ids.append((a.run_id, b.run_id))
    lack_sql, lack_api = sql.lacking(ea), api.lacking(eb)
    assert [r[0] for r in lack_sql] == [ids[1][0]] and [r[0] for r in lack_api] == [ids[1][1]]
    assert lack_sql[0][1:] == lack_api[0][1:]  # split and per-property RMSEP
    sql.add_metric("rel_rmsep", [(ids[1][0], 0.75)])
    api.add_metric("rel_rmsep", [(ids[1][1], 0.75)])
    sql.close()
    for (a, b), want in zip(ids, (1.25, 0.75)):
        ra, rb = client.get_run(a), client.get_run(b)
        assert ra.data.metrics == rb.data.metrics and ra.data.metrics["rel_rmsep"] == want
        assert ra.data.tags == rb.data.tags
        assert [(m.value, m.step, m.timestamp) for m in client.get_metric_history(a, "rel_rmsep")] == \
               [(m.value, m.step, m.timestamp) for m in client.get_metric_history(b, "rel_rmsep")]


@pytest.mark.slow
def test_mlflow_server_serves_the_tags_and_hides_default(tmp_path):
    """``mlflow server`` on the store ctbench wrote: its REST API (what the UI reads) lists the
    task's experiment with its tags, and not the empty Default experiment."""
    sys.path.insert(0, str(Path(__file__).parent))
    from servers import free_port, mlflow_missing, stop_process, wait_until

    if mlflow_missing():
        pytest.skip(mlflow_missing())
    results = tmp_path / "r"
    assert invoke("run", "-m", "sbc,full_recalibration", "-t", TASK, "--shots", "5", "--reps", "1", "--results-dir",
                  str(results)).exit_code == 0
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}", "--workers", "1"],
                                cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{base}/health", timeout=2).status == 200, "mlflow server",
                   proc=proc, log=log, interval=0.25)
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search", data=b'{"max_results": 100}',
                                     headers={"Content-Type": "application/json"})
        found = json.loads(urllib.request.urlopen(req, timeout=30).read())["experiments"]
    finally:
        stop_process(proc, group=True)
    assert [e["name"] for e in found] == [f"ctbench/{TASK}"]
    tags = {t["key"]: t["value"] for t in found[0]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"].startswith(f"ctbench records of task {TASK}")
    assert "mlflow.sharedViewState.ctbench" in tags
