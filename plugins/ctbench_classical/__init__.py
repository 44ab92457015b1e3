"""ctbench_classical: the classical calibration-transfer methods (issue 3).

sbc (slope/bias correction of predictions), ds (direct standardization), pds (piecewise
direct standardization), cca (canonical-correlation standardization), and the diPLSlib
family: dipls, dipls_t (transductive), mdipls (multi-domain), gctpls (graph-based
calibration transfer). Every method's source model is a PLS1 per property with latent
variables chosen by cross-validation (``ctbench.pls.PLSCalibration``).
"""

from __future__ import annotations

from ctbench import hookimpl

from .cca import CCA
from .dipls import DIPLS, GCTPLS, MDIPLS, DIPLSTransductive
from .ds import DS
from .model_update import ModelUpdate
from .pds import PDS
from .sbc import SBC

__all__ = ["SBC", "ModelUpdate", "DS", "PDS", "CCA", "DIPLS", "DIPLSTransductive", "MDIPLS", "GCTPLS"]


@hookimpl
def ctbench_register_methods() -> list[type]:
    return [SBC, ModelUpdate, DS, PDS, CCA, DIPLS, DIPLSTransductive, MDIPLS, GCTPLS]
