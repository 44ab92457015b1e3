"""Rendering the report: one self-contained HTML page and a Markdown summary."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from ctbench.report.efficiency import METRIC_NAMES
from ctbench.report.figures import SavedFigure

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:16px 28px 60px;background:#fff}
h1{margin:8px 0 4px;font-size:26px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin-top:26px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 12px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ref td{color:#666;font-style:italic} tr.best td{font-weight:bold;background:#eef7ee}
tr.nsep td{border-top:2px solid #999}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0;font-size:14px}
.skip{background:#f2f2f2;border-left:4px solid #999;padding:6px 10px;margin:6px 0;font-size:14px}
figure{margin:10px 0 22px} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#444;max-width:980px} nav a{margin-right:14px}
details{margin:6px 0} code{background:#f3f3f3;padding:0 3px}
"""

LEGEND = (
    "rel. RMSEP = RMSEP / RMSEP(full_recalibration) on the same outer test split (1 = as good as full "
    "recalibration; lower is better), geometric mean over properties (the task row) and over repetitions, with its "
    "95 % bootstrap interval over test samples. Group: 1 = the best method of the (task, N) cell and every method "
    "not significantly worse than it (paired bootstrap test, Holm-corrected, α = 0.05), 2 = the best of the rest "
    "and those tied with it, ...; “=” marks a group shared by several methods. RMSEP: mean ± sd over repetitions "
    "(raw, in the property's units; the task row averages the properties' RMSEPs). Reference rows (marked *, in "
    "grey) are not ranked."
)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _finite(v: Any) -> bool:
    try:
        return v is not None and bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _num(v: Any, digits: int = 4) -> str:
    return f"{float(v):.{digits}g}" if _finite(v) else "-"


def _rel(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def fmt_interval(mean: Any, lo: Any, hi: Any) -> str:
    """``1.23 [1.10, 1.38]``; the value alone without an interval; ``-`` without a value."""
    if not _finite(mean):
        return "-"
    if not (_finite(lo) and _finite(hi)):
        return _rel(float(mean))
    return f"{_rel(float(mean))} [{_rel(float(lo))}, {_rel(float(hi))}]"


def fmt_mean_sd(mean: Any, sd: Any) -> str:
    if not _finite(mean):
        return "-"
    mean = float(mean)
    sd = float(sd) if _finite(sd) else 0.0
    if abs(sd) <= 1e-9 * max(abs(mean), 1e-12):
        sd = 0.0
    return f"{mean:.4g} ± {sd:.2g}"


def fmt_gap(v: Any) -> str:
    return "-" if not _finite(v) else f"{round(float(v), 3) + 0.0:.3f}"  # no "-0.000"


def group_labels(rows: list[dict]) -> list[str]:
    """Tie-group label per row: "1" alone, "1=" when the group has several methods in its
    (task, N, property) cell, "ref" for reference rows, "-" without a group (failed, no interval)."""
    sizes: dict[tuple, int] = {}
    for r in rows:
        if r.get("group") is not None and not r.get("reference"):
            k = (r["task"], r["n_shots"], r.get("property", "mean"), r["group"])
            sizes[k] = sizes.get(k, 0) + 1
    out = []
    for r in rows:
        if r.get("reference"):
            out.append("ref")
        elif r.get("group") is None:
            out.append("-")
        else:
            k = (r["task"], r["n_shots"], r.get("property", "mean"), r["group"])
            out.append(f"{r['group']}" + ("=" if sizes[k] > 1 else ""))
    return out


def _extra_metric(metric: str) -> bool:
    """Whether the tables need a column of their own for the report's metric."""
    return metric not in ("rel_rmsep", "rmsep", "r2", "gap_closed")


def table_columns(metric: str, with_property: bool) -> list[str]:
    head = ["N"] + (["property"] if with_property else []) + ["group", "method", "rel. RMSEP [95 % CI]"]
    if _extra_metric(metric):
        head.append(f"{METRIC_NAMES.get(metric, metric)} mean ± sd")
    head += ["RMSEP mean ± sd", "R²"] + (["gap closed"] if with_property else []) + ["reps"]
    return head


def table_cells(r: dict, group: str, metric: str, with_property: bool) -> list[str]:
    """The text cells of one leaderboard row (same order as :func:`table_columns`)."""
    cells = [str(r["n_shots"])] + ([str(r.get("property", "mean"))] if with_property else [])
    cells += [group, r["method"] + (" *" if r.get("reference") else ""),
              fmt_interval(r.get("rel_mean"), r.get("rel_lo"), r.get("rel_hi"))]
    if _extra_metric(metric):
        cells.append(fmt_mean_sd(r.get("mean"), r.get("sd")))
    cells += [fmt_mean_sd(r.get("rmsep_mean"), r.get("rmsep_sd")), _num(r.get("r2_mean"), 3)]
    if with_property:
        cells.append(fmt_gap(r.get("gap_closed")))
    cells.append(f"{r.get('reps', 0)}" + (f" ({r['failed']} failed)" if r.get("failed") else ""))
    return cells


def _figure_html(fig: SavedFigure, alt: str) -> str:
    return (f'<figure id="fig-{_e(fig.name)}"><img alt="{_e(alt)}" src="{fig.data_uri()}">'
            f'<figcaption>{_e(fig.caption)} <a href="{_e(fig.relpath)}">PNG</a></figcaption></figure>')


def _notes_html(notes: list[str], cls: str = "note") -> str:
    return "".join(f'<div class="{cls}">{_e(n)}</div>' for n in notes)


def _leaderboard_html(rows: list[dict], metric: str, with_property: bool = False) -> str:
    head = table_columns(metric, with_property)
    numeric = {"N", "rel. RMSEP [95 % CI]", "RMSEP mean ± sd", "R²", "gap closed", "reps"} | {
        h for h in head if h.endswith("mean ± sd")}
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    prev = None
    for r, g in zip(rows, group_labels(rows)):
        cell = (r["n_shots"], r.get("property", "mean"))
        classes: list[str] = []
        if r.get("reference"):
            classes.append("ref")
        elif r.get("group") == 1:
            classes.append("best")
        if prev is not None and cell != prev:
            classes.append("nsep")
        prev = cell
        tds = [f'<td class="num">{_e(c)}</td>' if h in numeric else f"<td>{_e(c)}</td>"
               for h, c in zip(head, table_cells(r, g, metric, with_property))]
        out.append(f'<tr class="{" ".join(classes)}">' + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _leaderboard_md(rows: list[dict], metric: str, with_property: bool = False) -> str:
    head = table_columns(metric, with_property)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r, g in zip(rows, group_labels(rows)):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(r, g, metric, with_property)) + " |")
    return "\n".join(lines)


