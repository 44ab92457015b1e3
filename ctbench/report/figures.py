"""Saving matplotlib figures for the report: a PNG under ``figures/`` plus its base64 text.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``) and rendered
by the Agg canvas, so no pyplot global state and no display are involved.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Methods drawn as references get fixed styles; others take the colour cycle in order.
REFERENCE_STYLE = {
    "no_transfer": {"color": "#b2182b", "linestyle": "--"},
    "full_recalibration": {"color": "#2166ac", "linestyle": "--"},
    "target_only": {"color": "#7f7f7f", "linestyle": ":"},
}
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#17becf",  # Dark2 + distinct extras
           "#000000", "#bcbd22", "#6a3d9a", "#fb9a99"]


@dataclass
class SavedFigure:
    """A figure written to ``figures/<name>.png``: its path relative to the report folder."""

    name: str
    relpath: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out_dir: Path, name: str, caption: str) -> SavedFigure:
    """Write ``fig`` as ``<out_dir>/figures/<slug>.png`` and return it with its bytes."""
    slug = slugify(name)
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug}.png"
    fig.savefig(path, format="png", dpi=110)
    png = path.read_bytes()
    return SavedFigure(name=slug, relpath=f"figures/{slug}.png", caption=caption, png=png)


def slugify(text: str) -> str:
    """A file-name-safe stem; a very long one (a long task name in a record) is cut and given a
    hash, so the file name always fits."""
    from ctbench.names import fit_name

    return fit_name(re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "figure", text, 150)


def method_colors(labels: list[str], base_name: dict[str, str]) -> dict[str, dict[str, str]]:
    """Line style per method label: references fixed, the rest from the palette, stable by order."""
    styles: dict[str, dict[str, str]] = {}
    i = 0
    for label in labels:
        ref = REFERENCE_STYLE.get(base_name.get(label, label))
        if ref is not None and label == base_name.get(label, label):
            styles[label] = dict(ref)
        else:
            styles[label] = {"color": PALETTE[i % len(PALETTE)], "linestyle": "-"}
            i += 1
    return styles
