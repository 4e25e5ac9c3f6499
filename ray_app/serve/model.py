"""The model deployment: loads a registry alias, applies the shared features, predicts.

`reconfigure` (Serve's `user_config`) sets the alias and the decision threshold; a change
reloads the model in the running replica, so `serve deploy` with a new user_config swaps
models without restarting anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from ray import serve

from ray_app import features, registry, tracking


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    def __init__(self, model_name: str, alias: str = registry.PRODUCTION):
        tracking.configure()
        self.model_name = model_name
        self.alias = alias
        self.threshold = 0.5
        self._load()

    def _load(self) -> None:
        self.model = registry.load(self.model_name, self.alias)
        contract = self.model.features.parsed_contract()
        self.positive = contract.positive_label
        self.negative = contract.negative_label

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.threshold = float(user_config.get("threshold", 0.5))
        alias = user_config.get("alias", self.alias)
        current = registry.version_for(self.model_name, alias).version
        if alias != self.alias or str(current) != self.model.version:
            self.alias = alias
            self._load()

    def features(self) -> str:
        """The served model's FeatureSet as JSON (the ingress builds its schema from it)."""
        return self.model.features.to_json()

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        frame = features.transform(pd.DataFrame.from_records(records), self.model.features)
        proba = self.model.booster.inplace_predict(frame)
        labels = np.where(proba >= self.threshold, self.positive, self.negative)
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "predictions": [
                {"probability": float(p), "label": _plain(label)}
                for p, label in zip(proba, labels, strict=True)
            ],
        }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
