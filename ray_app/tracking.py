"""MLflow tracking: where runs go, and what every run records about its provenance."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from ray_app.config import rayapp_home, redacted

CONFIG_ARTIFACT = "config/pipeline.json"  # the run's PipelineConfig, as logged


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute SQLite store under `$RAYAPP_HOME`.

    Absolute because Ray Tune and Ray jobs change the working directory of their processes.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = rayapp_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def configure() -> str:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, created on first use. With a local SQLite store its artifacts go
    under `$RAYAPP_HOME/artifacts` rather than wherever the creating process happened to run.
    With an `mlflow server` (a cluster) the server's own root is used, `mlflow-artifacts:/`
    proxied to its `--artifacts-destination`, so no node needs the object store's keys."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (rayapp_home() / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_config(cfg: BaseModel) -> None:
    """A settings model as a JSON artefact of the active run, secrets masked (`redacted`)."""
    mlflow.log_dict(redacted(cfg), CONFIG_ARTIFACT)


def git_commit() -> str:
    """The code's commit: `RAYAPP_GIT_COMMIT` (set by `make run`, since a Ray job's working
    directory is a copy without `.git`), else `git rev-parse`, else "unknown"."""
    if commit := os.environ.get("RAYAPP_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
