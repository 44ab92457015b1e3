"""Selective state-space (Mamba) blocks and their scans.

The recurrence, per channel d and state n (Mamba's ``selective_scan_fn`` convention)::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * u[t] * B[t, n]
    y[t] = sum_n C[t, n] * h[t, n] + D[d] * u[t]

Three implementations of it:

* ``selective_scan_ref``: the plain loop over positions (the test oracle, slow);
* ``selective_scan_chunked``: for any ``A`` (d, n): an associative (Hillis-Steele) scan of the
  pairs (decay, input) inside fixed-size chunks, all chunks at once, then one carry step per chunk;
* ``ssd_scan_chunked``: for head-structured decays (one ``A`` and ``delta`` per head of P
  channels, as in Mamba-2): within a chunk the output is a masked matrix product with decay
  factors ``exp(S[t] - S[s])`` from log-space cumulative sums, so it runs as matmuls; chunk
  states are carried across chunks.

On CUDA with ``mamba_ssm`` installed, ``selective_scan_fn`` (its fused kernel) is used instead;
head-structured inputs are expanded to its per-channel layout.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@lru_cache(maxsize=1)
def mamba_kernel():
    """mamba_ssm's ``selective_scan_fn``, or None when the package (or CUDA) is absent."""
    if not torch.cuda.is_available():
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build of the extension
        return None
    return selective_scan_fn


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Reference scan, one position at a time. u, delta, z: (b, d, L); A: (d, n); B, C: (b, n, L)."""
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.float(), delta_softplus)
    b, d, L = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = 16,
) -> torch.Tensor:
    """Same contract as ``selective_scan_ref``, computed as a parallel scan within chunks."""
    dtype = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.float(), delta_softplus)
    b, d, L = u.shape
    n = A.shape[1]
    T = max(1, min(chunk, L))
    pad = (-L) % T
    if pad:
        delta_p, u_p = F.pad(delta, (0, pad)), F.pad(u, (0, pad))
        B_p = F.pad(B, (0, pad))
    else:
        delta_p, u_p, B_p = delta, u, B
    nc = (L + pad) // T
    # decay a = exp(delta * A) and input x = delta * u * B, laid out (b, d, chunk, T, n)
    a = torch.exp(delta_p[..., None] * A.float()[:, None, :]).view(b, d, nc, T, n)
    x = ((delta_p * u_p)[..., None] * B_p.transpose(1, 2)[:, None]).view(b, d, nc, T, n)
    # inclusive Hillis-Steele scan of the affine maps h -> a*h + x inside each chunk
    k = 1
    while k < T:
        x = torch.cat([x[:, :, :, :k], a[:, :, :, k:] * x[:, :, :, :-k] + x[:, :, :, k:]], dim=3)
        a = torch.cat([a[:, :, :, :k], a[:, :, :, k:] * a[:, :, :, :-k]], dim=3)
        k *= 2
    # carry the state across chunks: h = x_scanned + (cumulative decay) * state entering the chunk
    h_in = x.new_zeros(b, d, n)
    states = []
    for c in range(nc):
        hc = x[:, :, c] + a[:, :, c] * h_in[:, :, None]
        states.append(hc)
        h_in = hc[:, :, -1]
    h = torch.stack(states, dim=2).reshape(b, d, nc * T, n)[:, :, :L]
    y = torch.einsum("bdln,bnl->bdl", h, C)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def ssd_scan_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """Head-structured selective scan as chunked matmuls.

    x: (b, L, H, P) inputs; dt: (b, L, H) positive step sizes; A: (H,) negative decay rates;
    B, C: (b, L, N); D: (H,) skip. Returns y: (b, L, H, P). Equals ``selective_scan_ref`` on the
    expanded inputs (``expand_heads``).
    """
    dtype = x.dtype
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    b, L, H, P = x.shape
    N = B.shape[-1]
    T = max(1, min(chunk, L))
    pad = (-L) % T
    if pad:  # padded steps have dt = 0: no decay, no input
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    nc = (L + pad) // T
    xc = (x * dt[..., None]).view(b, nc, T, H, P)
    Bc, Cc = B.view(b, nc, T, N), C.view(b, nc, T, N)
    la = (dt * A.float()).view(b, nc, T, H).permute(0, 1, 3, 2)  # (b, c, H, T) log-decays <= 0
    S = torch.cumsum(la, dim=-1)  # log of the decay accumulated from the chunk start
    # intra-chunk: y[t] = sum_{s<=t} exp(S[t]-S[s]) (C[t].B[s]) x[s]
    diff = S[..., :, None] - S[..., None, :]  # (b, c, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(diff.masked_fill(~causal, -math.inf))
    G = torch.einsum("bctn,bcsn->bcts", Cc, Bc)
    y = torch.einsum("bchts,bcshp->bcthp", decay * G[:, :, None], xc)
    # state at the end of each chunk from its own inputs: sum_s exp(S[T-1]-S[s]) x[s] B[s]
    to_end = torch.exp(S[..., -1:] - S)  # (b, c, H, T)
    chunk_states = torch.einsum("bchs,bcshp,bcsn->bchpn", to_end, xc, Bc)
    chunk_decay = torch.exp(S[..., -1])  # (b, c, H)
    h = x.new_zeros(b, H, P, N)
    entering = []
    for c in range(nc):
        entering.append(h)
        h = chunk_decay[:, c, :, None, None] * h + chunk_states[:, c]
    h_in = torch.stack(entering, dim=1)  # (b, c, H, P, N)
    y = y + torch.einsum("bctn,bchpn,bcht->bcthp", Cc, h_in, torch.exp(S))
    y = y.reshape(b, nc * T, H, P)[:, :L]
    if D is not None:
        y = y + D.float()[:, None] * x[:, :L]
    return y.to(dtype)


def expand_heads(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, N: int
) -> tuple[torch.Tensor, ...]:
    """Head-structured inputs in ``selective_scan_fn`` layout: u, delta (b, H*P, L), A (H*P, N), B, C (b, N, L), D."""
    b, L, H, P = x.shape
    u = x.reshape(b, L, H * P).transpose(1, 2)
    delta = dt[..., None].expand(b, L, H, P).reshape(b, L, H * P).transpose(1, 2)
    A_full = A[:, None, None].expand(H, P, N).reshape(H * P, N)
    D_full = None if D is None else D[:, None].expand(H, P).reshape(H * P)
    return u, delta, A_full, B.transpose(1, 2), C.transpose(1, 2), D_full


def resolve_scan_impl(impl: str, device: torch.device) -> str:
    """The scan actually used for ``impl`` on ``device`` ('cuda' only with a GPU and mamba_ssm)."""
    if impl == "auto":
        return "cuda" if device.type == "cuda" and mamba_kernel() is not None else "chunked"
    if impl == "cuda" and (device.type != "cuda" or mamba_kernel() is None):
        raise RuntimeError("scan_impl='cuda' needs a CUDA device and the mamba_ssm package (pip install 'ctbench[gpu]')")
    if impl not in ("cuda", "chunked", "ref"):
        raise ValueError(f"scan_impl must be auto, cuda, chunked or ref, got {impl!r}")
    return impl


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution along the sequence: x (b, L, d), weight (d, K) -> (b, L, d).

    Written as K shifted multiply-adds (mkldnn's depthwise conv1d is slow on small CPU inputs)."""
    K = weight.shape[1]
    L = x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))
    y = bias.to(x.dtype).expand_as(x)
    for k in range(K):
        y = y + xp[:, k:k + L] * weight[:, k].to(x.dtype)
    return y


