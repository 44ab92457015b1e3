"""Records -> leaderboard table (a pure function of the local records).

Rows are (task, N, property or "mean", method configuration). The headline is the relative
RMSEP: per property RMSEP / RMSEP(full_recalibration) on the same outer test split, the
geometric mean over properties for a task's mean row (never a mean of raw RMSEPs in different
units) and over repetitions, with a 95 % bootstrap interval and the tie groups of
``ctbench.stats``. Raw RMSEP, R2, RPD, bias, SEP stay available per property (mean ± sd over
repetitions); *gap closed* is per property only. Mixing task versions or method versions is refused.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from ctbench.metrics import LOWER_IS_BETTER, METRICS, gap_closed
from ctbench.splits import stable_seed
from ctbench.stats import BOOTSTRAP_REPLICATES, cell_bootstrap, interval, tie_groups
from ctbench.store import RecordWarning

REFERENCE_METHODS = ("no_transfer", "target_only", "full_recalibration")


class LeaderboardError(ValueError):
    pass


def method_label(rec: dict[str, Any]) -> str:
    m = rec["method"]
    label = m["name"]
    user = m.get("user_params") or {}
    source = str(m.get("params_source", ""))
    if source.startswith("tuned"):
        # tuned parameters differ per (N, outer split): one row per method, the values are in the records
        label += " (tuned)"
    elif user:
        label += "[" + ",".join(f"{k}={v}" for k, v in sorted(user.items())) + "]"
    if rec.get("transductive"):
        label += " (transductive)"
    if rec.get("_code_tag"):
        label += f" <code {rec['_code_tag']}>"
    return label


def _code_of(rec: dict) -> str:
    return str(rec["identity"].get("code_sha256") or (rec.get("method") or {}).get("code_sha256") or "?")


def mixed_code(records: list[dict]) -> list[str]:
    """Tag the records of a method whose records come from more than one code version (same
    name and ``version``, different code hash): their labels get ``<code HASH>`` so the rows are
    never pooled. Returns one line per such method, saying why."""
    codes: dict[str, set[str]] = {}
    for r in records:
        codes.setdefault(r["identity"]["method"], set()).add(_code_of(r))
    notes = []
    for name, hashes in sorted(codes.items()):
        if len(hashes) < 2:
            continue
        for r in records:
            if r["identity"]["method"] == name:
                r["_code_tag"] = _code_of(r)[:8]
        notes.append(
            f"method {name!r}: records from {len(hashes)} different code versions ({', '.join(h[:8] for h in sorted(hashes))}) "
            f"under one version number; shown as separate rows, never pooled (move the old records out of the results directory)"
        )
    return notes


def _check_versions(records: list[dict]) -> None:
    versions: dict[tuple[str, str], set[str]] = {}
    for r in records:
        versions.setdefault(("task", r["identity"]["task"]), set()).add(str(r["identity"]["task_version"]))
        versions.setdefault(("method", r["identity"]["method"]), set()).add(str(r["identity"]["method_version"]))
        if r["identity"].get("card_sha256"):
            versions.setdefault(("card", r["identity"]["task"]), set()).add(str(r["identity"]["card_sha256"])[:12])
    for (kind, name), vs in sorted(versions.items()):
        if kind == "card" and len(vs) > 1:
            raise LeaderboardError(
                f"records of task {name!r} were made from {len(vs)} different card contents ({', '.join(sorted(vs))}) "
                f"under one card version; refusing to mix them (bump the card's version, or move the old records out "
                f"of the results directory)"
            )
        if len(vs) > 1:
            raise LeaderboardError(
                f"records of {kind} {name!r} come from versions {', '.join(sorted(vs))}; refusing to mix them "
                f"(filter with --{kind}-version or move the old records out of the results directory)"
            )


def _where(rec: dict) -> str:
    ident = rec["identity"]
    return rec.get("_path") or f"{ident['task']}/{ident['method']} N={ident['n_shots']} rep={ident['rep']}"


def consistent_records(records: list[dict]) -> tuple[list[dict], list[str]]:
    """``records`` less the ok records that do not fit with the others, and one line per record
    left out (naming its file and why).

    Each record is valid on its own (``ctbench.store.record_problem``); what can still differ is
    between records: the properties of a task's records (the most common set is kept) and the
    residual rows of the records on one outer test split (the bootstrap pairs them row by row;
    the most common sample column is kept). Order is preserved, so a consistent store gives
    exactly the records it was given."""
    ok = [r for r in records if r["status"] == "ok" and r.get("metrics")]
    prop_sets: dict[str, Counter] = defaultdict(Counter)
    for r in ok:
        prop_sets[r["identity"]["task"]][tuple(sorted(r["metrics"]["per_property"]))] += 1
    props = {t: c.most_common(1)[0][0] for t, c in prop_sets.items()}  # ties: the first seen
    notes: list[str] = []
    bad: set[int] = set()
    for r in ok:
        t = r["identity"]["task"]
        have = tuple(sorted(r["metrics"]["per_property"]))
        if have != props[t]:
            bad.add(id(r))
            notes.append(f"skipping record {_where(r)}: its properties ({', '.join(have)}) differ from those of the "
                         f"other records of task {t} ({', '.join(props[t])})")
    samples: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in ok:
        if id(r) not in bad and r.get("residuals") is not None:
            samples[(r["identity"]["task"], _split_key(r))][tuple(r["residuals"]["sample"])] += 1
    # the most common sample column; on a tie the longer one (a cut record is the likelier corrupt
    # one), then the first seen, so the choice does not depend on the store's file order alone
    common = {key: max(c.items(), key=lambda kv: (kv[1], len(kv[0])))[0] for key, c in samples.items()}
    for r in ok:
        if id(r) in bad or r.get("residuals") is None:
            continue
        want = common[(r["identity"]["task"], _split_key(r))]
        have = tuple(r["residuals"]["sample"])
        if have != want:
            bad.add(id(r))
            what = f"{len(have)} rows, the others {len(want)}" if len(have) != len(want) else "other samples"
            notes.append(f"skipping record {_where(r)}: its residuals ({what}) do not match the other records of "
                         f"task {r['identity']['task']} on the same outer test split")
    if not bad:
        return records, notes
    return [r for r in records if id(r) not in bad], notes


def is_synthetic(rec: dict[str, Any]) -> bool:
    """A record of a synthetic task (made-up data generated in code: a demo, not a benchmark)."""
    summary = rec.get("task")
    return isinstance(summary, dict) and summary.get("synthetic") is True


def without_synthetic(records: list[dict]) -> tuple[list[dict], list[str]]:
    """``records`` less those of synthetic tasks, and those tasks' names (sorted). The
    leaderboard and the report leave them out unless asked (``--include-synthetic``, ``--task``)."""
    names = sorted({r["identity"]["task"] for r in records if is_synthetic(r)})
    if not names:
        return records, []
    return [r for r in records if not is_synthetic(r)], names


def only_synthetic_message(names: list[str]) -> str:
    """The one-line error when every record left is of a synthetic task."""
    return (f"the store holds only synthetic tasks ({', '.join(names)}), left out by default; add "
            f"--include-synthetic, or name them with --task {','.join(names)}")


def _split_key(rec: dict) -> str:
    return str((rec.get("split") or {}).get("test_rows_hash", ""))


def _references(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(task, reference method, test-rows hash) -> one ok record of no_transfer / full_recalibration
    (default parameters) on that outer split; their values do not depend on N or the draw."""
    out: dict[tuple[str, str, str], dict] = {}
    for r in records:
        name = r["identity"]["method"]
        if name not in ("no_transfer", "full_recalibration") or r["method"].get("user_params"):
            continue
        key = (r["identity"]["task"], name, _split_key(r))
        if key not in out or ("residuals" in r and "residuals" not in out[key]):
            out[key] = r
    return out


