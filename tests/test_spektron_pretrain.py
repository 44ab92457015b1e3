"""Spektron pretraining: objectives, checkpoints and exact resume, the `ctbench pretrain` command
(generic method lookup, MLflow logging and its failure), and DistributedDataParallel on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from ctbench.cli.main import app  # noqa: E402
from ctbench_spektron.checkpoint import load_model  # noqa: E402
from ctbench_spektron.config import ObjectiveWeights, PretrainConfig  # noqa: E402
from ctbench_spektron.corpus import PretrainCorpus, SyntheticSpectra  # noqa: E402
from ctbench_spektron.objectives import (  # noqa: E402
    PretrainModule,
    TargetNetwork,
    compute_losses,
    make_views,
    sinkhorn_divergence,
)
from ctbench_spektron.pretrain import run_pretraining  # noqa: E402
from ctbench_spektron.sampling import BatchSampler  # noqa: E402

TINY = {"size": "tiny", "batch_size": 4, "mlflow": False, "progress": False, "log_every": 1, "num_threads": 1}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))


def _one_step(weights: ObjectiveWeights):
    pcfg = PretrainConfig(size="tiny", batch_size=6, weights=weights)
    mcfg = pcfg.model_config()
    corpus = PretrainCorpus(table=None, synthetic=SyntheticSpectra(grid_points=mcfg.grid_points), spec=("synthetic",))
    batch = BatchSampler(corpus, 6, seed=0).batch(0)
    torch.manual_seed(0)
    module = PretrainModule(mcfg)
    target = TargetNetwork(module)
    views = make_views(batch, pcfg, mcfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    out = module(views.x_online, views.k_tok, views.width, views.domain, views.token_mask, views.fno_rows, views.fno_input)
    rows = views.target_rows
    tproj = target(views.x_target[rows], views.k_tok[rows], views.width[rows], views.domain[rows])
    return compute_losses(out, tproj, views, pcfg), module


def test_every_objective_is_finite_and_differentiable():
    (total, parts), module = _one_step(ObjectiveWeights())
    assert set(parts) == {"recon", "denoise", "byol", "ot", "smooth", "nonneg", "deriv", "kl", "moe_balance", "transfer"}
    assert all(torch.isfinite(v) for v in parts.values())
    total.backward()
    grads = [p.grad for p in module.backbone.mamba.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_zero_weight_disables_an_objective():
    zero = ObjectiveWeights(ot=0.0, byol=0.0, transfer=0.0, smooth=0.0)
    (_, parts), _ = _one_step(zero)
    assert not {"ot", "byol", "transfer", "smooth"} & set(parts)


def test_sinkhorn_divergence_is_zero_for_identical_clouds_and_grows_with_shift():
    a = torch.randn(12, 4, dtype=torch.float64)
    same = sinkhorn_divergence(a, a.clone(), 0.05, 200)
    moved = sinkhorn_divergence(a, a + 1.0, 0.05, 200)
    assert abs(float(same)) < 1e-6
    assert float(moved) > 0.5


def test_pretraining_writes_weights_manifest_and_resumes_exactly(tmp_path):
    cfg = TINY | {"steps": 4, "checkpoint_every": 2, "seed": 3}
    full = run_pretraining("synthetic", cfg | {"out": str(tmp_path / "a")})
    part = run_pretraining("synthetic", cfg | {"out": str(tmp_path / "b"), "stop_after": 2})
    assert part["stopped_at"] == 2 and not (tmp_path / "b" / "spektron-tiny.pt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretraining("synthetic", cfg | {"out": str(tmp_path / "b")})
    resumed = run_pretraining("synthetic", cfg | {"out": str(tmp_path / "b"), "resume": True})
    a, _ = load_model(full["weights"])
    b, manifest = load_model(resumed["weights"])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    assert manifest["step"] == 4 and manifest["corpus"]["includes_synthetic"]
    side = json.loads(Path(resumed["manifest"]).read_text())
    assert side["weights_sha256"] == resumed["weights_sha256"]
    assert side["pretrain_config"]["steps"] == 4 and side["model_config"]["size"] == "tiny"
    assert side["corpus"]["sources"][0]["synthetic"] is True
    assert (tmp_path / "b" / "losses.csv").read_text().count("\n") == 5  # header + 4 steps
    assert (tmp_path / "b" / "losses.png").stat().st_size > 1000


def test_bf16_autocast_step_runs_on_cpu(tmp_path):
    summary = run_pretraining("synthetic", TINY | {"steps": 1, "precision": "bf16", "out": str(tmp_path)})
    assert np.isfinite(summary["final_losses"]["total"])


def test_unknown_pretraining_option_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        run_pretraining("synthetic", TINY | {"stepz": 3, "out": str(tmp_path)})


def test_cli_pretrain_writes_weights(tmp_path):
    res = CliRunner().invoke(app, ["pretrain", "--method", "spektron-lora", "--corpus", "synthetic", "--size", "tiny",
                                   "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "run"), "--no-mlflow",
                                   "--threads", "1", "--seed", "5"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["pretrain_config"]["seed"] == 5 and (tmp_path / "run" / "spektron-tiny.pt").is_file()


@pytest.mark.slow
def test_cli_pretrain_with_mlflow_and_method_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--method", "spektron-lora", "--corpus", "synthetic", "--size", "tiny", "--steps", "2",
                              "--batch-size", "4", "--out", str(out), "--results-dir", str(tmp_path / "results"),
                              "--threads", "1", "--param", "log_every=1", "--param", "weights.ot=0"])
    assert res.exit_code == 0, res.output
    assert "weights_sha256:" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pretrain_config"]["weights"]["ot"] == 0
    assert (tmp_path / "results" / "mlflow.db").is_file()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("spektron-pretrain")
    run = client.search_runs([exp.experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "total")] == [1, 2]
    assert (tmp_path / "results" / "mlartifacts").is_dir()  # the manifest artifact lands beside the store
    assert not (tmp_path / "mlruns").exists()
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ  # no global MLflow state leaks into later tracking


def test_cli_mlflow_failure_is_a_warning_not_a_lost_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with pytest.warns(UserWarning, match="MLflow logging disabled"):
        summary = run_pretraining("synthetic", TINY | {"steps": 1, "out": str(tmp_path / "r"), "mlflow": True,
                                                       "results_dir": str(tmp_path)})
    assert Path(summary["weights"]).is_file()


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--method", "no_transfer", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not support pretraining" in res.output
    res = runner.invoke(app, ["pretrain", "--method", "spektrn", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'spektron'" in res.output
    res = runner.invoke(app, ["pretrain", "--method", "spektron-lora", "--corpus", "rruff,synthtic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean 'synthetic'" in res.output
    res = runner.invoke(app, ["pretrain", "--method", "spektron-lora", "--size", "huge", "--corpus", "synthetic",
                              "--out", str(tmp_path), "--no-mlflow"])
    assert res.exit_code == 2 and "unknown Spektron size 'huge'" in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["pretrain", "--method", "spektron-lora", "--size", "tiny", "--corpus", "synthetic",
                                  "--device", "cuda", "--out", str(tmp_path / "c"), "--no-mlflow"])
        assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_torchrun_ddp_two_cpu_processes_on_gloo(tmp_path):  # ~7-15 s: two processes import torch
    out = tmp_path / "ddp"
    env = os.environ | {"CTBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ctbench", "pretrain",
           "--method", "spektron-lora", "--corpus", "synthetic", "--size", "tiny", "--steps", "3", "--batch-size", "4",
           "--out", str(out), "--no-mlflow", "--threads", "1", "--checkpoint-every", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=170)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count("weights_sha256:") == 1  # only rank 0 reports and writes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["step"] == 3
    model, _ = load_model(out / "spektron-tiny.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.isfinite(manifest["final_losses"]["total"])