class SelectiveSSM(nn.Module):
    """One direction of a Mamba mixer: causal depthwise conv, input-dependent (dt, B, C), the scan."""

    def __init__(self, d_inner: int, d_state: int, structure: str, head_dim: int, conv_kernel: int, chunk: int):
        super().__init__()
        self.d_inner, self.d_state, self.structure, self.chunk = d_inner, d_state, structure, chunk
        self.n_heads = d_inner // head_dim if structure == "head" else d_inner
        self.head_dim = head_dim if structure == "head" else 1
        self.conv_weight = nn.Parameter(torch.randn(d_inner, conv_kernel) / math.sqrt(conv_kernel))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner))
        self.x_proj = nn.Linear(d_inner, self.n_heads + 2 * d_state, bias=False)
        # dt initialised log-uniform in [1e-3, 1e-1] through the softplus bias (as in Mamba)
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        if structure == "head":
            A = torch.linspace(1.0, 16.0, self.n_heads)
        else:
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.n_heads))

    def forward(self, x: torch.Tensor, impl: str) -> torch.Tensor:
        """x: (b, L, d_inner) -> (b, L, d_inner)."""
        b, L, _ = x.shape
        xc = F.silu(causal_depthwise_conv(x, self.conv_weight, self.conv_bias))  # (b, L, d_inner)
        dt_raw, B, C = torch.split(self.x_proj(xc), [self.n_heads, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        if self.structure == "head":
            dt = F.softplus(dt_raw.float() + self.dt_bias)
            xh = xc.view(b, L, self.n_heads, self.head_dim)
            if impl == "chunked":
                y = ssd_scan_chunked(xh, dt, A, B, C, self.D, chunk=self.chunk)
                return y.reshape(b, L, self.d_inner).to(x.dtype)
            u, delta, A_full, Bt, Ct, D_full = expand_heads(xh, dt, A, B, C, self.D, self.d_state)
            scan = mamba_kernel() if impl == "cuda" else selective_scan_ref
            y = scan(u.contiguous(), delta.contiguous(), A_full.contiguous(), Bt.contiguous(), Ct.contiguous(), D_full.float())
        else:
            u, delta = xc.transpose(1, 2), dt_raw.transpose(1, 2)
            Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)
            if impl == "chunked":
                y = selective_scan_chunked(u, delta, A, Bt, Ct, self.D, delta_bias=self.dt_bias,
                                           delta_softplus=True, chunk=self.chunk)
            else:
                scan = mamba_kernel() if impl == "cuda" else selective_scan_ref
                y = scan(u.contiguous(), delta.contiguous(), A.contiguous(), Bt.contiguous(), Ct.contiguous(),
                         self.D.float(), delta_bias=self.dt_bias.float(), delta_softplus=True)
        return y.transpose(1, 2).to(x.dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block; bidirectional (a forward and a reversed scan) by default."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, structure: str = "head", head_dim: int = 32,
                 conv_kernel: int = 4, bidirectional: bool = True, chunk: int = 16, scan_impl: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        self.scan_impl = scan_impl
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.fwd = SelectiveSSM(d_inner, d_state, structure, head_dim, conv_kernel, chunk)
        self.bwd = SelectiveSSM(d_inner, d_state, structure, head_dim, conv_kernel, chunk) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        impl = resolve_scan_impl(self.scan_impl, h.device)
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)
        y = self.fwd(x, impl)
        if self.bwd is not None:
            y = y + self.bwd(x.flip(1), impl).flip(1)
        return h + self.out_proj(y * F.silu(z))
