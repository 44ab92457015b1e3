"""A third-party ctbench plugin: registers the ``mean_offset`` calibration-transfer method.

ctbench finds this module through the entry point ``example`` of the group ``ctbench`` (see
pyproject.toml) and calls its hook implementations.
"""

from __future__ import annotations

from ctbench import hookimpl
from ctbench_example_method.mean_offset import MeanOffset

__all__ = ["MeanOffset", "ctbench_register_methods"]
__version__ = "0.1.0"


@hookimpl
def ctbench_register_methods():
    return [MeanOffset]
