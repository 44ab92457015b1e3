"""ctbench_classical: the classical calibration-transfer methods.

Prediction corrections: sbc (slope/bias correction), prep_sbc (SNV + Savitzky-Golay derivative,
then SBC), pfce_ns / pfce_ss / pfce_fs (parameter-free calibration enhancement).
Spectral standardization (target spectra mapped into the source space): ds, pds, cca, sst
(spectral space transformation), coral (covariance alignment).
Model recalibration: model_update (source calibration + weighted target standards), jypls
(joint-Y PLS), the orthogonal filters epo, top and glsw, and the diPLSlib family: dipls, dipls_t
(transductive), mdipls (multi-domain), gctpls (graph-based calibration transfer).
Every method's source model is a PLS1 per property with latent variables chosen by
cross-validation (``ctbench.pls.PLSCalibration``).
"""

from __future__ import annotations

from ctbench import hookimpl

from .cca import CCA
from .coral import CORAL
from .dipls import DIPLS, GCTPLS, MDIPLS, DIPLSTransductive
from .ds import DS
from .jypls import JYPLS
from .model_update import ModelUpdate
from .orthogonal import EPO, GLSW, TOP
from .pds import PDS
from .pfce import FSPFCE, NSPFCE, SSPFCE
from .prep import PrepSBC
from .sbc import SBC
from .sst import SST

METHODS = [
    SBC, ModelUpdate, DS, PDS, CCA, DIPLS, DIPLSTransductive, MDIPLS, GCTPLS,
    SST, CORAL, EPO, TOP, GLSW, NSPFCE, SSPFCE, FSPFCE, JYPLS, PrepSBC,
]

__all__ = [cls.__name__ for cls in METHODS]


@hookimpl
def ctbench_register_methods() -> list[type]:
    return list(METHODS)
