"""Reference rows every table carries: no transfer, target only, full recalibration.

All three use the PLS base model (ctbench.pls.PLSCalibration: one PLS1 per property, latent
variables chosen by 10-fold cross-validation on the calibration data given).
"""

from __future__ import annotations

from ctbench import hookimpl
from ctbench_reference.methods import FullRecalibration, NoTransfer, TargetOnly


@hookimpl
def ctbench_register_methods():
    return [NoTransfer, TargetOnly, FullRecalibration]
