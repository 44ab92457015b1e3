"""Records -> leaderboard table (a pure function of the local records).

Rows are (task, N, method configuration); the metric is averaged over properties per record,
then reported as mean and standard deviation over repetitions, ranked within (task, N).
*Gap closed* uses the task's no_transfer and full_recalibration records as the two ends.
Mixing task versions or method versions is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctbench.metrics import LOWER_IS_BETTER, METRICS, gap_closed

REFERENCE_METHODS = ("no_transfer", "target_only", "full_recalibration")


class LeaderboardError(ValueError):
    pass


def method_label(rec: dict[str, Any]) -> str:
    m = rec["method"]
    label = m["name"]
    user = m.get("user_params") or {}
    if user:
        label += "[" + ",".join(f"{k}={v}" for k, v in sorted(user.items())) + "]"
    if str(m.get("params_source", "")).startswith("tuned"):
        label += " (tuned)"
    if rec.get("transductive"):
        label += " (transductive)"
    return label


def _check_versions(records: list[dict]) -> None:
    versions: dict[tuple[str, str], set[str]] = {}
    for r in records:
        versions.setdefault(("task", r["identity"]["task"]), set()).add(str(r["identity"]["task_version"]))
        versions.setdefault(("method", r["identity"]["method"]), set()).add(str(r["identity"]["method_version"]))
    for (kind, name), vs in sorted(versions.items()):
        if len(vs) > 1:
            raise LeaderboardError(
                f"records of {kind} {name!r} come from versions {', '.join(sorted(vs))}; refusing to mix them "
                f"(filter with --{kind}-version or move the old records out of the results directory)"
            )


def _reference_rmsep(records: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    """(task, reference method) -> property -> mean RMSEP over its records."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in records:
        name = r["identity"]["method"]
        if name not in ("no_transfer", "full_recalibration") or r["method"].get("user_params"):
            continue
        d = acc.setdefault((r["identity"]["task"], name), {})
        for prop, vals in r["metrics"]["per_property"].items():
            d.setdefault(prop, []).append(vals["rmsep"])
    return {k: {p: float(np.mean(v)) for p, v in d.items()} for k, d in acc.items()}


def _record_gap(rec: dict, refs: dict, prop: str | None) -> float:
    task = rec["identity"]["task"]
    nt, fr = refs.get((task, "no_transfer")), refs.get((task, "full_recalibration"))
    if nt is None or fr is None:
        return float("nan")
    per = rec["metrics"]["per_property"]
    if prop:
        return gap_closed(per[prop]["rmsep"], nt[prop], fr[prop]) if prop in nt and prop in fr else float("nan")
    # the mean row: the gap closed of the mean RMSEP it shows. Averaging per-property gaps instead
    # lets a property where transfer barely matters (no_transfer ~ full recalibration, a tiny
    # denominator) swing the whole row.
    props = [p for p in per if p in nt and p in fr]
    if not props:
        return float("nan")
    return gap_closed(float(np.mean([per[p]["rmsep"] for p in props])), float(np.mean([nt[p] for p in props])),
                      float(np.mean([fr[p] for p in props])))


