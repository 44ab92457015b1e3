"""A user's data with missing reference values (a sample is left out of that property only, in
training and in metrics, counted in every record) and cards with ``alignment: native`` (methods
tagged ``native_axes`` get each instrument's own axis, the rest the overlap grid).

All spectra here are SYNTHETIC, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cards import load_card
from ctbench.method import SourceData, Standards, Tags, TransferMethod
from ctbench.property_groups import PropertyGroups, property_groups, restrict
from ctbench.store import Store
from ctbench.tasks import build_task

runner = CliRunner()


def _synthetic_files(tmp_path: Path, n: int = 60, missing: dict[str, list[int]] | None = None,
                     axes: dict[str, np.ndarray] | None = None, seed: int = 0) -> None:
    """SYNTHETIC two-instrument CSVs: three Gaussian bands whose heights are the properties
    'fat', 'water' (and 'protein'); instrument b is shifted, scaled and offset. ``missing``:
    property -> sample indices whose reference cell is left empty."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(1, 10, size=(n, 3))
    axes = axes or {"a": np.arange(1000.0, 1200.0, 2.0), "b": np.arange(1000.0, 1200.0, 2.0)}
    props = ("fat", "water", "protein")
    for inst, axis in axes.items():
        shift, gain, offset = (0.0, 1.0, 0.0) if inst == "a" else (1.5, 0.9, 0.05)
        centres = (1040.0, 1100.0, 1160.0)
        X = sum(conc[:, [j]] * np.exp(-0.5 * ((axis[None, :] - c - shift) / 12.0) ** 2) for j, c in enumerate(centres))
        X = gain * X / 10 + offset + rng.normal(0, 0.002, size=(n, axis.size))
        lines = ["id," + ",".join(props) + "," + ",".join(f"{v:g}" for v in axis)]
        for i in range(n):
            refs = []
            for j, p in enumerate(props):
                refs.append("" if i in (missing or {}).get(p, []) else f"{conc[i, j]:.6f}")
            lines.append(f"s{i:03d}," + ",".join(refs) + "," + ",".join(f"{v:.6f}" for v in X[i]))
        (tmp_path / f"{inst}.csv").write_text("\n".join(lines) + "\n")


def _card(tmp_path: Path, name: str, properties: list[str], alignment: str = "") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nversion: 1\ndataset: csv\nsource: a\ntarget: b\nproperties: [{', '.join(properties)}]\n"
        "description: SYNTHETIC test data\n"
        "loader_options: {files: {a: a.csv, b: b.csv}, properties: [fat, water, protein], id_column: id}\n"
        "test: {strategy: kfold, folds: 3, seed: 0}\n" + alignment
    )
    return str(path)


# --- property groups -------------------------------------------------------------------------


def test_property_groups_follow_the_missing_patterns():
    y = np.array([[1, 2, np.nan, 4], [1, np.nan, np.nan, 4], [1, 2, np.nan, 4], [1, 2, 3, 4.0]])
    assert property_groups(y) == [[0, 3], [1], [2]]
    assert property_groups(y[:, [0, 3]]) is None
    assert property_groups(y[:, [0, 3]], multi_target=False) == [[0], [1]]
    assert property_groups(y[:, [0]], multi_target=False) is None


class MeanOfY(TransferMethod):
    """Predicts each property's mean over calibration + standards (what it saw, exactly)."""

    name = "mean_of_y_test"
    tags = Tags(min_shots=1)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        assert not np.isnan(source.y).any()
        self.ys_ = [np.asarray(source.y)]
        self.props_ = source.properties
        return self

    def transfer(self, standards, unlabelled=None):
        assert not np.isnan(standards.y).any()
        self.ys_ = self.ys_ + [np.asarray(standards.y)]
        self.n_std_ = standards.n
        return self

    def predict(self, X):
        return np.repeat(np.vstack(self.ys_).mean(axis=0)[None, :], len(X), axis=0)

    def chosen_params(self):
        return {"n_standards": self.n_std_}


