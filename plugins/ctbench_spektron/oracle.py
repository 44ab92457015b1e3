"""The ceiling of Spektron v3's design: its transfer paths with the *oracle* instrument difference.

An analysis, not a method: it reads what the benchmark protocol hides from every method (the target
spectra of the whole calibration pool), so it never runs under ``ctbench run`` and its numbers never
enter a result store or the leaderboard.

The question it answers: could any pretraining of the v3 translator help? Pretraining can only give
the transfer a better ``theta`` (the 10 numbers of ``translator.THETA``: axis shift / stretch / warp,
broadening, gain and response, baseline) than the N standards alone. The best ``theta`` a prior can
lead to is the one that *every* paired spectrum of the calibration pool gives, here fitted by the
same L-BFGS refinement as the method's (``refine_steps`` iterations from the network's estimate).
With that oracle ``theta`` the v3 paths (``simulate``: PLS on the simulated target calibration;
``simulate+update``: model updating on it plus the standards) are compared with the same paths on
the ``theta`` of the N standards, and with ``model_update``, all on the leaderboard-v2 splits (the
repetition's outer split, its first N standards, its test set) and the leaderboard's scale
(relative RMSEP = RMSEP / RMSEP(full_recalibration) on the same test set, geometric mean over
properties and repetitions).

    python -m ctbench_spektron.oracle [--tasks all] [--reps 5] [--shots 5,10] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .headtohead import _num, _table, median_ratio, pooled_median

COLUMNS = ("model_update", "simulate+update", "simulate+update oracle", "simulate", "simulate oracle")


def evaluate_task(name: str, reps: int, shots: tuple[int, ...], data_dir: str | None = None,
                  refine_steps: int = 100) -> list[dict[str, Any]]:
    """One row per (repetition, N): relative RMSEP per property of every column of ``COLUMNS``,
    and the oracle and standards' ``theta``."""
    from ctbench.metrics import evaluate
    from ctbench.plugins import get_method
    from ctbench.runner import source_for, standards_for
    from ctbench.splits import make_split, stable_seed
    from ctbench.tuning import load_task

    from .translate_method import SpektronTranslate
    from .translator import THETA

    task = load_task(name, data_dir)
    recal, updating = get_method("full_recalibration").cls, get_method("model_update").cls
    # the runner owns random_state (ctbench.runner): the reference's and model_update's are seeded as
    # their records' are
    seed = stable_seed(0, "fit", task.name, task.version)
    rows = []
    for rep in range(reps):
        view = task.outer(task.outer_of_rep(rep)[0])
        test, y = view.test_rows, view.y[view.test_rows]
        X_test = view.X_target[test]

        def rmsep(model: Any) -> np.ndarray:  # per property, as the records' metrics (ctbench.metrics)
            pred = np.asarray(model.predict(X_test)).reshape(len(test), -1)
            return np.array([m["rmsep"] for m in evaluate(y, pred, task.properties)["per_property"].values()])

        fr = recal(random_state=seed).fit(source_for(view, recal))
        ref = rmsep(fr.transfer(standards_for(view, make_split(task, min(shots), rep).standard_rows)))
        updater = updating(random_state=seed).fit(source_for(view, updating))
        base = SpektronTranslate(refine_steps=refine_steps).fit(source_for(view, SpektronTranslate))
        pool = view.pool_rows
        oracle = base._infer_theta(view.X_source[pool], view.X_target[pool])
        base.refine_steps = SpektronTranslate().refine_steps  # the standards' theta as the method infers it
        for n in shots:
            std = standards_for(view, make_split(task, n, rep).standard_rows)
            rel = {"model_update": rmsep(copy.deepcopy(updater).transfer(std)) / ref}
            for path in ("simulate+update", "simulate"):
                for label, fixed in ((path, None), (f"{path} oracle", oracle)):
                    m = copy.deepcopy(base)
                    m.path = path
                    if fixed is not None:
                        m._infer_theta = lambda Xs, Xt, fixed=fixed: fixed
                    rel[label] = rmsep(m.transfer(std)) / ref
                    if fixed is None:
                        theta_std = m.theta_  # the same for both paths: inferred from the same standards
            rows.append({"task": name, "rep": rep, "n": n, "properties": list(task.properties),
                         "rel": {k: v.tolist() for k, v in rel.items()},
                         "theta_oracle": dict(zip(THETA, map(float, oracle[0]))),
                         "theta_standards": dict(zip(THETA, map(float, theta_std)))})
    return rows