# -- significance -------------------------------------------------------------------------------

def _blocks_word(kind: str) -> str:
    return "tasks" if kind == "tasks" else "datasets"


def significance_title(report: Any) -> str:
    return f"Significance across {_blocks_word(report.blocks)} at each N (Friedman, Nemenyi)"


def _friedman_text(res: Any) -> list[str]:
    """Plain sentences about one fixed-N analysis (shared by HTML and Markdown)."""
    name = METRIC_NAMES.get(res.metric, res.metric)
    word = res.block_word
    lines: list[str] = []
    if not res.ran:
        lines.append(f"Friedman test not run at N = {res.n_shots}: {res.reason}.")
    else:
        k, b = len(res.methods), len(res.blocks)
        verdict = (f"significant at α = {res.alpha}: the methods' ranks differ" if res.significant
                   else f"not significant at α = {res.alpha}: no evidence that the methods' ranks differ, so the "
                        f"post-hoc groups below are shown for information only")
        lines += [
            f"Friedman test on {name} at N = {res.n_shots} over B = {b} {word} blocks and k = {k} non-reference "
            f"methods with a value in every block: χ²({k - 1}) = {res.statistic:.3f}, p = {_p(res.p_value)}; "
            f"{verdict}.",
            f"Nemenyi post-hoc: q_α = {res.q_alpha:.3f} (studentized range, α = {res.alpha}, k = {k}, df = ∞, divided "
            f"by √2), critical difference CD = q_α·√(k(k+1)/(6B)) = {res.cd:.3f}. Two methods whose average ranks "
            f"differ by at least CD are significantly different.",
        ]
        if b < 10 or k < 5:
            lines.append(f"With {b} blocks and {k} methods the χ² approximation of the Friedman statistic is rough "
                         f"(Demšar 2006 suggests B > 10 and k > 5); read the p-value with care.")
    if res.block_kind == "datasets":
        agg = ("the geometric mean of its relative RMSEP" if res.metric == "rel_rmsep"
               else f"the mean of its {'|bias|' if res.metric == 'bias' else name}")
        lines.append(f"A method's value in a dataset block is {agg} over the dataset's tasks at N = {res.n_shots}; "
                     f"every method of a block is averaged over the same tasks.")
    if res.dependence and (res.ran or res.blocks):
        lines.append(res.dependence)
    if res.excluded:
        lines.append("Not ranked (no value in some block): " + "; ".join(str(e) for e in res.excluded) + ".")
    if res.dropped_blocks:
        lines.append("Blocks left out: " + "; ".join(str(d) for d in res.dropped_blocks) + ".")
    if res.references:
        lines.append(f"Reference methods, never ranked: {', '.join(res.references)}.")
    lines += list(res.notes)
    return lines


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


