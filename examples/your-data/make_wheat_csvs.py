"""Turn two IDRC 2016 wheat files of the dataset mirror into "your own data": two spectra-only
CSV files and a separate references file, laid out the way spreadsheets and other software often
write them, to walk through docs/your-data.md.

    python examples/your-data/make_wheat_csvs.py [OUT_DIR]     (default OUT_DIR: my-wheat)

Reads $CTBENCH_DATA/wheat_idrc2016/idrc2016_wheat_instrument_A1.csv and ..._A2.csv (real data:
248 wheat samples, protein %, 730-1100 nm at 0.5 nm) and writes into OUT_DIR:

- ``spectra_A1.csv``, ``spectra_A2.csv``: semicolon-separated with decimal commas (``0,4123``),
  the sample id in a first column whose header is blank, one column per wavelength headed by
  the wavelength (``730``, ``730,5``, ...); the A2 rows are in another order than the A1 rows
  (ctbench pairs them by sample id, not by row);
- ``references.csv``: comma-separated ``sample,protein``, one row per sample.

Sample 20140190 is left out: its A2 spectrum is a gross outlier (the built-in wheat loader
leaves it out too; ``ctbench.data.loaders.WHEAT_EXCLUDED`` says why). Nothing is changed in
the mirror; the files written are copies for the walk-through, not for committing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd


def main(out: Path) -> None:
    mirror = Path(os.environ.get("CTBENCH_DATA", "../shared/datasets")) / "wheat_idrc2016"
    out.mkdir(parents=True, exist_ok=True)
    excluded = {"20140190"}
    refs = None
    for inst in ("A1", "A2"):
        df = pd.read_csv(mirror / f"idrc2016_wheat_instrument_{inst}.csv", dtype={"ID": str})
        df = df[~df["ID"].isin(excluded)]
        if inst == "A2":
            df = df.iloc[::-1]  # another row order: pairing is by sample id
        spectra = df.drop(columns=["Protein"]).set_index("ID")
        spectra.index.name = ""  # a blank id header
        spectra.columns = [c.replace(".", ",") for c in spectra.columns]  # 730,5: decimal comma headers
        spectra.to_csv(out / f"spectra_{inst}.csv", sep=";", decimal=",")
        if refs is None:
            refs = df[["ID", "Protein"]].rename(columns={"ID": "sample", "Protein": "protein"})
    assert refs is not None
    refs.to_csv(out / "references.csv", index=False)
    print(f"wrote {out}/spectra_A1.csv, {out}/spectra_A2.csv and {out}/references.csv ({len(refs)} samples)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "my-wheat"))
