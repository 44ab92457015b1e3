"""`ctbench report`: HTML page, Markdown summary, figures, statistics, and awkward stores."""

from __future__ import annotations

import copy
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
from ctbench.report.page import fmt_interval, group_labels
from ctbench.report.significance import cd_cliques, cd_figure, friedman_by_shots, friedman_nemenyi, holm
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


FAKE_TASKS = {"synthetic_a_b": "synthetic", "synthetic_c": "synthetic", "other_x": "other", "other_y": "other"}
FAKE_METHODS = {"alpha": 0.2, "beta": 0.3, "gamma": 0.35, "delta": 0.5}


@pytest.fixture(scope="module")
def bench_store(store, tmp_path_factory) -> Path:
    """The store's records copied to 4 tasks of 2 datasets, plus 4 made-up transfer methods (the
    target_only records with every error scaled by a method factor, so the leaderboard's
    bootstrap sees consistent residuals); delta has no record on other_y at N = 10."""
    dst = tmp_path_factory.mktemp("bench_store")
    st = Store(dst)
    rng = np.random.default_rng(0)
    recs = list(Store(store).iter_records())
    for task, dataset in FAKE_TASKS.items():
        for r in recs:
            base = copy.deepcopy(r)
            base.pop("_path", None)
            base["identity"]["task"] = task
            base["task"] = dict(base["task"], name=task, dataset=dataset)
            st.write(base)
            if r["identity"]["method"] != "target_only":
                continue
            for name, factor in FAKE_METHODS.items():
                if (name, task, r["identity"]["n_shots"]) == ("delta", "other_y", 10):
                    continue
                c = copy.deepcopy(base)
                c["identity"]["method"] = name
                c["method"] = dict(c["method"], name=name, plugin="tests",
                                   tags=dict(c["method"]["tags"], reference=False))
                c["reference"] = False
                k = factor * (1 + 0.05 * rng.standard_normal())
                for v in c["metrics"]["per_property"].values():
                    v["rmsep"] *= k
                c["metrics"]["mean"]["rmsep"] *= k
                if c.get("residuals"):
                    c["residuals"]["values"] = (np.asarray(c["residuals"]["values"]) * k).tolist()
                st.write(c)
    return dst


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
    res = invoke("report", "--include-synthetic", "--results-dir", str(store), "--out", str(out))
    assert res.exit_code == 0, res.output
    html = (out / "index.html").read_text()
    md = (out / "summary.md").read_text()
    # self-contained: every image is embedded, and each one is also written under figures/
    assert "<img" in html and 'src="data:image/png;base64,' in html
    assert not re.search(r'<img[^>]+src="(?!data:)', html)
    html_refs = check_figures(out, html)
    md_refs = check_figures(out, md)
    assert any("efficiency_synthetic_a_b_rel_rmsep" in r for r in md_refs)  # relative RMSEP by default
    assert any("gap_closed_per_property_heatmap" in r for r in md_refs)
    assert set(md_refs) <= set(html_refs)
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(Path(r).name for r in html_refs)
    # leaderboard tables: headline relative RMSEP with its interval, raw RMSEP mean ± sd, R2
    assert "## Leaderboards" in md and "### synthetic_a_b" in md
    assert "| N | group | method | rel. RMSEP [95 % CI] | RMSEP mean ± sd | R² | reps |" in md
    assert "| 5 | ref | full_recalibration * | 1.00 [1.00, 1.00] |" in md
    assert re.search(r"\| 10 \| ref \| target_only \* \| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \| [0-9.]+ ± ", md)
    for m in ("no_transfer *", "target_only *", "full_recalibration *"):
        assert m in md
    assert "95 % bootstrap interval" in md
    # significance: only reference methods -> nothing is ranked, and the page says why
    assert "## Significance across tasks at each N (Friedman, Nemenyi)" in md
    assert "no non-reference method has a row" in md
    assert "critical_difference" not in md
    assert "Gap closed per property (secondary)" in md
    # no spectrum-correcting method: a note instead of a figure
    assert "no method in the store corrects spectra" in md
    assert "single task" in md


