"""The model deployment: loads a registry alias and answers with the shared serving path.

The replica follows its alias: a background thread asks the registry every `poll_s` seconds
which version the alias points at and, when it moved (a promotion, `rayapp rollback`), loads
the new version and swaps it in whole, without restarting the replica. `reconfigure` (Serve's
`user_config`) sets the alias, the poll interval and, optionally, a decision threshold that
overrides the one the gate chose for each version.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray import serve

from ray_app import registry, tracking
from ray_app.serve.predictor import Predictor

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    def __init__(self, model_name: str, alias: str = registry.PRODUCTION, poll_s: float = 5.0):
        tracking.configure()
        self.model_name, self.alias, self.poll_s = model_name, alias, poll_s
        self.threshold: float | None = None  # None: each version's gate threshold
        self.served = self._load()
        self._stop = threading.Event()
        threading.Thread(target=self._follow_alias, name="follow-alias", daemon=True).start()

    def _load(self) -> Predictor:
        return Predictor.of(registry.load(self.model_name, self.alias), self.threshold)

    def _follow_alias(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._refresh()
            except Exception:  # the registry may be briefly unreachable: keep serving
                logger.exception("could not check %s@%s", self.model_name, self.alias)

    def _refresh(self) -> None:
        current = str(registry.version_for(self.model_name, self.alias).version)
        if current != self.served.model.version:
            self.served = self._load()
            logger.info("%s@%s is now version %s", self.model_name, self.alias, current)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        threshold = user_config.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.poll_s = float(user_config.get("poll_s", self.poll_s))
        self.alias = user_config.get("alias", self.alias)
        self.served = Predictor.of(self.served.model, self.threshold)
        self._refresh()

    def __del__(self) -> None:
        self._stop.set()

    def features(self) -> str:
        """The served model's FeatureSet as JSON (the ingress builds its schema from it)."""
        return self.served.model.features.to_json()

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.served.predict(records)

    def explain(self, records: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
        return self.served.explain(records, top_k)