def _record_gap(rec: dict, refs: dict, prop: str) -> float:
    """Gap closed of one property of one record, against the references on the same outer split."""
    task, h = rec["identity"]["task"], _split_key(rec)
    nt, fr = refs.get((task, "no_transfer", h)), refs.get((task, "full_recalibration", h))
    if nt is None or fr is None:
        return float("nan")
    get = lambda r: r["metrics"]["per_property"].get(prop, {}).get("rmsep", float("nan"))  # noqa: E731
    return gap_closed(get(rec), get(nt), get(fr))


def _geo(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.exp(np.mean(np.log(v)))) if v.size and np.all(v > 0) else float("nan")


def _dataset(rec: dict) -> str:
    return str((rec.get("task") or {}).get("dataset", ""))


def build_leaderboard(
    records: list[dict],
    metric: str = "rel_rmsep",
    tasks: list[str] | None = None,
    shots: list[int] | None = None,
    methods: list[str] | None = None,
    per_property: bool = False,
    task_version: str | None = None,
    method_version: str | None = None,
    replicates: int | None = None,
) -> list[dict[str, Any]]:
    """The leaderboard rows, sorted by task, N, property, value.

    Every row carries the relative RMSEP (``rel_mean`` with its 95 % bootstrap interval
    ``rel_lo``/``rel_hi``), the tie group against the cell's best (``group``, ``tied``,
    ``p_vs_best``; see ``ctbench.stats``), and the raw metrics over repetitions. ``metric`` picks
    what ``mean``/``sd``/``lo``/``hi`` hold and the sort order; tie groups always come from the
    relative RMSEP.
    """
    if metric not in METRICS and metric not in ("gap_closed", "rel_rmsep"):
        raise LeaderboardError(f"unknown metric {metric!r}; choose from rel_rmsep, {', '.join(METRICS + ('gap_closed',))}")
    if metric == "gap_closed" and not per_property:
        per_property = True  # gap closed is a per-property figure (a mean of gaps mixes scales)
    sel = [r for r in records if (not tasks or r["identity"]["task"] in tasks)]
    if task_version:
        sel = [r for r in sel if str(r["identity"]["task_version"]) == task_version]
    if method_version:
        sel = [r for r in sel if str(r["identity"]["method_version"]) == method_version]
    _check_versions(sel)
    sel, notes = consistent_records(sel)
    for note in notes:
        warnings.warn(note, RecordWarning, stacklevel=2)
    mixed_code(sel)
    all_ok = [r for r in sel if r["status"] == "ok" and r.get("metrics")]
    refs = _references(all_ok)
    full_recal: dict[str, dict[str, dict]] = {}
    for (task, name, h), r in refs.items():
        if name == "full_recalibration":
            full_recal.setdefault(task, {})[h] = r
    failed: dict[tuple, int] = {}
    cells: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for r in sel:
        if methods and r["identity"]["method"] not in methods:
            continue
        if shots is not None and r["identity"]["n_shots"] not in shots:
            continue
        key = (r["identity"]["task"], int(r["identity"]["n_shots"]))
        if r["status"] == "ok" and r.get("metrics"):
            cells.setdefault(key, {}).setdefault(method_label(r), []).append(r)
        else:
            k = key + (method_label(r),)
            failed[k] = failed.get(k, 0) + 1
    rows: list[dict[str, Any]] = []
    for (task, n), by_label in sorted(cells.items()):
        first = next(iter(by_label.values()))[0]
        props = list(first["metrics"]["per_property"])
        boot = cell_bootstrap(
            {lab: (_is_reference(recs[0]), recs) for lab, recs in by_label.items()},
            full_recal.get(task, {}), props, seed=stable_seed(task, n),
            replicates=replicates or BOOTSTRAP_REPLICATES,
        )
        for prop_i, prop in ([(None, "mean")] + list(enumerate(props))) if per_property else [(None, "mean")]:
            groups = tie_groups(boot, prop_i)
            for label, recs in by_label.items():
                rows.append(_row(task, n, prop, prop_i, label, recs, boot.get(label), groups.get(label), metric, refs))
    for (task, n, label), count in failed.items():
        if not any(r["task"] == task and r["n_shots"] == n and r["method"] == label for r in rows):
            rows.append(_failed_row(task, n, label, metric, count))
        else:
            for r in rows:
                if r["task"] == task and r["n_shots"] == n and r["method"] == label:
                    r["failed"] = count
    lower = LOWER_IS_BETTER.get(metric, True)

    def order(row: dict) -> tuple:
        v = row["mean"]
        v = abs(v) if metric == "bias" else v
        v = v if np.isfinite(v) else np.inf if lower else -np.inf
        return (row["task"], row["n_shots"], row["property"] != "mean", row["property"], v if lower else -v, row["method"])

    rows.sort(key=order)
    return rows