RANK_HEAD = ["method", "average rank", "worse than the best by Nemenyi (≥ CD)",
             "Wilcoxon vs best: blocks won", "Wilcoxon p (Holm)"]


def _ranks_rows(res: Any) -> list[list[str]]:
    best = res.methods[0]
    pw = {p.method: p for p in res.pairwise}
    out = []
    for m in res.methods:
        a = res.avg_ranks[m]
        worse = "yes" if m != best and a - res.avg_ranks[best] >= res.cd else "no"
        if m == best:
            won, p = "(best)", "-"
        else:
            t = pw.get(m)
            won = f"{t.wins} of {len(res.blocks)}" if t else "-"
            p = (f"{_p(t.p_holm)}" + (" *" if t.significant else "")) if t else "-"
        out.append([m, f"{a:.2f}", "-" if m == best else worse, won, p])
    return out


WILCOXON_NOTE = ("Wilcoxon signed-rank test of each method against the best (lowest average rank) over the blocks"
                 " (on log values for relative RMSEP), Holm-adjusted over the comparisons; * = significant at α.")


def _blocks_detail(res: Any) -> str:
    if res.block_kind == "tasks":
        return ", ".join(res.blocks)
    return "; ".join(f"{b}: {', '.join(res.members.get(b, []))}" for b in res.blocks)


def _spectra_notes(report: Any) -> list[str]:
    return [n for s in report.spectra for n in s.notes]


def _significance_html(r: Any) -> list[str]:
    parts = [f"<h2 id='significance'>{_e(significance_title(r))}</h2>"]
    parts.append(f"<p>One analysis per number of transfer standards N (methods are never ranked across different "
                 f"N), over {_e(_blocks_word(r.blocks))} as blocks; reference methods are not ranked. A method "
                 f"without a value in some block is left out (listed); if fewer than 3 methods would remain, the "
                 f"blocks missing the most methods are left out instead (listed).</p>")
    if r.significance_note:
        parts.append(_notes_html([r.significance_note], "skip"))
    for res in r.significance:
        parts.append(f"<h3 id='significance-N{res.n_shots}'>N = {res.n_shots}</h3>")
        lines = _friedman_text(res)
        if not res.ran:
            parts.append(_notes_html(lines, "skip"))
            continue
        parts.append("".join(f"<p>{_e(line)}</p>" for line in lines))
        parts.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in RANK_HEAD) + "</tr></thead><tbody>")
        for row in _ranks_rows(res):
            parts.append("<tr>" + "".join(f"<td>{_e(c)}</td>" if j == 0 else f"<td class='num'>{_e(c)}</td>"
                                          for j, c in enumerate(row)) + "</tr>")
        parts.append(f"</tbody></table><p class='meta'>{_e(WILCOXON_NOTE)}</p>")
        cliques = res.cliques()
        if cliques:
            parts.append("<p>Groups not significantly different (Nemenyi): "
                         + "; ".join("{" + ", ".join(_e(m) for m in c) + "}" for c in cliques) + ".</p>")
        else:
            parts.append("<p>Every pair of methods is significantly different (Nemenyi).</p>")
        fig = r.cd_figures.get(res.n_shots)
        if fig is not None:
            parts.append(_figure_html(fig, f"critical difference diagram, N = {res.n_shots}"))
        parts.append(f"<details><summary>blocks ({len(res.blocks)})</summary><p>{_e(_blocks_detail(res))}</p>"
                     "</details>")
    return parts


