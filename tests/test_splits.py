"""Splits: nested, leak-free, deterministic across processes; Kennard-Stone by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctbench.cards import load_card
from ctbench.splits import ShotsError, kennard_stone_order, make_split, stable_seed, validation_splits
from ctbench.tasks import build_task


@pytest.fixture(scope="module")
def demo():
    return build_task(load_card("synthetic_a_b"))


def test_stable_seed_is_not_python_hash():
    assert stable_seed("a", 1) == stable_seed("a", 1)
    assert stable_seed("a", 1) != stable_seed("a", 2)
    code = "from ctbench.splits import stable_seed; print(stable_seed('corn', 3))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": "123"}, check=True)
    assert int(out.stdout) == stable_seed("corn", 3)


def test_kennard_stone_by_hand():
    X = np.array([[0.0], [10.0], [4.0], [6.0], [9.0]])
    # farthest pair 0 and 1; then 4 (distance to {0,10} -> min(4,6)=4 for x=4 ... x=6 -> 4, x=9 -> 1): tie 2 vs 3 -> first
    order = kennard_stone_order(X)
    assert list(order[:2]) == [0, 1]
    assert set(order) == set(range(5))
    assert order[2] in (2, 3)


@settings(max_examples=25, deadline=None)
@given(rep=st.integers(0, 30), n=st.integers(0, 60), seed=st.integers(0, 5))
def test_standards_nested_and_leak_free(demo, rep, n, seed):
    view = demo.outer(demo.outer_of_rep(rep)[0])
    n = min(n, view.n_pool_samples)
    split = make_split(demo, n, rep, seed)
    test = set(view.test_rows.tolist())
    assert split.test_rows.tolist() == view.test_rows.tolist()
    assert not (set(split.standard_rows.tolist()) & test)
    assert set(split.standard_rows.tolist()) <= set(view.pool_rows.tolist())
    assert len(split.standard_samples) == n
    if n >= 1:
        smaller = make_split(demo, n - 1, rep, seed)
        assert split.standard_samples[: n - 1] == smaller.standard_samples


def test_reps_differ_and_manifest_hash_is_stable(demo):
    a, b = make_split(demo, 10, 0), make_split(demo, 10, 1)
    assert a.standard_samples != b.standard_samples
    assert make_split(demo, 10, 1).manifest()["hash"] == b.manifest()["hash"]
    code = (
        "import json; from ctbench.cards import load_card; from ctbench.tasks import build_task;"
        "from ctbench.splits import make_split;"
        "print(json.dumps(make_split(build_task(load_card('synthetic_a_b')), 10, 1).manifest()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == b.manifest()


def test_random_strategy_is_seeded(demo):
    from dataclasses import replace

    card = replace(demo.card, standards={"strategy": "random", "subsample": 0.8})
    task = replace(demo, card=card)
    assert make_split(task, 8, 2, 0).standard_samples == make_split(task, 8, 2, 0).standard_samples
    assert make_split(task, 8, 2, 0).standard_samples != make_split(task, 8, 3, 0).standard_samples


def test_too_many_shots_names_the_limits(demo):
    with pytest.raises(ShotsError, match=r"allowed 0\.\.96"):
        make_split(demo, 97, 0)


def test_outer_folds_partition_the_samples(demo):
    """5 grouped outer folds: each sample is tested exactly once; pool and test never share a sample."""
    assert demo.n_outer == 5
    tested = []
    for k in range(demo.n_outer):
        view = demo.outer(k)
        assert view.outer_index == k and demo.outer(k) is view
        assert not set(view.groups[view.pool_rows]) & set(view.groups[view.test_rows])
        assert view.pool_rows.size + view.test_rows.size == demo.y.shape[0]
        tested += view.groups[view.test_rows].tolist()
    assert sorted(tested) == sorted(demo.groups.tolist())
    # repetitions cycle through the outer splits: rep r is (outer r % K, draw r // K)
    assert [demo.outer_of_rep(r) for r in (0, 4, 5, 9)] == [(0, 0), (4, 0), (0, 1), (4, 1)]
    assert make_split(demo, 5, 7).test_rows.tolist() == demo.outer(2).test_rows.tolist()


def test_no_two_repetitions_share_a_standard_set(demo):
    """Draw until distinct: for every N of the card's grid, 20 repetitions give 20 different sets."""
    for n in demo.card.shots:
        sets = [frozenset(make_split(demo, n, rep).standard_samples) for rep in range(20)]
        assert len(set(sets)) == 20, n
        assert all(make_split(demo, n, rep).distinct for rep in range(20))


def test_tiny_pool_cannot_be_distinct_and_says_so(demo):
    """With a pool where the N-sample set is forced, the split is marked not distinct instead of looping."""
    from dataclasses import replace

    card = replace(demo.card, shots=(2,), standards={"strategy": "kennard_stone", "subsample": 0.8}, name="tiny")
    keep = np.isin(demo.groups, np.unique(demo.groups)[:15])  # 15 samples: 3 per fold, pools of 12
    rows = np.flatnonzero(keep)
    idx = {r: i for i, r in enumerate(rows)}
    splits = tuple((np.array([idx[r] for r in p if r in idx]), np.array([idx[r] for r in t if r in idx]))
                   for p, t in demo.outer_splits)
    tiny = replace(demo, card=card, X_source=demo.X_source[rows], X_target=demo.X_target[rows], y=demo.y[rows],
                   groups=demo.groups[rows], outer_splits=splits, pool_rows=splits[0][0], test_rows=splits[0][1])
    # 12 samples give 66 pairs: 80 repetitions cannot all differ, and the last ones say so
    flags = [make_split(tiny, 2, rep).distinct for rep in range(80)]
    assert flags[0] and not all(flags)


def test_validation_splits_come_from_the_pool_only(demo):
    test = set(demo.test_rows.tolist())
    splits = validation_splits(demo, 4, 10)
    assert len(splits) == 4
    for v in splits:
        rows = set(v.pool_rows.tolist()) | set(v.standard_rows.tolist()) | set(v.heldout_rows.tolist())
        assert not rows & test
        assert set(v.standard_rows.tolist()) <= set(v.pool_rows.tolist())
        assert not set(v.heldout_rows.tolist()) & set(v.pool_rows.tolist())
    assert splits[0].heldout_rows.tolist() != splits[1].heldout_rows.tolist()


def test_raman_replicates_never_straddle(mirror):
    task = build_task(load_card("raman_anton532_anton785"))
    assert not set(task.groups[task.pool_rows]) & set(task.groups[task.test_rows])
    split = make_split(task, 5, 0)
    # a standard brings all its replicates
    for g in split.standard_samples:
        assert set(np.flatnonzero(task.groups == g)) <= set(split.standard_rows.tolist())
