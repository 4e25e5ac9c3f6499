"""The MLflow pyfunc of a ray_app model, logged as code (MLflow's models-from-code): raw rows
in, probability and label out, through the same `Scorer` the service uses.

MLflow runs this file when it loads the model; nothing in ray_app imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ray_app.model.loaded import from_files
from ray_app.model.logged import BOOSTER
from ray_app.model.scoring import Scorer


class RawRowsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[BOOSTER]).parent
        self.scorer = Scorer.of(from_files(folder, name=None, version=None))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """`params={"threshold": t}` sets the decision threshold (default 0.5; the served
        version's own is its registry tag, `threshold`)."""
        scorer = self.scorer.at((params or {}).get("threshold"))
        proba = scorer.proba(model_input)
        return pd.DataFrame({"probability": proba, "label": scorer.labels(proba)})


mlflow.models.set_model(RawRowsModel())
