"""A model as MLflow holds it: a registered version loaded (`load`), and the one way a model
is written into a run (`log_model`).

The MLflow model is a pyfunc that takes raw rows (the contract's input columns, as the
signature shows) and applies the one feature code, so `mlflow.pyfunc.load_model` and
`mlflow models serve` answer like the service. XGBoost's own file and the fitted features sit
inside it as artifacts, which is what `load` reads for the fast path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import xgboost as xgb
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ray_app import registry
from ray_app.data.contract import Contract
from ray_app.features import FeatureSet
from ray_app.model.loaded import (
    BOOSTER_FILE,
    DEFAULT_THRESHOLD,
    FEATURES_FILE,
    LoadedModel,
    ModelFilesError,
    from_files,
)
from ray_app.model.ref import ModelRef
from ray_app.model.schema import to_records

MODEL_ARTIFACT = "model"  # the logged model's name in its run
BOOSTER, FEATURES = "booster", "features"  # pyfunc artifact keys
_MLFLOW_TYPES = {
    "integer": "long",
    "float": "double",
    "string": "string",
    "category": "string",
    "date": "datetime",
    "boolean": "boolean",
}


def load(ref: ModelRef | str) -> LoadedModel:
    """Load a registered version (`name@alias`, `name/3`, a run id)."""
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    name, version = ref.resolve()
    info = registry.model_version(name, version)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    lineage = {"run_id": info.run_id or "", **info.tags}
    lineage.pop(registry.THRESHOLD_TAG, None)
    threshold = registry.threshold_of(info)
    try:
        return from_files(
            local / "artifacts",
            name=name,
            version=version,
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            lineage=lineage,
        )
    except ModelFilesError as e:
        raise registry.RegistryError(f"{e} (in {local / 'artifacts'})") from e


def sample_request(ref: ModelRef | str) -> dict[str, list[dict[str, Any]]]:
    """The input example logged with a registered version, as a request body."""
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    name, version = ref.resolve()
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}")
    example = mlflow.models.Model.load(local).load_input_example(local)  # typed by signature
    contract = FeatureSet.from_json((Path(local) / "artifacts" / FEATURES_FILE).read_text())
    return {"instances": to_records(example, contract.parsed_contract())}


def signature(contract: Contract) -> ModelSignature:
    """Raw input columns with their types (nullable ones optional; nullable integers as
    doubles, since a missing value makes a pandas integer column float), the answer's columns,
    and the decision threshold as a parameter."""
    inputs = []
    for name in contract.input_columns:
        spec = contract.columns[name]
        kind = "double" if spec.type == "integer" and spec.nullable else _MLFLOW_TYPES[spec.type]
        inputs.append(ColSpec(kind, name, required=not spec.nullable))
    label = _MLFLOW_TYPES[contract.columns[contract.label_column].type]
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([ColSpec("double", "probability"), ColSpec(label, "label")]),
        params=ParamSchema([ParamSpec("threshold", "double", DEFAULT_THRESHOLD)]),
    )


def log_model(
    booster: xgb.Booster,
    features: FeatureSet,
    sample: list[dict[str, Any]],
    lineage: dict[str, str],
) -> ModelInfo:
    """Log the model into the active run: the raw-rows pyfunc with the booster (UBJ) and the
    fitted features as its artifacts, `sample` as its input example, `lineage` in MLmodel."""
    with tempfile.TemporaryDirectory() as d:
        booster.save_model(str(Path(d) / BOOSTER_FILE))
        (Path(d) / FEATURES_FILE).write_text(features.to_json())
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),  # models from code
            artifacts={
                BOOSTER: str(Path(d) / BOOSTER_FILE),
                FEATURES: str(Path(d) / FEATURES_FILE),
            },
            signature=signature(features.parsed_contract()),
            input_example=pd.DataFrame(sample),
            metadata=lineage,
            # Stated, not inferred: inference imports the whole environment and takes seconds.
            # The ray_app package itself must be importable where the model is loaded.
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"xgboost=={xgb.__version__}",
                f"pandas=={pd.__version__}",
            ],
        )
