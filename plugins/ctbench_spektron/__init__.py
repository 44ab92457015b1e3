"""Spektron: a self-supervised spectral foundation model for calibration transfer (ctbench plugin).

Importing this package is cheap (no torch): the network, pretraining and corpus code live in
submodules that import torch when used. Registered through the ``ctbench`` entry-point group:
the ``spektron`` method (``ctbench run --method spektron``), its variants ``spektron-ttt``
(zero-shot, transductive), ``spektron-nopretrain``, ``spektron-fullft`` and ``spektron-pds``
(ablations), and its pretraining corpora
(``ctbench pretrain --method spektron --corpus rruff,fermentation,synthetic``).
"""

from __future__ import annotations

from ctbench import hookimpl

__version__ = "0.1.0"


@hookimpl
def ctbench_register_methods() -> list:
    from .method import METHODS

    return list(METHODS)


@hookimpl
def ctbench_register_corpora() -> list:
    from .corpus import SOURCES

    return list(SOURCES.values())


def __getattr__(name: str):
    if name == "Spektron":  # the method class, without importing it (or torch) at package import
        from .method import Spektron

        return Spektron
    raise AttributeError(f"module 'ctbench_spektron' has no attribute {name!r}")
