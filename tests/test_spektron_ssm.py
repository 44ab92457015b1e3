"""Spektron's selective scans: the chunked forms equal the position-by-position loop (CPU), and the
mamba_ssm CUDA kernel equals them (GPU, skipped without CUDA + mamba_ssm)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ctbench_spektron.ssm import (  # noqa: E402
    MambaBlock,
    expand_heads,
    mamba_kernel,
    selective_scan_chunked,
    selective_scan_ref,
    ssd_scan_chunked,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _general_inputs(b=2, d=6, L=37, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    delta = torch.randn(b, d, L, generator=g, dtype=dtype)
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1
    B = torch.randn(b, n, L, generator=g, dtype=dtype)
    C = torch.randn(b, n, L, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    z = torch.randn(b, d, L, generator=g, dtype=dtype)
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.1
    return u, delta, A, B, C, D, z, bias


def _head_inputs(b=2, L=45, H=3, P=4, N=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = torch.rand(b, L, H, generator=g, dtype=dtype) * 0.8 + 0.01
    A = -torch.rand(H, generator=g, dtype=dtype) * 5 - 0.1
    B = torch.randn(b, L, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, N, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("chunk", [1, 4, 8, 16, 64])
def test_chunked_scan_equals_reference_loop(chunk):
    u, delta, A, B, C, D, z, bias = _general_inputs()
    ref = selective_scan_ref(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    got = selective_scan_chunked(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, chunk=chunk)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-5, atol=1e-5)


def test_chunked_scan_hand_computed_case():
    # one channel, one state: h = 0.5 h + u (delta = 1, A = log 0.5, B = C = 1), y = h
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta = torch.ones(1, 1, 3)
    A = torch.log(torch.tensor([[0.5]]))
    B = torch.ones(1, 1, 3)
    C = torch.ones(1, 1, 3)
    expected = torch.tensor([[[1.0, 2.5, 4.25]]])
    torch.testing.assert_close(selective_scan_chunked(u, delta, A, B, C, chunk=2), expected)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C), expected)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_ssd_scan_equals_reference_loop(chunk):
    x, dt, A, B, C, D = _head_inputs()
    got = ssd_scan_chunked(x, dt, A, B, C, D, chunk=chunk)
    u, delta, A_full, Bt, Ct, D_full = expand_heads(x, dt, A, B, C, D, B.shape[-1])
    ref = selective_scan_ref(u, delta, A_full, Bt, Ct, D_full)
    b, L, H, P = x.shape
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(b, L, H, P).to(got.dtype), rtol=1e-5, atol=1e-5)


def test_scan_gradients_match_reference():
    x, dt, A, B, C, D = _head_inputs(L=20, dtype=torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, B, C)]
    ssd_scan_chunked(leaves[0], leaves[1], A, leaves[2], leaves[3], D, chunk=8).pow(2).sum().backward()
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, dt, B, C)]
    u, delta, A_full, Bt, Ct, D_full = expand_heads(ref_leaves[0], ref_leaves[1], A, ref_leaves[2], ref_leaves[3], D, B.shape[-1])
    selective_scan_ref(u, delta, A_full, Bt, Ct, D_full).pow(2).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("structure", ["head", "diagonal"])
def test_mamba_block_same_output_with_chunked_and_reference_scan(structure):
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4, expand=2, structure=structure, head_dim=8, chunk=4, scan_impl="chunked")
    h = torch.randn(2, 19, 16)
    fast = block(h)
    block.scan_impl = "ref"
    torch.testing.assert_close(fast, block(h), rtol=1e-4, atol=1e-5)


def test_cuda_scan_impl_is_refused_without_gpu_kernel():
    if torch.cuda.is_available() and mamba_kernel() is not None:
        pytest.skip("a CUDA mamba_ssm kernel is available here")
    block = MambaBlock(8, d_state=2, head_dim=8, scan_impl="cuda")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        block(torch.randn(1, 5, 8))


_no_kernel = not torch.cuda.is_available() or mamba_kernel() is None


@pytest.mark.gpu
@pytest.mark.skipif(_no_kernel, reason="needs a CUDA GPU and the mamba_ssm package (pip install 'ctbench[gpu]')")
@pytest.mark.parametrize("structure", ["diagonal", "head"])
def test_mamba_ssm_kernel_equals_chunked_scan(structure):
    fn = mamba_kernel()
    dev = torch.device("cuda")
    if structure == "diagonal":
        u, delta, A, B, C, D, z, bias = (t.float().to(dev) for t in _general_inputs(b=3, d=64, L=130, n=16))
        got = fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
        ours = selective_scan_chunked(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    else:
        x, dt, A, B, C, D = (t.float().to(dev) for t in _head_inputs(b=3, L=130, H=4, P=16, N=16))
        u, delta, A_full, Bt, Ct, D_full = expand_heads(x, dt, A, B, C, D, B.shape[-1])
        got = fn(u.contiguous(), delta.contiguous(), A_full.contiguous(), Bt.contiguous(), Ct.contiguous(), D_full)
        b, L, H, P = x.shape
        ours = ssd_scan_chunked(x, dt, A, B, C, D).reshape(b, L, H * P).transpose(1, 2)
    torch.testing.assert_close(got, ours, rtol=2e-3, atol=2e-3)
