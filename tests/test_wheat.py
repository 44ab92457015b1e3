"""The IDRC 2016 wheat dataset (issue 16): loader, the outlier it leaves out, its six tasks and their shared outer splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctbench.cards import expand_tasks, load_card
from ctbench.data import DataError
from ctbench.data.builtin import builtin_loaders
from ctbench.data.loaders import WHEAT_EXCLUDED, WHEAT_FILES, load_dataset, load_wheat
from ctbench.tasks import build_task

MIRROR = Path(os.environ.get("CTBENCH_DATA") or "/work/shared/datasets")
LOADER = {loader.name: loader for loader in builtin_loaders()}["wheat"]
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"dataset mirror {MIRROR} absent")
WHEAT_TASKS = ["wheat_a1_a2", "wheat_a1_a3", "wheat_a2_a1", "wheat_a2_a3", "wheat_a3_a1", "wheat_a3_a2"]


def _paths() -> list[Path]:
    return [MIRROR / f.relpath for f in WHEAT_FILES]


@needs_mirror
def test_wheat_loads_paired_by_id_without_the_outlier() -> None:
    ds = load_dataset(LOADER, data_dir=MIRROR)
    assert ds.name == "wheat" and ds.properties == ("protein",) and list(ds.instruments) == ["A1", "A2", "A3"]
    assert ds.sha256 == {f.relpath: f.sha256 for f in WHEAT_FILES}
    ids = ds.instruments["A1"].sample_ids
    assert len(ids) == 247 and len(set(ids)) == 247 and "wheat-20140190" not in set(ids)
    for name, s in ds.instruments.items():
        assert s.values.shape == (247, 741) and s.axis_unit == "nm"
        assert s.axis[0] == 730 and s.axis[-1] == 1100 and np.allclose(np.diff(s.axis), 0.5)
        assert np.array_equal(s.sample_ids, ids)
        assert np.array_equal(s.y, ds.instruments["A1"].y)
    assert 7.9 < ds.instruments["A1"].y.min() and ds.instruments["A1"].y.max() < 18.7
    kept = load_wheat(_paths(), {"keep_outliers": True})
    assert kept.instruments["A2"].values.shape == (248, 741)


@needs_mirror
def test_the_left_out_sample_is_an_outlier_of_its_a2_spectrum_only() -> None:
    """Re-derive WHEAT_EXCLUDED from the spectra alone (no reference values): scored in a 10-component
    PCA of the other samples on the same instrument, its A2 spectrum is far outside them (T2 and Q),
    while its A1 and A3 spectra are ordinary."""
    assert list(WHEAT_EXCLUDED) == ["20140190"]
    ds = load_wheat(_paths(), {"keep_outliers": True})
    for inst, s in ds.instruments.items():
        i = int(np.flatnonzero(s.sample_ids == "wheat-20140190")[0])
        others = np.delete(s.values, i, axis=0)
        mu = others.mean(axis=0)
        _, sv, vt = np.linalg.svd(others - mu, full_matrices=False)
        k = 10
        scale = sv[:k] / np.sqrt(len(others) - 1)

        def t2_q(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores = (X - mu) @ vt[:k].T
            resid = (X - mu) - scores @ vt[:k]
            return ((scores / scale) ** 2).sum(axis=1), (resid**2).sum(axis=1)

        t2_in, q_in = t2_q(others)
        t2_out, q_out = t2_q(s.values[i : i + 1])
        if inst == "A2":
            assert t2_out[0] > 100 * t2_in.max() and q_out[0] > 1000 * np.percentile(q_in, 99)
        else:
            assert t2_out[0] < t2_in.max() and q_out[0] < q_in.max()


def test_wheat_loader_errors(tmp_path: Path) -> None:
    header = "ID,Protein,730,730.5"
    rows = {"a": ["1,10.0,0.1,0.2", "2,11.0,0.3,0.4"], "b": ["2,11.0,0.3,0.4", "1,10.0,0.1,0.2"]}
    a = tmp_path / "a.csv"
    a.write_text(header + "\n" + "\n".join(rows["a"]) + "\n")
    b = tmp_path / "b.csv"
    b.write_text(header + "\n" + "\n".join(rows["b"]) + "\n")  # same samples, other row order: paired by ID
    ds = load_wheat([a, b, a], {})
    assert np.array_equal(ds.instruments["A1"].values, ds.instruments["A2"].values)
    c = tmp_path / "c.csv"
    c.write_text(header + "\n1,10.0,0.1,0.2\n3,11.0,0.3,0.4\n")
    with pytest.raises(DataError, match="disagree on their sample ids"):
        load_wheat([a, c, a], {})
    d = tmp_path / "d.csv"
    d.write_text(header + "\n1,10.5,0.1,0.2\n2,11.0,0.3,0.4\n")
    with pytest.raises(DataError, match="protein value of sample wheat-1"):
        load_wheat([a, d, a], {})
    e = tmp_path / "e.csv"
    e.write_text(header + "\n1,10.0,0.1,0.2\n1,11.0,0.3,0.4\n")
    with pytest.raises(DataError, match="appears more than once"):
        load_wheat([e, e, e], {})
    f = tmp_path / "f.csv"
    f.write_text(header + "\n1,10.0,0.1,nan\n2,11.0,0.3,0.4\n")
    with pytest.raises(DataError, match="data row 1"):
        load_wheat([f, a, a], {})
    with pytest.raises(DataError, match="keep_outliers must be true or false"):
        load_wheat([a, b, a], {"keep_outliers": "yes"})
    with pytest.raises(DataError, match="unknown loader option"):
        load_wheat([a, b, a], {"drop": 1})


@needs_mirror
def test_six_wheat_tasks_share_four_outer_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTBENCH_DATA", str(MIRROR))
    names = [card.name for card, _, _ in expand_tasks(["wheat"])]
    assert names == WHEAT_TASKS
    assert set(WHEAT_TASKS) <= {card.name for card, _, _ in expand_tasks(["all"])}
    tests = None
    for name in WHEAT_TASKS:
        task = build_task(load_card(name))
        assert task.n_outer == 4 and task.properties == ("protein",)
        folds = [task.outer(k) for k in range(4)]
        sizes = sorted(len(f.test_rows) for f in folds)
        assert sizes == [61, 62, 62, 62]
        ids = [tuple(sorted(f.groups[f.test_rows])) for f in folds]
        assert len(set(sum(ids, ()))) == 247  # every sample is tested exactly once per draw
        tests = tests or ids
        assert ids == tests  # the same outer splits for every wheat task
