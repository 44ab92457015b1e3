"""First-party deep-learning baselines: ``cnn`` (full fine-tune) and ``lora_ct`` (LoRA-CT).

Importing this package does not import torch (``ctbench --help`` stays fast); the torch code
is in ``ctbench_deep.networks`` / ``ctbench_deep.training``, loaded by the methods when used.
"""

from ctbench import hookimpl
from ctbench_deep.methods import CNN, LoRACT

__all__ = ["CNN", "LoRACT"]


@hookimpl
def ctbench_register_methods():
    return [CNN, LoRACT]