def _is_reference(rec: dict) -> bool:
    return bool(rec.get("reference")) or rec["identity"]["method"] in REFERENCE_METHODS


def _row(task: str, n: int, prop: str, prop_i: int | None, label: str, recs: list[dict], cell: Any,
         group: tuple[int, float] | None, metric: str, refs: dict) -> dict[str, Any]:
    def per_rec(name: str) -> list[float]:
        if prop_i is None:
            return [r["metrics"]["mean"][name] for r in recs]
        return [r["metrics"]["per_property"][prop][name] for r in recs]

    rel_mean = rel_lo = rel_hi = rel_sd = float("nan")
    if cell is not None:
        rel_mean = float(np.exp(cell.value(prop_i)))
        rel_lo, rel_hi = interval(cell, prop_i)
        per_rep = cell.per_rep.mean(axis=1) if prop_i is None else cell.per_rep[:, prop_i]
        rel_sd = float(np.std(np.exp(per_rep), ddof=1)) if len(per_rep) > 1 else 0.0
    gaps = [_record_gap(r, refs, prop) for r in recs] if prop_i is not None else []
    gap = float(np.nanmean(gaps)) if gaps and np.isfinite(gaps).any() else float("nan")
    if metric == "rel_rmsep":
        mean, sd, lo, hi = rel_mean, rel_sd, rel_lo, rel_hi
    elif metric == "gap_closed":
        g = np.asarray(gaps, dtype=float)
        mean = gap
        sd = float(np.nanstd(g, ddof=1)) if np.isfinite(g).sum() > 1 else 0.0
        lo = hi = float("nan")
    else:
        vals = per_rec(metric)
        mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        lo = hi = float("nan")
    rmsep, r2 = per_rec("rmsep"), per_rec("r2")
    first = recs[0]
    reference = _is_reference(first)
    return {
        "task": task,
        "dataset": _dataset(first),
        "n_shots": n,
        "property": prop,
        "method": label,
        "reference": reference,
        "transductive": bool(first.get("transductive")),
        "metric": metric,
        "mean": mean,
        "sd": sd,
        "lo": lo,
        "hi": hi,
        "rel_mean": rel_mean,
        "rel_lo": rel_lo,
        "rel_hi": rel_hi,
        "rmsep_mean": float(np.mean(rmsep)),
        "rmsep_sd": float(np.std(rmsep, ddof=1)) if len(rmsep) > 1 else 0.0,
        "r2_mean": float(np.mean(r2)),
        "gap_closed": gap,
        "group": None if reference or group is None else group[0],
        "rank": None if reference or group is None else group[0],
        "tied": bool(group is not None and not reference and group[0] == 1),
        "p_vs_best": float("nan") if reference or group is None else group[1],
        "reps": len(recs),
        "outer_splits": len({_split_key(r) for r in recs}),
        "failed": 0,
        "task_version": str(first["identity"]["task_version"]),
        "method_version": str(first["identity"]["method_version"]),
    }


