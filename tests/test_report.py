"""`ctbench report`: HTML page, Markdown summary, figures, statistics, and awkward stores."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.method import Tags, TransferMethod
from ctbench.report.figures import PNG_MAGIC
from ctbench.report.significance import cd_cliques, friedman_nemenyi
from ctbench.store import Store

runner = CliRunner()
REFS = "no_transfer,target_only,full_recalibration"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


class MeanShift(TransferMethod):
    """Test-only spectrum corrector: subtracts the standards' mean target - source difference."""

    name = "mean_shift"
    tags = Tags(min_shots=1, corrects_spectra=True)

    def __init__(self, max_components: int = 5, random_state: int = 0):
        self.max_components = max_components
        self.random_state = random_state

    def fit(self, source):
        from ctbench.pls import PLSCalibration

        self.model_ = PLSCalibration(max_components=self.max_components, cv=3, random_state=self.random_state)
        self.model_.fit(source.X, source.y)
        return self

    def transfer(self, standards, unlabelled=None):
        self.shift_ = (standards.X_target - standards.X_source).mean(axis=0)
        return self

    def transform_target(self, X):
        return np.asarray(X) - self.shift_

    def predict(self, X):
        return self.model_.predict(self.transform_target(X))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small real store: the reference methods on the synthetic task, N = 5, 10, 3 reps."""
    results = tmp_path_factory.mktemp("report_store")
    res = invoke("run", "-m", REFS, "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "3",
                 "--results-dir", str(results), "--no-mlflow")
    assert res.exit_code == 0, res.output
    return results


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def figure_refs(text: str) -> list[str]:
    return sorted(set(re.findall(r"figures/[A-Za-z0-9_.\-]+\.png", text)))


def check_figures(out: Path, text: str) -> list[str]:
    refs = figure_refs(text)
    for ref in refs:
        data = (out / ref).read_bytes()
        assert data[:8] == PNG_MAGIC, ref
    return refs


def test_report_end_to_end(store, tmp_path):
    out = tmp_path / "rep"
    res = invoke("report", "--results-dir", str(store), "--out", str(out))
    assert res.exit_code == 0, res.output
    html = (out / "index.html").read_text()
    md = (out / "summary.md").read_text()
    # self-contained: every image is embedded, and each one is also written under figures/
    assert "<img" in html and 'src="data:image/png;base64,' in html
    assert not re.search(r'<img[^>]+src="(?!data:)', html)
    html_refs = check_figures(out, html)
    md_refs = check_figures(out, md)
    assert any("efficiency_synthetic_a_b" in r for r in md_refs)
    assert any("gap_closed_heatmap" in r for r in md_refs)
    assert set(md_refs) <= set(html_refs)
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(Path(r).name for r in html_refs)
    # leaderboard tables with reference rows
    assert "## Leaderboards" in md and "### synthetic_a_b" in md
    assert "| task | N | property | rank | method |" in md
    for m in ("no_transfer *", "target_only *", "full_recalibration *"):
        assert m in md
    # significance: one task, two N -> 2 blocks, 3 methods: the test runs
    assert "## Significance across tasks (Friedman, Nemenyi)" in md
    assert "Friedman test on RMSEP" in md and "CD =" in md
    assert "critical_difference_rmsep.png" in md
    # no spectrum-correcting method: a note instead of a figure
    assert "no method in the store corrects spectra" in md
    assert "single task" in md


def test_spectra_failures_and_missing_reference(store, tmp_path, extra_methods):
    """A spectrum-correcting method is refitted and drawn; failed records and a missing
    reference are reported instead of crashing."""
    extra_methods(MeanShift)
    results = copy_store(store, tmp_path / "store")
    res = invoke("run", "-m", "mean_shift", "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "2",
                 "--results-dir", str(results), "--no-mlflow")
    assert res.exit_code == 0, res.output
    st = Store(results)
    recs = list(st.iter_records())
    # one failed record, and drop full_recalibration entirely
    victim = next(r for r in recs if r["identity"]["method"] == "mean_shift" and r["identity"]["n_shots"] == 10)
    victim.update(status="failed", metrics=None, error={"phase": "transfer/predict", "type": "RuntimeError",
                                                          "message": "boom", "traceback": ""})
    victim.pop("_path")
    st.write(victim)
    for r in recs:
        if r["identity"]["method"] == "full_recalibration":
            Path(r["_path"]).unlink()
    out = tmp_path / "rep"
    res = invoke("report", "--results-dir", str(results), "--out", str(out), "--shots-for-heatmap", "7")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    html = (out / "index.html").read_text()
    check_figures(out, html)
    assert "standard_spectra_synthetic_a_b.png" in md
    assert (out / "figures" / "standard_spectra_synthetic_a_b.png").read_bytes()[:8] == PNG_MAGIC
    assert "missing reference record(s): full_recalibration" in md
    assert "gap closed cannot be computed" in md
    assert "| synthetic_a_b | mean_shift | 10 | 1 | [transfer/predict] RuntimeError: boom |" in md
    assert "(1 failed)" in md


def test_one_method_one_task(store, tmp_path):
    results = tmp_path / "store"
    res = invoke("run", "-m", "no_transfer", "-t", "synthetic_a_b", "--shots", "5", "--reps", "1",
                 "--results-dir", str(results), "--no-mlflow")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    res = invoke("report", "--results-dir", str(results), "--out", str(out), "--no-spectra")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    assert "Friedman test not run: too few" in md
    assert "missing reference record(s): full_recalibration" in md
    check_figures(out, (out / "index.html").read_text())


def test_all_records_failed(store, tmp_path):
    results = copy_store(store, tmp_path / "store")
    st = Store(results)
    for r in st.iter_records():
        r.pop("_path")
        r.update(status="failed", metrics=None, error={"phase": "fit", "type": "ValueError", "message": "bad"})
        st.write(r)
    out = tmp_path / "rep"
    res = invoke("report", "--results-dir", str(results), "--out", str(out))
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    assert "every record of this task failed" in md
    assert "Friedman test not run" in md


def test_errors(tmp_path, store):
    res = runner.invoke(app, ["report", "--results-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no records" in res.output
    res = runner.invoke(app, ["report", "--results-dir", str(store), "--out", str(tmp_path / "o"), "--metric", "mae"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    assert not (tmp_path / "o" / "index.html").exists()


def _rows(table: dict[tuple[str, int], dict[str, float]]) -> list[dict]:
    return [{"task": t, "n_shots": n, "property": "mean", "method": m, "mean": v}
            for (t, n), d in table.items() for m, v in d.items()]


def test_friedman_nemenyi_by_hand():
    from scipy import stats

    # 4 blocks, 3 methods: a always best, c always worst -> ranks 1, 2, 3 in every block
    table = {("t1", 5): {"a": 0.1, "b": 0.2, "c": 0.3}, ("t1", 10): {"a": 0.1, "b": 0.25, "c": 0.4},
             ("t2", 5): {"a": 1.0, "b": 2.0, "c": 3.0}, ("t2", 10): {"a": 1.0, "b": 1.5, "c": 9.0, "d": 0.0}}
    res = friedman_nemenyi(_rows(table), "rmsep")
    assert res.ran and res.methods == ["a", "b", "c"] and res.excluded == ["d"]
    assert res.avg_ranks == {"a": 1.0, "b": 2.0, "c": 3.0}
    # chi2 = 12 B / (k (k+1)) * sum(R_j^2) - 3 B (k+1) = 12*4/12 * 14 - 48 = 8
    assert res.statistic == pytest.approx(8.0)
    assert res.p_value == pytest.approx(stats.chi2.sf(8.0, 2))
    assert res.q_alpha == pytest.approx(2.343, abs=1e-3)  # Demšar 2006, table 5
    assert res.cd == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 4)), abs=1e-3)
    # higher-is-better metric reverses the ranks
    assert friedman_nemenyi(_rows(table), "r2").methods == ["c", "b", "a"]
    assert not friedman_nemenyi(_rows({("t", 5): {"a": 1, "b": 2, "c": 3}}), "rmsep").ran


def test_cd_cliques():
    assert cd_cliques({"a": 1.0, "b": 1.5, "c": 3.0, "d": 3.2}, 1.0) == [["a", "b"], ["c", "d"]]
    assert cd_cliques({"a": 1.0, "b": 1.8, "c": 2.6}, 1.0) == [["a", "b"], ["b", "c"]]
    assert cd_cliques({"a": 1.0, "b": 3.0}, 1.0) == []


@pytest.mark.slow
def test_page_renders_in_headless_chromium(store, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium installed")
    out = tmp_path / "rep"
    assert invoke("report", "--results-dir", str(store), "--out", str(out)).exit_code == 0
    shot = tmp_path / "page.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--screenshot={shot}", "--window-size=1400,3000",
                    (out / "index.html").resolve().as_uri()], check=True, timeout=120, capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000  # a blank page compresses to a few KB
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--dump-dom",
                          (out / "index.html").resolve().as_uri()], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    assert "ctbench report" in dom and dom.count("<img") >= 3
