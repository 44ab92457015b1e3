"""The Spektron ablation / head-to-head tables (plugins/ctbench_spektron/headtohead.py) on a tiny real
store of the synthetic task with classical methods only: a classical method plays "spektron"
(--spektron pds, --variants sbc=...,pds=...), and every number is checked against
ctbench.leaderboard's own rows."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from ctbench.leaderboard import build_leaderboard

TASK = "synthetic_a_b"
SHOTS = [5, 10, 30]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ctbench.runner import MethodSpec, execute, plan_runs

    root = tmp_path_factory.mktemp("h2h")
    specs = [MethodSpec(m) for m in ("no_transfer", "full_recalibration", "model_update", "sbc", "pds")]
    execute(plan_runs(specs, [TASK], SHOTS, 3, 0, root), 1, lambda status, path: None)
    return root


@pytest.fixture(scope="module")
def records(store):
    from ctbench_spektron.headtohead import load

    return load(store)


@pytest.fixture(scope="module")
def built(records):
    from ctbench_spektron import headtohead

    return headtohead.build(copy.deepcopy(records), spektron="pds", variants="sbc=pretrained,pds=random init")


def _rows(records, **kw):
    return build_leaderboard(copy.deepcopy(records), **kw)


def _lb(rows, n, method, prop="mean"):
    return next(r for r in rows if r["n_shots"] == n and r["method"] == method and r["property"] == prop)


def _ci(r):
    return f"{r['rel_mean']:.3f} [{r['rel_lo']:.3f}, {r['rel_hi']:.3f}]"


def test_main_writes_every_section_with_the_leaderboards_numbers(store, records, tmp_path):
    from ctbench_spektron import headtohead

    out = tmp_path / "h2h.md"
    assert headtohead.main(["--results-dir", str(store), "--tasks", TASK, "--out", str(out),
                            "--spektron", "pds", "--variants", "sbc=a,pds=b"]) == 0
    text = out.read_text()
    for heading in ("## 1. Ablation", "### Median over tasks", "### Pretraining check", "## 2. Head-to-head",
                    "### (a) Against model_update at N = 10", "### (b) Against best classical at N = 10",
                    "### (c) Against best classical at N = 30", "## Timings and transfer paths"):
        assert heading in text, heading
    rows = _rows(records)  # the leaderboard's mean rows (default: not per property)
    for n in SHOTS:
        line = next(x for x in text.splitlines() if x.startswith(f"| {TASK} | {n} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cell, method in zip(cells[2:], ("sbc", "pds")):
            row = _lb(rows, n, method)
            assert cell == f"{_ci(row)} g{row['group']}"
    # the summary: with one task the median is the task's value; N <= 10 pools N = 5 and 10
    line = next(x for x in text.splitlines() if x.startswith("| b | `pds` |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    want = [f"{_lb(rows, n, 'pds')['rel_mean']:.3f} (1)" for n in SHOTS]
    want.append(f"{np.median([_lb(rows, n, 'pds')['rel_mean'] for n in (5, 10)]):.3f} (1)")
    assert cells[2:] == want
    assert text.count("cells; not worse in") == 3


def test_ablation_summary_and_pretraining_check(records, built):
    _, summary = built
    rows = _rows(records)
    abl = summary["ablation"]
    for lab in ("sbc", "pds"):
        for n in SHOTS:
            assert abl["median"][(lab, n)] == pytest.approx(_lb(rows, n, lab)["rel_mean"])
    chk = abl["pretraining"]
    small = {lab: [_lb(rows, n, lab)["rel_mean"] for n in (5, 10)] for lab in ("sbc", "pds")}
    ratio = np.median(small["sbc"]) / np.median(small["pds"])
    assert chk["ratio"] == pytest.approx(ratio)
    assert chk["lo"] == pytest.approx(ratio) and chk["hi"] == pytest.approx(ratio)  # one task: resampling it changes nothing
    for task, n, overlap in chk["overlap"]:
        a, b = _lb(rows, n, "sbc"), _lb(rows, n, "pds")
        assert overlap == (a["rel_lo"] <= b["rel_hi"] and b["rel_lo"] <= a["rel_hi"])
    assert len(chk["overlap"]) == 2


def test_head_to_head_values_and_verdicts_match_the_leaderboard(records, built):
    text, summary = built
    h2h = summary["h2h"]
    per_prop = _rows(records, per_property=True)
    props = sorted({r["property"] for r in per_prop if r["property"] != "mean"})
    for key, rival_n, pool in (("model_update", 10, ["model_update"]), ("best_same", 10, ["model_update", "sbc"]),
                               ("best_classical_n", 30, ["model_update", "sbc"])):
        res = h2h[key]
        assert res["cells"] == len(props) == sum(res["counts"].values())
        assert res["not_worse"] == pytest.approx((res["counts"]["better"] + res["counts"]["tied"]) / res["cells"])
        for row in res["rows"]:
            prop = row["property"]
            assert row["mine"] == pytest.approx(_lb(per_prop, 10, "pds", prop)["rel_mean"])
            best = min(pool, key=lambda m: _lb(per_prop, rival_n, m, prop)["rel_mean"])  # pds itself is not a rival
            assert row["rival"] == best
            assert row["theirs"] == pytest.approx(_lb(per_prop, rival_n, best, prop)["rel_mean"])
            # the verdict is the leaderboard's tie-group test on the two alone: a leaderboard of just
            # them (the rival's records moved to N = 10 under another name when it ran at N = 30)
            two = [r for r in copy.deepcopy(records) if r["status"] == "ok" and r["n_shots"] == 10 and
                   r["identity"]["method"] in ("pds", "full_recalibration")]
            for r in copy.deepcopy(records):
                if r["identity"]["method"] == best and r["n_shots"] == rival_n:
                    r["identity"] = {**r["identity"], "method": "rival", "n_shots": 10}
                    r["method"] = {**r["method"], "name": "rival"}
                    two.append(r)
            lb = _rows(two, per_property=True)
            g_me, g_rival = _lb(lb, 10, "pds", prop)["group"], _lb(lb, 10, "rival", prop)["group"]
            want = "tied" if g_me == g_rival else ("better" if g_me < g_rival else "worse")
            assert row["verdict"] == want, (key, prop)
    line = f"better {h2h['best_classical_n']['counts']['better']} / tied {h2h['best_classical_n']['counts']['tied']}"
    assert line in text.split("### (c)")[1]


def test_reference_rows_get_the_same_comparisons(records, built):
    """The ceiling table: full_recalibration (relative RMSEP 1 by definition) and model_update
    against the same rivals, with the significant counts and the plain "lower mean" counts."""
    text, summary = built
    ceiling = summary["h2h"]["ceiling"]
    per_prop = _rows(records, per_property=True)
    props = sorted({r["property"] for r in per_prop if r["property"] != "mean"})
    assert ceiling["pds"]["best_same"] is summary["h2h"]["best_same"]  # the candidate's own row: (a)-(c) above
    fr = ceiling["full_recalibration"]
    for key, rival_n, pool in (("model_update", 10, ["model_update"]), ("best_same", 10, ["model_update", "sbc"]),
                               ("best_classical_n", 30, ["model_update", "sbc"])):  # pds plays spektron
        res = fr[key]
        assert res["cells"] == len(props) == sum(res["counts"].values())
        for row in res["rows"]:
            assert row["mine"] == pytest.approx(1.0)
            best = min(pool, key=lambda m: _lb(per_prop, rival_n, m, row["property"])["rel_mean"])
            assert row["rival"] == best
            assert row["theirs"] == pytest.approx(_lb(per_prop, rival_n, best, row["property"])["rel_mean"])
        lower = sum(r["mine"] < r["theirs"] for r in res["rows"])
        c = res["counts"]
        assert f"{c['better']} / {c['tied']} / {c['worse']} of {res['cells']}; lower mean in {lower}" in text
    mu = ceiling["model_update"]
    assert mu["model_update"]["cells"] == 0  # not against itself
    assert {r["rival"] for r in mu["best_same"]["rows"]} == {"sbc"}
    table = text.split("### Against the reference rows")[1]
    assert "`full_recalibration` (ceiling)" in table and "| `model_update` | - |" in table


def test_timings_and_paths(records):
    from ctbench_spektron import headtohead

    recs = copy.deepcopy(records)
    sbc = [r for r in recs if r["identity"]["method"] == "sbc"]
    for i, r in enumerate(sbc):
        r["extras"] = {"spektron": {"path": "translate" if i % 3 else "model_update"}}
    text, summary = headtohead.build(recs, spektron="pds", variants={"sbc": "a", "pds": "b"})
    paths = summary["timings"]["paths"]
    assert paths[("sbc", TASK)] == dict(json.loads(json.dumps(
        {"translate": sum(1 for i in range(len(sbc)) if i % 3), "model_update": sum(1 for i in range(len(sbc)) if not i % 3)})))
    assert paths[("pds", TASK)] == {}  # no extras: counted as nothing, shown as "-"
    line = next(x for x in text.splitlines() if x.startswith(f"| a | {TASK} |"))
    assert "translate 6, model_update 3" in line
    fit = np.mean([r["timings"]["fit_s"] for r in sbc])
    assert re.search(rf"\| {len(sbc)} \| {fit:.3g} \|", line)
    assert next(x for x in text.splitlines() if x.startswith(f"| b | {TASK} |")).endswith("| - |")


def test_variant_labels_with_brackets():
    from ctbench_spektron.headtohead import parse_variants

    got = parse_variants("spektron=pretrained,spektron[checkpoint=runs/a/x.pt,lora_rank=2]=no translation,"
                         "spektron-nopretrain=random init,spektron[readout=mamba1]", [])
    assert got == {"spektron": "pretrained", "spektron[checkpoint=runs/a/x.pt,lora_rank=2]": "no translation",
                   "spektron-nopretrain": "random init", "spektron[readout=mamba1]": "spektron[readout=mamba1]"}
    assert parse_variants(None, ["pds", "spektron", "spektron-nopretrain"]) == {
        "spektron": "spektron", "spektron-nopretrain": "spektron-nopretrain"}


def test_synthetic_tasks_left_out_unless_named_or_asked(store, tmp_path, capsys):
    from ctbench_spektron import headtohead

    with pytest.raises(SystemExit):
        headtohead.main(["--results-dir", str(store), "--out", "-"])
    assert "--include-synthetic" in capsys.readouterr().err
    assert headtohead.main(["--results-dir", str(store), "--out", "-", "--include-synthetic", "--spektron", "pds"]) == 0
    assert f"Tasks: {TASK}." in capsys.readouterr().out