def test_report_significance_per_shot_count(bench_store, tmp_path):
    """One Friedman / Nemenyi analysis per N over the task blocks; a method missing from one block
    is listed with that block and the others are still ranked; reference methods never are."""
    out = tmp_path / "rep"
    res = invoke("report", "--include-synthetic", "--results-dir", str(bench_store), "--out", str(out), "--no-spectra")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    html = (out / "index.html").read_text()
    refs = check_figures(out, md)
    check_figures(out, html)
    assert "figures/critical_difference_rel_rmsep_N5_tasks.png" in refs
    assert "figures/critical_difference_rel_rmsep_N10_tasks.png" in refs
    sig = md[md.index("## Significance"):md.index("## Gap closed")]
    n5, n10 = sig[sig.index("### N = 5"):sig.index("### N = 10")], sig[sig.index("### N = 10"):]
    assert "over B = 4 task blocks and k = 4 non-reference methods" in n5
    assert "over B = 4 task blocks and k = 3 non-reference methods" in n10
    assert "Not ranked (no value in some block): delta (no value in 1 of 4 task block(s) at N = 10: other_y)" in n10
    assert "Not ranked" not in n5 and "| delta | 4.00 |" in n5
    for part in (n5, n10):
        table = part[part.index("| method | average rank"):part.index("Wilcoxon signed-rank")]
        assert "| alpha | 1.00 |" in table and "| beta | 2.00 |" in table
        for ref in ("no_transfer", "target_only", "full_recalibration"):
            assert ref not in table
        assert "Reference methods, never ranked: full_recalibration, no_transfer, target_only." in part
        assert "the 2 synthetic tasks share 120 samples" in part and "optimistic" in part
    assert "critical difference diagram, N = 10" in html
    # the leaderboard rows of the made-up methods carry tie groups
    assert re.search(r"\| 10 \| 1=? \| alpha \| 0\.\d\d \[", md)

    out2 = tmp_path / "rep_ds"
    res = invoke("report", "--include-synthetic", "--results-dir", str(bench_store), "--out", str(out2), "--no-spectra",
                 "--blocks", "datasets")
    assert res.exit_code == 0, res.output
    md2 = (out2 / "summary.md").read_text()
    assert "## Significance across datasets at each N (Friedman, Nemenyi)" in md2
    assert "over B = 2 dataset blocks and k = 4 non-reference methods" in md2
    assert "geometric mean of its relative RMSEP over the dataset's tasks" in md2
    assert "delta (no value in 1 of 2 dataset block(s) at N = 10: other (no value in other_y))" in md2
    assert "critical_difference_rel_rmsep_N10_datasets.png" in md2


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
    res = invoke("report", "--include-synthetic", "--results-dir", str(results), "--out", str(out), "--shots-for-heatmap", "7")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    html = (out / "index.html").read_text()
    check_figures(out, html)
    assert "standard_spectra_synthetic_a_b.png" in md
    assert (out / "figures" / "standard_spectra_synthetic_a_b.png").read_bytes()[:8] == PNG_MAGIC
    assert "missing reference record(s): full_recalibration" in md
    assert "relative RMSEP, its interval, the tie groups and gap closed are not available" in md
    assert "gap closed cannot be computed" in md
    assert "| synthetic_a_b | mean_shift | 10 | 1 | [transfer/predict] RuntimeError: boom |" in md
    assert "(1 failed)" in md
    # no full_recalibration: no relative RMSEP, so one method is not ranked ("no value") at N = 5
    assert "Friedman test not run at N = 5" in md and "mean_shift" in md


def test_one_method_one_task(store, tmp_path):
    results = tmp_path / "store"
    res = invoke("run", "-m", "no_transfer", "-t", "synthetic_a_b", "--shots", "5", "--reps", "1",
                 "--results-dir", str(results), "--no-mlflow")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    res = invoke("report", "--include-synthetic", "--results-dir", str(results), "--out", str(out), "--no-spectra")
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    assert "no non-reference method has a row" in md
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
    res = invoke("report", "--include-synthetic", "--results-dir", str(results), "--out", str(out))
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    assert "every record of this task failed" in md
    assert "no non-reference method has a row" in md  # failed reference rows are still reference rows


