"""The built-in dataset plugin (entry point ``datasets`` in group ``ctbench``): real datasets
(corn, tablet, wheat, raman), generic ``csv`` / ``mat`` readers for a user's files, and ``synthetic``."""

from __future__ import annotations

from ctbench import hookimpl
from ctbench.data import loaders as _l
from ctbench.data.registry import DatasetLoader


def builtin_loaders() -> list[DatasetLoader]:
    """The DatasetLoader objects this plugin registers."""
    return [
        DatasetLoader(
            name="corn",
            load=_l.load_corn,
            files=_l.CORN_FILES,
            description="80 corn samples, NIR on m5, mp5, mp6 (1100-2498 nm); moisture, oil, protein, starch",
            citation='Kalivas, "Two data sets of near infrared spectra", Chemom. Intell. Lab. Syst. 37 (1997); '
            "Eigenvector Research",
        ),
        DatasetLoader(
            name="tablet",
            load=_l.load_tablet,
            files=_l.TABLET_FILES,
            description="IDRC 2002 shoot-out: 655 tablets, NIR on instruments 1 and 2 (600-1898 nm); "
            "weight, hardness, assay; official Train/Validate/Test split",
            citation="IDRC 2002 shoot-out, NIR news 13 (2002); Eigenvector Research nir_shootout_2002",
        ),
        DatasetLoader(
            name="wheat",
            load=_l.load_wheat,
            files=_l.WHEAT_FILES,
            description="IDRC 2016 shoot-out: 248 wheat samples, NIR on manufacturer A's instruments A1, A2, A3 "
            "(730-1100 nm, 0.5 nm); protein",
            citation="IDRC 2016 software shoot-out, Council for Near-Infrared Spectroscopy (cnirs.org)",
        ),
        DatasetLoader(
            name="raman",
            load=_l.load_raman,
            files=_l.RAMAN_FILES,
            description="Dig4Bio Raman, 3 devices (anton532, anton785, timegate); glucose, Na_acetate, Mg_SO4 (g/L)",
            citation="Dig4Bio Raman transfer-learning challenge, Spectrochim. Acta A (2025), "
            "doi 10.1016/j.saa.2025.125861 (CC BY 4.0)",
        ),
        DatasetLoader(
            name="csv",
            load=_l.load_csv,
            description="your own CSV files: options files {instrument: path}, properties, axis_unit, id_column",
        ),
        DatasetLoader(
            name="mat",
            load=_l.load_mat,
            description="your own MATLAB files: options file/files, spectra, y, properties, axis, axis_unit, ids",
        ),
        DatasetLoader(
            name="synthetic",
            load=_l.load_synthetic,
            description="SYNTHETIC two-instrument demo data (generated, no files)",
        ),
    ]


@hookimpl
def ctbench_register_loaders() -> list[DatasetLoader]:
    return builtin_loaders()
