"""Spektron: a self-supervised spectral foundation model for calibration transfer (ctbench plugin).

Importing this package is cheap (no torch): the network, pretraining and corpus code live in
submodules that import torch when used. Registered through the ``ctbench`` entry-point group:

* ``spektron`` (v3, ``translate_method``): the pretrained instrument translator (``translator``,
  pretrained on simulated instrument pairs by ``ctbench pretrain --method spektron``) simulates the
  target instrument's view of the source calibration; model updating on top; the path (or the
  plain model-update fallback) chosen by cross-validation on the standards. ``spektron-nopretrain``:
  the same with the translator randomly initialised (ablation).
* ``spektron-lora`` (v2, ``method``): the wavelet-Mamba-MoE-Transformer backbone with a ridge head and
  LoRA transfer (``ctbench pretrain --method spektron-lora``), and its variants ``spektron-ttt``
  (zero-shot, transductive), ``spektron-lora-nopretrain``, ``spektron-fullft``, ``spektron-pds``.
* the pretraining corpora (``--corpus rruff,fermentation,synthetic``).
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
