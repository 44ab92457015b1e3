"""Task cards: strict validation; every shipped card loads; real tasks have the right shapes."""

from __future__ import annotations

import pytest

from ctbench.cards import CardError, SuiteCard, all_card_names, expand_tasks, load_card, parse_card
from ctbench.plugins import UnknownName
from ctbench.tasks import build_task

GOOD = """
name: t
version: "1"
dataset: synthetic
source: synth_a
target: synth_b
test: {strategy: random, fraction: 0.25}
"""


def test_unknown_key_is_named():
    with pytest.raises(CardError, match="unknown key 'sorce'.*did you mean 'source'"):
        parse_card(GOOD + "sorce: x\n", "card.yaml")


def test_wrong_type_is_named():
    with pytest.raises(CardError, match="key 'shots' must be list"):
        parse_card(GOOD + "shots: 5\n", "card.yaml")
    with pytest.raises(CardError, match="test: unknown key 'fracton'"):
        parse_card(GOOD.replace("fraction", "fracton"), "card.yaml")
    with pytest.raises(CardError, match="missing required key 'dataset'"):
        parse_card(GOOD.replace("dataset: synthetic\n", ""), "card.yaml")
    with pytest.raises(CardError, match="test.strategy must be one of"):
        parse_card(GOOD.replace("strategy: random", "strategy: magic"), "card.yaml")


def test_every_shipped_card_parses():
    names = all_card_names()
    assert len([n for n in names if n.startswith("corn_")]) == 6
    assert {"tablet_1_2", "tablet_2_1", "all", "corn", "demo"} <= set(names)
    assert len([n for n in names if n.startswith("raman_")]) == 6
    for n in names:
        card = load_card(n)
        assert card.name == n


def test_suites_expand_without_duplicates():
    tasks = expand_tasks(["all", "corn_m5_mp6"])
    names = [c.name for c, _, _ in tasks]
    assert len(names) == len(set(names)) == 20
    assert isinstance(load_card("all"), SuiteCard)


def test_unknown_task_did_you_mean():
    with pytest.raises(UnknownName, match="did you mean 'corn_m5_mp6'"):
        load_card("corn_m5_mp7")


def test_user_card_by_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(GOOD.replace("name: t", "name: mine"))
    task = build_task(load_card(str(p)))
    assert task.synthetic and task.X_source.shape == task.X_target.shape


@pytest.mark.parametrize(
    "name, pool, test, p",
    [("corn_m5_mp6", 64, 16, 700), ("tablet_1_2", 195, 460, 650), ("raman_anton532_anton785", 40, 13, 1051)],
)
def test_real_tasks(mirror, name, pool, test, p):
    task = build_task(load_card(name))
    s = task.summary()
    assert (s["pool_samples"], s["test_samples"], task.X_source.shape[1]) == (pool, test, p)
    assert not task.synthetic
    assert task.n_outer == (1 if name.startswith("tablet") else 5)


def test_tasks_of_a_dataset_share_the_outer_partition(mirror):
    """Every corn task tests on the same samples in outer split k (and so does every Raman task,
    on the samples it has)."""
    corn = [build_task(load_card(n)) for n in ("corn_m5_mp5", "corn_m5_mp6", "corn_mp6_m5")]
    for k in range(5):
        tests = [set(t.groups[t.outer(k).test_rows]) for t in corn]
        assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 16
    raman = [build_task(load_card(n)) for n in ("raman_anton532_anton785", "raman_timegate_anton532")]
    for k in range(5):
        a, b = (set(t.groups[t.outer(k).test_rows]) for t in raman)
        shared = set(raman[0].groups) & set(raman[1].groups)
        assert a & shared == b & shared


def test_user_csv_card_with_relative_paths(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    axis = np.arange(1000, 1100, 2)
    for inst, gain in (("a", 1.0), ("b", 1.1)):
        rows = ["id,conc," + ",".join(str(a) for a in axis)]
        for i in range(30):
            rows.append(f"s{i},{i / 10}," + ",".join(f"{gain * (i / 10) + rng.normal(scale=0.01):.5f}" for _ in axis))
        (tmp_path / f"{inst}.csv").write_text("\n".join(rows) + "\n")
    card = tmp_path / "mine.yaml"
    card.write_text(
        "name: mine\nversion: 1\ndataset: csv\nsource: a\ntarget: b\n"
        "loader_options: {files: {a: a.csv, b: b.csv}, properties: [conc], axis_unit: nm, id_column: id}\n"
        "test: {strategy: random, fraction: 0.3}\n"
    )
    task = build_task(load_card(str(card)))
    assert task.X_source.shape == (30, 50) and task.properties == ("conc",)
