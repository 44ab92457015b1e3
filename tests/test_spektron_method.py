"""The registered `spektron` transfer method: contract behaviour on the synthetic task with a tiny
pretrained checkpoint (determinism, pickling, inputs untouched, speed), the conformance kit, and
the committed default small checkpoint (manifest, sha256)."""

from __future__ import annotations

import copy
import json
import pickle
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ctbench.data.synthetic import synthetic_dataset  # noqa: E402
from ctbench.method import SourceData, Standards  # noqa: E402
from ctbench.plugins import load_methods  # noqa: E402
from ctbench_spektron import Spektron  # noqa: E402
from ctbench_spektron.checkpoint import DEFAULT_WEIGHTS, sha256_of  # noqa: E402
from ctbench_spektron.pretrain import run_pretraining  # noqa: E402

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small networks on a shared CPU run fastest (and steadiest) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("spektron_tiny")
    summary = run_pretraining("synthetic", {"size": "tiny", "steps": 3, "batch_size": 4, "out": str(out), "mlflow": False,
                                            "progress": False, "num_threads": 1})
    return summary["weights"]


@pytest.fixture(scope="module")
def task():
    ds = synthetic_dataset(n_samples=80)
    a, b = ds.instruments["synth_a"], ds.instruments["synth_b"]
    cal, std, test = np.arange(0, 50), np.arange(0, 8), np.arange(50, 80)
    source = SourceData(X=a.values[cal], y=a.y[cal], axis=a.axis, axis_unit=a.axis_unit, properties=ds.properties)
    standards = Standards(X_source=a.values[std], X_target=b.values[std], y=a.y[std], axis=a.axis, axis_unit=a.axis_unit,
                          properties=ds.properties)
    return source, standards, b.values[test], b.y[test], a.values[test]


def _rmse(p, y):
    return float(np.sqrt(((p - y) ** 2).mean()))


def test_registered_through_the_plugin_manager():
    info = load_methods()["spektron"]
    assert info.cls is Spektron and info.plugin == "spektron"
    assert Spektron.tags.min_shots == 2 and Spektron.has_pretrain()


def test_fit_transfer_predict_shapes_speed_and_improvement(tiny_weights, task):
    source, standards, X_test, y_test, _ = task
    m = Spektron(checkpoint=tiny_weights, random_state=0).fit(source)
    no_transfer = m.predict(X_test)
    t0 = time.perf_counter()
    pred = m.transfer(standards).predict(X_test)
    assert time.perf_counter() - t0 < 20
    assert pred.shape == (30, 2) and np.isfinite(pred).all()
    assert _rmse(pred, y_test) < _rmse(no_transfer, y_test)


@pytest.mark.parametrize("params", [
    {"features": "embedding", "head": "ridge", "correction": "offset"},
    {"features": "embedding+raw", "head": "pls", "correction": "none", "y_bias": False},
])
def test_other_settings_run(tiny_weights, task, params):
    source, standards, X_test, _, _ = task
    pred = Spektron(checkpoint=tiny_weights, **params).fit(source).transfer(standards).predict(X_test)
    assert pred.shape == (30, 2) and np.isfinite(pred).all()


def test_deterministic_picklable_and_inputs_untouched(tiny_weights, task):
    source, standards, X_test, _, _ = task
    before = [copy.deepcopy(a) for a in (source.X, source.y, standards.X_source, standards.X_target, standards.y, X_test)]
    m1 = Spektron(checkpoint=tiny_weights, random_state=4).fit(source).transfer(standards)
    m2 = Spektron(checkpoint=tiny_weights, random_state=4).fit(source).transfer(standards)
    p1 = m1.predict(X_test)
    np.testing.assert_array_equal(p1, m2.predict(X_test))
    restored = pickle.loads(pickle.dumps(m1))
    np.testing.assert_array_equal(restored.predict(X_test), p1)
    deep = copy.deepcopy(m1)
    np.testing.assert_array_equal(deep.predict(X_test), p1)
    after = (source.X, source.y, standards.X_source, standards.X_target, standards.y, X_test)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert m1.clone().get_params() == m1.get_params()


def test_bad_parameters_and_order_are_clear_errors(tiny_weights, task):
    source, _, X_test, _, _ = task
    with pytest.raises(ValueError, match="features must be"):
        Spektron(checkpoint=tiny_weights, features="pixels").fit(source)
    with pytest.raises(RuntimeError, match="fit"):
        Spektron(checkpoint=tiny_weights).predict(X_test)
    with pytest.raises(ValueError, match="channels"):
        Spektron(checkpoint=tiny_weights).fit(source).predict(X_test[:, :10])


def test_conformance_kit_quick(tiny_weights):
    from ctbench.testing import check_method

    report = check_method(Spektron, quick=True, params={"checkpoint": tiny_weights})
    assert report.ok, str(report)


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

