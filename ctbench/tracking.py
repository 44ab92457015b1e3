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


def experiment_name(task: str) -> str:
    return f"ctbench/{task}"


class MlflowSink:
    """Copies records into MLflow: one experiment per task, one run per record.

    Each run carries the record key as a tag, so ``sync`` can tell which records MLflow lacks
    (after a kill) or holds in an older form (after a retry or ``--force``) and mend it: the
    run count always ends equal to the record count. Every MLflow error becomes a warning.
    """

    KEY_TAG = "ctbench.record_key"
    SHA_TAG = "ctbench.record_sha"

    def __init__(self, results_dir: Path | str):
        self.results_dir = Path(results_dir)
        self.uri = tracking_uri(results_dir)
        self._client = None
        self._experiments: dict[str, str] = {}
        self._known: dict[str, dict[str, tuple[str, str]]] = {}  # exp id -> key -> (run id, sha)
        self.disabled = False

    def _warn(self, what: str, exc: BaseException) -> None:
        import warnings

        warnings.warn(f"MLflow {what} failed ({type(exc).__name__}: {exc}); the local record is safe", stacklevel=3)

    @property
    def client(self):
        if self._client is None:
            import logging

            from mlflow.tracking import MlflowClient

            for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
                logging.getLogger(name).setLevel(logging.WARNING)

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self, task: str) -> str:
        if task not in self._experiments:
            name = experiment_name(task)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                loc = artifact_location(self.results_dir) if self.uri.startswith("sqlite") else None
                exp_id = self.client.create_experiment(name, artifact_location=loc)
            else:
                exp_id = exp.experiment_id
            self._experiments[task] = exp_id
            self._known[exp_id] = self._existing(exp_id)
        return self._experiments[task]

    def _existing(self, exp_id: str) -> dict[str, tuple[str, str]]:
        from mlflow.entities import ViewType

        out: dict[str, tuple[str, str]] = {}
        token = None
        while True:
            page = self.client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000, page_token=token)
            for run in page:
                key = run.data.tags.get(self.KEY_TAG)
                if key:
                    if key in out:  # a duplicate: keep one
                        self.client.delete_run(run.info.run_id)
                        continue
                    out[key] = (run.info.run_id, run.data.tags.get(self.SHA_TAG, ""))
            token = page.token
            if not token:
                break
        return out

    def log(self, record: dict, path: Path | str) -> None:
        """Log one record (replacing an older copy of the same key)."""
        if self.disabled:
            return
        try:
            self._log(record, Path(path))
        except Exception as exc:  # never lose a record to MLflow
            self._warn("logging", exc)

    def _log(self, record: dict, path: Path) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from ctbench.store import canonical_json

        ident = record["identity"]
        exp_id = self._experiment(ident["task"])
        key = record["key"]
        sha = hashlib_sha(canonical_json({k: v for k, v in record.items() if not k.startswith("_")}))
        known = self._known[exp_id]
        if key in known:
            if known[key][1] == sha:
                return
            self.client.delete_run(known[key][0])
            del known[key]
        status = record["status"]
        run = self.client.create_run(
            exp_id,
            run_name=f"{ident['method']}-N{ident['n_shots']}-rep{ident['rep']}",
            tags={
                self.KEY_TAG: key,
                self.SHA_TAG: sha,
                "ctbench.status": status,
                "ctbench.task_version": str(ident["task_version"]),
                "ctbench.method_version": str(ident["method_version"]),
                "ctbench.split_hash": record.get("split", {}).get("hash", ""),
                "ctbench.transductive": str(record.get("transductive", False)),
            },
        )
        run_id = run.info.run_id
        params = [Param(f"param.{k}", str(v)[:500]) for k, v in sorted(ident["params"].items())]
        params += [
            Param("method", ident["method"]),
            Param("task", ident["task"]),
            Param("n_shots", str(ident["n_shots"])),
            Param("rep", str(ident["rep"])),
            Param("seed", str(ident["seed"])),
        ]
        metrics = []
        ts = 0
        m = record.get("metrics") or {}
        for name, value in (m.get("mean") or {}).items():
            metrics.append(Metric(name, _finite(value), ts, 0))
        for prop, vals in (m.get("per_property") or {}).items():
            for name, value in vals.items():
                metrics.append(Metric(f"{prop}.{name}", _finite(value), ts, 0))
        for name, value in (record.get("timings") or {}).items():
            metrics.append(Metric(f"time.{name}", _finite(value), ts, 0))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("mlflow.note.content", "ctbench record")])
        self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED" if status == "ok" else "FAILED")
        known[key] = (run_id, sha)

    def sync(self, records: list[tuple[dict, Path]]) -> int:
        """Make MLflow hold exactly one current run per given record; returns runs written."""
        if self.disabled:
            return 0
        written = 0
        for rec, path in records:
            try:
                exp_id = self._experiment(rec["identity"]["task"])
                before = len(self._known[exp_id]), self._known[exp_id].get(rec["key"])
                self._log(rec, Path(path))
                if (len(self._known[exp_id]), self._known[exp_id].get(rec["key"])) != before:
                    written += 1
            except Exception as exc:
                self._warn("sync", exc)
                return written
        return written


def hashlib_sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(value) -> float:
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")
