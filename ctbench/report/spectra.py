"""One transfer standard before and after each spectrum-correcting method.

For a task, the standard shown is the first standard of repetition 0 at the smallest N > 0
the task's records have. Each method tagged ``corrects_spectra`` is refitted on the task
exactly as its record was run (same parameters, random_state, split), then its
``transform_target`` maps the standard's target spectrum into source space.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctbench.leaderboard import method_label
from ctbench.report.collect import base_name, label_order
from ctbench.report.figures import SavedFigure, method_colors, new_figure, save_figure


@dataclass
class Corrected:
    label: str
    n_shots: int
    spectrum: np.ndarray


@dataclass
class SpectraResult:
    task: str
    figure: SavedFigure | None = None
    notes: list[str] = field(default_factory=list)


def correcting_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if (r.get("method", {}).get("tags") or {}).get("corrects_spectra")]


def standards_section(task_name: str, records: list[dict[str, Any]], out_dir: Path,
                      data_dir: str | None) -> SpectraResult:
    """Refit the task's spectrum-correcting methods and plot one standard before/after."""
    res = SpectraResult(task=task_name)
    fixers = correcting_records(records)
    if not fixers:
        res.notes.append(f"{task_name}: no method in the store corrects spectra (tag corrects_spectra), "
                         f"so there is nothing to show before/after.")
        return res
    ns = sorted({int(r["identity"]["n_shots"]) for r in records if int(r["identity"]["n_shots"]) > 0})
    if not ns:
        res.notes.append(f"{task_name}: only zero-shot records, so there are no transfer standards to show.")
        return res
    n0 = ns[0]
    first = [r for r in records if int(r["identity"]["n_shots"]) == n0 and int(r["identity"]["rep"]) == 0]
    seed = int((first or records)[0]["identity"]["seed"])
    try:
        task = _build_task(task_name, data_dir)
    except Exception as exc:  # noqa: BLE001 - any loading problem becomes a note
        res.notes.append(f"{task_name}: cannot load the task to refit methods ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); pass --data-dir.")
        return res
    from ctbench.splits import make_split

    split = make_split(task, n0, 0, seed)
    recorded = next((r["split"] for r in first if r.get("split") and int(r["identity"]["seed"]) == seed), None)
    if recorded is not None and recorded.get("hash") != split.manifest()["hash"]:
        res.notes.append(f"{task_name}: the split recomputed from the current task card differs from the recorded one "
                         f"(card or data changed since the run); spectra are not shown.")
        return res
    sample = split.standard_samples[0]
    row = int(task.rows_of(np.array([sample]))[0])
    corrected: list[Corrected] = []
    by_label: dict[str, list[dict]] = {}
    for r in fixers:
        by_label.setdefault(method_label(r), []).append(r)
    for label in label_order(fixers):
        recs = [r for r in by_label[label] if int(r["identity"]["rep"]) == 0 and int(r["identity"]["n_shots"]) >= n0
                and int(r["identity"]["seed"]) == seed]
        if not recs:
            res.notes.append(f"{task_name}: {label} has no repetition-0 record with N ≥ {n0}; skipped.")
            continue
        rec = min(recs, key=lambda r: int(r["identity"]["n_shots"]))
        try:
            spec = _refit_and_correct(task, rec, task.X_target[[row]])
        except Exception as exc:  # noqa: BLE001 - a failing method becomes a note
            res.notes.append(f"{task_name}: refitting {label} failed ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0][:200]}).")
            continue
        corrected.append(Corrected(label=label, n_shots=int(rec["identity"]["n_shots"]), spectrum=spec))
    if not corrected:
        return res
    res.figure = _figure(task, row, sample, n0, corrected, out_dir, {c.label: base_name(by_label[c.label][0]) for c in corrected})
    return res


def _build_task(name: str, data_dir: str | None) -> Any:
    from ctbench.cards import load_card
    from ctbench.tasks import build_task

    return build_task(load_card(name), data_dir)


def _refit_and_correct(task: Any, rec: dict[str, Any], x_target: np.ndarray) -> np.ndarray:
    """Fit and transfer the record's method configuration, then ``transform_target`` the spectrum."""
    from ctbench.plugins import get_method
    from ctbench.runner import _readonly, source_for, standards_for, target_spectra
    from ctbench.splits import make_split

    ident = rec["identity"]
    info = get_method(ident["method"])
    cls = info.cls
    if str(cls.version) != str(ident["method_version"]):
        raise RuntimeError(f"installed version {cls.version} differs from the recorded {ident['method_version']}")
    params = copy.deepcopy(ident["params"])
    if "random_state" in cls._param_names() and rec.get("random_state") is not None:
        params["random_state"] = rec["random_state"]
    method = cls(**params)
    split = make_split(task, int(ident["n_shots"]), int(ident["rep"]), int(ident["seed"]))
    task = task.outer(split.outer)  # the record's outer split: its pool calibrates, its test set is unlabelled
    method = method.fit(source_for(task, cls))
    unlabelled = target_spectra(task, cls, task.test_rows) if cls.tags.transductive else None
    method = method.transfer(standards_for(task, split.standard_rows, cls), unlabelled)
    out = np.asarray(method.transform_target(_readonly(x_target)), dtype=float)
    if out.shape != x_target.shape:
        raise ValueError(f"transform_target returned shape {out.shape}, expected {x_target.shape}")
    return out[0]


def _figure(task: Any, row: int, sample: str, n0: int, corrected: list[Corrected], out_dir: Path,
            names: dict[str, str]) -> SavedFigure:
    x = task.axis
    src = task.X_source[row]
    tgt = task.X_target[row]
    styles = method_colors([c.label for c in corrected], names)
    fig = new_figure(10.5, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1.3])
    top.plot(x, src, color="black", linewidth=1.8, label=f"source ({task.card.source})")
    top.plot(x, tgt, color="#b2182b", linewidth=1.4, linestyle="--", label=f"target ({task.card.target}), uncorrected")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.plot(x, tgt - src, color="#b2182b", linewidth=1.2, linestyle="--", label="uncorrected")
    for c in corrected:
        st = styles[c.label]
        lab = f"{c.label} (N={c.n_shots})"
        top.plot(x, c.spectrum, color=st["color"], linewidth=1.1, label=f"target corrected by {lab}")
        bottom.plot(x, c.spectrum - src, color=st["color"], linewidth=1.0, label=lab)
    top.set_ylabel("signal")
    top.set_title(f"{task.name}: transfer standard {sample} (first standard of repetition 0, N = {n0})", fontsize=11)
    top.legend(fontsize=8, loc="best")
    bottom.set_ylabel("minus source")
    bottom.set_xlabel(f"{task.axis_unit}")
    bottom.grid(True, alpha=0.3)
    top.grid(True, alpha=0.3)
    caption = (f"{task.name}: standard {sample} measured on the source ({task.card.source}) and target "
               f"({task.card.target}) instruments, and the target spectrum after each spectrum-correcting method's "
               f"transform_target (refitted with the record's parameters on repetition 0). Lower panel: difference to "
               f"the source spectrum; a perfect correction is the zero line. This sample is one of the standards the "
               f"methods were given, so the fit here is in-sample.")
    return save_figure(fig, out_dir, f"standard_spectra_{task.name}", caption)