def build_leaderboard(
    records: list[dict],
    metric: str = "rmsep",
    tasks: list[str] | None = None,
    shots: list[int] | None = None,
    methods: list[str] | None = None,
    per_property: bool = False,
    task_version: str | None = None,
    method_version: str | None = None,
) -> list[dict[str, Any]]:
    """The leaderboard rows, sorted by task, N, rank."""
    if metric not in METRICS and metric != "gap_closed":
        raise LeaderboardError(f"unknown metric {metric!r}; choose from {', '.join(METRICS + ('gap_closed',))}")
    sel = [r for r in records if (not tasks or r["identity"]["task"] in tasks)]
    if task_version:
        sel = [r for r in sel if str(r["identity"]["task_version"]) == task_version]
    if method_version:
        sel = [r for r in sel if str(r["identity"]["method_version"]) == method_version]
    _check_versions(sel)
    failed: dict[tuple, int] = {}
    ok = []
    for r in sel:
        if methods and r["identity"]["method"] not in methods:
            continue
        if shots is not None and r["identity"]["n_shots"] not in shots:
            continue
        if r["status"] == "ok" and r.get("metrics"):
            ok.append(r)
        else:
            k = (r["identity"]["task"], r["identity"]["n_shots"], method_label(r))
            failed[k] = failed.get(k, 0) + 1
    refs = _reference_rmsep([r for r in sel if r["status"] == "ok" and r.get("metrics")])
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        props = list(r["metrics"]["per_property"]) if per_property else [None]
        for prop in props:
            k = (r["identity"]["task"], r["identity"]["n_shots"], method_label(r), prop)
            groups.setdefault(k, []).append(r)
    rows = []
    for (task, n, label, prop), recs in groups.items():
        if prop is None:
            vals = [r["metrics"]["mean"][metric] if metric != "gap_closed" else _record_gap(r, refs, None) for r in recs]
            r2 = [r["metrics"]["mean"]["r2"] for r in recs]
            rmsep = [r["metrics"]["mean"]["rmsep"] for r in recs]
        else:
            pp = [r["metrics"]["per_property"][prop] for r in recs]
            vals = [p[metric] if metric != "gap_closed" else _record_gap(r, refs, prop) for p, r in zip(pp, recs)]
            r2 = [p["r2"] for p in pp]
            rmsep = [p["rmsep"] for p in pp]
        gaps = [_record_gap(r, refs, prop) for r in recs]
        first = recs[0]
        rows.append(
            {
                "task": task,
                "n_shots": n,
                "property": prop or "mean",
                "method": label,
                "reference": bool(first.get("reference")) or first["identity"]["method"] in REFERENCE_METHODS,
                "metric": metric,
                "mean": float(np.mean(vals)),
                "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "rmsep_mean": float(np.mean(rmsep)),
                "rmsep_sd": float(np.std(rmsep, ddof=1)) if len(rmsep) > 1 else 0.0,
                "r2_mean": float(np.mean(r2)),
                "gap_closed": float(np.nanmean(gaps)) if np.isfinite(gaps).any() else float("nan"),
                "reps": len(recs),
                "failed": failed.get((task, n, label), 0),
                "task_version": str(first["identity"]["task_version"]),
                "method_version": str(first["identity"]["method_version"]),
            }
        )
    for (task, n, label), count in failed.items():
        if not any(r["task"] == task and r["n_shots"] == n and r["method"] == label for r in rows):
            rows.append({"task": task, "n_shots": n, "property": "mean", "method": label, "reference": False,
                         "metric": metric, "mean": float("nan"), "sd": float("nan"), "rmsep_mean": float("nan"),
                         "rmsep_sd": float("nan"), "r2_mean": float("nan"), "gap_closed": float("nan"), "reps": 0,
                         "failed": count, "task_version": "", "method_version": ""})
    lower = LOWER_IS_BETTER[metric]
    by_cell: dict[tuple, list[dict]] = {}
    for row in rows:
        by_cell.setdefault((row["task"], row["n_shots"], row["property"]), []).append(row)
    for cell in by_cell.values():
        def score(row: dict) -> float:
            v = abs(row["mean"]) if metric == "bias" else row["mean"]
            if not np.isfinite(v):
                return np.inf
            return v if lower else -v
        cell.sort(key=score)
        for i, row in enumerate(cell):
            row["rank"] = i + 1 if np.isfinite(row["mean"]) else None
    rows.sort(key=lambda r: (r["task"], r["n_shots"], r["property"], r["rank"] or 10**9, r["method"]))
    return rows


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.{digits}g}"


def _mean_sd(mean: float, sd: float) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if not np.isfinite(sd) or abs(sd) <= 1e-9 * max(abs(mean), 1e-12):
        sd = 0.0
    return f"{mean:.4g} ± {sd:.2g}"


def _gap(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{round(v, 3) + 0.0:.3f}"  # no "-0.000"


def format_rows(rows: list[dict], fmt: str) -> str:
    """Render rows as md / csv / json text."""
    if fmt == "json":
        import json

        return json.dumps(rows, indent=1, default=lambda o: None)
    headers = ["task", "N", "property", "rank", "method", "metric", "mean ± sd", "R2", "gap closed", "reps"]
    def cells(r: dict) -> list[str]:
        return [
            r["task"], str(r["n_shots"]), r["property"], str(r["rank"] or "-"),
            r["method"] + (" *" if r["reference"] else ""), r["metric"],
            _mean_sd(r["mean"], r["sd"]), _fmt(r["r2_mean"], 3), _gap(r["gap_closed"]),
            f"{r['reps']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
        ]
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        keys = ["task", "n_shots", "property", "rank", "method", "reference", "metric", "mean", "sd", "rmsep_mean",
                "rmsep_sd", "r2_mean", "gap_closed", "reps", "failed", "task_version", "method_version"]
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        return buf.getvalue()
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines.append("")
    lines.append("`*` reference row. Mean ± sd over repetitions; gap closed = (RMSEP_no_transfer − RMSEP) / (RMSEP_no_transfer − RMSEP_full_recalibration), on the RMSEP shown (a mean row: of the mean RMSEP).")
    return "\n".join(lines)


def rich_table(rows: list[dict]):
    from rich.table import Table

    per_property = any(r["property"] != "mean" for r in rows)
    metric = rows[0]["metric"] if rows else "rmsep"
    table = Table(title=f"ctbench leaderboard ({metric}, mean ± sd over repetitions; * reference row)")
    heads = ["task", "N"] + (["property"] if per_property else []) + ["rank", "method", metric, "R2", "gap closed", "reps"]
    for h in heads:
        table.add_column(h, justify="right" if h in ("N", "rank", "R2", "gap closed", "reps") else "left",
                         no_wrap=h in ("method", "task"))
    prev = None
    for r in rows:
        cell = (r["task"], r["n_shots"], r["property"])
        if prev is not None and cell != prev:
            table.add_section()
        prev = cell
        style = "dim" if r["reference"] else ("bold green" if r["rank"] == 1 else None)
        table.add_row(
            r["task"], str(r["n_shots"]), *([r["property"]] if per_property else []), str(r["rank"] or "-"),
            r["method"] + (" *" if r["reference"] else ""),
            _mean_sd(r["mean"], r["sd"]), _fmt(r["r2_mean"], 3), _gap(r["gap_closed"]),
            f"{r['reps']}" + (f" ({r['failed']} failed)" if r["failed"] else ""), style=style,
        )
    return table
