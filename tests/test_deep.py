"""Tests of the deep baselines ``cnn`` and ``lora_ct`` (plugins/ctbench_deep); tiny sizes, CPU."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
try:
    import ctbench_deep
except ImportError:  # an editable install made before the package existed does not map it yet
    sys.path.insert(0, str(PLUGINS))
    import ctbench_deep

from ctbench.data.synthetic import synthetic_dataset
from ctbench.method import SourceData, Standards
from ctbench_deep import CNN, LoRACT
from ctbench_deep import networks as nets
from ctbench_deep import training as T

TINY = dict(epochs=40, patience=20, widths=(4, 8, 8), hidden=16, pool_size=16, random_state=0)
TINY_CNN = dict(TINY, transfer_epochs=15, transfer_max_epochs=15, transfer_patience=5)
TINY_LORA = dict(TINY, transfer_epochs=30, rank=2)


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    d = synthetic_dataset(n_samples=80, n_channels=120, seed=1)
    a, b = d.instruments["synth_a"], d.instruments["synth_b"]
    cal, test = np.arange(60), np.arange(60, 80)
    source = SourceData(X=a.values[cal], y=a.y[cal], axis=a.axis, axis_unit="nm", properties=d.properties)
    std_rows = cal[:10]
    standards = Standards(
        X_source=a.values[std_rows],
        X_target=b.values[std_rows],
        y=a.y[std_rows],
        axis=a.axis,
        axis_unit="nm",
        properties=d.properties,
    )
    return dict(source=source, standards=standards, X_test=b.values[test], y_test=b.y[test])


@pytest.fixture(scope="module")
def fitted(data):
    return {
        "cnn": CNN(**TINY_CNN).fit(data["source"]),
        "lora_ct": LoRACT(**TINY_LORA).fit(data["source"]),
    }


def _transferred(fitted, name, standards):
    return copy.deepcopy(fitted[name]).transfer(standards)


def _is_bn_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


# --- plugin surface ---


def test_import_does_not_import_torch():
    code = "import sys, ctbench_deep; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_registered_methods_and_params():
    classes = ctbench_deep.ctbench_register_methods()
    assert [c.name for c in classes] == ["cnn", "lora_ct"]
    for cls in classes:
        m = cls(lr=3e-3, random_state=7)
        assert m.get_params()["lr"] == 3e-3
        clone = m.clone()
        assert clone.get_params() == m.get_params() and clone is not m
        assert cls.tags.iterative and cls.tags.multi_target and cls.tags.min_shots == 2
        assert cls.has_search_space()


def test_search_spaces():
    optuna = pytest.importorskip("optuna")
    space = LoRACT.search_space(optuna.trial.FixedTrial({"transfer_lr": 1e-3, "transfer_weight_decay": 1e-4, "rank": 8}))
    assert space == {"transfer_lr": 1e-3, "transfer_weight_decay": 1e-4, "rank": 8}
    LoRACT(**space)
    params = {"lr": 1e-3, "weight_decay": 1e-4, "transfer_lr": 1e-4, "transfer_epochs": 20}
    assert CNN.search_space(optuna.trial.FixedTrial(params)) == params


def test_cuda_requested_without_cuda_is_a_clear_error(data):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match="device='cuda'.*no CUDA"):
        LoRACT(**TINY_LORA, device="cuda").fit(data["source"])
    with pytest.raises(ValueError, match="device must be"):
        T.resolve_device("tpu")


# --- LoRA layer maths ---


@pytest.mark.parametrize("rank", [1, 2, 4, 8, 16])
def test_adapter_parameter_count(rank):
    base = torch.nn.Linear(37, 11)
    layer = nets.LoRALinear(base, rank)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == rank * (37 + 11)
    model = nets.add_lora(nets.SpectralCNN(nets.CNNConfig(n_outputs=3, widths=(4, 8, 8), pool_size=5, hidden=13)), rank)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == rank * (8 * 5 + 13)
    assert model.fc1.scaling == 1.0  # alpha = r


def test_fresh_adapter_is_identity_and_merge_matches_unmerged():
    torch.manual_seed(0)
    model = nets.SpectralCNN(nets.CNNConfig(n_outputs=2, widths=(4, 8, 8), pool_size=6, hidden=10)).eval()
    x = torch.randn(5, 90)
    before = model(x)
    nets.add_lora(model, rank=4)
    assert torch.equal(model(x), before)  # B = 0 at start
    with torch.no_grad():
        model.fc1.lora_B.normal_()
    unmerged = model(x)
    assert not torch.allclose(unmerged, before)
    delta = model.fc1.delta_weight()
    w = model.fc1.base.weight.clone()
    nets.merge_lora(model)
    assert isinstance(model.fc1, torch.nn.Linear)
    torch.testing.assert_close(model.fc1.weight, w + delta)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_batchnorm_reestimation_uses_the_given_spectra():
    torch.manual_seed(0)
    model = nets.SpectralCNN(nets.CNNConfig(n_outputs=1, widths=(4, 8, 8), pool_size=6, hidden=10))
    x = torch.randn(7, 60) * 3 + 1
    T.reestimate_batchnorm(model, x)
    assert not model.training
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        h = conv(x.unsqueeze(1))
    torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2)))
    torch.testing.assert_close(bn.running_var, h.var(dim=(0, 2), unbiased=True))
    assert bn.momentum == 0.1


# --- fitted methods ---


@pytest.mark.parametrize("name", ["cnn", "lora_ct"])
def test_prediction_shape(fitted, data, name):
    m = _transferred(fitted, name, data["standards"])
    pred = m.predict(data["X_test"])
    assert pred.shape == (20, 2) and np.isfinite(pred).all()
    with pytest.raises(ValueError, match="channels"):
        m.predict(data["X_test"][:, :50])


def test_lora_ct_transfer_changes_only_adapter_and_batchnorm_stats(fitted, data):
    source_before = {k: v.clone() for k, v in fitted["lora_ct"].source_state_.items()}
    m = _transferred(fitted, "lora_ct", data["standards"])
    src, new = m.source_state_, m.state_
    assert src.keys() == new.keys()
    for k in src:
        if k == "fc1.weight":
            delta = (m.adapter_["B"] @ m.adapter_["A"]) * (m.adapter_["alpha"] / m.adapter_["rank"])
            assert delta.abs().max() > 0
            torch.testing.assert_close(new[k], src[k] + delta)
        elif _is_bn_stat(k):
            if k.endswith("running_mean"):
                assert not torch.equal(new[k], src[k]), k  # re-estimated on the target standards
        else:
            assert torch.equal(new[k], src[k]), f"{k} changed"
    # the fitted source model itself is untouched (deep copies do not leak)
    for k, v in fitted["lora_ct"].source_state_.items():
        assert torch.equal(v, source_before[k])
    assert fitted["lora_ct"].state_ is fitted["lora_ct"].source_state_


def test_lora_ct_merged_model_equals_unmerged(fitted, data):
    m = _transferred(fitted, "lora_ct", data["standards"])
    unmerged = T.build_model(m.config_, m.source_state_, torch.device("cpu"))
    bn_stats = {k: v for k, v in m.state_.items() if _is_bn_stat(k)}
    unmerged.load_state_dict(bn_stats, strict=False)
    nets.add_lora(unmerged, m.adapter_["rank"], m.adapter_["alpha"])
    with torch.no_grad():
        unmerged.fc1.lora_A.copy_(m.adapter_["A"])
        unmerged.fc1.lora_B.copy_(m.adapter_["B"])
    X = torch.as_tensor((data["X_test"] - m.x_mean_) / m.x_std_, dtype=torch.float32)
    expected = T.predict_array(unmerged, X).numpy() * m.y_std_ + m.y_mean_
    np.testing.assert_allclose(m.predict(data["X_test"]), expected, rtol=1e-4, atol=1e-5)


def test_lora_ct_without_batchnorm_adaptation_keeps_statistics(fitted, data):
    m = copy.deepcopy(fitted["lora_ct"]).set_params(adapt_batchnorm=False).transfer(data["standards"])
    for k, v in m.source_state_.items():
        if k != "fc1.weight":
            assert torch.equal(m.state_[k], v), k


def test_cnn_finetune_changes_all_weights(fitted, data):
    m = _transferred(fitted, "cnn", data["standards"])
    assert m.transfer_epochs_ == 15
    changed = [k for k in m.source_state_ if not _is_bn_stat(k) and not torch.equal(m.state_[k], m.source_state_[k])]
    weights = [k for k in m.source_state_ if not _is_bn_stat(k)]
    assert changed == weights
    assert not np.allclose(m.predict(data["X_test"]), fitted["cnn"].predict(data["X_test"]))


def test_cnn_early_stopping_on_held_out_standards(fitted, data):
    m = copy.deepcopy(fitted["cnn"]).set_params(early_stopping_min_shots=8).transfer(data["standards"])
    assert 0 <= m.transfer_epochs_ <= 15


@pytest.mark.parametrize("name", ["cnn", "lora_ct"])
def test_transfer_restarts_from_the_source_model(fitted, data, name):
    once = _transferred(fitted, name, data["standards"])
    twice = _transferred(fitted, name, data["standards"]).transfer(data["standards"])
    np.testing.assert_array_equal(once.predict(data["X_test"]), twice.predict(data["X_test"]))


@pytest.mark.parametrize("cls,params", [(CNN, TINY_CNN), (LoRACT, TINY_LORA)])
def test_deterministic_under_a_seed(data, cls, params):
    preds = []
    for _ in range(2):
        m = cls(**params).fit(data["source"]).transfer(data["standards"])
        preds.append(m.predict(data["X_test"]))
    np.testing.assert_array_equal(preds[0], preds[1])
    other = cls(**dict(params, random_state=1)).fit(data["source"]).transfer(data["standards"])
    assert not np.array_equal(other.predict(data["X_test"]), preds[0])


@pytest.mark.parametrize("name", ["cnn", "lora_ct"])
def test_pickle_round_trip(fitted, data, name):
    m = _transferred(fitted, name, data["standards"])
    back = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(back.predict(data["X_test"]), m.predict(data["X_test"]))
    assert back.get_params() == m.get_params()


@pytest.mark.parametrize("name", ["cnn", "lora_ct"])
def test_reports_validation_loss_per_epoch(data, name):
    cls, params = {"cnn": (CNN, TINY_CNN), "lora_ct": (LoRACT, TINY_LORA)}[name]
    seen = []
    m = cls(**dict(params, epochs=8, patience=100))
    m._report_callback = lambda value, step: seen.append((step, value))
    m.fit(data["source"])
    assert [s for s, _ in seen] == list(range(1, 9))
    assert all(np.isfinite(v) and v >= 0 for _, v in seen)


@pytest.mark.parametrize("name", ["cnn", "lora_ct"])
def test_beats_predicting_the_mean(fitted, data, name):
    m = _transferred(fitted, name, data["standards"])
    y = data["y_test"]
    rmse = np.sqrt(((m.predict(data["X_test"]) - y) ** 2).mean(axis=0))
    rmse_mean = np.sqrt(((data["source"].y.mean(axis=0) - y) ** 2).mean(axis=0))
    assert (rmse < 0.8 * rmse_mean).all(), (rmse, rmse_mean)


def test_bad_inputs(fitted, data):
    with pytest.raises(RuntimeError, match="fit"):
        LoRACT().predict(data["X_test"])
    few = Standards(
        X_source=data["standards"].X_source[:1],
        X_target=data["standards"].X_target[:1],
        y=data["standards"].y[:1],
        axis=data["standards"].axis,
        axis_unit="nm",
        properties=data["standards"].properties,
    )
    with pytest.raises(ValueError, match="at least 2"):
        copy.deepcopy(fitted["cnn"]).transfer(few)


def test_source_validation_split_keeps_replicates_together():
    from ctbench_deep.methods import holdout_split

    groups = np.repeat([f"s{i}" for i in range(10)], 3)
    train, val = holdout_split(30, 0.2, np.random.default_rng(0), groups)
    assert len(val) == 6 and set(groups[train]).isdisjoint(groups[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(30))
    assert holdout_split(5, 0.2, np.random.default_rng(0))[1].size == 0  # too few rows: no validation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls,params", [(CNN, TINY_CNN), (LoRACT, TINY_LORA)])
def test_runs_on_cuda(data, cls, params):
    m = cls(**dict(params, device="cuda")).fit(data["source"]).transfer(data["standards"])
    pred = m.predict(data["X_test"])
    assert pred.shape == (20, 2) and np.isfinite(pred).all()
    assert all(v.device.type == "cpu" for v in m.state_.values())  # stored state stays picklable anywhere
    cpu = copy.deepcopy(m).set_params(device="cpu")
    np.testing.assert_allclose(cpu.predict(data["X_test"]), pred, rtol=1e-3, atol=1e-3)
