"""Checkpoint files: the full training state (resume) and the exported model weights.

* ``checkpoint-last.pt`` (in the run folder): model, EMA target, optimizer, step, config,
  corpus manifest, loss history; written atomically every K steps.
* ``spektron-<size>.pt``: weights-only export (model config + state dict + manifest) that the
  ``spektron`` method loads; ``<name>.json`` beside it is the human-readable manifest with the
  file's sha256. Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHTS_FORMAT = "spektron-weights/1"
CHECKPOINT_FORMAT = "spektron-checkpoint/1"
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = PACKAGE_WEIGHTS / "spektron-small.pt"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_weights(model, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the weights-only file and its JSON manifest (with sha256); returns the manifest."""
    return write_weights(path, {"format": WEIGHTS_FORMAT, "model_config": model.cfg.to_dict()}, model, manifest)


def write_weights(path: Path, header: dict[str, Any], model, manifest: dict[str, Any]) -> dict[str, Any]:
    """``header`` (format, configuration) + the model's state dict + ``manifest`` as one torch file,
    and beside it ``<name>.json``: the manifest with the file's name, sha256 and size (returned)."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({**header, "state_dict": state, "manifest": json.loads(json.dumps(manifest))}, path)
    full = dict(manifest)
    full["weights_file"] = path.name
    full["weights_sha256"] = sha256_of(path)
    full["weights_bytes"] = path.stat().st_size
    atomic_write_text(path.with_suffix(".json"), json.dumps(full, indent=1, sort_keys=True))
    return full


def load_model(path: str | Path, device: str = "cpu"):
    """(SpektronModel in eval mode, manifest) from a weights file or a training checkpoint."""
    import torch

    from .config import ModelConfig
    from .model import SpektronModel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Spektron weights not found: {path}")
    blob = torch.load(path, map_location=device, weights_only=True)
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt == WEIGHTS_FORMAT:
        cfg, state, manifest = ModelConfig.from_dict(blob["model_config"]), blob["state_dict"], blob.get("manifest", {})
    elif fmt == CHECKPOINT_FORMAT:
        cfg = ModelConfig.from_dict(blob["model_config"])
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in blob["model"].items() if k.startswith(prefix)}
        manifest = blob.get("manifest", {})
    else:
        raise ValueError(f"{path} is not a Spektron weights file or checkpoint (format {fmt!r})")
    model = SpektronModel(cfg)
    model.load_state_dict(state)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, manifest
