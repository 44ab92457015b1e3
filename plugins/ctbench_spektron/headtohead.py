"""The Spektron head-to-head table from a result store, as Markdown.

    python -m ctbench_spektron.headtohead --results-dir /tmp/h2h [--out results/spektron/headtohead.md]

For every (task, property) of the chosen tasks: Spektron at N = ``--shots`` (default 10) against
the best classical method at N = ``--classical-shots`` (default 30) and at the same N, mean +- sd
of RMSEP over repetitions; a cell is won when Spektron's mean RMSEP is lower. "Best classical" is
picked per cell on the test RMSEP itself, which favours the classical side. Then the zero-shot
rows (N = 0), the interval coverage and width of the uncertainty-aware methods, other Spektron
variants found in the store, and the timings. Only records of default parameters are used unless
``--spektron`` names a label like ``spektron[lora_rank=2]``.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

CLASSICAL = ("sbc", "model_update", "ds", "pds", "cca", "dipls", "gctpls")
VARIANTS = ("spektron-pds", "spektron-fullft", "spektron-nopretrain")
ZERO_SHOT = ("spektron-ttt", "no_transfer", "dipls_t")


def label(rec: dict[str, Any]) -> str:
    params = rec["method"].get("user_params") or {}
    name = rec["method"]["name"]
    if not params:
        return name
    return name + "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"


def load(results_dir: Path) -> list[dict[str, Any]]:
    from ctbench.store import Store

    return [r for r in Store(results_dir).iter_records(warn=False) if r.get("status") == "ok" and r.get("metrics")]


class Table:
    """RMSEP (and more) per (method label, task, N, property) over repetitions."""

    def __init__(self, records: list[dict[str, Any]]):
        self.rmsep: dict[tuple[str, str, int, str], list[float]] = defaultdict(list)
        self.coverage: dict[tuple[str, str, int, str], list[tuple[float, float]]] = defaultdict(list)
        self.timings: dict[tuple[str, str, int], list[dict[str, float]]] = defaultdict(list)
        self.extras: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        self.properties: dict[str, list[str]] = {}
        self.transductive: dict[str, bool] = {}
        for r in records:
            lab, task, n = label(r), r["identity"]["task"], int(r["n_shots"])
            props = list(r["metrics"]["per_property"])
            self.properties.setdefault(task, props)
            for p, vals in r["metrics"]["per_property"].items():
                self.rmsep[(lab, task, n, p)].append(float(vals["rmsep"]))
            iv = r["metrics"].get("intervals")
            if iv:
                for p, vals in iv["per_property"].items():
                    self.coverage[(lab, task, n, p)].append((float(vals["coverage"]), float(vals["mean_width"])))
            self.timings[(lab, task, n)].append(r.get("timings") or {})
            self.extras[(lab, task, n)].append(r.get("extras") or {})
            self.transductive[lab] = bool(r.get("transductive"))

    def stats(self, lab: str, task: str, n: int, prop: str) -> tuple[float, float, int] | None:
        v = self.rmsep.get((lab, task, n, prop))
        if not v:
            return None
        return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)

    def best(self, labels: tuple[str, ...], task: str, n: int, prop: str) -> tuple[str, tuple[float, float, int]] | None:
        found = [(lab, s) for lab in labels if (s := self.stats(lab, task, n, prop)) is not None]
        return min(found, key=lambda x: x[1][0]) if found else None


def _fmt(s: tuple[float, float, int] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    m, sd, _ = s
    if sd <= 1e-9 * max(abs(m), 1e-300):
        sd = 0.0  # identical repetitions (deterministic methods): no round-off noise in the table
    return f"{m:.{digits}g} ± {sd:.{max(1, digits - 1)}g}"


def build(table: Table, tasks: list[str], spektron: str, shots: int, classical_shots: int) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {"cells": 0, "won_vs_best_at_classical_shots": 0, "won_vs_best_at_same_shots": 0, "lost": []}
    reps = {len(table.rmsep.get((spektron, t, shots, p), [])) for t in tasks for p in table.properties.get(t, [])}
    lines.append(f"## Head-to-head: {spektron} at N = {shots} vs the best classical method at N = {classical_shots} and N = {shots}")
    lines.append("")
    lines.append(f"RMSEP on the fixed test set, mean ± sd over repetitions (repetitions per cell: {sorted(reps)}). "
                 f"Classical methods: {', '.join(CLASSICAL)}; the best is picked per cell on test RMSEP "
                 "(in the classical methods' favour). ✓ = Spektron's mean RMSEP is lower.")
    lines.append("")
    lines.append(f"| task | property | {spektron} N={shots} | best classical N={classical_shots} | ✓ | "
                 f"best classical N={shots} | ✓ | no_transfer | full_recalibration |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in tasks:
        for prop in table.properties.get(task, []):
            s = table.stats(spektron, task, shots, prop)
            if s is None:
                continue
            b30 = table.best(CLASSICAL, task, classical_shots, prop)
            b10 = table.best(CLASSICAL, task, shots, prop)
            nt = table.stats("no_transfer", task, shots, prop)
            fr = table.stats("full_recalibration", task, shots, prop)
            w30 = b30 is not None and s[0] < b30[1][0]
            w10 = b10 is not None and s[0] < b10[1][0]
            summary["cells"] += 1
            summary["won_vs_best_at_classical_shots"] += int(w30)
            summary["won_vs_best_at_same_shots"] += int(w10)
            if not w30:
                summary["lost"].append(f"{task}/{prop}")
            lines.append(
                f"| {task} | {prop} | {_fmt(s)} | {b30[0] + ' ' + _fmt(b30[1]) if b30 else '-'} | {'✓' if w30 else '✗'} | "
                f"{b10[0] + ' ' + _fmt(b10[1]) if b10 else '-'} | {'✓' if w10 else '✗'} | {_fmt(nt)} | {_fmt(fr)} |")
    c = max(summary["cells"], 1)
    lines.append("")
    lines.append(f"**Cells won**: {summary['won_vs_best_at_classical_shots']} / {summary['cells']} "
                 f"({summary['won_vs_best_at_classical_shots'] / c:.0%}) against the best classical method at "
                 f"N = {classical_shots}; {summary['won_vs_best_at_same_shots']} / {summary['cells']} "
                 f"({summary['won_vs_best_at_same_shots'] / c:.0%}) at N = {shots}.")
    for ref in ("pds", "target_only"):
        w = {n: sum(1 for task in tasks for prop in table.properties.get(task, [])
                    if (sp := table.stats(spektron, task, shots, prop)) is not None
                    and (r := table.stats(ref, task, n, prop)) is not None and sp[0] < r[0])
             for n in (classical_shots, shots)}
        summary[f"won_vs_{ref}"] = w
        lines.append(f"Against {ref} alone: {w[classical_shots]} / {summary['cells']} at N = {classical_shots}, "
                     f"{w[shots]} / {summary['cells']} at N = {shots}.")
    lines.append("")

    # variants
    present = [v for v in VARIANTS if any(k[0] == v and k[2] == shots for k in table.rmsep)]
    if present:
        lines.append(f"## Spektron variants at N = {shots} (RMSEP mean ± sd)")
        lines.append("")
        lines.append("| task | property | " + " | ".join([spektron] + present) + f" | best classical N={classical_shots} |")
        lines.append("| --- | --- | " + " | ".join(["---"] * (len(present) + 2)) + " |")
        for task in tasks:
            for prop in table.properties.get(task, []):
                if table.stats(spektron, task, shots, prop) is None:
                    continue
                b30 = table.best(CLASSICAL, task, classical_shots, prop)
                cells = [_fmt(table.stats(v, task, shots, prop)) for v in [spektron] + present]
                lines.append(f"| {task} | {prop} | " + " | ".join(cells) + f" | {b30[0] + ' ' + _fmt(b30[1]) if b30 else '-'} |")
        lines.append("")

    # zero-shot
    zs = sorted({k[0] for k in table.rmsep if k[2] == 0 and k[0].split("[")[0] in ZERO_SHOT},
                key=lambda lab: (ZERO_SHOT.index(lab.split("[")[0]), lab))
    if zs:
        lines.append("## Zero-shot (N = 0)")
        lines.append("")
        lines.append("RMSEP mean ± sd over repetitions (N = 0 has no standards: repetitions of a deterministic "
                     "method are identical). Transductive methods (given the unlabelled test spectra): "
                     + ", ".join(z for z in zs if table.transductive.get(z)) + ".")
        lines.append("")
        lines.append("| task | property | " + " | ".join(zs) + " |")
        lines.append("| --- | --- | " + " | ".join(["---"] * len(zs)) + " |")
        for task in tasks:
            for prop in table.properties.get(task, []):
                cells = [_fmt(table.stats(z, task, 0, prop)) for z in zs]
                if all(c == "-" for c in cells):
                    continue
                lines.append(f"| {task} | {prop} | " + " | ".join(cells) + " |")
        lines.append("")

    # intervals
    cov_keys = sorted({(k[0], k[1], k[2]) for k in table.coverage if k[1] in tasks})
    if cov_keys:
        lines.append("## Prediction intervals (split-conformal, nominal 90 %)")
        lines.append("")
        lines.append("Coverage = share of test values inside the interval; mean ± sd over repetitions. "
                     "Calibration: see the `extras.spektron.conformal.calibration` of each record.")
        lines.append("")
        lines.append("| method | task | N | property | coverage | mean width | RMSEP | calibration |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for lab, task, n in cov_keys:
            calib = sorted({(e.get("spektron") or {}).get("conformal", {}).get("calibration", "?")
                            for e in table.extras[(lab, task, n)]})
            for prop in table.properties.get(task, []):
                v = table.coverage.get((lab, task, n, prop))
                if not v:
                    continue
                cov = np.array([a for a, _ in v])
                wid = np.array([b for _, b in v])
                lines.append(f"| {lab} | {task} | {n} | {prop} | {cov.mean():.2f} ± {cov.std():.2f} | {wid.mean():.3g} | "
                             f"{_fmt(table.stats(lab, task, n, prop))} | {', '.join(calib)} |")
        lines.append("")

    # timings
    lines.append("## Timings (median seconds per record)")
    lines.append("")
    lines.append("| method | task | N | fit (once per task) | transfer | predict | intervals | transfer + predict |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (lab, task, n), ts in sorted(table.timings.items()):
        if task not in tasks:
            continue

        def med(key: str) -> float:
            vals = [t[key] for t in ts if key in t]
            return float(np.median(vals)) if vals else float("nan")

        tp = med("transfer_s") + med("predict_s")
        iv = med("interval_s")
        lines.append(f"| {lab} | {task} | {n} | {med('fit_s'):.2f} | {med('transfer_s'):.2f} | {med('predict_s'):.2f} | "
                     f"{'-' if np.isnan(iv) else f'{iv:.2f}'} | {tp:.2f} |")
    lines.append("")
    return "\n".join(lines), summary


def _renamed(rec: dict[str, Any], name: str, n_shots: int) -> dict[str, Any]:
    """A shallow copy of a record under another method name and N (to pit N = 30 rows against N = 10)."""
    r = dict(rec)
    r["identity"] = {**rec["identity"], "method": name, "n_shots": n_shots}
    r["method"] = {**rec["method"], "name": name, "user_params": {}, "params_source": "default"}  # the name says it all
    return r


def tie_verdicts(records: list[dict[str, Any]], tasks: list[str], spektron: str, shots: int,
                 rival_shots: int) -> tuple[list[str], dict[str, int]]:
    """Leaderboard-v2 verdicts of Spektron at N = ``shots`` against the classical methods at N = ``rival_shots``.

    Per (task, property) cell, on relative RMSEP (RMSEP / full recalibration on the same outer split) with the
    leaderboard's paired bootstrap and Holm-corrected tie groups: *better* = Spektron is the cell's best and no
    classical method is tied with it; *tied* = Spektron and at least one classical method share group 1; *worse* =
    Spektron is not in group 1. The repetitions are paired (same outer splits and test samples), only the number of
    standards differs.
    """
    from ctbench.leaderboard import build_leaderboard

    picked = []
    for r in records:
        ident = r["identity"]
        if ident["task"] not in tasks:
            continue
        if label(r) == spektron and ident["n_shots"] == shots:
            picked.append(_renamed(r, f"{spektron}@{shots}", shots))
        elif r["method"].get("user_params"):
            continue  # the classical side and the reference run with their defaults
        elif ident["method"] in CLASSICAL and ident["n_shots"] == rival_shots:
            picked.append(_renamed(r, f"{ident['method']}@{rival_shots}", shots))
        elif ident["method"] == "full_recalibration" and ident["n_shots"] == shots:
            picked.append(r)
    rows = build_leaderboard(picked, per_property=True)
    me = f"{spektron}@{shots}"
    counts = {"better": 0, "tied": 0, "worse": 0}
    lines = [f"| task | property | {me} rel. RMSEP [95 % CI] | group | best classical N={rival_shots} | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["task"], row["property"]), []).append(row)
    for (task, prop), cell in cells.items():
        mine = next((x for x in cell if x["method"] == me), None)
        rivals = [x for x in cell if x["method"] != me and not x["reference"] and x["group"] is not None]
        if mine is None or mine["group"] is None or not rivals:
            continue
        best = min(rivals, key=lambda x: x["mean"])
        if mine["group"] != 1:
            verdict = "worse"
        elif any(x["group"] == 1 for x in rivals):
            verdict = "tied"
        else:
            verdict = "better"
        if prop != "mean":
            counts[verdict] += 1
        lines.append(f"| {task} | {prop} | {mine['mean']:.3f} [{mine['lo']:.3f}, {mine['hi']:.3f}] | {mine['group']} | "
                     f"{best['method']} {best['mean']:.3f} [{best['lo']:.3f}, {best['hi']:.3f}] | {verdict} |")
    return lines, counts


def v2_section(records: list[dict[str, Any]], tasks: list[str], spektron: str, shots: int, classical_shots: int) -> str:
    """Markdown: Spektron against the classical roster (model_update included) with the leaderboard-v2 tie groups."""
    out = [f"## Leaderboard-v2 verdicts: {spektron} at N = {shots} against {', '.join(CLASSICAL)}", "",
           "Relative RMSEP with its 95 % paired-bootstrap interval and tie group (ctbench.stats); counts are over "
           "(task, property) cells, the task's mean row is shown but not counted.", ""]
    for rival in (shots, classical_shots):
        lines, counts = tie_verdicts(records, tasks, spektron, shots, rival)
        out += [f"### Against the classical methods at N = {rival}", "", *lines, "",
                f"**{spektron}@{shots} vs classical@{rival}**: better in {counts['better']}, tied for first in "
                f"{counts['tied']}, worse in {counts['worse']} of {sum(counts.values())} (task, property) cells.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctbench_spektron.headtohead", description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", required=True, type=Path, help="result store of the runs")
    ap.add_argument("--tasks", default="corn_m5_mp6,tablet_1_2,raman_anton532_anton785")
    ap.add_argument("--spektron", default="spektron", help="method label of the Spektron rows")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--classical-shots", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("results/spektron/headtohead.md"),
                    help="where to save the Markdown ('-' for stdout only)")
    a = ap.parse_args(argv)
    if not a.results_dir.is_dir():
        ap.error(f"results dir {a.results_dir} does not exist")
    records = load(a.results_dir)
    table = Table(records)
    tasks = [t for t in a.tasks.split(",") if t]
    text, summary = build(table, tasks, a.spektron, a.shots, a.classical_shots)
    text = v2_section(records, tasks, a.spektron, a.shots, a.classical_shots) + "\n\n" + text
    print(text)
    if str(a.out) != "-":
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"<!-- generated by: python -m ctbench_spektron.headtohead --results-dir {a.results_dir} -->\n\n" + text + "\n")
        print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