def _failed_row(task: str, n: int, label: str, metric: str, count: int) -> dict[str, Any]:
    nan = float("nan")
    return {"task": task, "dataset": "", "n_shots": n, "property": "mean", "method": label, "reference": False,
            "transductive": False, "metric": metric, "mean": nan, "sd": nan, "lo": nan, "hi": nan,
            "rel_mean": nan, "rel_lo": nan, "rel_hi": nan, "rmsep_mean": nan, "rmsep_sd": nan, "r2_mean": nan,
            "gap_closed": nan, "group": None, "rank": None, "tied": False, "p_vs_best": nan, "reps": 0,
            "outer_splits": 0, "failed": count, "task_version": "", "method_version": ""}


def missing_full_recalibration(rows: list[dict]) -> list[str]:
    """Tasks whose rows have no relative RMSEP because full_recalibration is not in the store."""
    by_task: dict[str, bool] = {}
    for r in rows:
        by_task[r["task"]] = by_task.get(r["task"], False) or bool(np.isfinite(r["rel_mean"]))
    return sorted(t for t, ok in by_task.items() if not ok)


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


def _interval(mean: float, lo: float, hi: float) -> str:
    if mean is None or not np.isfinite(mean):
        return "-"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _group_labels(rows: list[dict]) -> dict[int, str]:
    """id(row) -> its tie-group label: "1" alone, "1=" when tied with others, "" for reference rows."""
    sizes: dict[tuple, int] = {}
    for r in rows:
        if r["group"] is not None:
            k = (r["task"], r["n_shots"], r["property"], r["group"])
            sizes[k] = sizes.get(k, 0) + 1
    out = {}
    for r in rows:
        if r["group"] is None:
            out[id(r)] = "*" if r["reference"] else "-"
        else:
            out[id(r)] = f"{r['group']}" + ("=" if sizes[(r["task"], r["n_shots"], r["property"], r["group"])] > 1 else "")
    return out


