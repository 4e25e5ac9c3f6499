"""MLflow model registry: log a model with its features, register it, move aliases, load by alias.

The model artefact is XGBoost's own UBJ file plus `features.json` (the fitted `FeatureSet`) in
the same MLflow model folder, so whoever loads `models:/name@alias` gets both or neither.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.xgboost
import pandas as pd
import xgboost as xgb
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from ray_app.features import FeatureSet

MODEL_ARTIFACT = "model"
FEATURES_FILE = "features.json"
PRODUCTION = "production"


@dataclass
class LoadedModel:
    name: str
    version: str
    booster: xgb.Booster
    features: FeatureSet


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


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def version_for(name: str, alias: str = PRODUCTION) -> ModelVersion:
    return MlflowClient().get_model_version_by_alias(name, alias)


def load(name: str, alias: str = PRODUCTION) -> LoadedModel:
    """Load the version an alias points at: its booster and its FeatureSet."""
    version = version_for(name, alias).version
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    booster = xgb.Booster(model_file=str(local / "model.ubj"))
    features = FeatureSet.from_json((local / "extra_files" / FEATURES_FILE).read_text())
    return LoadedModel(name, str(version), booster, features)