def test_property_groups_never_show_a_nan_and_keep_the_property_order():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(20, 3))
    y[[2, 5], 1] = np.nan
    y[[7], 2] = np.nan
    axis = np.arange(5.0)
    source = SourceData(X=rng.normal(size=(20, 5)), y=y, axis=axis, axis_unit="nm", properties=("a", "b", "c"))
    ys = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0]])
    std = Standards(X_source=rng.normal(size=(2, 5)), X_target=rng.normal(size=(2, 5)), y=ys, axis=axis,
                    axis_unit="nm", properties=("a", "b", "c"))
    groups = property_groups(np.vstack([y, ys]))
    assert groups == [[0], [1], [2]]
    m = PropertyGroups(lambda: MeanOfY(), "mean_of_y_test", groups, min_shots=1).fit(source).transfer(std)
    pred = m.predict(np.zeros((3, 5)))
    want = [np.mean(np.concatenate([y[:, j], ys[:, j]])[~np.isnan(np.concatenate([y[:, j], ys[:, j]]))]) for j in range(3)]
    assert np.allclose(pred[0], want)
    assert m.chosen_params() == {"a": {"n_standards": 2}, "b": {"n_standards": 1}, "c": {"n_standards": 2}}
    assert restrict(std, [1]).X_target.shape == (1, 5)
    with pytest.raises(ValueError, match="only 0 of the 1 standards have a reference value for b"):
        PropertyGroups(lambda: MeanOfY(), "mean_of_y_test", groups, min_shots=1).fit(source).transfer(
            Standards(X_source=std.X_source[:1], X_target=std.X_target[:1], y=ys[:1], axis=axis, axis_unit="nm",
                      properties=("a", "b", "c")))


# --- the task and the runner ------------------------------------------------------------------


def test_task_counts_missing_references_and_drops_rows_without_any(tmp_path):
    _synthetic_files(tmp_path, missing={"water": [3, 10, 11], "fat": [11], "protein": [11]})
    task = build_task(load_card(_card(tmp_path, "miss", ["fat", "water", "protein"])))
    assert task.y.shape[0] == 59 and task.dropped_unlabelled == 1  # s011 has no reference at all
    assert task.missing_references == {"water": 2}
    summary = task.summary()
    assert summary["missing_references"] == {"water": 2} and summary["dropped_unlabelled_rows"] == 1


def test_a_property_without_enough_test_references_is_one_line(tmp_path):
    _synthetic_files(tmp_path, missing={"water": list(range(58))})
    with pytest.raises(Exception, match="have a reference value for 'water'"):
        build_task(load_card(_card(tmp_path, "miss", ["fat", "water"])))


def _run(*args: str):
    from ctbench.cli.main import app

    return runner.invoke(app, list(args))


def test_missing_references_leave_a_sample_out_of_that_property_only(tmp_path):
    """Run through the real runner (isolated workers): every record counts what was left out,
    metrics use only the samples with a reference, the complete property scores exactly as on a
    card without the incomplete one, and the leaderboard ranks it."""
    _synthetic_files(tmp_path, missing={"water": [0, 4, 9, 20, 33, 41]})
    full = _card(tmp_path, "miss", ["fat", "water"])
    (tmp_path / "fat").mkdir()
    for f in ("a.csv", "b.csv"):
        (tmp_path / "fat" / f).write_text((tmp_path / f).read_text())
    only_fat = _card(tmp_path / "fat", "miss", ["fat"])  # same name: same seeds, only the properties differ
    results, results_fat = tmp_path / "results", tmp_path / "results_fat"
    for card, out in ((full, results), (only_fat, results_fat)):
        res = _run("run", "-t", card, "-m", "no_transfer,full_recalibration,model_update,sbc", "--shots", "5,10",
                   "--reps", "3", "--no-mlflow", "--results-dir", str(out), "--jobs", "1")
        assert res.exit_code == 0, res.output
    miss = list(Store(results).iter_records())
    fat = list(Store(results_fat).iter_records())
    records = miss + fat
    assert records and all(r["status"] == "ok" for r in records), [r.get("error") for r in records if r["status"] != "ok"]
    for r in miss:
        counts = r["missing_references"]["water"]
        assert set(counts) == {"calibration", "standards", "test"}
        assert counts["calibration"] + counts["test"] == 6
        res = r["residuals"]
        values = np.array([[np.nan if v is None else v for v in row] for row in res["values"]])
        water = values[:, res["properties"].index("water")]
        assert np.isnan(water).sum() == counts["test"]
        assert np.isclose(np.sqrt(np.nanmean(water ** 2)), r["metrics"]["per_property"]["water"]["rmsep"], rtol=1e-5)
        assert not np.isnan(values[:, res["properties"].index("fat")]).any()
    alone = {(r["identity"]["method"], r["identity"]["n_shots"], r["identity"]["rep"]): r for r in fat}
    assert len(alone) == len(miss) == 24
    for r in miss:
        other = alone[(r["identity"]["method"], r["identity"]["n_shots"], r["identity"]["rep"])]
        assert r["metrics"]["per_property"]["fat"]["rmsep"] == other["metrics"]["per_property"]["fat"]["rmsep"]
    lb = _run("leaderboard", "--results-dir", str(results), "-t", "miss", "--format", "json")
    assert lb.exit_code == 0, lb.output
    rows = json.loads(lb.stdout)
    ranked = [r for r in rows if r["method"] == "model_update" and r["n_shots"] == 5]
    assert ranked and all(np.isfinite(r["rel_mean"]) and np.isfinite(r["rel_lo"]) for r in ranked)