def _label(r: dict) -> str:
    return r["method"] + (" *" if r["reference"] else "")


def partial_rows(rows: list[dict]) -> dict[int, int]:
    """id(row) -> the most repetitions of its task, for each partial row: one with fewer records (ok +
    failed) than the most any row of its task has (read while a run is still going, or a run stopped
    early; its interval and tie group are provisional). A method's tuned and default rows of one
    (task, N) count together: ``run --params tuned`` runs the outer splits without tuned parameters
    with the defaults."""
    def cell(r: dict) -> tuple:
        return r["task"], r["n_shots"], r["property"], r["method"].replace(" (tuned)", "")

    most: dict[str, int] = {}
    pooled: dict[tuple, int] = {}
    for r in rows:
        count = int(r["reps"]) + int(r["failed"])
        most[r["task"]] = max(most.get(r["task"], 0), count)
        pooled[cell(r)] = pooled.get(cell(r), 0) + count
    return {id(r): most[r["task"]] for r in rows if pooled[cell(r)] < most[r["task"]]}


def partial_cells(rows: list[dict]) -> list[tuple[str, int, str]]:
    """The (task, N, method) cells whose rows are partial (``partial_rows``), once each."""
    partial = partial_rows(rows)
    return sorted({(r["task"], r["n_shots"], r["method"]) for r in rows if id(r) in partial})


def _reps(r: dict, partial: dict[int, int] | None = None) -> str:
    """"10", "3 (7 failed)", and for a partial row "3/10 partial"."""
    of = (partial or {}).get(id(r))
    text = f"{r['reps']}" if of is None else f"{r['reps']}/{of}"
    if r["failed"]:
        text += f" ({r['failed']} failed)"
    return text if of is None else text + " partial"


LEGEND = (
    "rel. RMSEP = RMSEP / RMSEP(full_recalibration) on the same outer test split, geometric mean over properties "
    "(mean rows) and over repetitions; [95 % interval]: two-stage paired bootstrap over repetitions and test "
    "samples (ctbench.stats). group: 1 = the cell's best method and every method not significantly worse than it "
    "(paired bootstrap test, Holm-corrected, alpha 0.05), 2 = the best of the rest and its ties, ...; \"=\" marks a "
    "shared group. `*` reference row (not ranked). RMSEP: mean ± sd over repetitions (outer splits x standards draws)."
)

GAP_LEGEND = ("gap closed = (RMSEP_no_transfer − RMSEP) / (RMSEP_no_transfer − RMSEP_full_recalibration) per "
              "property on the same outer split, mean over repetitions (unstable where the two ends are close).")


