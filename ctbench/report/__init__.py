"""`ctbench report`: an HTML page and a Markdown summary made from the local result store.

``build_report(results_dir, out_dir)`` writes ``index.html`` (self-contained: figures are
embedded as base64 PNG), ``summary.md`` and the PNGs under ``figures/``: leaderboards (relative
RMSEP with its 95 % interval and tie group, raw RMSEP, R2), sample-efficiency curves, one
Friedman / Nemenyi significance test per N with a critical-difference diagram, a per-property
gap-closed heatmap, and one transfer standard before/after spectral correction.
"""

from ctbench.report.build import Report, build_report
from ctbench.report.collect import ReportError

__all__ = ["Report", "ReportError", "build_report"]
