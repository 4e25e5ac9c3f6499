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
from ray_app.features import FeatureSet
from ray_app.model.loaded import load
from ray_app.model.ref import ModelRef
from ray_app.model.schema import request_schema
from ray_app.model.scoring import Scorer

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    """`deployed` is the FeatureSet (JSON) of the version the application was built with: its
    request schema is the one the ingress validates with, so this replica serves only versions
    with that schema, whether it follows a move of its alias or was restarted by Serve."""

    def __init__(
        self,
        model_name: str,
        deployed: str,
        deployed_version: str,
        alias: str = registry.PRODUCTION,
        poll_s: float = 5.0,
    ):
        tracking.configure()
        self.model_name, self.alias, self.poll_s = model_name, alias, poll_s
        self.schema = request_schema(FeatureSet.from_json(deployed))
        self.deployed_version = deployed_version
        self.threshold: float | None = None  # None: each version's gate threshold
        self.held_back: dict[str, str] = {}  # a version the alias points at but not served
        self.reload_error: str | None = None  # the last failed check of the alias, if any
        loaded = self._load(ModelRef(model_name, alias=alias))
        if not self._fits(loaded):  # restarted after the alias moved to another contract
            loaded = self._load(ModelRef(model_name, version=deployed_version))
        self.served = loaded
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow_alias, daemon=True)
        self._follower.start()

    def _load(self, ref: ModelRef) -> Scorer:
        return Scorer.of(load(ref), self.threshold)

    def _fits(self, loaded: Scorer) -> bool:
        """Whether the ingress's schema validates this version's requests; else hold it back."""
        if request_schema(loaded.model.features) == self.schema:
            return True
        self.held_back = {
            "version": str(loaded.model.version),
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
        return False

    def _follow_alias(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._refresh()
                self.reload_error = None
            except Exception as e:  # the registry may be briefly unreachable: keep serving
                self.reload_error = f"{type(e).__name__}: {e}"[:500]
                logger.exception("could not check %s@%s", self.model_name, self.alias)

    def _refresh(self) -> None:
        current = registry.aliased_version(self.model_name, self.alias)
        if current == self.served.model.version:
            self.held_back = {}  # the alias came back to what is served
            return
        if current is None or current == self.held_back.get("version"):
            return
        loaded = self._load(ModelRef(self.model_name, version=current))
        if self._fits(loaded):
            self.served, self.held_back = loaded, {}
            logger.info("%s@%s is now version %s", self.model_name, self.alias, current)

    def check_health(self) -> None:
        """Serve replaces a replica whose alias follower has died: it would serve a stale
        version forever. A registry outage is not a reason (a new replica could not load
        anything either); it shows in `/healthz` as `degraded`."""
        if not self._follower.is_alive():
            raise RuntimeError(f"{self.model_name}@{self.alias}: the alias follower stopped")

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
        """What this replica serves, any version it holds back, and a failing alias check."""
        return {
            "status": "degraded" if self.reload_error else "ok",
            "model_name": self.model_name,
            "alias": self.alias,
            "model_version": self.served.model.version,
            "held_back": self.held_back or None,
            "reload_error": self.reload_error,
        }

    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.served.predict(records)

    def explain(self, records: list[dict[str, Any]], top_k: int) -> dict[str, Any]:
        return self.served.explain(records, top_k)