def partial_note(rows: list[dict]) -> str | None:
    """One footnote line for the partial rows, or None."""
    partial = partial_rows(rows)
    most = {r["task"]: partial[id(r)] for r in rows if id(r) in partial}
    if not most:
        return None
    return ("partial = fewer repetitions than the most any row of the task has ("
            + ", ".join(f"{t}: {m}" for t, m in sorted(most.items()))
            + "), e.g. read while a run is still going: its interval and tie group are provisional.")


def _finite(v: Any) -> bool:
    return v is not None and bool(np.isfinite(v))


def _has_reference(task: str, name: str, rows: list[dict], records: list[dict] | None) -> bool:
    if records is not None:
        return any(r["identity"]["task"] == task and r["identity"]["method"] == name and r["status"] == "ok"
                   and not (r.get("method") or {}).get("user_params") for r in records)
    return any(r["task"] == task and r["method"] == name and _finite(r["rmsep_mean"]) for r in rows)


def _zero_gap(task: str, n: int, prop: str, rows: list[dict]) -> bool:
    """no_transfer and full_recalibration with the same RMSEP on ``prop`` (same N if shown there)."""
    def rmsep(name: str) -> float | None:
        found = [r for r in rows if r["task"] == task and r["property"] == prop and r["method"] == name
                 and _finite(r["rmsep_mean"])]
        found.sort(key=lambda r: r["n_shots"] != n)
        return found[0]["rmsep_mean"] if found else None

    a, b = rmsep("no_transfer"), rmsep("full_recalibration")
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)


def gap_notes(rows: list[dict], records: list[dict] | None = None) -> list[str]:
    """Footnotes saying why gap-closed cells are blank in a per-property view (none otherwise).

    ``records`` (the records the rows were built from) tell a missing reference from one left out
    of the view by a --method filter; without them the rows are the evidence."""
    if not any(r["property"] != "mean" for r in rows):
        return []
    notes = []
    if any(r["property"] == "mean" for r in rows):
        notes.append("gap closed is blank on the mean rows: it is a per-property figure (a mean of gaps would mix "
                     "the properties' scales).")
    blank: dict[str, list[dict]] = {}
    for r in rows:
        if r["property"] != "mean" and not _finite(r["gap_closed"]) and _finite(r["rmsep_mean"]):
            blank.setdefault(r["task"], []).append(r)
    for task, task_rows in sorted(blank.items()):
        missing = [m for m in ("no_transfer", "full_recalibration") if not _has_reference(task, m, rows, records)]
        if missing:
            notes.append(f"gap closed is blank for task {task}: no {' and no '.join(missing)} records with default "
                         f"parameters, the ends of the gap (run `ctbench run -m {','.join(missing)} -t {task}` "
                         f"with the same --reps).")
            continue
        zero = sorted({r["property"] for r in task_rows if _zero_gap(task, r["n_shots"], r["property"], rows)})
        if zero:
            notes.append(f"gap closed is blank for task {task}, {', '.join(zero)}: no_transfer and full_recalibration "
                         f"have the same RMSEP there (no gap to close).")
        rest = [r for r in task_rows if r["property"] not in zero]
        if rest:
            notes.append(f"gap closed is blank on {len(rest)} row(s) of task {task}: the no_transfer or "
                         f"full_recalibration records lack those repetitions' outer splits, or the two have the "
                         f"same RMSEP on each of them (no gap to close).")
    return notes


def footnotes(rows: list[dict], records: list[dict] | None = None, gap: bool = True) -> list[str]:
    """The table's footnotes: partial rows, blank gap-closed cells (``gap``: the column is shown)."""
    note = partial_note(rows)
    return ([note] if note else []) + (gap_notes(rows, records) if gap else [])


