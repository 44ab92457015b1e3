"""ctbench: a plugin-based benchmark harness for spectral calibration transfer.

Public API for plugin authors: ``ctbench.hookimpl`` to mark hook implementations, and
``ctbench.method`` (TransferMethod, Tags, SourceData, Standards), ``ctbench.data`` (Spectra),
``ctbench.pls`` (PLSCalibration), ``ctbench.testing`` (the conformance kit).
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ctbench")

__all__ = ["hookimpl", "__version__"]
