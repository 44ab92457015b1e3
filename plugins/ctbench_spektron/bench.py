"""Pretraining throughput of Spektron: ``python -m ctbench_spektron.bench``.

Times full pretraining steps (views, online forward, EMA target forward, all objectives,
backward, optimizer, EMA update) on synthetic batches and prints spectra/s and the achieved
TFLOP/s, the FLOPs of one step being counted by ``torch.utils.flop_counter`` (matmuls,
convolutions, attention; elementwise work is not counted, so the figure is a lower bound).
On CPU always; on CUDA, when available, with both scan paths (mamba_ssm kernel when installed,
and the chunked PyTorch scan) in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from typing import Any


def _step_fn(size: str, batch_size: int, device, scan_impl: str, precision: str):
    import torch

    from .config import PretrainConfig
    from .corpus import PretrainCorpus, SyntheticSpectra
    from .objectives import PretrainModule, TargetNetwork, compute_losses, make_views
    from .sampling import BatchSampler

    pcfg = PretrainConfig(size=size, batch_size=batch_size, model={"scan_impl": scan_impl}, precision=precision)
    mcfg = pcfg.model_config()
    corpus = PretrainCorpus(table=None, synthetic=SyntheticSpectra(grid_points=mcfg.grid_points), spec=("synthetic",))
    sampler = BatchSampler(corpus, batch_size, seed=0)
    batches = [sampler.batch(i) for i in range(4)]
    module = PretrainModule(mcfg).to(device)
    target = TargetNetwork(module).to(device).eval()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step(i: int) -> None:
        g = torch.Generator(device=device).manual_seed(i)
        views = make_views(batches[i % len(batches)], pcfg, mcfg, g, device, i)
        with amp:
            out = module(views.x_online, views.k_tok, views.width, views.domain, views.token_mask, views.fno_rows,
                         views.fno_input)
            rows = views.target_rows
            tproj = target(views.x_target[rows], views.k_tok[rows], views.width[rows], views.domain[rows])
        total, _ = compute_losses(out, tproj, views, pcfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        target.update(module, 0.99)

    return step, sum(p.numel() for p in module.backbone.parameters())


def measure(size: str, batch_size: int, steps: int, device_name: str = "cpu", scan_impl: str = "chunked",
            precision: str = "fp32") -> dict[str, Any]:
    """Throughput of ``steps`` timed pretraining steps (after 2 warm-up steps)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device_name)
    step, n_params = _step_fn(size, batch_size, device, scan_impl, precision)
    step(0)
    counter = FlopCounterMode(display=False)
    with counter:
        step(1)
    flops = counter.get_total_flops()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(2 + i)
    sync()
    dt = (time.perf_counter() - t0) / steps
    return {"size": size, "params": n_params, "device": device_name, "scan": scan_impl, "precision": precision,
            "batch": batch_size, "step_s": dt, "spectra_per_s": batch_size / dt, "gflop_per_step": flops / 1e9,
            "tflops": flops / dt / 1e12}


def _print(row: dict[str, Any]) -> None:
    print(f"{row['size']:>6} {row['params'] / 1e6:7.2f}M {row['device']:>5} {row['scan']:>8} {row['precision']:>5} "
          f"{row['batch']:>5} {row['step_s']:8.3f} {row['spectra_per_s']:10.1f} {row['gflop_per_step']:10.2f} {row['tflops']:8.4f}")


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(prog="python -m ctbench_spektron.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,small", help="CPU sizes (comma-separated); GPU runs small and base")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--gpu-sizes", default="small,base")
    ap.add_argument("--gpu-batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("Spektron pretraining throughput (one step = 2 views per spectrum + EMA target + all objectives); "
          f"torch CPU threads: {torch.get_num_threads()}")
    print("FLOPs counted by torch.utils.flop_counter (matmul/conv/attention only): TFLOP/s is a lower bound")
    print(f"{'size':>6} {'params':>8} {'dev':>5} {'scan':>8} {'prec':>5} {'batch':>5} {'s/step':>8} {'spectra/s':>10} {'GFLOP/step':>10} {'TFLOP/s':>8}")
    for size in [s for s in args.sizes.split(",") if s]:
        _print(measure(size, args.batch_size, args.steps, "cpu", "chunked", "fp32"))
    if not torch.cuda.is_available():
        print("no CUDA GPU available: GPU benchmarks (mamba_ssm kernel vs chunked scan, bf16) skipped")
        return
    from .ssm import mamba_kernel

    scans = (["cuda"] if mamba_kernel() is not None else []) + ["chunked"]
    if mamba_kernel() is None:
        print("mamba_ssm not installed (pip install 'ctbench[gpu]'): only the chunked PyTorch scan is timed on GPU")
    for size in [s for s in args.gpu_sizes.split(",") if s]:
        for scan in scans:
            for precision in ("fp32", "bf16"):
                _print(measure(size, args.gpu_batch_size, max(args.steps, 10), "cuda", scan, precision))


if __name__ == "__main__":
    main()
