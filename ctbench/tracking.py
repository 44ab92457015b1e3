"""Where MLflow tracking goes: MLFLOW_TRACKING_URI when set, else a SQLite file in the results dir."""

from __future__ import annotations

import os
from pathlib import Path


def tracking_uri(results_dir: Path | str) -> str:
    """The MLflow tracking URI for a results directory (MLFLOW_TRACKING_URI wins)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(results_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def artifact_location(results_dir: Path | str) -> str:
    """Default artifact root beside the SQLite store."""
    return (Path(results_dir).resolve() / "mlartifacts").as_uri()