def _geo(values: list[list[float]]) -> float:
    v = np.asarray([x for row in values for x in row], dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if v.size else float("nan")


def summarise(rows: list[dict[str, Any]], seed: int = 0) -> tuple[str, dict[str, Any]]:
    """The Markdown tables and a summary: per (task, N) the geometric mean of every column, the
    median over tasks per N and over N <= 10 pooled (as the head-to-head's ablation), and the ratio
    of the pooled medians of "simulate+update oracle" and model_update with a 95 % interval from
    resampling whole tasks."""
    tasks = sorted({r["task"] for r in rows})
    shots = sorted({r["n"] for r in rows})
    cell = {(t, n, c): _geo([r["rel"][c] for r in rows if r["task"] == t and r["n"] == n])
            for t in tasks for n in shots for c in COLUMNS}
    reps = {(t, n): sum(1 for r in rows if r["task"] == t and r["n"] == n) for t in tasks for n in shots}
    body = [[t, str(n), str(reps[(t, n)]), *(_num(cell[(t, n, c)]) for c in COLUMNS)] for t in tasks for n in shots]
    small = [n for n in shots if n <= 10]
    per = {c: {t: [cell[(t, n, c)] for n in small] for t in tasks} for c in COLUMNS}
    med = [["median", str(n), "", *(_num(float(np.median([cell[(t, n, c)] for t in tasks]))) for c in COLUMNS)]
           for n in shots]
    med.append(["median", "<= 10 pooled", "", *(_num(pooled_median(per[c], tasks)) for c in COLUMNS)])
    ratios = {c: median_ratio(per[c], per["model_update"], tasks, ("oracle-theta", seed))
              for c in ("simulate+update", "simulate+update oracle", "simulate oracle")}
    heads = ["task", "N", "reps", *COLUMNS]
    lines = ["Relative RMSEP (RMSEP / full_recalibration on the same test set), geometric mean over properties and "
             "repetitions. \"oracle\": theta fitted on every paired spectrum of the calibration pool (hidden from "
             "methods); without it: theta from the N standards, as `spektron` infers it. The paths are forced (no "
             "CV choice).", ""]
    lines += _table(heads, body) + [""] + _table(heads, med) + [""]
    for c, (r, lo, hi) in ratios.items():
        lines.append(f"- pooled median at N <= 10, {c} / model_update: **{r:.3f} [{lo:.3f}, {hi:.3f}]** "
                     f"(95 % interval, resampling the {len(tasks)} tasks)")
    return "\n".join(lines), {"cell": cell, "ratios": ratios, "tasks": tasks, "shots": shots}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctbench_spektron.oracle", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="all", help="comma-separated tasks or suites (default: the suite 'all', every "
                                                   "real task)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per task (default 5)")
    ap.add_argument("--shots", default="5,10", help="N (default 5,10)")
    ap.add_argument("--rows", type=Path, default=None,
                    help="JSON-lines file of the rows: tasks already there are not rerun (several processes can "
                         "share the work by task), and the tables are made from every row in it")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: $CTBENCH_DATA)")
    a = ap.parse_args(argv)
    from ctbench.cards import CardError, expand_tasks
    from ctbench.plugins import UnknownName

    try:
        shots = tuple(sorted({int(x) for x in a.shots.split(",") if x.strip()}))
    except ValueError:
        ap.error(f"--shots takes comma-separated integers, got {a.shots!r}")
    if not shots or min(shots) < 2 or a.reps < 1:
        ap.error("--shots needs N >= 2 (spektron's minimum) and --reps at least 1")
    names = [x for x in a.tasks.split(",") if x.strip()]
    try:
        tasks = [c.name for c, _, _ in expand_tasks(names)]
    except (CardError, UnknownName) as exc:  # the card loader's one line (with its "did you mean")
        ap.error(str(exc).splitlines()[0])
    rows: list[dict[str, Any]] = []
    if a.rows is not None and a.rows.exists():
        rows = [json.loads(line) for line in a.rows.read_text().splitlines() if line.strip()]
    done = {r["task"] for r in rows}
    for name in tasks:
        if name in done:
            continue
        print(f"oracle: {name}", file=sys.stderr, flush=True)
        new = evaluate_task(name, a.reps, shots, a.data_dir)
        rows += new
        if a.rows is not None:  # one whole task per append: a killed run loses at most the task in hand
            with a.rows.open("a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))
    rows = [r for r in rows if r["task"] in tasks]
    text, _ = summarise(rows)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        args = " ".join(argv if argv is not None else sys.argv[1:])
        a.out.write_text(f"<!-- generated by: python -m ctbench_spektron.oracle {args} -->\n\n"
                         "# Spektron v3 with the oracle instrument difference\n\n" + (__doc__.split("\n\n")[1]) + "\n\n"
                         + text + "\n")
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
