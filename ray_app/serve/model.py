"""The model deployment: loads a registry alias, applies the shared features, predicts.

The replica follows its alias: a background thread asks the registry every `poll_s` seconds
which version the alias points at and, when it moved (a promotion, `rayapp rollback`), loads
the new version and swaps it in whole, without restarting the replica. `reconfigure` (Serve's
`user_config`) sets the alias, the decision threshold and the poll interval.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ray import serve

from ray_app import features, registry, tracking

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class _Served:
    """What one prediction needs, swapped as a unit so a request never mixes two versions."""

    model: registry.LoadedModel
    positive: Any
    negative: Any

    @classmethod
    def load(cls, name: str, alias: str) -> _Served:
        model = registry.load(name, alias)
        contract = model.features.parsed_contract()
        return cls(model, contract.positive_label, contract.negative_label)


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    def __init__(self, model_name: str, alias: str = registry.PRODUCTION, poll_s: float = 5.0):
        tracking.configure()
        self.model_name, self.alias, self.poll_s = model_name, alias, poll_s
        self.threshold = 0.5
        self.served = _Served.load(model_name, alias)
        self._stop = threading.Event()
        threading.Thread(target=self._follow_alias, name="follow-alias", daemon=True).start()

    def _follow_alias(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._refresh()
            except Exception:  # the registry may be briefly unreachable: keep serving
                logger.exception("could not check %s@%s", self.model_name, self.alias)

    def _refresh(self) -> None:
        current = str(registry.version_for(self.model_name, self.alias).version)
        if current != self.served.model.version:
            self.served = _Served.load(self.model_name, self.alias)
            logger.info("%s@%s is now version %s", self.model_name, self.alias, current)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.threshold = float(user_config.get("threshold", 0.5))
        self.poll_s = float(user_config.get("poll_s", self.poll_s))
        self.alias = user_config.get("alias", self.alias)
        self._refresh()

    def __del__(self) -> None:
        self._stop.set()

    def features(self) -> str:
        """The served model's FeatureSet as JSON (the ingress builds its schema from it)."""
        return self.served.model.features.to_json()

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        served = self.served
        frame = features.transform(pd.DataFrame.from_records(records), served.model.features)
        proba = served.model.booster.inplace_predict(frame)
        labels = np.where(proba >= self.threshold, served.positive, served.negative)
        return {
            "model_name": served.model.name,
            "model_version": served.model.version,
            "predictions": [
                {"probability": float(p), "label": _plain(label)}
                for p, label in zip(proba, labels, strict=True)
            ],
        }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