def test_errors(tmp_path, store):
    res = runner.invoke(app, ["report", "--results-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no records" in res.output
    res = runner.invoke(app, ["report", "--results-dir", str(store), "--out", str(tmp_path / "o"), "--metric", "mae"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    res = runner.invoke(app, ["report", "--results-dir", str(store), "--out", str(tmp_path / "o"), "--blocks", "reps"])
    assert res.exit_code == 2 and "--blocks must be tasks or datasets" in res.output
    assert not (tmp_path / "o" / "index.html").exists()


# -- significance on hand-made leaderboard rows -----------------------------------------------

def _row(task: str, n: int, method: str, value: float, dataset: str | None = None, reference: bool = False,
         reps: int = 3, metric: str = "rel_rmsep") -> dict:
    return {"task": task, "dataset": dataset if dataset is not None else task.split("_")[0], "n_shots": n,
            "property": "mean", "method": method, "reference": reference, "metric": metric, "mean": value,
            "reps": reps}


def _rows(table: dict[tuple[str, int], dict[str, float]], **kw) -> list[dict]:
    return [_row(t, n, m, v, **kw) for (t, n), d in table.items() for m, v in d.items()]


def _zero_shot_bench() -> list[dict]:
    """6 tasks of 3 datasets: at N = 0 only zero-shot methods (and no_transfer), at N = 5 and 10
    five transfer methods (pds best, then ds, sbc, cca, lora) plus the references."""
    rows = []
    rng = np.random.default_rng(1)
    tasks = ["corn_a", "corn_b", "corn_c", "tablet_a", "tablet_b", "raman_a"]
    for t in tasks:
        rows += [_row(t, 0, "zero_a", 3 + rng.random()), _row(t, 0, "zero_b", 4 + rng.random()),
                 _row(t, 0, "no_transfer", 5.0, reference=True)]
        for n in (5, 10):
            for i, m in enumerate(["pds", "ds", "sbc", "cca", "lora"]):
                rows.append(_row(t, n, m, 1.1 + 0.3 * i + 0.2 * rng.random() - 0.05 * n / 10))
            rows += [_row(t, n, "full_recalibration", 1.0, reference=True),
                     _row(t, n, "no_transfer", 5.0, reference=True),
                     _row(t, n, "target_only", 0.5, reference=True)]  # would rank first if it were ranked
    return rows


def test_zero_shot_block_does_not_drop_transfer_methods():
    """The old test pooled (task, N) blocks and kept only methods present in every one, so a
    N = 0 block holding only zero-shot methods removed every transfer method. Now each N is
    analysed on its own and the transfer methods are ranked at N = 5 and N = 10."""
    results = {r.n_shots: r for r in friedman_by_shots(_zero_shot_bench(), "rel_rmsep")}
    assert sorted(results) == [0, 5, 10]
    for n in (5, 10):
        res = results[n]
        assert res.ran and res.blocks == ["corn_a", "corn_b", "corn_c", "raman_a", "tablet_a", "tablet_b"]
        assert res.methods == ["pds", "ds", "sbc", "cca", "lora"]
        assert res.avg_ranks["pds"] == 1.0 and res.avg_ranks["lora"] == 5.0
        assert res.excluded == [] and res.dropped_blocks == []
        assert res.references == ["full_recalibration", "no_transfer", "target_only"]
        assert res.significant and res.cd == pytest.approx(
            res.q_alpha * np.sqrt(5 * 6 / (6 * 6)))
        assert "the 3 corn tasks share" in res.dependence and "optimistic" in res.dependence
    zero = results[0]
    assert not zero.ran and zero.methods == ["zero_a", "zero_b"] and "2 non-reference method(s)" in zero.reason
    assert zero.references == ["no_transfer"]


def test_reference_rows_are_never_ranked():
    rows = _zero_shot_bench()
    for n in (5, 10):
        res = friedman_nemenyi(rows, "rel_rmsep", n)
        assert not {"no_transfer", "target_only", "full_recalibration"} & set(res.methods + res.excluded_methods)
        assert not {"no_transfer", "target_only", "full_recalibration"} & set(res.avg_ranks)
    # a failed reference row may lack the flag: its name still keeps it out of the ranking
    failed_ref = _row("corn_a", 10, "no_transfer", float("nan"), reps=0)
    assert "no_transfer" not in friedman_nemenyi(rows + [failed_ref], "rel_rmsep", 10).excluded_methods
    # references alone: nothing to rank at all
    only_refs = [r for r in rows if r["reference"]]
    assert friedman_by_shots(only_refs, "rel_rmsep") == []
    res = friedman_nemenyi(only_refs, "rel_rmsep", 10)
    assert not res.ran and res.methods == [] and res.excluded == []


def test_method_missing_from_one_block_is_listed_and_the_rest_ranked():
    rows = [r for r in _zero_shot_bench() if not (r["method"] == "lora" and r["task"] == "tablet_b")]
    # a failed row (no value) counts as missing too, and says so
    rows = [r for r in rows if not (r["method"] == "cca" and r["task"] == "corn_b" and r["n_shots"] == 10)]
    rows.append(_row("corn_b", 10, "cca", float("nan"), reps=0))
    res10 = friedman_nemenyi(rows, "rel_rmsep", 10)
    assert res10.ran and res10.methods == ["pds", "ds", "sbc"]
    assert res10.excluded_methods == ["cca", "lora"]
    cca, lora = res10.excluded
    assert cca.blocks == ["corn_b"] and "corn_b (failed)" in cca.reason
    assert lora.blocks == ["tablet_b"] and "no value in 1 of 6 task block(s) at N = 10: tablet_b" in lora.reason
    res5 = friedman_nemenyi(rows, "rel_rmsep", 5)
    assert res5.methods == ["pds", "ds", "sbc", "cca"] and res5.excluded_methods == ["lora"]


def test_blocks_missing_most_methods_are_dropped_when_too_few_methods_remain():
    table = {("t1", 10): {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0},
             ("t2", 10): {"a": 1.0, "b": 2.5, "c": 3.5, "d": 3.0},
             ("t3", 10): {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0},
             ("t4", 10): {"a": 1.0, "b": 2.0}}  # lacks c and d: only a, b in every block
    res = friedman_nemenyi(_rows(table), "rel_rmsep", 10)
    assert res.ran and res.blocks == ["t1", "t2", "t3"] and res.methods == ["a", "b", "c", "d"]
    assert [d.block for d in res.dropped_blocks] == ["t4"]
    assert res.dropped_blocks[0].missing == ["c", "d"] and "fewer than 3 methods" in res.dropped_blocks[0].reason
    assert res.excluded == []
    # dropping cannot help: nothing is dropped and the test is not run
    table2 = {("t1", 10): {"a": 1.0, "b": 2.0, "c": 3.0}, ("t2", 10): {"a": 1.0, "b": 2.0},
              ("t3", 10): {"a": 1.0, "c": 2.0}}
    res2 = friedman_nemenyi(_rows(table2), "rel_rmsep", 10)
    assert not res2.ran and res2.dropped_blocks == [] and res2.excluded_methods == ["b", "c"]


def test_friedman_nemenyi_by_hand():
    from scipy import stats

    # 4 task blocks at N = 10, 3 methods: a always best, c always worst -> ranks 1, 2, 3 in every block;
    # d lacks three blocks; rows at N = 5 must not change anything
    table = {("t1", 10): {"a": 0.1, "b": 0.2, "c": 0.3}, ("t2", 10): {"a": 0.1, "b": 0.25, "c": 0.4},
             ("t3", 10): {"a": 1.0, "b": 2.0, "c": 3.0}, ("t4", 10): {"a": 1.0, "b": 1.5, "c": 9.0, "d": 0.0},
             ("t1", 5): {"a": 9.0, "b": 1.0, "c": 1.0}}
    res = friedman_nemenyi(_rows(table, metric="rmsep"), "rmsep", 10)
    assert res.ran and res.n_shots == 10 and res.blocks == ["t1", "t2", "t3", "t4"]
    assert res.methods == ["a", "b", "c"] and res.excluded_methods == ["d"]
    assert res.excluded[0].blocks == ["t1", "t2", "t3"]
    assert res.avg_ranks == {"a": 1.0, "b": 2.0, "c": 3.0}
    # chi2 = 12 B / (k (k+1)) * sum(R_j^2) - 3 B (k+1) = 12*4/12 * 14 - 48 = 8
    assert res.statistic == pytest.approx(8.0)
    assert res.p_value == pytest.approx(stats.chi2.sf(8.0, 2))
    assert res.q_alpha == pytest.approx(2.343, abs=1e-3)  # Demšar 2006, table 5
    assert res.cd == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 4)), abs=1e-3)
    # each task is its own dataset here: no shared samples
    assert res.dependence.startswith("Each task block comes from a different dataset")
    # higher-is-better metric reverses the ranks
    assert friedman_nemenyi(_rows(table, metric="r2"), "r2", 10).methods == ["c", "b", "a"]
    assert not friedman_nemenyi(_rows({("t", 10): {"a": 1, "b": 2, "c": 3}}, metric="rmsep"), "rmsep", 10).ran
    # rows built for another metric: the value is read from the row's matching field
    other = [dict(r, metric="rel_rmsep", mean=-1.0, rmsep_mean=r["mean"]) for r in _rows(table, metric="rmsep")]
    assert friedman_nemenyi(other, "rmsep", 10).statistic == pytest.approx(8.0)
    # Wilcoxon signed-rank against the best, Holm-adjusted
    pw = {p.method: p for p in res.pairwise}
    for m in ("b", "c"):
        x = np.array([table[(t, 10)][m] for t in res.blocks])
        a = np.array([table[(t, 10)]["a"] for t in res.blocks])
        assert pw[m].p_value == pytest.approx(stats.wilcoxon(x, a).pvalue)
        assert pw[m].wins == 0 and pw[m].best == "a"
    assert [pw["b"].p_holm, pw["c"].p_holm] == pytest.approx(list(holm([pw["b"].p_value, pw["c"].p_value])))


def test_holm():
    assert list(holm([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert list(holm([0.5, 0.01])) == pytest.approx([0.5, 0.02])
    assert np.isnan(holm([np.nan, 0.01])[0]) and holm([np.nan, 0.01])[1] == pytest.approx(0.01)


def test_dataset_blocks_aggregate_by_geometric_mean():
    # a: 1 and 4 on corn (geometric mean 2, arithmetic 2.5); b: 2.2 on both -> a wins on corn only by the
    # geometric mean; c is worst everywhere
    table = {("corn_1", 10): {"a": 1.0, "b": 2.2, "c": 5.0}, ("corn_2", 10): {"a": 4.0, "b": 2.2, "c": 5.0},
             ("tablet_1", 10): {"a": 1.0, "b": 1.5, "c": 2.0},
             ("raman_1", 10): {"a": 1.0, "b": 1.2, "c": 3.0}, ("raman_2", 10): {"a": 1.1, "b": 1.3, "c": 3.0}}
    rows = _rows(table)
    res = friedman_nemenyi(rows, "rel_rmsep", 10, blocks="datasets")
    assert res.ran and res.block_kind == "datasets" and res.blocks == ["corn", "raman", "tablet"]
    assert res.members == {"corn": ["corn_1", "corn_2"], "raman": ["raman_1", "raman_2"], "tablet": ["tablet_1"]}
    assert res.methods == ["a", "b", "c"] and res.avg_ranks == {"a": 1.0, "b": 2.0, "c": 3.0}
    corn = res.blocks.index("corn")
    assert res.values[corn].tolist() == pytest.approx([2.0, 2.2, 5.0])
    assert res.values[res.blocks.index("raman"), 0] == pytest.approx(np.sqrt(1.0 * 1.1))
    assert "independent" in res.dependence
    # for another metric the block value is the arithmetic mean: b now beats a on corn
    rows_rmsep = [dict(r, metric="rmsep") for r in rows]
    res2 = friedman_nemenyi(rows_rmsep, "rmsep", 10, blocks="datasets")
    assert res2.methods == ["a", "b", "c"]
    assert res2.values[res2.blocks.index("corn")].tolist() == pytest.approx([2.5, 2.2, 5.0])
    assert res2.ranks[res2.blocks.index("corn")].tolist() == [2.0, 1.0, 3.0]
    assert res2.avg_ranks["a"] == pytest.approx(4 / 3) and res2.avg_ranks["b"] == pytest.approx(5 / 3)
    # a method lacking one task of a dataset lacks the whole dataset block, and is listed
    rows3 = [r for r in rows if not (r["method"] == "b" and r["task"] == "raman_2")]
    rows3 += _rows({(t, 10): {"d": 1.0} for t in ("corn_1", "corn_2", "tablet_1", "raman_1", "raman_2")})
    res3 = friedman_nemenyi(rows3, "rel_rmsep", 10, blocks="datasets")
    assert res3.methods == ["d", "a", "c"] and res3.excluded_methods == ["b"]
    assert res3.excluded[0].blocks == ["raman"] and "raman (no value in raman_2)" in res3.excluded[0].reason
    # a task that only an odd method ran is left out of its dataset block (and listed), not the other methods
    rows4 = rows + [_row("corn_3", 10, "e", 1.0), _row("corn_3", 10, "a", 1.0)]
    res4 = friedman_nemenyi(rows4, "rel_rmsep", 10, blocks="datasets")
    assert res4.methods == ["a", "b", "c"] and res4.members["corn"] == ["corn_1", "corn_2"]
    assert [d.block for d in res4.dropped_blocks] == ["corn/corn_3"] and res4.dropped_blocks[0].missing == ["b", "c"]
    assert res4.excluded_methods == ["e"] and res4.excluded[0].blocks == ["corn", "raman", "tablet"]
    # the task blocks of the same rows say they are not independent
    tasks = friedman_nemenyi(rows, "rel_rmsep", 10, dataset_samples={"corn": 80})
    assert "the 2 corn tasks share 80 samples" in tasks.dependence and "optimistic" in tasks.dependence


def test_datasets_from_the_mapping_when_rows_lack_them():
    table = {("x1", 10): {"a": 1.0, "b": 2.0, "c": 3.0}, ("x2", 10): {"a": 1.0, "b": 2.0, "c": 3.0},
             ("y1", 10): {"a": 1.0, "b": 3.0, "c": 2.0}}
    rows = [dict(r, dataset="") for r in _rows(table)]
    res = friedman_nemenyi(rows, "rel_rmsep", 10, blocks="datasets", datasets={"x1": "x", "x2": "x"})
    assert res.blocks == ["x", "y1"] and "dataset unknown for task(s) y1" in res.notes[0]
    with pytest.raises(ValueError, match="blocks must be"):
        friedman_nemenyi(rows, "rel_rmsep", 10, blocks="reps")


def test_cd_figure_names_n_and_blocks(tmp_path):
    res = friedman_nemenyi(_zero_shot_bench(), "rel_rmsep", 10)
    fig = cd_figure(res, tmp_path)
    assert fig.relpath == "figures/critical_difference_rel_rmsep_N10_tasks.png" and fig.png[:8] == PNG_MAGIC
    assert "at N = 10" in fig.caption and "one per task" in fig.caption and "not independent" in fig.caption
    res_ds = friedman_nemenyi(_zero_shot_bench(), "rel_rmsep", 10, blocks="datasets")
    assert "one per dataset" in cd_figure(res_ds, tmp_path).caption


def test_cd_cliques():
    assert cd_cliques({"a": 1.0, "b": 1.5, "c": 3.0, "d": 3.2}, 1.0) == [["a", "b"], ["c", "d"]]
    assert cd_cliques({"a": 1.0, "b": 1.8, "c": 2.6}, 1.0) == [["a", "b"], ["b", "c"]]
    assert cd_cliques({"a": 1.0, "b": 3.0}, 1.0) == []


def test_table_formatting():
    assert fmt_interval(1.2345, 1.1, 1.381) == "1.23 [1.10, 1.38]"
    assert fmt_interval(1.2345, float("nan"), float("nan")) == "1.23"
    assert fmt_interval(float("nan"), 1, 2) == "-"
    rows = [dict(_row("t", 10, m, v), group=g) for m, v, g in (("a", 1.0, 1), ("b", 1.1, 1), ("c", 2.0, 2))]
    rows += [dict(_row("t", 10, "full_recalibration", 1.0, reference=True), group=None),
             dict(_row("t", 10, "e", float("nan"), reps=0), group=None),
             dict(_row("t", 5, "a", 1.0), group=1)]
    assert group_labels(rows) == ["1=", "1=", "2", "ref", "-", "1"]


@pytest.mark.slow
def test_page_renders_in_headless_chromium(store, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no chromium installed")
    out = tmp_path / "rep"
    assert invoke("report", "--include-synthetic", "--results-dir", str(store), "--out", str(out)).exit_code == 0
    shot = tmp_path / "page.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--screenshot={shot}", "--window-size=1400,3000",
                    (out / "index.html").resolve().as_uri()], check=True, timeout=120, capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000  # a blank page compresses to a few KB
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--dump-dom",
                          (out / "index.html").resolve().as_uri()], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    figures = len(list((out / "figures").glob("*.png")))  # this store: the curves and the heatmap
    assert "ctbench report" in dom and figures >= 2 and dom.count("<img") == figures