def format_rows(rows: list[dict], fmt: str, records: list[dict] | None = None) -> str:
    """Render rows as md / csv / json text (``records``: see ``gap_notes``)."""
    if fmt == "json":
        import json

        return json.dumps(rows, indent=1, default=lambda o: None)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        keys = ["task", "dataset", "n_shots", "property", "group", "method", "reference", "metric", "mean", "sd", "lo",
                "hi", "rel_mean", "rel_lo", "rel_hi", "p_vs_best", "rmsep_mean", "rmsep_sd", "r2_mean", "gap_closed",
                "reps", "outer_splits", "failed", "task_version", "method_version"]
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        return buf.getvalue()
    metric = rows[0]["metric"] if rows else "rel_rmsep"
    per_property = any(r["property"] != "mean" for r in rows)
    groups = _group_labels(rows)
    partial = partial_rows(rows)
    raw = "RMSEP" if metric == "rel_rmsep" else metric
    headers = ["task", "N"] + (["property"] if per_property else []) + ["group", "method", "rel. RMSEP [95 % CI]",
                                                                        f"{raw} (mean ± sd)", "R2"]
    headers += (["gap closed"] if per_property else []) + ["reps"]

    def cells(r: dict) -> list[str]:
        value = (r["rmsep_mean"], r["rmsep_sd"]) if metric == "rel_rmsep" else (r["mean"], r["sd"])
        out = [r["task"], str(r["n_shots"])] + ([r["property"]] if per_property else [])
        out += [groups[id(r)], _label(r), _interval(r["rel_mean"], r["rel_lo"], r["rel_hi"]), _mean_sd(*value),
                _fmt(r["r2_mean"], 3)]
        return out + ([_gap(r["gap_closed"])] if per_property else []) + [_reps(r, partial)]

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", LEGEND]
    if per_property:
        lines.append(GAP_LEGEND)
    notes = footnotes(rows, records)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


# --- terminal tables ------------------------------------------------------------------------------

# (key, header, justify, wraps): only the method column wraps (long labels fold), numbers never do.
_COLUMN_SEP = 3  # one space of padding either side of a one-space divider (box.SIMPLE_HEAD, no edges)
_MIN_METHOD = 10  # the method column is never squeezed below this (or its longest label, if shorter)


def _columns(metric: str, per_property: bool, wide: bool) -> list[tuple[str, str, str, bool]]:
    raw = "RMSEP" if metric == "rel_rmsep" else metric
    cols = [("grp", "grp", "right", False), ("method", "method", "left", True),
            ("rel", "rel. RMSEP [95% CI]", "left", False)]
    if wide or metric != "rel_rmsep":  # the metric asked for is always shown
        cols.append(("value", f"{raw} mean±sd", "left", False))
    if wide:
        cols.append(("r2", "R2", "right", False))
        if per_property and metric != "gap_closed":
            cols.append(("gap", "gap closed", "right", False))
    cols.append(("reps", "reps", "right", False))
    return cols


def _cell(key: str, r: dict, groups: dict[int, str], partial: dict[int, int]) -> str:
    if key == "grp":
        return groups[id(r)]
    if key == "method":
        return _label(r)
    if key == "rel":
        if not _finite(r["rel_mean"]):
            return "-"
        return f"{r['rel_mean']:.2f}" + (f" [{r['rel_lo']:.2f}, {r['rel_hi']:.2f}]" if _finite(r["rel_lo"]) else "")
    if key == "value":
        mean, sd = (r["rmsep_mean"], r["rmsep_sd"]) if r["metric"] == "rel_rmsep" else (r["mean"], r["sd"])
        if not _finite(mean):
            return "-"
        return f"{mean:.3g} ± {sd if _finite(sd) else 0.0:.2g}"
    if key == "r2":
        return "-" if not _finite(r["r2_mean"]) else f"{r['r2_mean']:.2f}"
    if key == "gap":
        return _gap(r["gap_closed"])
    if key == "reps":
        return _reps(r, partial)
    raise KeyError(key)


def _natural_widths(rows: list[dict], cols: list[tuple[str, str, str, bool]]) -> list[int]:
    from rich.cells import cell_len

    groups, partial = _group_labels(rows), partial_rows(rows)
    return [max([cell_len(header)] + [cell_len(_cell(key, r, groups, partial)) for r in rows])
            for key, header, _, _ in cols]


