"""Spektron network pieces: wavelet embedding = PyWavelets, grid and positional encoding,
model shapes and sizes, mixture of experts, masks and augmentations, cheap package import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pywt = pytest.importorskip("pywt")

from ctbench_spektron.augment import expand_token_mask, instrument_augment, shift, token_masks  # noqa: E402
from ctbench_spektron.config import DOMAINS, SIZES, model_config  # noqa: E402
from ctbench_spektron.grid import domain_index, resample_to_grid, to_wavenumber, token_positions  # noqa: E402
from ctbench_spektron.model import MoELayer, SpektronModel, count_parameters, model_inputs  # noqa: E402
from ctbench_spektron.wavelet import WaveletEmbedding, dwt_filters, wavedec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("wavelet", ["db4", "haar", "sym6"])
def test_dwt_as_convolution_equals_pywavelets(wavelet):
    x = np.random.default_rng(0).normal(size=(3, 256))
    ours = wavedec(torch.tensor(x, dtype=torch.float64), dwt_filters(wavelet, torch.float64), 4)
    ref = pywt.wavedec(x, wavelet, mode="periodization", level=4, axis=-1)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-10)


def test_wavelet_embedding_features_are_an_orthogonal_transform_of_each_patch():
    emb = WaveletEmbedding(grid_points=512, patch=32, wavelet="haar", context_levels=2, d_model=16)
    x = torch.randn(2, 512, dtype=torch.float64)
    feats = emb.features(x)
    assert feats.shape == (2, 16, 32 + 2)
    # haar: within-patch coefficients preserve each patch's energy exactly
    energy_patch = x.reshape(2, 16, 32).pow(2).sum(-1)
    torch.testing.assert_close(feats[..., :32].pow(2).sum(-1), energy_patch)


def test_resample_to_grid_and_token_positions():
    axis = np.array([1000.0, 1001.0, 1003.0, 1004.0])
    vals, lo, hi = resample_to_grid(np.array([[0.0, 1.0, 3.0, 4.0]]), axis, 5)
    np.testing.assert_allclose(vals[0], [0, 1, 2, 3, 4], atol=1e-6)
    assert (lo, hi) == (1000.0, 1004.0)
    # a decreasing axis is sorted first
    vals2, lo2, _ = resample_to_grid(np.array([[4.0, 3.0, 1.0, 0.0]]), axis[::-1].copy(), 5)
    np.testing.assert_allclose(vals2, vals)
    k, w = token_positions(np.array([1000.0]), np.array([2000.0]), "nm", 2048, 32)
    assert k.shape == (1, 64)
    np.testing.assert_allclose(to_wavenumber(np.array([1000.0]), "nm"), [10000.0])
    assert 5000 < k[0, -1] < k[0, 0] < 10000  # nm -> cm-1 reverses the order
    assert (w > 0).all()


def test_domain_names():
    assert DOMAINS[domain_index("raman")] == "Raman"
    assert DOMAINS[domain_index("MIR")] == "IR"
    assert DOMAINS[domain_index("whatever")] == "unknown"


def test_model_forward_shapes_and_heads():
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = SpektronModel(cfg).eval()
    n = 3
    inp = model_inputs(np.random.default_rng(0).normal(size=(n, cfg.grid_points)), np.full(n, 100.0),
                       np.full(n, 1800.0), "cm-1", np.array([0, 1, 2]), cfg)
    mask = torch.zeros(n, cfg.n_tokens, dtype=torch.bool)
    mask[:, 3:7] = True
    out = model(**inp, token_mask=mask)
    assert out["hidden"].shape == (n, cfg.n_tokens + 2, cfg.d_model)
    assert out["recon"].shape == (n, cfg.grid_points)
    assert out["mu_chem"].shape == (n, cfg.z_chem) and out["mu_inst"].shape == (n, cfg.z_inst)
    assert model.regress(out["z_chem"]).shape == (n, cfg.n_targets)
    assert model.transfer(inp["x"], out["z_inst"]).shape == (n, cfg.grid_points)
    # eval mode is deterministic (z = posterior mean)
    torch.testing.assert_close(model(**inp)["mu_chem"], model(**inp)["mu_chem"])


def test_parameter_counts_per_size():
    counts = {size: count_parameters(SpektronModel(model_config(size))) for size in SIZES}
    assert counts["tiny"] < 100_000
    assert 0.5e6 < counts["small"] < 3e6
    assert 8e6 <= counts["base"] <= 10e6


def test_mixture_of_experts_routes_top_k_and_reports_balance():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, n_experts=4, top_k=2)
    h = torch.randn(2, 10, 8)
    out, aux = moe(h)
    assert out.shape == h.shape
    assert 0.5 < aux.item() < 4.0  # n_experts * sum(share * mean prob): 1 when perfectly balanced
    # each token goes to exactly top_k experts: the combined output is a convex mix of 2 experts
    x = moe.norm(h).reshape(-1, 8)
    top = torch.softmax(moe.router(x), -1).topk(2, -1)
    assert top.indices.shape == (20, 2)


def test_block_masks_cover_15_to_25_percent_in_contiguous_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2048)
    for kind in ("block", "peak", "random"):
        m = token_masks(x, 64, g, kind=kind, min_ratio=0.15, max_ratio=0.25, max_blocks=1)
        share = m.float().mean(1)
        assert (share >= 0.14).all() and (share <= 0.26).all(), kind
        if kind != "random":  # one contiguous run per spectrum
            runs = (m[:, 1:] & ~m[:, :-1]).sum(1) + m[:, 0].long()
            assert (runs == 1).all(), kind
    assert expand_token_mask(m, 32).shape == (64, 2048)


def test_augmentations_keep_shape_and_shift_moves_peaks():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 200)
    x[:, 100] = 1.0
    moved = shift(x, torch.tensor([5.0, -3.0]))
    assert moved[0].argmax() == 105 and moved[1].argmax() == 97
    aug = instrument_augment(torch.randn(4, 256), g)
    assert aug.shape == (4, 256) and torch.isfinite(aug).all()


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, ctbench_spektron; ctbench_spektron.ctbench_register_methods(); "
            "ctbench_spektron.ctbench_register_corpora(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
