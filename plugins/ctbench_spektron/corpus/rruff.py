"""RRUFF Raman mineral spectra (excellent_unoriented.zip), read straight from the zip.

Each file: ``##KEY=value`` header lines (latin-1), then ``wavenumber, intensity`` rows. The
laser wavelength is in the file name (``Name__R050549__Raman__780__0__unoriented__...``); the
same specimen (RRUFF id) measured with several lasers gives natural cross-instrument pairs.
The parsed corpus is cached as an npz keyed by the zip's sha256 and the grid size.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DOMAINS
from ..grid import resample_to_grid
from .resolve import cache_dir, resolve_file
from .table import SpectralTable

RELPATH = "rruff/excellent_unoriented.zip"
SHA256 = "aa7817197826d3df9ef2cf59660ffc754c9cc3f51ca80d10f339e7a4bf133baa"
URL = "https://rruff.info/zipped_data_files/raman/excellent_unoriented.zip"  # RRUFF project, canonical
PARSER_VERSION = 1
MIN_POINTS = 50
_SPLIT = re.compile(r"[,\s]+")


def parse_rruff_text(text: str) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """(header, axis, intensity) of one RRUFF data file's text."""
    header: dict[str, str] = {}
    numbers: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("##"):
            key, _, value = s[2:].partition("=")
            header[key.strip().upper()] = value.strip()
            continue
        numbers.append(s)
    if not numbers:
        return header, np.empty(0), np.empty(0)
    flat = np.array(_SPLIT.split(" ".join(numbers).strip()), dtype=float)
    if flat.size % 2:
        flat = flat[: flat.size - 1]
    pairs = flat.reshape(-1, 2)
    return header, pairs[:, 0], pairs[:, 1]


def parse_file_name(name: str) -> dict[str, str]:
    """Mineral, RRUFF id and laser (nm) from a file name like ``Svanbergite__R050549__Raman__780__...``."""
    parts = Path(name).name.split("__")
    laser = next((p for p in parts[2:5] if p.isdigit()), "unknown")
    return {"mineral": parts[0], "rruff_id": parts[1] if len(parts) > 1 else "", "laser": laser}


def load_rruff(data_dir: str | Path | None = None, grid_points: int = 2048, use_cache: bool = True,
               limit: int | None = None) -> SpectralTable:
    """The RRUFF corpus on the grid (cached). ``limit`` keeps the first N files (tests)."""
    tag = f"rruff-{SHA256[:12]}-g{grid_points}-v{PARSER_VERSION}" + (f"-n{limit}" if limit else "")
    cache = cache_dir() / f"{tag}.npz"
    meta_path = cache.with_suffix(".json")
    if use_cache and cache.is_file() and meta_path.is_file():
        manifest = [json.loads(meta_path.read_text())]
        return SpectralTable.load_npz(cache, manifest)
    zpath = resolve_file(RELPATH, SHA256, data_dir, url=URL)
    rows, los, his, lasers, ids, minerals = [], [], [], [], [], []
    skipped = 0
    with zipfile.ZipFile(zpath) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".txt"))
        if limit:
            names = names[:limit]
        for name in names:
            header, axis, inten = parse_rruff_text(z.read(name).decode("latin-1"))
            ok = np.isfinite(axis) & np.isfinite(inten)
            axis, inten = axis[ok], inten[ok]
            if axis.size < MIN_POINTS or np.ptp(inten) <= 0:
                skipped += 1
                continue
            values, lo, hi = resample_to_grid(inten[None], axis, grid_points)
            info = parse_file_name(name)
            rows.append(values[0])
            los.append(lo)
            his.append(hi)
            lasers.append(info["laser"])
            ids.append(header.get("RRUFFID") or info["rruff_id"])
            minerals.append(header.get("NAMES") or info["mineral"])
    n = len(rows)
    instruments = sorted({f"rruff_{las}nm" for las in lasers})
    inst_index = {name: i for i, name in enumerate(instruments)}
    id_index = {rid: i for i, rid in enumerate(sorted(set(ids)))}
    table = SpectralTable(
        values=np.stack(rows).astype(np.float32),
        lo=np.array(los), hi=np.array(his), unit=np.full(n, "cm-1", dtype="U5"),
        domain=np.full(n, DOMAINS.index("Raman"), dtype=np.int64),
        instrument=np.array([inst_index[f"rruff_{las}nm"] for las in lasers], dtype=np.int64),
        instruments=instruments,
        group=np.array([id_index[r] for r in ids], dtype=np.int64),
        nonneg=np.zeros(n, dtype=bool),  # processed RRUFF data are baseline-corrected: may dip below 0
        source=np.zeros(n, dtype=np.int64), sources=["rruff"],
    )
    pairs = table.partners()
    counts = {name: int((table.instrument == i).sum()) for i, name in enumerate(instruments)}
    manifest: dict[str, Any] = {
        "name": "rruff", "file": RELPATH, "sha256": SHA256, "parser_version": PARSER_VERSION, "domain": "Raman",
        "n_spectra": n, "n_skipped": skipped, "n_specimens": len(id_index), "n_minerals": len(set(minerals)),
        "instruments": counts, "n_spectra_with_cross_laser_partner": len(pairs), "synthetic": False,
        "content_sha256": table.content_hash(), "grid_points": grid_points,
    }
    table.manifest = [manifest]
    if use_cache:
        tmp = cache.with_suffix(".tmp.npz")
        table.save_npz(tmp)
        tmp.replace(cache)
        meta_path.write_text(json.dumps(manifest, indent=1))
    return table
