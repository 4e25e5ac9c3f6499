"""The model deployment: loads a registry alias and answers with the shared serving path.

The replica follows its alias: a background thread asks the registry every `poll_s` seconds
which version the alias points at and, when it moved (a promotion, `rayapp rollback`), loads
the new version and swaps it in whole, without restarting the replica. A version whose request
schema differs from the deployed one is held back (reported by `/healthz`) until a redeploy.
`reconfigure` (Serve's `user_config`) sets the alias, the poll interval and, optionally, a
decision threshold that overrides the one the gate chose for each version.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray import serve

from ray_app import registry, tracking
from ray_app.model.loaded import load
from ray_app.model.ref import ModelRef
from ray_app.model.schema import request_schema
from ray_app.model.scoring import Scorer

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    def __init__(self, model_name: str, alias: str = registry.PRODUCTION, poll_s: float = 5.0):
        tracking.configure()
        self.model_name, self.alias, self.poll_s = model_name, alias, poll_s
        self.threshold: float | None = None  # None: each version's gate threshold
        self.served = self._load()
        self.held_back: dict[str, str] = {}  # a version the alias points at but not served
        self._stop = threading.Event()
        threading.Thread(target=self._follow_alias, name="follow-alias", daemon=True).start()

    def _load(self) -> Scorer:
        return Scorer.of(load(ModelRef(self.model_name, alias=self.alias)), self.threshold)

    def _follow_alias(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._refresh()
            except Exception:  # the registry may be briefly unreachable: keep serving
                logger.exception("could not check %s@%s", self.model_name, self.alias)

    def _refresh(self) -> None:
        current = registry.aliased_version(self.model_name, self.alias)
        if current == self.served.model.version:
            self.held_back = {}  # the alias came back to what is served
            return
        if current == self.held_back.get("version"):
            return
        loaded = self._load()
        if request_schema(loaded.model.features) != request_schema(self.served.model.features):
            # The ingress validates requests with the schema it was deployed with; answering
            # them with a model of another contract would fail, so this version must wait.
            self.held_back = {
                "version": loaded.model.version,
                "reason": "its request schema differs from the deployed one; redeploy "
                "(serve deploy) to serve it",
            }
            logger.error(
                "%s@%s: not serving version %s: %s",
                self.model_name,
                self.alias,
                loaded.model.version,
                self.held_back["reason"],
            )
            return
        self.served, self.held_back = loaded, {}
        logger.info("%s@%s is now version %s", self.model_name, self.alias, loaded.model.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        threshold = user_config.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.poll_s = float(user_config.get("poll_s", self.poll_s))
        self.alias = user_config.get("alias", self.alias)
        self.served = Scorer.of(self.served.model, self.threshold)
        self._refresh()

    def __del__(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """What this replica serves, and any version it holds back."""
        return {
            "model_name": self.model_name,
            "alias": self.alias,
            "model_version": self.served.model.version,
            "held_back": self.held_back or None,
        }

    def features(self) -> str:
        """The served model's FeatureSet as JSON (the ingress builds its schema from it)."""
        return self.served.model.features.to_json()

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.served.predict(records)

    def explain(self, records: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
        return self.served.explain(records, top_k)
