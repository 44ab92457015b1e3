"""Assemble the report from the store: leaderboards, curves, heatmap, significance, spectra."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ctbench.leaderboard import build_leaderboard, method_label
from ctbench.metrics import METRICS
from ctbench.report.collect import (
    ReportError,
    StoreContents,
    label_order,
    missing_anchors,
    read_store,
    reference_rmsep,
    task_datasets,
)
from ctbench.report.efficiency import BANDS
from ctbench.report.figures import SavedFigure
from ctbench.report.significance import BLOCK_KINDS, FriedmanResult

REPORT_METRICS = ("rel_rmsep",) + METRICS + ("gap_closed",)


@dataclass
class TaskSection:
    name: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    """Leaderboard rows, mean over properties."""
    property_rows: list[dict[str, Any]]
    curves: SavedFigure | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Failure:
    task: str
    method: str
    n_shots: int
    count: int
    error: str


@dataclass
class Report:
    results_dir: Path
    out_dir: Path
    metric: str
    band: str
    shots_for_heatmap: int
    generated: str
    n_records: int
    n_ok: int
    n_failed: int
    methods: list[str]
    tasks: list[TaskSection]
    blocks: str = "tasks"
    notes: list[str] = field(default_factory=list)
    heatmap: SavedFigure | None = None
    heatmap_note: str | None = None
    significance: list[FriedmanResult] = field(default_factory=list)
    """One Friedman / Nemenyi analysis per N (in N order)."""
    significance_note: str | None = None
    """Why there is no analysis at all, else None."""
    cd_figures: dict[int, SavedFigure] = field(default_factory=dict)
    """N -> critical-difference diagram (for each N whose test ran)."""
    failures: list[Failure] = field(default_factory=list)
    spectra: list[Any] = field(default_factory=list)

    def figures(self) -> list[SavedFigure]:
        figs = [t.curves for t in self.tasks] + [self.heatmap]
        figs += [self.cd_figures[n] for n in sorted(self.cd_figures)]
        figs += [s.figure for s in self.spectra]
        return [f for f in figs if f is not None]


def build_report(
    results_dir: Path | str,
    out_dir: Path | str,
    tasks: list[str] | None = None,
    metric: str = "rel_rmsep",
    shots_for_heatmap: int = 10,
    data_dir: str | None = None,
    band: str = "ci",
    task_version: str | None = None,
    method_version: str | None = None,
    spectra: bool = True,
    blocks: str = "tasks",
    include_synthetic: bool = False,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Read the store, make every figure under ``out_dir/figures`` and write
    ``out_dir/index.html`` (self-contained) and ``out_dir/summary.md``.

    Synthetic tasks are left out (one note) unless ``include_synthetic`` or named in ``tasks``.
    ``say(stage)`` is called as each stage starts (reading, each figure, writing the page)."""
    from ctbench.report.heatmap import gap_matrix, heatmap_figure
    from ctbench.report.page import render_html, render_markdown
    from ctbench.report.significance import cd_figure, friedman_by_shots

    if metric not in REPORT_METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose from {', '.join(REPORT_METRICS)}")
    if band not in BANDS:
        raise ReportError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    if blocks not in BLOCK_KINDS:
        raise ReportError(f"blocks must be one of {', '.join(BLOCK_KINDS)}, got {blocks!r}")
    say = say or (lambda stage: None)
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    say(f"loading records from {results_dir}")
    contents = read_store(results_dir, tasks, task_version, method_version, include_synthetic=include_synthetic)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_old_figures(out_dir)
    say(f"leaderboards of {len(contents.records)} record(s), {len(contents.tasks)} task(s)")

    # one pass: the mean rows and the per-property rows (gap closed has no mean row: the mean
    # tables then show the relative RMSEP)
    every_row = build_leaderboard(contents.records, metric=metric, per_property=True)
    prop_rows = [r for r in every_row if r["property"] != "mean"]
    if metric == "gap_closed":
        rows_all = build_leaderboard(contents.records, metric="rel_rmsep")
    else:
        rows_all = [r for r in every_row if r["property"] == "mean"]
    refs = reference_rmsep(contents.records)
    report = Report(
        results_dir=results_dir, out_dir=out_dir, metric=metric, band=band, shots_for_heatmap=shots_for_heatmap,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"), n_records=len(contents.records),
        n_ok=len(contents.ok), n_failed=len(contents.failed), methods=label_order(contents.records), tasks=[],
        blocks=blocks, notes=list(contents.warnings),
    )
    if tasks:
        absent = [t for t in tasks if t not in contents.tasks]
        if absent:
            report.notes.append(f"no records for task(s) {', '.join(absent)} in {results_dir}.")
    for i, t in enumerate(contents.tasks, 1):
        say(f"figure: sample-efficiency curves of {t} ({i}/{len(contents.tasks)})")
        report.tasks.append(_task_section(contents, t, rows_all, prop_rows, metric, refs, out_dir, band))
    if len(contents.tasks) == 1:
        report.notes.append("the store holds a single task: the significance test compares methods over blocks "
                            "(tasks or datasets) at one N, so it needs at least two tasks.")
    real = [m for m in report.methods if m not in ("no_transfer", "target_only", "full_recalibration")]
    if not real:
        report.notes.append("only reference methods (no_transfer, target_only, full_recalibration) are in the store; "
                            "run a transfer method to compare it against them.")

    gm = gap_matrix(prop_rows, contents.tasks, shots_for_heatmap, report.methods)
    if gm is None:
        report.heatmap_note = "no method other than the no_transfer / full_recalibration anchors has records."
    elif not np.isfinite(gm.values).any():
        report.heatmap_note = ("gap closed cannot be computed: no task has both its no_transfer and "
                               "full_recalibration records.")
    else:
        say("figure: gap-closed heatmap")
        report.heatmap = heatmap_figure(gm, out_dir, shots_for_heatmap)
        off = [f"{t} (N={n})" for t, n in gm.shots.items() if n != shots_for_heatmap]
        if off:
            report.heatmap_note = (f"N = {shots_for_heatmap} is not in every task; closest used: {', '.join(off)}.")

    if metric == "gap_closed":
        report.significance_note = ("gap closed is a per-property figure with no value for a task as a whole, so "
                                    "methods are not ranked on it; use --metric rel_rmsep (the default).")
    else:
        datasets, samples = task_datasets(contents.records)
        say("significance tests (Friedman, Nemenyi) at each N")
        report.significance = friedman_by_shots(rows_all, metric, blocks=blocks, datasets=datasets,
                                                dataset_samples=samples)
        if not report.significance:
            report.significance_note = "no non-reference method has a row: there is nothing to rank."
        for res in report.significance:
            if res.ran and len(res.methods) >= 2:
                say(f"figure: critical-difference diagram at N = {res.n_shots}")
                report.cd_figures[res.n_shots] = cd_figure(res, out_dir)

    report.failures = _failures(contents)
    if spectra:
        from ctbench.report.spectra import standards_section

        for i, t in enumerate(contents.tasks, 1):
            say(f"figure: a standard's spectra before and after correction, {t} ({i}/{len(contents.tasks)})")
            report.spectra.append(standards_section(t, contents.task_records(t), out_dir, data_dir))

    say(f"writing {out_dir / 'index.html'} and summary.md")
    (out_dir / "index.html").write_text(render_html(report), encoding="utf-8")
    (out_dir / "summary.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _clear_old_figures(out_dir: Path) -> None:
    """Remove PNGs a previous report left in ``figures/`` so the folder matches the page."""
    folder = out_dir / "figures"
    if folder.is_dir():
        for p in folder.glob("*.png"):
            try:
                p.unlink()
            except OSError:
                pass


def _task_section(contents: StoreContents, task: str, rows_all: list[dict], prop_rows_all: list[dict], metric: str,
                  refs: dict, out_dir: Path, band: str) -> TaskSection:
    from ctbench.report.efficiency import efficiency_figure

    ok = contents.task_records(task)
    every = contents.task_records(task, ok_only=False)
    summary = dict((ok or every)[0].get("task") or {"name": task})
    rows = [r for r in rows_all if r["task"] == task]
    prop_rows = [r for r in prop_rows_all if r["task"] == task] if ok else []
    sec = TaskSection(name=task, summary=summary, rows=rows, property_rows=prop_rows)
    if not ok:
        sec.notes.append("every record of this task failed; see the failures section.")
        return sec
    miss = missing_anchors(contents, task)
    if miss:
        lost = ["gap closed"]
        if "full_recalibration" in miss:
            lost = ["relative RMSEP, its interval, the tie groups"] + lost
        sec.notes.append(f"missing reference record(s): {', '.join(miss)}; {' and '.join(lost)} are not available "
                         f"for this task" + (" and the curves lack that horizontal line." if metric != "gap_closed"
                                              else "."))
    elif rows and not any(np.isfinite(r.get("rel_mean", np.nan)) for r in rows):
        sec.notes.append("no record shares an outer test split with a full_recalibration record: relative RMSEP is "
                         "not available for this task.")
    labels = {method_label(r) for r in ok}
    if len(labels) == 1:
        sec.notes.append(f"only one method ({next(iter(labels))}) has results for this task.")
    title = f"{task} ({summary.get('source', '?')} → {summary.get('target', '?')})"
    sec.curves = efficiency_figure(task, ok, metric, refs, out_dir, band=band, title=title, rows=prop_rows)
    return sec


def _failures(contents: StoreContents) -> list[Failure]:
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in contents.failed:
        groups.setdefault((r["identity"]["task"], method_label(r), int(r["identity"]["n_shots"])), []).append(r)
    out = []
    for (task, label, n), recs in sorted(groups.items()):
        err = recs[0].get("error") or {}
        msg = f"{err.get('type', 'error')}: {(err.get('message') or '').splitlines()[0] if err.get('message') else ''}"
        if err.get("phase"):
            msg = f"[{err['phase']}] {msg}"
        out.append(Failure(task=task, method=label, n_shots=n, count=len(recs), error=msg[:300]))
    return out


__all__ = ["Report", "TaskSection", "build_report", "ReportError"]
