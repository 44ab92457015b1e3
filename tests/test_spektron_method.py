"""The Spektron transfer methods (spektron, spektron-ttt, -nopretrain, -fullft, -pds) on the synthetic
task with a tiny pretrained checkpoint: the contract (determinism, pickling, deep-copy isolation,
inputs and the shared backbone untouched), LoRA, the ridge head, conformal intervals, zero-shot
test-time training, the runner's interval metrics, and the committed default checkpoint."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ctbench.method import Standards  # noqa: E402
from ctbench.plugins import load_methods  # noqa: E402
from ctbench_spektron import Spektron  # noqa: E402
from ctbench_spektron.checkpoint import DEFAULT_WEIGHTS, sha256_of  # noqa: E402
from ctbench_spektron.pretrain import run_pretraining  # noqa: E402

VARIANTS = ("spektron-lora", "spektron-ttt", "spektron-lora-nopretrain", "spektron-fullft", "spektron-pds")
FAST = {"transfer_steps": 15, "ttt_steps": 4, "conformal_folds": 2, "finetune_steps": 5, "mc_samples": 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("spektron_tiny")
    summary = run_pretraining("synthetic", {"size": "tiny", "steps": 3, "batch_size": 4, "out": str(out), "mlflow": False,
                                            "progress": False, "num_threads": 1})
    return summary["weights"]


@pytest.fixture(scope="module")
def task(synthetic_transfer):
    return synthetic_transfer


def _cls(name):
    return load_methods()[name].cls


def _rmse(p, y):
    return float(np.sqrt(((p - y) ** 2).mean()))


@pytest.fixture(scope="module")
def fitted(tiny_weights, task):
    return Spektron(checkpoint=tiny_weights, random_state=3, **FAST).fit(task[0])


# --- registration and tags ------------------------------------------------------------------------


def test_variants_registered_with_their_tags():
    methods = load_methods()
    assert set(VARIANTS) <= set(methods)
    for name in VARIANTS:
        cls = methods[name].cls
        assert cls.name == name and methods[name].plugin == "spektron" and cls.has_search_space()
    assert not _cls("spektron-lora").tags.transductive and _cls("spektron-lora").tags.min_shots == 2
    ttt = _cls("spektron-ttt").tags
    assert ttt.zero_shot and ttt.transductive and ttt.min_shots == 0
    assert _cls("spektron-lora-nopretrain")().pretrained is False
    assert _cls("spektron-fullft")().adapter == "full"
    assert _cls("spektron-pds")().pds_first is True
    assert Spektron.has_pretrain()


# --- LoRA ---------------------------------------------------------------------------------------


def test_lora_starts_as_identity_trains_only_adapters_and_merges_exactly():
    from torch import nn

    from ctbench_spektron.lora import LoRALinear, add_lora, lora_parameters, merge_lora

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    x = torch.randn(5, 6)
    before = block(x).detach()
    adapters = add_lora(block, ("0", "2"), rank=2, alpha=4.0)
    assert len(adapters) == 2 and all(isinstance(a, LoRALinear) for a in adapters)
    torch.testing.assert_close(block(x), before)  # B = 0: the adapter changes nothing yet
    trainable = {n for n, p in block.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"}
    assert len(lora_parameters(block)) == 4
    with torch.no_grad():
        for a in adapters:
            a.lora_B.normal_()
    adapted = block(x).detach()
    assert not torch.allclose(adapted, before)
    assert merge_lora(block) == 2
    assert all(type(m) is nn.Linear for m in (block[0], block[2]))
    torch.testing.assert_close(block(x), adapted, rtol=1e-5, atol=1e-5)


def test_lora_on_the_backbone_stages(tiny_weights):
    from ctbench_spektron.adapt import adapted_stage_names, targets_for
    from ctbench_spektron.lora import LoRALinear, add_lora
    from ctbench_spektron.method import load_backbone

    model = load_backbone(tiny_weights)
    assert adapted_stage_names(model, "final", 2) == ["tf1", "tf2"]
    assert adapted_stage_names(model, "mamba1", 2) == ["mamba1"]
    assert adapted_stage_names(model, "final", -1) == ["mamba1", "tf1", "tf2"]
    mamba = copy.deepcopy(model.mamba[0])
    wrapped = add_lora(mamba, targets_for("mamba1"), 2, 4.0)
    assert len(wrapped) == 4 and isinstance(mamba.fwd.x_proj, LoRALinear) and isinstance(mamba.in_proj, LoRALinear)
    attn = copy.deepcopy(model.transformer[0])
    assert len(add_lora(attn, targets_for("tf1"), 2, 4.0)) == 2 and isinstance(attn.qkv, LoRALinear)


# --- the ridge head and the conformal maths -------------------------------------------------------


def test_dual_ridge_matches_the_primal_solution():
    from ctbench_spektron.readout import ridge_solution, weighted_ridge_solution

    rng = np.random.default_rng(0)
    F, y = rng.normal(size=(12, 30)), rng.normal(size=(12, 2))
    rel = np.array([0.1, 1.0])
    W, b = ridge_solution(F, y, rel)
    A = F - F.mean(0)
    lam = rel * np.trace(A @ A.T) / 12
    for j in range(2):
        w = np.linalg.solve(A.T @ A + lam[j] * np.eye(30), A.T @ (y[:, j] - y[:, j].mean()))
        np.testing.assert_allclose(W[:, j], w, atol=1e-8)
    np.testing.assert_allclose(b, y.mean(0) - F.mean(0) @ W, atol=1e-10)
    # unit weights = the unweighted solution; weight 2 = the row given twice
    Ww, bw = weighted_ridge_solution(F, y, np.ones(12), rel, float(np.trace(A @ A.T) / 12))
    np.testing.assert_allclose(Ww, W, atol=1e-8)
    np.testing.assert_allclose(bw, b, atol=1e-8)
    w = np.ones(12)
    w[0] = 2.0
    W2, b2 = weighted_ridge_solution(F, y, w, rel, 1.0)
    W3, b3 = weighted_ridge_solution(np.vstack([F, F[:1]]), np.vstack([y, y[:1]]), np.ones(13), rel, 1.0)
    np.testing.assert_allclose(W2, W3, atol=1e-8)
    np.testing.assert_allclose(b2, b3, atol=1e-8)


def test_grouped_folds_keep_replicates_together_and_group_means():
    from ctbench_spektron.method import group_means
    from ctbench_spektron.readout import group_folds

    groups = np.repeat(np.arange(7), 3)
    folds = group_folds(21, groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(21))
    for f in folds:
        assert set(groups[f]).isdisjoint(set(groups[np.setdiff1d(np.arange(21), f)]))
    X = np.arange(12, dtype=float).reshape(6, 2)
    (Xm,) = group_means(np.array(["b", "b", "a", "c", "a", "c"]), X)
    np.testing.assert_allclose(Xm, [[1, 2], [6, 7], [8, 9]])  # b, a, c: order of first appearance
    assert group_means(None, X)[0] is X


def test_conformal_quantile_by_hand():
    from ctbench_spektron.uncertainty import conformal_quantile, conformal_valid

    scores = np.arange(1, 20, dtype=float)[:, None]  # 19 scores: ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.1)[0] == 18.0
    assert conformal_quantile(scores[:9], 0.1)[0] == 9.0  # ceil(10 * 0.9) = 9: the largest of 9
    assert conformal_valid(9, 0.1) and not conformal_valid(8, 0.1)
    assert conformal_quantile(scores[:3], 0.1)[0] == 3.0  # too few: the largest (not a valid bound)


# --- the method: fit / transfer / predict ------------------------------------------------------------


def test_fit_transfer_predict_improves_over_the_source_head(fitted, task):
    source, standards, X_test, y_test = task
    before = fitted.predict(X_test)
    m = copy.deepcopy(fitted).transfer(standards)
    pred = m.predict(X_test)
    assert pred.shape == (30, 2) and np.isfinite(pred).all()
    assert _rmse(pred, y_test) < _rmse(before, y_test)
    assert fitted.readout_ in fitted.readout_scores_ and fitted.unfreeze_ in ("head", "last")
    loss = m.transfer_loss_
    assert len(loss) == 2 and loss[1] < loss[0]
    extras = m.record_extras()["spektron"]
    assert extras["readout"] == fitted.readout_ and extras["conformal"]["n_scores"] >= 10
    json.dumps(extras)


def test_transfer_leaves_the_shared_backbone_and_the_fitted_original_alone(tiny_weights, fitted, task):
    from ctbench_spektron.method import load_backbone

    _, standards, X_test, _ = task
    model = load_backbone(tiny_weights)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = fitted.predict(X_test)
    a = copy.deepcopy(fitted).transfer(standards)
    pa = a.predict(X_test)
    b = copy.deepcopy(fitted).transfer(Standards(standards.X_source[:4], standards.X_target[:4], standards.y[:4],
                                                 standards.axis, standards.axis_unit, standards.properties))
    b.predict(X_test)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(fitted.predict(X_test), before)
    np.testing.assert_array_equal(a.predict(X_test), pa)


def test_deterministic_picklable_and_inputs_untouched(tiny_weights, task):
    source, standards, X_test, _ = task
    kw = dict(checkpoint=tiny_weights, random_state=4, readout="mamba1", **FAST)
    m1 = Spektron(**kw).fit(source).transfer(standards)
    m2 = Spektron(**kw).fit(source).transfer(standards)
    p1 = m1.predict(X_test)
    np.testing.assert_array_equal(p1, m2.predict(X_test))
    restored = pickle.loads(pickle.dumps(m1))
    np.testing.assert_array_equal(restored.predict(X_test), p1)
    lo, hi = restored.predict_interval(X_test)
    np.testing.assert_array_equal(lo, m1.predict_interval(X_test)[0])
    assert m1.clone().get_params() == m1.get_params()
    assert "_cache" not in m1.__getstate__()


def test_intervals_contain_the_prediction_and_are_calibrated_on_the_standards(fitted, task):
    _, standards, X_test, y_test = task
    m = copy.deepcopy(fitted).transfer(standards)
    pred = m.predict(X_test)
    lo, hi = m.predict_interval(X_test)
    assert lo.shape == hi.shape == (30, 2)
    assert (lo <= pred).all() and (pred <= hi).all() and (hi > lo).all()
    spread = m.predict_spread(X_test)
    assert spread.shape == (30, 2) and (spread >= 0).all()
    # 10 standards, 2 folds: 10 cross-validated scores are enough for a 90 % quantile
    assert m.conformal_source_ == "standards_cv" and m.conformal_n_ == 10
    few = copy.deepcopy(fitted).transfer(Standards(standards.X_source[:5], standards.X_target[:5], standards.y[:5],
                                                   standards.axis, standards.axis_unit, standards.properties))
    assert few.conformal_source_ == "standards_cv+source_cv" and few.conformal_n_ == 5 + 50
    none = copy.deepcopy(fitted).set_params(conformal="none").transfer(standards)
    lo, hi = none.predict_interval(X_test)
    assert np.isinf(hi).all()


def test_zero_shot_test_time_training(tiny_weights, task):
    source, standards, X_test, y_test = task
    TTT = _cls("spektron-ttt")
    m = TTT(checkpoint=tiny_weights, random_state=1, readout="mamba1", **FAST).fit(source)
    empty = Standards(standards.X_source[:0], standards.X_target[:0], standards.y[:0], standards.axis,
                      standards.axis_unit, standards.properties)
    z = copy.deepcopy(m).transfer(empty, X_test)
    pred = z.predict(X_test)
    assert pred.shape == (30, 2) and np.isfinite(pred).all()
    assert z.transferred_ and len(z.transfer_loss_) == 2
    assert z.conformal_source_ == "source_cv"
    # without the unlabelled spectra (not transductive use) N = 0 is the source model unchanged
    plain = copy.deepcopy(m).transfer(empty, None)
    np.testing.assert_array_equal(plain.predict(X_test), m.predict(X_test))
    # with standards as well, both sets of terms are used
    both = copy.deepcopy(m).transfer(standards, X_test).predict(X_test)
    assert np.isfinite(both).all()


@pytest.mark.parametrize("name", ["spektron-lora-nopretrain", "spektron-fullft", "spektron-pds"])
def test_ablation_variants_run(tiny_weights, task, name):
    source, standards, X_test, _ = task
    m = _cls(name)(checkpoint=tiny_weights, random_state=2, readout="mamba1", **FAST).fit(source)
    pred = copy.deepcopy(m).transfer(standards).predict(X_test)
    assert pred.shape == (30, 2) and np.isfinite(pred).all()
    if name == "spektron-lora-nopretrain":
        ref = Spektron(checkpoint=tiny_weights, random_state=2, readout="mamba1", **FAST).fit(source)
        assert not np.allclose(ref.predict(X_test), m.predict(X_test))
    if name == "spektron-pds":
        t = copy.deepcopy(m).transfer(standards)
        assert t.pds_transferred_ and "pds_selected" in t.record_extras()["spektron"]
        assert t.conformal_source_ == "standards_cv" and t.conformal_n_ == 10  # PDS refitted per fold


def test_bad_parameters_and_order_are_clear_errors(tiny_weights, task):
    source, standards, X_test, _ = task
    with pytest.raises(ValueError, match="unfreeze must be"):
        Spektron(checkpoint=tiny_weights, unfreeze="all").fit(source)
    with pytest.raises(ValueError, match="readout must be"):
        Spektron(checkpoint=tiny_weights, readout="mamba9").fit(source)
    with pytest.raises(ValueError, match="adapter must be"):
        Spektron(checkpoint=tiny_weights, adapter="prefix").fit(source)
    with pytest.raises(RuntimeError, match="fit"):
        Spektron(checkpoint=tiny_weights).predict(X_test)
    with pytest.raises(RuntimeError, match="fit"):
        Spektron(checkpoint=tiny_weights).transfer(standards)
    m = Spektron(checkpoint=tiny_weights, readout="mamba1", **FAST).fit(source)
    with pytest.raises(ValueError, match="channels"):
        m.predict(X_test[:, :10])
    with pytest.raises(ValueError, match="at least 2"):
        copy.deepcopy(m).transfer(Standards(standards.X_source[:1], standards.X_target[:1], standards.y[:1],
                                            standards.axis, standards.axis_unit, standards.properties))


@pytest.mark.parametrize("name", ["spektron-ttt", pytest.param("spektron-lora", marks=pytest.mark.slow)])
def test_conformance_kit_quick(tiny_weights, name):
    """Quick kit with a tiny checkpoint (the full kit with the default one: tests/test_conformance.py, slow)."""
    from ctbench.testing import check_method

    report = check_method(_cls(name), quick=True, params={"checkpoint": tiny_weights, "readout": "mamba1", **FAST})
    assert report.ok, str(report)


# --- through the runner: interval metrics and the transductive mark ----------------------------------


def test_run_records_interval_coverage_and_marks_transductive_runs(tiny_weights, tmp_path):
    from ctbench.runner import MethodSpec, execute, plan_runs

    params = {"checkpoint": tiny_weights, "readout": "mamba1", **FAST}
    results = []
    for spec, shots in ((MethodSpec("spektron-lora", params), [10]), (MethodSpec("spektron-ttt", params), [0, 10])):
        results += execute(plan_runs([spec], ["synthetic_a_b"], shots, 1, 0, tmp_path), 1, lambda status, path: None)
    records = [json.loads(open(p).read()) for _, p in results]
    assert {(r["method"]["name"], r["n_shots"]) for r in records} == {("spektron-lora", 10), ("spektron-ttt", 0), ("spektron-ttt", 10)}
    for r in records:
        assert r["status"] == "ok", r.get("error")
        iv = r["metrics"]["intervals"]
        for vals in iv["per_property"].values():
            assert 0.0 <= vals["coverage"] <= 1.0 and vals["mean_width"] > 0
        assert "interval_s" in r["timings"] and "spektron" in r["extras"]
        assert r["transductive"] is (r["method"]["name"] == "spektron-ttt")
    # the head-to-head table reads the same store
    from ctbench_spektron import headtohead

    execute(plan_runs([MethodSpec("pds")], ["synthetic_a_b"], [10, 30], 1, 0, tmp_path), 1, lambda status, path: None)
    execute(plan_runs([MethodSpec("no_transfer"), MethodSpec("full_recalibration")], ["synthetic_a_b"], [0, 10], 1, 0,
                      tmp_path), 1, lambda status, path: None)
    out = tmp_path / "h2h.md"
    assert headtohead.main(["--results-dir", str(tmp_path), "--tasks", "synthetic_a_b", "--out", str(out),
                            "--spektron", "spektron-lora[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"]) == 0
    text = out.read_text()
    assert "## 1. Ablation" in text and "## 2. Head-to-head" in text and "## Timings and transfer paths" in text
    h2h = text.split("## 2. Head-to-head")[1]
    assert "| synthetic_a_b | analyte_a | " in h2h.split("### (b) Against best classical at N = 10")[1] and "pds " in h2h
    assert text.count("cells; not worse in") == 2  # (b) and (c); (a) has no model_update records in this store
    assert "## Zero-shot (N = 0)" in text and "## Prediction intervals" in text


# --- the committed checkpoint ------------------------------------------------------------------------


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="default weights not committed")
def test_committed_default_checkpoint_matches_its_manifest():
    manifest = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert manifest["weights_sha256"] == sha256_of(DEFAULT_WEIGHTS)
    assert DEFAULT_WEIGHTS.stat().st_size < 20 * 2**20
    assert manifest["size"] == "small" and manifest["model_config"]["size"] == "small"
    names = {s["name"] for s in manifest["corpus"]["sources"]}
    assert names == {"rruff", "fermentation", "synthetic"}
    assert "reproduce" in manifest and "ctbench pretrain" in manifest["reproduce"]


def test_missing_default_weights_are_pretrained_once_on_first_use(tmp_path, monkeypatch):
    import ctbench_spektron.checkpoint as ck
    import ctbench_spektron.method as method

    monkeypatch.setattr(ck, "DEFAULT_WEIGHTS", tmp_path / "none" / "spektron-small.pt")
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(method, "AUTO_CORPUS", "synthetic")
    monkeypatch.setattr(method, "AUTO_PRETRAIN", method.AUTO_PRETRAIN | {"size": "tiny", "steps": 2, "batch_size": 4})
    path = method.default_weights(progress=False)
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert method.default_weights(progress=False) == path  # cached: no second run