PAGE_HEIGHT_SCRIPT = (
    "<script>addEventListener('load',function(){var e=document.documentElement;"
    "e.setAttribute('data-page-height',Math.ceil(Math.max(e.scrollHeight,document.body.scrollHeight)))})</script>"
)
"""Writes the page's full height in pixels (at the window's width) into ``<html data-page-height>``
once loaded, so that a headless browser's ``--dump-dom`` tells how tall a screenshot of the
whole page must be (``ctbench report --screenshot``; docs/report.md). It changes nothing else."""


def render_html(report: Any) -> str:
    r = report
    name = METRIC_NAMES.get(r.metric, r.metric)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>ctbench report: {_e(', '.join(t.name for t in r.tasks))}</title><style>{CSS}</style>{PAGE_HEIGHT_SCRIPT}"
        "</head><body><main>",
        "<h1>ctbench report</h1>",
        f"<p class='meta'>Store <code>{_e(r.results_dir)}</code> · generated {_e(r.generated)} · metric {_e(name)} · "
        f"{r.n_records} records ({r.n_ok} ok, {r.n_failed} failed) · {len(r.tasks)} task(s) · "
        f"{len(r.methods)} method configuration(s): {_e(', '.join(r.methods))}</p>",
        "<nav><a href='#leaderboards'>Leaderboards</a><a href='#efficiency'>Sample efficiency</a>"
        "<a href='#significance'>Significance</a><a href='#gap'>Gap closed (per property)</a>"
        "<a href='#spectra'>Spectra</a><a href='#failures'>Failures</a></nav>",
    ]
    if r.notes:
        parts.append("<h2 id='notes'>Notes</h2>" + _notes_html(r.notes))
    parts.append("<h2 id='leaderboards'>Leaderboards</h2>")
    parts.append(f"<p>Per task and N. {_e(LEGEND)} Tie group 1 is in bold.</p>")
    if r.metric not in ("rel_rmsep", "rmsep", "r2", "gap_closed"):
        parts.append(f"<p>The {_e(name)} column is the mean ± sd over repetitions (the task row: mean over "
                     f"properties).</p>")
    for t in r.tasks:
        s = t.summary
        parts.append(f"<h3 id='lb-{_e(t.name)}'>{_e(t.name)}</h3>")
        parts.append(f"<p class='meta'>{_e(s.get('dataset', ''))}: {_e(s.get('source', '?'))} → "
                     f"{_e(s.get('target', '?'))} · properties {_e(', '.join(s.get('properties') or []))} · "
                     f"{_e(s.get('axis', ''))} · pool {_e(s.get('pool_samples', '?'))} samples, test "
                     f"{_e(s.get('test_samples', '?'))} samples · version {_e(s.get('version', '?'))}"
                     f"{' · SYNTHETIC' if s.get('synthetic') else ''}</p>")
        parts.append(_notes_html(t.notes))
        if t.rows:
            parts.append(_leaderboard_html(t.rows, r.metric))
        if t.property_rows:
            parts.append("<details><summary>per property (with gap closed)</summary>"
                         + _leaderboard_html(t.property_rows, r.metric, with_property=True) + "</details>")
    parts.append("<h2 id='efficiency'>Sample efficiency</h2>")
    any_curve = False
    for t in r.tasks:
        if t.curves is not None:
            any_curve = True
            parts.append(f"<h3>{_e(t.name)}</h3>" + _figure_html(t.curves, f"{t.name} sample-efficiency curves"))
    if not any_curve:
        parts.append(_notes_html(["no successful record to draw curves from."], "skip"))
    parts += _significance_html(r)
    parts.append("<h2 id='gap'>Gap closed per property (secondary)</h2>")
    parts.append("<p>A per-property view; the headline is the relative RMSEP above. Gap closed is unstable where "
                 "no_transfer and full_recalibration are close, so it is never averaged over properties.</p>")
    if r.heatmap is not None:
        parts.append(_figure_html(r.heatmap, "gap closed per property heatmap"))
    if r.heatmap_note:
        parts.append(_notes_html([r.heatmap_note], "skip" if r.heatmap is None else "note"))
    parts.append("<h2 id='spectra'>A transfer standard before and after correction</h2>")
    shown = [s for s in r.spectra if s.figure is not None]
    for s in shown:
        parts.append(f"<h3>{_e(s.task)}</h3>" + _figure_html(s.figure, f"{s.task} standard spectra"))
    notes = _spectra_notes(r)
    if notes:
        parts.append(_notes_html(notes, "skip"))
    if not r.spectra:
        parts.append(_notes_html(["spectra were not requested (--no-spectra)."], "skip"))
    parts.append("<h2 id='failures'>Failures</h2>")
    if r.failures:
        parts.append("<table><thead><tr><th>task</th><th>method</th><th>N</th><th>failed records</th>"
                     "<th>first error</th></tr></thead><tbody>")
        parts += [f"<tr><td>{_e(f.task)}</td><td>{_e(f.method)}</td><td class='num'>{f.n_shots}</td>"
                  f"<td class='num'>{f.count}</td><td>{_e(f.error)}</td></tr>" for f in r.failures]
        parts.append("</tbody></table><p class='meta'>Failed runs are retried by the next <code>ctbench run</code>; "
                     "their tracebacks are in the records.</p>")
    else:
        parts.append("<p>No failed records.</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def render_markdown(report: Any) -> str:
    r = report
    name = METRIC_NAMES.get(r.metric, r.metric)
    out = [
        "# ctbench report",
        "",
        f"Store `{r.results_dir}`, generated {r.generated}, metric {name}: {r.n_records} records "
        f"({r.n_ok} ok, {r.n_failed} failed), {len(r.tasks)} task(s), {len(r.methods)} method configuration(s). "
        f"The full page with figures is `index.html`.",
        "",
    ]
    if r.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in r.notes] + [""]
    out += ["## Leaderboards", "", LEGEND, ""]
    for t in r.tasks:
        out += [f"### {t.name}", ""]
        out += [f"> {n}" for n in t.notes] + ([""] if t.notes else [])
        if t.rows:
            out += [_leaderboard_md(t.rows, r.metric), ""]
        if t.curves is not None:
            out += [f"![{t.name} sample efficiency]({t.curves.relpath})", "", f"*{t.curves.caption}*", ""]
    out += [f"## {significance_title(r)}", ""]
    if r.significance_note:
        out += [f"> {r.significance_note}", ""]
    for res in r.significance:
        out += [f"### N = {res.n_shots}", ""]
        out += [line + "\n" for line in _friedman_text(res)]
        if not res.ran:
            continue
        out += ["| " + " | ".join(RANK_HEAD) + " |", "|" + "|".join("---" for _ in RANK_HEAD) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in _ranks_rows(res)]
        out += ["", WILCOXON_NOTE, ""]
        cliques = res.cliques()
        if cliques:
            out += ["Groups not significantly different (Nemenyi): "
                    + "; ".join("{" + ", ".join(c) + "}" for c in cliques) + ".", ""]
        fig = r.cd_figures.get(res.n_shots)
        if fig is not None:
            out += [f"![critical difference diagram, N = {res.n_shots}]({fig.relpath})", "", f"*{fig.caption}*", ""]
        out += [f"Blocks ({len(res.blocks)}): {_blocks_detail(res)}.", ""]
    out += ["## Gap closed per property (secondary)", ""]
    if r.heatmap is not None:
        out += [f"![gap closed per property heatmap]({r.heatmap.relpath})", "", f"*{r.heatmap.caption}*", ""]
    if r.heatmap_note:
        out += [f"> {r.heatmap_note}", ""]
    out += ["## A transfer standard before and after correction", ""]
    for s in r.spectra:
        if s.figure is not None:
            out += [f"![{s.task} standard spectra]({s.figure.relpath})", "", f"*{s.figure.caption}*", ""]
    out += [f"> {n}" for n in _spectra_notes(r)] + [""]
    out += ["## Failures", ""]
    if r.failures:
        out += ["| task | method | N | failed records | first error |", "|---|---|---|---|---|"]
        out += [f"| {f.task} | {f.method} | {f.n_shots} | {f.count} | {f.error.replace('|', '/')} |" for f in r.failures]
    else:
        out.append("No failed records.")
    out.append("")
    return "\n".join(out)
