"""Spektron v3: the instrument translator (network, pretraining on simulated pairs, exact resume,
switchable objectives) and the ``spektron`` transfer method (paths, the CV choice, its fallback,
isolation of the copies, the committed checkpoint and its manifest)."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ctbench.plugins import load_methods  # noqa: E402
from ctbench_spektron.translate_method import PATHS, SpektronTranslate, default_translator  # noqa: E402
from ctbench_spektron.grid import interp_rows  # noqa: E402
from ctbench_spektron.translator import TranslatorConfig, load, new_model, resample  # noqa: E402
from ctbench_spektron.translator_pretrain import losses, make_batch, run_pretraining  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = {"points": 64, "width": 8, "trunk_depth": 1, "segments": 2, "z_dim": 4, "chem_dim": 4}
TINY = {"steps": 4, "episodes": 2, "samples": 12, "n_calibration": 8, "max_standards": 4, "warmup": 1,
        "checkpoint_every": 2, "progress": False, "num_threads": 1, "model": TINY_MODEL}


@pytest.fixture(scope="module")
def tiny_translator(tmp_path_factory):
    out = tmp_path_factory.mktemp("translator")
    return run_pretraining("synthetic", dict(TINY, out=str(out)))["weights"]


@pytest.fixture(scope="module")
def task(synthetic_transfer):
    return synthetic_transfer


def test_registered_and_cheap_to_list():
    methods = load_methods()
    assert methods["spektron"].cls is SpektronTranslate and methods["spektron"].plugin == "spektron"
    assert methods["spektron-nopretrain"].cls().pretrained is False
    assert SpektronTranslate.has_pretrain() and SpektronTranslate.tags.min_shots == 2


def test_resample_round_trips_a_smooth_spectrum_and_is_np_interp():
    axis = np.linspace(1100, 2500, 700)
    X = np.sin(axis / 90.0)[None, :] + np.cos(axis / 300.0)[None, :]
    R = resample(axis, X, 512)
    np.testing.assert_allclose(R[0], np.interp(np.linspace(1100, 2500, 512), axis, X[0]), rtol=0, atol=1e-12)
    back = interp_rows(np.linspace(1100, 2500, 512), R, axis)
    assert np.abs(back - X).max() < 1e-3


def test_untrained_network_proposes_no_difference_and_the_forward_model_is_physical():
    from ctbench_spektron.translator import THETA, transform

    model = new_model(TranslatorConfig(**TINY_MODEL), seed=1).eval()
    z, theta = model.infer_theta(torch.randn(1, 3, 64), torch.randn(1, 3, 64))
    assert torch.equal(theta, torch.zeros(1, len(THETA)))  # zero-initialised theta head: identity
    t = torch.linspace(-1, 1, 401, dtype=torch.float64)
    band = torch.exp(-0.5 * ((t - 0.1) / 0.05) ** 2)[None]
    assert torch.allclose(transform(band, torch.zeros(len(THETA), dtype=torch.float64), t), band)
    shift = torch.zeros(len(THETA), dtype=torch.float64)
    shift[0] = 10.0  # 10/1000 of the span = 0.02 in t
    moved = transform(band, shift, t)
    assert abs(float(t[moved.argmax()] - t[band.argmax()]) - 0.02) < 0.006
    wider = torch.zeros(len(THETA), dtype=torch.float64)
    wider[3] = 2.0  # positive broadening lowers the peak, keeps the area
    b = transform(band, wider, t)
    assert b.max() < band.max() and abs(float(b.sum() - band.sum())) < 1e-3 * float(band.sum())
    gain = torch.zeros(len(THETA), dtype=torch.float64)
    gain[4], gain[7] = float(np.log(2.0)), 0.5
    torch.testing.assert_close(transform(band, gain, t), 2 * band + 0.5, rtol=1e-3, atol=1e-3)  # soft bounds: ~identity


def test_episodes_are_deterministic_and_every_objective_trains(tiny_translator):
    cfg = {k: v for k, v in TINY.items() if k not in ("model", "progress")}
    from ctbench_spektron.translator_pretrain import DEFAULTS

    cfg = dict(DEFAULTS, **cfg)
    names = ["shift", "bandwidth"]
    b1 = make_batch(0, 5, None, cfg, 64, names)
    b2 = make_batch(0, 5, None, cfg, 64, names)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    assert b1["A"].shape == (2, 12, 64) and np.isfinite(b1["A"]).all() and np.isfinite(b1["B"]).all()
    model = new_model(TranslatorConfig(**dict(TINY_MODEL, n_inst=2)))
    torch.nn.init.normal_(model.theta.weight, std=0.1)
    batch = {k: torch.as_tensor(v) for k, v in b1.items()}
    for off in ("translation", "invariance", "episodic"):
        w = {"translation": 1.0, "invariance": 0.1, "episodic": 0.5, off: 0.0}
        out = losses(model, batch, cfg, w)
        assert torch.isfinite(out["total"]) and (off not in out or off == "translation")
        out["total"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        model.zero_grad()
    # simulator off: pairs from generic augmentations of one view
    b3 = make_batch(0, 5, None, dict(cfg, simulator=False), 64, names)
    assert np.isfinite(b3["B"]).all() and not np.array_equal(b3["A"], b3["B"])


def test_pretraining_writes_weights_manifest_and_resumes_exactly(tmp_path, tiny_translator):
    model, manifest = load(tiny_translator)
    assert manifest["synthetic_training_data"] is True and manifest["steps"] == 4
    assert set(manifest["objectives"]) == {"translation", "invariance", "episodic"}
    side = json.loads(open(str(tiny_translator).replace(".pt", ".json")).read())
    assert side["weights_sha256"] == manifest["weights_sha256"]
    # interrupted after 2 steps, then resumed to 4: the same weights as the uninterrupted run
    out = tmp_path / "resumed"
    run_pretraining("synthetic", dict(TINY, out=str(out), steps=2))
    (out / "spektron-translator.pt").unlink()
    run_pretraining("synthetic", dict(TINY, out=str(out), resume=True))
    again, _ = load(out / "spektron-translator.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    with pytest.raises(FileExistsError):
        run_pretraining("synthetic", dict(TINY, out=str(out)))
    with pytest.raises(ValueError, match="unknown translator objective"):
        run_pretraining("synthetic", dict(TINY, out=str(tmp_path / "x"), weights={"ot": 1.0}))


def test_paths_fallback_and_cv_choice(tiny_translator, task):
    from ctbench_classical.model_update import ModelUpdate

    source, standards, X_test, y_test = task
    mu = ModelUpdate().fit(source).transfer(standards).predict(X_test)
    fallback = SpektronTranslate(checkpoint=tiny_translator, path="model_update").fit(source).transfer(standards)
    np.testing.assert_array_equal(fallback.predict(X_test), mu)  # the fallback is exactly model updating
    auto = SpektronTranslate(checkpoint=tiny_translator).fit(source).transfer(standards)
    extras = auto.record_extras()["spektron"]
    assert extras["path"] in PATHS and set(extras["cv_scores"]) == set(PATHS)
    assert extras["path"] == min(extras["cv_scores"], key=lambda p: (extras["cv_scores"][p], PATHS.index(p)))
    for p in PATHS:
        pred = SpektronTranslate(checkpoint=tiny_translator, path=p).fit(source).transfer(standards).predict(X_test)
        assert pred.shape == y_test.shape and np.isfinite(pred).all()


def test_copies_are_independent_deterministic_and_inputs_untouched(tiny_translator, task):
    source, standards, X_test, _ = task
    before = X_test.copy()
    m = SpektronTranslate(checkpoint=tiny_translator).fit(source)
    a = copy.deepcopy(m).transfer(standards)
    b = pickle.loads(pickle.dumps(m)).transfer(standards)
    np.testing.assert_array_equal(a.predict(X_test), b.predict(X_test))
    np.testing.assert_array_equal(X_test, before)
    assert not hasattr(m, "model_")


def test_bad_parameters_and_order_are_clear_errors(tiny_translator, task):
    source, standards, X_test, _ = task
    with pytest.raises(ValueError, match="path must be"):
        SpektronTranslate(checkpoint=tiny_translator, path="pds").fit(source)
    with pytest.raises(ValueError, match="refine_steps"):
        SpektronTranslate(checkpoint=tiny_translator, refine_steps=-1).fit(source)
    with pytest.raises(RuntimeError, match="fit"):
        SpektronTranslate(checkpoint=tiny_translator).transfer(standards)
    with pytest.raises(RuntimeError, match="transfer"):
        SpektronTranslate(checkpoint=tiny_translator).fit(source).predict(X_test)
    with pytest.raises(FileNotFoundError, match="translator weights not found"):
        SpektronTranslate(checkpoint="/nonexistent/x.pt").fit(source)


@pytest.mark.skipif(not default_translator().is_file(), reason="default translator not committed")
def test_committed_translator_matches_its_manifest_and_budget():
    path = default_translator()
    manifest = json.loads(path.with_suffix(".json").read_text())
    from ctbench_spektron.checkpoint import sha256_of

    assert manifest["weights_sha256"] == sha256_of(path)
    assert path.stat().st_size < 20 * 2**20
    assert manifest["synthetic_training_data"] is True and manifest["simulator"] is True
    assert manifest["elapsed_s"] < 3600  # pretrained within the hour on 2 CPU cores
    assert "ctbench pretrain" in manifest["command"]
    sources = {s["name"] for s in manifest["corpus"].get("sources", [])}
    assert {"rruff", "fermentation"} <= sources  # real unlabelled spectra as matrices; no benchmark task data


@pytest.mark.skipif(not default_translator().is_file(), reason="default translator not committed")
def test_committed_translator_corpus_holds_no_benchmark_task_file():
    """The measured part of the pretraining corpus comes from files that are not any benchmark
    dataset's (by sha256 against the mirror's SHA256SUMS), and the rest is synthetic."""
    import os
    from pathlib import Path

    sums = Path(os.environ.get("CTBENCH_DATA", "")) / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no dataset mirror (CTBENCH_DATA)")
    benchmark = {"corn", "tablet_idrc2002", "raman_dig4bio", "wheat_idrc2016"}
    task_hashes = set()
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if name.lstrip("./").split("/")[0] in benchmark:
            task_hashes.add(digest)
    assert task_hashes
    corpus = json.loads(default_translator().with_suffix(".json").read_text())["corpus"]
    measured = [s for s in corpus["sources"] if not s.get("synthetic")]
    assert measured and all(s["sha256"] not in task_hashes for s in measured)
    assert all(s["file"].split("/")[0] not in benchmark for s in measured)
    assert corpus["synthetic"]["synthetic"] is True


def test_cli_pretrains_the_translator_and_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from ctbench.cli.main import app

    runner = CliRunner()
    args = ["pretrain", "--method", "spektron", "--corpus", "synthetic", "--steps", "2", "--no-mlflow",
            "--param", "episodes=2", "--param", "samples=12", "--param", "n_calibration=8", "--param", "max_standards=4",
            "--param", "model.points=64", "--param", "model.width=8", "--param", "model.trunk_depth=1"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--param", "simulator=false"])
    assert res.exit_code == 0, res.output
    assert "weights_sha256:" in res.output and (tmp_path / "a" / "spektron-translator.pt").is_file()
    manifest = json.loads((tmp_path / "a" / "spektron-translator.json").read_text())
    assert manifest["simulator"] is False and "ctbench pretrain --method spektron" in manifest["command"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--param", "weights.ot=1"])
    assert res.exit_code == 2 and "unknown translator objective" in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, args + ["--out", str(tmp_path / "c"), "--device", "cuda"])
        assert res.exit_code == 2 and "CUDA is not available" in res.output
