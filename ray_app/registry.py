"""MLflow model registry: log a model with its features, register it, move aliases, load by alias.

The model artefact is XGBoost's own UBJ file plus `features.json` (the fitted `FeatureSet`) in
the same MLflow model folder, so whoever loads `models:/name@alias` gets both or neither.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import mlflow.xgboost
import pandas as pd
import xgboost as xgb
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from ray_app.features import FeatureSet

MODEL_ARTIFACT = "model"
FEATURES_FILE = "features.json"
PRODUCTION = "production"
AUDIT_PREFIX = "audit."


class RegistryError(RuntimeError):
    """A registry operation that cannot be done, with the reason."""


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: xgb.Booster
    features: FeatureSet
    tags: dict[str, str] = field(default_factory=dict)  # the model version's tags


def log_model(
    booster: xgb.Booster, fs: FeatureSet, example: pd.DataFrame, lineage: dict[str, str]
) -> ModelInfo:
    """Log the booster (UBJ) with its FeatureSet into the active run; `lineage` (dataset
    version, git commit) goes into the MLmodel file's metadata."""
    with tempfile.TemporaryDirectory() as d:
        features_path = Path(d) / FEATURES_FILE
        features_path.write_text(fs.to_json())
        return mlflow.xgboost.log_model(
            booster,
            name=MODEL_ARTIFACT,
            model_format="ubj",
            extra_files=[str(features_path)],
            metadata=lineage,
            signature=infer_signature(example, booster.inplace_predict(example)),
            # Stated, not inferred: inference imports the whole environment and takes seconds.
            pip_requirements=[f"xgboost=={xgb.__version__}"],
        )


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    version = mlflow.register_model(model_uri, name, tags=tags)
    return version


@dataclass(frozen=True)
class AliasMove:
    """One audit entry: who moved which alias from which version to which, and why."""

    when: str
    alias: str
    from_version: str | None
    to_version: str
    reason: str
    by: str
    run_id: str = ""
    dataset_version: str = ""
    gate_report: str = ""


def move_alias(
    name: str, alias: str, version: str | int, reason: str, gate_report: str = ""
) -> AliasMove:
    """Point an alias at a version and record the move on the registered model itself (a tag
    `audit.<time>.<alias>`), so the history lives wherever the registry does."""
    client = MlflowClient()
    target = client.get_model_version(name, str(version))
    previous = aliased_version(name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    now = dt.datetime.now(dt.timezone.utc)
    entry = AliasMove(
        when=now.isoformat(timespec="microseconds"),
        alias=alias,
        from_version=previous,
        to_version=str(version),
        reason=reason,
        by=os.environ.get("RAYAPP_ACTOR") or getpass.getuser(),
        run_id=target.run_id or "",
        dataset_version=target.tags.get("dataset_version", ""),
        gate_report=gate_report,
    )
    key = f"{AUDIT_PREFIX}{now:%Y%m%dT%H%M%S.%f}.{alias}"
    client.set_registered_model_tag(name, key, json.dumps(asdict(entry)))
    return entry


def alias_history(name: str, alias: str | None = None) -> list[AliasMove]:
    """Every recorded alias move of a model, oldest first."""
    tags = MlflowClient().get_registered_model(name).tags
    moves = [AliasMove(**json.loads(v)) for k, v in tags.items() if k.startswith(AUDIT_PREFIX)]
    return sorted((m for m in moves if alias in (None, m.alias)), key=lambda m: m.when)


def rollback(name: str, to: str | None = None, alias: str = PRODUCTION) -> AliasMove:
    """Move `production` back: to `to`, or to the version it pointed at before its last move.
    Only versions that were in production before qualify, so the gate is never bypassed."""
    current = str(version_for(name, alias).version)
    if to is None:
        earlier = [m for m in alias_history(name, alias) if m.to_version == current]
        if not earlier or earlier[-1].from_version is None:
            raise RegistryError(
                f"{name}@{alias} is version {current} and no earlier version is recorded; "
                "name one with --to"
            )
        to = earlier[-1].from_version
    if str(to) == current:
        raise RegistryError(f"{name}@{alias} already points at version {current}")
    if not any(m.to_version == str(to) for m in alias_history(name, alias)):
        # Only the gate puts a new version in production; rollback may not bypass it.
        raise RegistryError(
            f"{name} version {to} has never been {alias}; only versions that were can be "
            "rolled back to (a new one goes through `rayapp gate`)"
        )
    return move_alias(name, alias, to, reason=f"rollback from version {current}")


def aliased_version(name: str, alias: str = PRODUCTION) -> str | None:
    """The version an alias points at, or None when it points nowhere (or the model is new)."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_for(name: str, alias: str = PRODUCTION) -> ModelVersion:
    return MlflowClient().get_model_version_by_alias(name, alias)


def load(name: str, alias: str = PRODUCTION) -> LoadedModel:
    """Load the version an alias points at: its booster and its FeatureSet."""
    return load_version(name, str(version_for(name, alias).version))


def load_version(name: str, version: str) -> LoadedModel:
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    booster = xgb.Booster(model_file=str(local / "model.ubj"))
    features = FeatureSet.from_json((local / "extra_files" / FEATURES_FILE).read_text())
    tags = MlflowClient().get_model_version(name, str(version)).tags
    return LoadedModel(name, str(version), booster, features, dict(tags))
