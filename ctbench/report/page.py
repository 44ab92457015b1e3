"""Rendering the report: one self-contained HTML page and a Markdown summary."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from ctbench.leaderboard import _fmt, _gap, _mean_sd, format_rows
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


def _e(text: Any) -> str:
    return html.escape(str(text))


def _figure_html(fig: SavedFigure, alt: str) -> str:
    return (f'<figure id="fig-{_e(fig.name)}"><img alt="{_e(alt)}" src="{fig.data_uri()}">'
            f'<figcaption>{_e(fig.caption)} <a href="{_e(fig.relpath)}">PNG</a></figcaption></figure>')


def _notes_html(notes: list[str], cls: str = "note") -> str:
    return "".join(f'<div class="{cls}">{_e(n)}</div>' for n in notes)


def _leaderboard_html(rows: list[dict], metric: str, with_property: bool = False) -> str:
    name = METRIC_NAMES.get(metric, metric)
    head = ["N"] + (["property"] if with_property else []) + ["rank", "method", f"{name} mean ± sd", "R²",
                                                             "gap closed", "reps"]
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    best: dict[tuple, int] = {}  # (N, property) -> rank of the best non-reference row
    for r in rows:
        if not r["reference"] and r.get("rank"):
            key = (r["n_shots"], r["property"])
            best[key] = min(best.get(key, r["rank"]), r["rank"])
    prev = None
    for r in rows:
        cell = (r["n_shots"], r["property"])
        classes: list[str] = []
        if r["reference"]:
            classes.append("ref")
        elif r.get("rank") and r["rank"] == best.get(cell):
            classes.append("best")
        if prev is not None and cell != prev:
            classes.append("nsep")
        prev = cell
        reps = f"{r['reps']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        cells = [f'<td class="num">{r["n_shots"]}</td>']
        if with_property:
            cells.append(f"<td>{_e(r['property'])}</td>")
        cells += [
            f'<td class="num">{r.get("rank") or "-"}</td>',
            f"<td>{_e(r['method'])}{' *' if r['reference'] else ''}</td>",
            f'<td class="num">{_e(_mean_sd(r["mean"], r["sd"]))}</td>',
            f'<td class="num">{_e(_fmt(r["r2_mean"], 3))}</td>',
            f'<td class="num">{_e(_gap(r["gap_closed"]))}</td>',
            f'<td class="num">{_e(reps)}</td>',
        ]
        out.append(f'<tr class="{" ".join(classes)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _friedman_text(report: Any) -> list[str]:
    """Plain sentences about the significance test (shared by HTML and Markdown)."""
    res = report.friedman
    name = METRIC_NAMES.get(res.metric, res.metric)
    if not res.ran:
        lines = [f"Friedman test not run: {res.reason}."]
        if res.excluded:
            lines.append(f"Methods missing from some block (left out): {', '.join(res.excluded)}.")
        return lines
    k, b = len(res.methods), len(res.blocks)
    verdict = (f"significant at α = {res.alpha}: the methods' ranks differ" if res.significant
               else f"not significant at α = {res.alpha}: no evidence that the methods' ranks differ, so the "
                    f"post-hoc groups below are shown for information only")
    lines = [
        f"Friedman test on {name} (mean over properties and repetitions) over B = {b} (task, N) blocks and "
        f"k = {k} methods present in every block: χ²({k - 1}) = {res.statistic:.3f}, p = {_p(res.p_value)}; {verdict}.",
        f"Nemenyi post-hoc: q_α = {res.q_alpha:.3f} (studentized range, α = {res.alpha}, k = {k}, df = ∞, divided "
        f"by √2), critical difference CD = q_α·√(k(k+1)/(6B)) = {res.cd:.3f}. Two methods whose average ranks "
        f"differ by at least CD are significantly different.",
    ]
    if b < 10 or k < 5:
        lines.append(f"With {b} blocks and {k} methods the χ² approximation of the Friedman statistic is rough "
                     f"(Demšar 2006 suggests B > 10 and k > 5); read the p-value with care.")
    tasks = {t for t, _ in res.blocks}
    if len(res.blocks) > len(tasks):
        lines.append("Blocks of the same task at different N share the test set (and nested standards), so they are "
                     "not independent; the test treats them as if they were.")
    if res.excluded:
        lines.append(f"Left out because they lack a value in some block: {', '.join(res.excluded)}.")
    return lines


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _ranks_rows(res: Any) -> list[tuple[str, str, str]]:
    best = res.avg_ranks[res.methods[0]]
    return [(m, f"{res.avg_ranks[m]:.2f}",
             "yes" if res.avg_ranks[m] - best >= res.cd and m != res.methods[0] else "no") for m in res.methods]


def _spectra_notes(report: Any) -> list[str]:
    return [n for s in report.spectra for n in s.notes]


def render_html(report: Any) -> str:
    r = report
    name = METRIC_NAMES.get(r.metric, r.metric)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>ctbench report: {_e(', '.join(t.name for t in r.tasks))}</title><style>{CSS}</style></head><body><main>",
        "<h1>ctbench report</h1>",
        f"<p class='meta'>Store <code>{_e(r.results_dir)}</code> · generated {_e(r.generated)} · metric {_e(name)} · "
        f"{r.n_records} records ({r.n_ok} ok, {r.n_failed} failed) · {len(r.tasks)} task(s) · "
        f"{len(r.methods)} method configuration(s): {_e(', '.join(r.methods))}</p>",
        "<nav><a href='#leaderboards'>Leaderboards</a><a href='#efficiency'>Sample efficiency</a>"
        "<a href='#gap'>Gap closed</a><a href='#significance'>Significance</a><a href='#spectra'>Spectra</a>"
        "<a href='#failures'>Failures</a></nav>",
    ]
    if r.notes:
        parts.append("<h2 id='notes'>Notes</h2>" + _notes_html(r.notes))
    parts.append("<h2 id='leaderboards'>Leaderboards</h2>")
    parts.append(f"<p>Per task and N: {_e(name)} averaged over properties per record, then mean ± sd over repetitions; "
                 "rank within (task, N). <code>*</code> marks reference rows (in grey); the best non-reference method of each N is in bold. Gap closed = "
                 "(RMSEP<sub>no_transfer</sub> − RMSEP) / (RMSEP<sub>no_transfer</sub> − "
                 "RMSEP<sub>full_recalibration</sub>).</p>")
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
            parts.append("<details><summary>per property</summary>"
                         + _leaderboard_html(t.property_rows, r.metric, with_property=True) + "</details>")
    parts.append("<h2 id='efficiency'>Sample efficiency</h2>")
    any_curve = False
    for t in r.tasks:
        if t.curves is not None:
            any_curve = True
            parts.append(f"<h3>{_e(t.name)}</h3>" + _figure_html(t.curves, f"{t.name} sample-efficiency curves"))
    if not any_curve:
        parts.append(_notes_html(["no successful record to draw curves from."], "skip"))
    parts.append("<h2 id='gap'>Gap closed</h2>")
    if r.heatmap is not None:
        parts.append(_figure_html(r.heatmap, "gap closed heatmap"))
    if r.heatmap_note:
        parts.append(_notes_html([r.heatmap_note], "skip" if r.heatmap is None else "note"))
    parts.append("<h2 id='significance'>Significance across tasks (Friedman, Nemenyi)</h2>")
    res = r.friedman
    lines = _friedman_text(r)
    if res.ran:
        parts.append("".join(f"<p>{_e(line)}</p>" for line in lines))
        parts.append("<table><thead><tr><th>method</th><th>average rank</th>"
                     "<th>significantly worse than the best</th></tr></thead><tbody>")
        parts += [f"<tr><td>{_e(m)}</td><td class='num'>{a}</td><td>{s}</td></tr>" for m, a, s in _ranks_rows(res)]
        parts.append("</tbody></table>")
        cliques = res.cliques()
        if cliques:
            parts.append("<p>Groups not significantly different (Nemenyi): "
                         + "; ".join("{" + ", ".join(_e(m) for m in c) + "}" for c in cliques) + ".</p>")
        else:
            parts.append("<p>Every pair of methods is significantly different (Nemenyi).</p>")
        if r.cd_figure is not None:
            parts.append(_figure_html(r.cd_figure, "critical difference diagram"))
        parts.append("<details><summary>blocks</summary><p>" + _e(", ".join(f"{t} N={n}" for t, n in res.blocks))
                     + "</p></details>")
    else:
        parts.append(_notes_html(lines, "skip"))
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
    out += ["## Leaderboards", ""]
    for t in r.tasks:
        out += [f"### {t.name}", ""]
        out += [f"> {n}" for n in t.notes] + ([""] if t.notes else [])
        if t.rows:
            out += [format_rows(t.rows, "md"), ""]
        if t.curves is not None:
            out += [f"![{t.name} sample efficiency]({t.curves.relpath})", "", f"*{t.curves.caption}*", ""]
    out += ["## Gap closed", ""]
    if r.heatmap is not None:
        out += [f"![gap closed heatmap]({r.heatmap.relpath})", "", f"*{r.heatmap.caption}*", ""]
    if r.heatmap_note:
        out += [f"> {r.heatmap_note}", ""]
    out += ["## Significance across tasks (Friedman, Nemenyi)", ""]
    out += [line + "\n" for line in _friedman_text(r)]
    res = r.friedman
    if res.ran:
        out += ["| method | average rank | significantly worse than the best |", "|---|---|---|"]
        out += [f"| {m} | {a} | {s} |" for m, a, s in _ranks_rows(res)]
        out.append("")
        cliques = res.cliques()
        if cliques:
            out += ["Groups not significantly different (Nemenyi): "
                    + "; ".join("{" + ", ".join(c) + "}" for c in cliques) + ".", ""]
        if r.cd_figure is not None:
            out += [f"![critical difference diagram]({r.cd_figure.relpath})", ""]
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