# --- native axes ----------------------------------------------------------------------------------


class AxisProbe(TransferMethod):
    """Remembers the axes it was given (native_axes)."""

    name = "axis_probe_test"
    tags = Tags(min_shots=1, native_axes=True)

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, source):
        self.source_axis_ = np.asarray(source.axis)
        assert source.X.shape[1] == self.source_axis_.size
        return self

    def transfer(self, standards, unlabelled=None):
        self.target_axis_ = standards.axis_target
        assert standards.X_target.shape[1] == (standards.axis_target.size if standards.axis_target is not None
                                               else standards.axis.size)
        return self

    def predict(self, X):
        return np.zeros((len(X), 1))


def test_native_alignment_hands_own_axes_to_tagged_methods_only(tmp_path):
    from ctbench.runner import source_for, standards_for, target_spectra
    from ctbench_classical.sbc import SBC

    _synthetic_files(tmp_path, axes={"a": np.arange(1000.0, 1200.0, 2.0), "b": np.arange(1010.0, 1250.0, 5.0)})
    task = build_task(load_card(_card(tmp_path, "nat", ["fat"], "alignment: {mode: native}\n")))
    over = build_task(load_card(_card(tmp_path, "ovl", ["fat"], "alignment: {mode: overlap}\n")))
    assert np.array_equal(task.X_source, over.X_source) and np.array_equal(task.axis, over.axis)
    assert task.axis[0] >= 1010 and task.axis[-1] <= 1200
    src, std = source_for(task, AxisProbe), standards_for(task, task.pool_rows[:4], AxisProbe)
    assert src.X.shape[1] == 100 and std.X_target.shape[1] == 48 and std.axis_target.size == 48
    assert target_spectra(task, AxisProbe, task.test_rows).shape[1] == 48
    # a method without the tag gets the overlap grid
    assert source_for(task, SBC).X.shape[1] == task.axis.size
    assert standards_for(task, task.pool_rows[:4], SBC).axis_target is None
    assert task.summary()["native_axes"] == {"a": "1000-1198 nm (100 points)", "b": "1010-1245 nm (48 points)"}


def test_spektron_takes_native_axes_and_spektron_pds_refuses_them(tmp_path):
    pytest.importorskip("torch")
    from ctbench.plugins import load_methods
    from ctbench.runner import source_for, standards_for, target_spectra
    from ctbench_spektron.pretrain import run_pretraining

    methods = load_methods()
    assert methods["spektron-lora"].cls.tags.native_axes and not methods["spektron-pds"].cls.tags.native_axes
    weights = run_pretraining("synthetic", {"size": "tiny", "steps": 2, "batch_size": 4, "out": str(tmp_path / "w"),
                                            "mlflow": False, "progress": False, "num_threads": 1})["weights"]
    _synthetic_files(tmp_path, axes={"a": np.arange(1000.0, 1200.0, 2.0), "b": np.arange(1010.0, 1250.0, 5.0)})
    task = build_task(load_card(_card(tmp_path, "nat", ["fat"], "alignment: {mode: native}\n")))
    cls = methods["spektron-lora"].cls
    fast = {"transfer_steps": 5, "conformal_folds": 2, "mc_samples": 4, "checkpoint": weights, "random_state": 0}
    m = cls(**fast).fit(source_for(task, cls))
    m.transfer(standards_for(task, task.pool_rows[:10], cls))
    pred = m.predict(target_spectra(task, cls, task.test_rows))
    assert pred.shape == (task.test_rows.size, 1) and np.isfinite(pred).all()
    pds = methods["spektron-pds"].cls
    native_std = standards_for(task, task.pool_rows[:10], AxisProbe)  # what a native method would get
    p = pds(**fast).fit(source_for(task, AxisProbe))
    with pytest.raises(ValueError, match="pds_first needs both instruments on one axis"):
        p.transfer(native_std)


def test_tuning_fits_around_missing_references(tmp_path):
    """The tuner's in-process trials group properties as the workers do (no NaN reaches the method)."""
    _synthetic_files(tmp_path, missing={"water": [0, 4, 9, 20, 33, 41]})
    card = _card(tmp_path, "miss", ["fat", "water"])
    res = _run("tune", "--method", "model_update", "--task", card, "--shots", "5", "--trials", "2", "--outer", "0",
               "--results-dir", str(tmp_path / "results"), "--no-mlflow")
    assert res.exit_code == 0, res.output
    tuned = list((tmp_path / "results" / "tuned").rglob("*.json"))
    assert len(tuned) == 1
    assert np.isfinite(json.loads(tuned[0].read_text())["best_value"])
