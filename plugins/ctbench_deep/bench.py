"""Wall time of the deep baselines on real data: ``python -m ctbench_deep.bench``.

Task ``corn_m5_mp6`` (source m5, target mp6; calibration pool of 60 samples, fixed test set of
20): for ``cnn`` and ``lora_ct`` with their default parameters, prints the source-training time
(``fit`` on the 60 calibration samples), the time of each ``transfer`` with 10 standards (one per
repetition, standards by the task's strategy) and of ``predict`` on the test set, plus the test
RMSEP per property for orientation. Figures only; nothing is asserted. The corn file is looked
up like any ctbench data (``--data-dir``, then ``CTBENCH_DATA``, then the download cache).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np


def _load(task_name: str, data_dir: str | None):
    from ctbench.cards import load_card
    from ctbench.tasks import build_task

    return build_task(load_card(task_name), data_dir)


def bench_method(name: str, task, shots: int, reps: int, device: str, params: dict) -> dict:
    """Fit once, transfer ``reps`` times; wall times in seconds and the RMSEP of each repetition."""
    from ctbench.method import SourceData, Standards
    from ctbench.plugins import load_methods
    from ctbench.splits import make_split

    cls = load_methods()[name].cls
    method = cls(**dict(params, device=device))
    pool = task.pool_rows
    source = SourceData(
        X=task.X_source[pool],
        y=task.y[pool],
        axis=task.axis,
        axis_unit=task.axis_unit,
        properties=task.properties,
        groups=task.groups[pool],
    )
    t0 = time.perf_counter()
    method.fit(source)
    fit_s = time.perf_counter() - t0
    transfer_s, predict_s, rmsep = [], [], []
    for rep in range(reps):
        split = make_split(task, shots, rep * task.n_outer)  # stay on outer split 0, whose pool was fitted
        rows = split.standard_rows
        standards = Standards(
            X_source=task.X_source[rows],
            X_target=task.X_target[rows],
            y=task.y[rows],
            axis=task.axis,
            axis_unit=task.axis_unit,
            properties=task.properties,
            groups=task.groups[rows],
        )
        adapted = copy.deepcopy(method)
        t0 = time.perf_counter()
        adapted.transfer(standards)
        transfer_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pred = adapted.predict(task.X_target[split.test_rows])
        predict_s.append(time.perf_counter() - t0)
        rmsep.append(np.sqrt(((pred - task.y[split.test_rows]) ** 2).mean(axis=0)))
    return {
        "fit_s": fit_s,
        "source_epochs": getattr(method, "source_epochs_", None),
        "transfer_s": transfer_s,
        "predict_s": predict_s,
        "rmsep": np.mean(rmsep, axis=0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctbench_deep.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="corn_m5_mp6")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5, help="transfers timed (one per repetition's standards)")
    parser.add_argument("--methods", default="cnn,lora_ct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    task = _load(args.task, args.data_dir)
    summary = task.summary()
    print(
        f"task {summary['name']} v{summary['version']}: {summary['pool_samples']} calibration samples, "
        f"{summary['test_samples']} test, {summary['axis']}; N = {args.shots} standards, {args.reps} transfers"
    )
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU thread(s)")
    print(f"{'method':<8} {'fit s':>6} {'epochs':>6} {'transfer s: median (min-max)':>29} {'predict ms':>10}  test RMSEP")
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        r = bench_method(name, task, args.shots, args.reps, args.device, {})
        t = r["transfer_s"]
        spread = f"{statistics.median(t):.3f} ({min(t):.3f}-{max(t):.3f})"
        rmsep = "  ".join(f"{p}={v:.3f}" for p, v in zip(task.properties, r["rmsep"]))
        print(
            f"{name:<8} {r['fit_s']:>6.2f} {r['source_epochs']!s:>6} {spread:>29} "
            f"{1000 * statistics.median(r['predict_s']):>10.1f}  {rmsep}"
        )

if __name__ == "__main__":
    main()
