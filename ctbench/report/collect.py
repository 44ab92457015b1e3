"""Reading the store for the report: records grouped by task, per-record metric values.

Everything the report shows is derived from the local records (like the leaderboard).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.leaderboard import (
    REFERENCE_METHODS,
    consistent_records,
    method_label,
    only_synthetic_message,
    without_synthetic,
)
from ctbench.metrics import gap_closed, relative_rmsep

ANCHORS = ("no_transfer", "full_recalibration")
"""The two ends of *gap closed*; their values do not depend on N."""


class ReportError(ValueError):
    """The report cannot be made (empty store, unknown metric); the message says what to fix."""


@dataclass
class StoreContents:
    """The records selected for the report and what was noticed while reading them."""

    results_dir: Path
    records: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if is_ok(r)]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if not is_ok(r)]

    @property
    def tasks(self) -> list[str]:
        return sorted({r["identity"]["task"] for r in self.records})

    def task_records(self, task: str, ok_only: bool = True) -> list[dict[str, Any]]:
        return [r for r in self.records if r["identity"]["task"] == task and (is_ok(r) or not ok_only)]


def is_ok(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "ok" and bool(rec.get("metrics"))


def read_store(
    results_dir: Path,
    tasks: list[str] | None = None,
    task_version: str | None = None,
    method_version: str | None = None,
    include_synthetic: bool = False,
) -> StoreContents:
    """The store's records (filtered by task / version); corrupt files become warnings.

    Synthetic tasks (``task.synthetic`` true in the record) are left out, with one note naming
    them, unless ``include_synthetic`` or ``tasks`` names the tasks to report (as ``ctbench
    leaderboard`` does); a store that holds nothing else is a :class:`ReportError` naming the
    option."""
    from ctbench.store import Store

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(Store(results_dir).iter_records())
    notes = [str(w.message) for w in caught]
    if not records:
        raise ReportError(f"no records in {results_dir}/runs; run `ctbench run` first")
    sel = [r for r in records if not tasks or r["identity"]["task"] in tasks]
    if task_version:
        sel = [r for r in sel if str(r["identity"]["task_version"]) == task_version]
    if method_version:
        sel = [r for r in sel if str(r["identity"]["method_version"]) == method_version]
    if not sel:
        raise ReportError(f"no records in {results_dir} match the task/version filters")
    if not include_synthetic and not tasks:  # tasks named with --task are reported, synthetic or not
        kept, names = without_synthetic(sel)
        if names:
            if not kept:
                raise ReportError(only_synthetic_message(names))
            n_left, sel = len(sel) - len(kept), kept
            many = len(names) > 1
            notes.append(f"{len(names)} synthetic task{'s' if many else ''} ({', '.join(names)}: made-up data, "
                         f"{n_left} records) left out of the leaderboards, curves and significance tests; add "
                         f"--include-synthetic, or name {'them' if many else 'it'} with --task, to report on "
                         f"{'them' if many else 'it'}")
    sel, skipped = consistent_records(sel)  # records that do not fit with the others: left out, named
    return StoreContents(results_dir=Path(results_dir), records=sel, warnings=notes + skipped)


def property_unit(records: list[dict[str, Any]], prop: str) -> str | None:
    """The unit of property ``prop`` when the records' task summaries carry one (``units``: a
    mapping property -> unit, or one unit for every property), else None."""
    for r in records:
        summary = r.get("task") if isinstance(r.get("task"), dict) else {}
        for key in ("units", "property_units"):
            units = summary.get(key)
            if isinstance(units, dict) and isinstance(units.get(prop), str) and units[prop].strip():
                return units[prop].strip()
            if isinstance(units, str) and units.strip():
                return units.strip()
    return None


def base_name(rec: dict[str, Any]) -> str:
    return rec["identity"]["method"]


def is_reference(rec: dict[str, Any]) -> bool:
    return bool(rec.get("reference")) or base_name(rec) in REFERENCE_METHODS


def is_anchor(rec: dict[str, Any]) -> bool:
    """A no_transfer / full_recalibration record with default parameters (a gap-closed end)."""
    return base_name(rec) in ANCHORS and not rec["method"].get("user_params")


def task_properties(records: list[dict[str, Any]]) -> list[str]:
    """Properties of a task in card order (from the records' task summaries)."""
    props: list[str] = []
    for r in records:
        for p in r.get("task", {}).get("properties") or list(r["metrics"]["per_property"]):
            if p not in props:
                props.append(p)
    return props


def split_key(rec: dict[str, Any]) -> str:
    """The record's outer test split (the hash of its test rows; "" for records without one)."""
    return str((rec.get("split") or {}).get("test_rows_hash", ""))


def record_value(rec: dict[str, Any], metric: str, prop: str | None, refs: dict) -> float:
    """The metric of one record for one property (None: the mean over properties; for rel_rmsep
    the geometric mean over properties, for gap_closed NaN, a per-property figure only)."""
    per = rec["metrics"]["per_property"]
    if metric in ("rel_rmsep", "gap_closed"):
        key = (rec["identity"]["task"], split_key(rec))
        fr, nt = refs.get(key + ("full_recalibration",)), refs.get(key + ("no_transfer",))
        if fr is None or (metric == "gap_closed" and nt is None):
            return float("nan")
        props = [prop] if prop is not None else list(per)
        if metric == "gap_closed":
            if prop is None or prop not in fr or prop not in nt or prop not in per:
                return float("nan")
            return gap_closed(per[prop]["rmsep"], nt[prop], fr[prop])
        if any(p not in per for p in props):
            return float("nan")
        return relative_rmsep({p: per[p]["rmsep"] for p in props}, fr)
    if prop is None:
        return float(rec["metrics"]["mean"].get(metric, np.nan))
    pp = per.get(prop)
    return float(pp.get(metric, np.nan)) if pp else float("nan")


def reference_rmsep(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(task, test-rows hash, anchor) -> property -> RMSEP of the no_transfer / full_recalibration
    record (default parameters) on that outer split; they do not depend on N (mean if several)."""
    acc: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in records:
        if not is_ok(r) or not is_anchor(r):
            continue
        d = acc.setdefault((r["identity"]["task"], split_key(r), base_name(r)), {})
        for prop, vals in r["metrics"]["per_property"].items():
            d.setdefault(prop, []).append(float(vals["rmsep"]))
    return {k: {p: float(np.mean(v)) for p, v in d.items()} for k, d in acc.items()}


def task_datasets(records: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, int]]:
    """task -> dataset and dataset -> number of samples (pool + test, the largest over its tasks),
    from the records' task summaries."""
    ds: dict[str, str] = {}
    samples: dict[str, int] = {}
    for r in records:
        summ = r.get("task") or {}
        d = summ.get("dataset")
        if not d:
            continue
        ds[r["identity"]["task"]] = str(d)
        try:
            n = int(summ.get("pool_samples") or 0) + int(summ.get("test_samples") or 0)
        except (TypeError, ValueError, OverflowError):  # a summary field of another type: no count
            n = 0
        if n:
            samples[str(d)] = max(samples.get(str(d), 0), n)
    return ds, samples


def label_order(records: list[dict[str, Any]]) -> list[str]:
    """Method labels: no_transfer, target_only, full_recalibration first, then the others by name."""
    labels = {method_label(r): base_name(r) for r in records}
    ref_rank = {name: i for i, name in enumerate(("no_transfer", "target_only", "full_recalibration"))}
    return sorted(labels, key=lambda lab: (0, ref_rank[labels[lab]], lab) if labels[lab] in ref_rank else (1, 0, lab))


def missing_anchors(contents: StoreContents, task: str) -> list[str]:
    have = {base_name(r) for r in contents.task_records(task) if is_anchor(r)}
    return [a for a in ANCHORS if a not in have]