def terminal_layout(rows: list[dict], wide: bool = False, width: int | None = None
                    ) -> tuple[list[tuple[str, str, str, bool]], int]:
    """The columns of the terminal tables and the narrowest width that shows them with every number
    whole (the method column wraps, down to ``_MIN_METHOD`` characters).

    ``wide``: every column. Otherwise the compact set (group, method, rel. RMSEP [95% CI], the
    metric asked for if another, reps); given the terminal's ``width``, every column when they all
    fit it without wrapping a label."""
    metric = rows[0]["metric"] if rows else "rel_rmsep"
    per_property = any(r["property"] != "mean" for r in rows)
    full = _columns(metric, per_property, True)
    if not wide:
        compact = _columns(metric, per_property, False)
        natural = _natural_widths(rows, full)
        fits = width is not None and sum(natural) + _COLUMN_SEP * (len(full) - 1) <= width
        cols = full if fits else compact
    else:
        cols = full
    widths = _natural_widths(rows, cols)
    needed = sum(min(w, max(_MIN_METHOD, len("method"))) if wraps else w
                 for w, (_, _, _, wraps) in zip(widths, cols)) + _COLUMN_SEP * (len(cols) - 1)
    return cols, needed


def rich_table(rows: list[dict], wide: bool = False, width: int | None = None, records: list[dict] | None = None,
               columns: list[tuple[str, str, str, bool]] | None = None):
    """Terminal output: one compact table per (task, N, property) cell, tie group 1 in bold green,
    then the legend and the footnotes (``footnotes``; ``records``: see ``gap_notes``).

    Columns: ``terminal_layout(rows, wide, width)`` unless given; the same widths in every
    table. Numbers never wrap; the method column takes what is left of ``width`` (its labels
    fold), never less than ``_MIN_METHOD``: printed on a console ``terminal_layout``'s width or
    wider, no number is ever cut. Every label is plain text, never read as rich markup."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cols = columns if columns is not None else terminal_layout(rows, wide, width)[0]
    widths = _natural_widths(rows, cols)
    if width is not None:
        fixed = sum(w for w, c in zip(widths, cols) if not c[3]) + _COLUMN_SEP * (len(cols) - 1)
        widths = [max(min(w, width - fixed), min(w, _MIN_METHOD)) if c[3] else w for w, c in zip(widths, cols)]
    groups, partial = _group_labels(rows), partial_rows(rows)
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["n_shots"], r["property"]), []).append(r)
    parts: list = []
    for (task, n, prop), cell_rows in cells.items():
        title = f"{task} · N = {n}" + ("" if prop == "mean" else f" · {prop}")
        table = Table(title=Text(title, style="bold"), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                      show_edge=False, pad_edge=False)
        for (_, header, just, wraps), w in zip(cols, widths):
            table.add_column(Text(header), justify=just, width=w, overflow="fold", no_wrap=not wraps)
        for r in cell_rows:
            style = "dim" if r["reference"] else ("bold green" if r["group"] == 1 else None)
            table.add_row(*[Text(_cell(key, r, groups, partial)) for key, _, _, _ in cols], style=style)
        parts.append(table)
    parts.append(Text(LEGEND, style="dim"))
    metric = rows[0]["metric"] if rows else "rel_rmsep"
    shown = {c[0] for c in cols}
    left_out = [header for key, header, _, _ in _columns(metric, any(r["property"] != "mean" for r in rows), True)
                if key not in shown]
    gap_shown = "gap" in shown or metric == "gap_closed"
    if gap_shown and any(r["property"] != "mean" for r in rows):
        parts.append(Text(GAP_LEGEND, style="dim"))
    if left_out:
        parts.append(Text(f"Not shown to fit the width: {', '.join(left_out)} (--wide shows every column).",
                          style="dim"))
    parts += [Text(note, style="yellow") for note in footnotes(rows, records, gap=gap_shown)]
    return Group(*parts)
