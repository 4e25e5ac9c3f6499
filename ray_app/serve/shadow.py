"""Shadow traffic: the candidate scores what the primary answered, in its own deployment, and
both answers are kept (`monitor.shadow`) for `rayapp shadow report`.

The router hands over batches of answered requests every fraction of a second, never awaiting
them on a request's path; this deployment's small queue sheds what it cannot take, so a slow
or failing shadow costs the router one dropped batch, never a client's latency.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from ray_app import tracking
from ray_app.data.store import open_store
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer
from ray_app.monitor.shadow import write


@serve.deployment(
    name="Shadow",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=1,
    max_queued_requests=2,
)
class ShadowScorer:
    """Scores mirrored requests with the shadow variant and writes both answers."""

    def __init__(self, store: str | None = None):
        tracking.configure()
        self.store = open_store(store)
        self._models: dict[str, LoadedModel] = {}

    def _model(self, version: str) -> LoadedModel:
        if version not in self._models:
            name, _, number = version.partition("/")
            self._models = {version: load(ModelRef(name, version=number))}  # one at a time
        return self._models[version]

    def compare(self, route: str, shadow: dict[str, Any], items: list[dict[str, Any]]) -> int:
        """Score each item's rows with the shadow; returns the rows written."""
        scorer = Scorer.of(self._model(shadow["version"]), shadow["threshold"])
        rows: list[dict[str, Any]] = []
        for item in items:
            start = time.perf_counter()
            error = ""
            try:
                proba = scorer.proba_records(item["rows"])
                labels = [str(x) for x in scorer.labels(proba)]
            except Exception as e:  # recorded: a shadow that fails is what the report is for
                proba, labels, error = (
                    [None] * len(item["rows"]),
                    [None] * len(item["rows"]),
                    repr(e),
                )
            latency = (time.perf_counter() - start) * 1000
            primary = item["primary"]
            for i in range(len(item["rows"])):
                rows.append(
                    {
                        "time": item["time"],
                        "request_id": item["request_id"],
                        "row": i,
                        "primary_variant": primary["variant"],
                        "primary_version": primary["version"],
                        "primary_probability": primary["probabilities"][i],
                        "primary_label": str(primary["labels"][i]),
                        "primary_latency_ms": primary["latency_ms"],
                        "shadow_variant": shadow["name"],
                        "shadow_version": shadow["version"],
                        "shadow_probability": None if proba[i] is None else float(proba[i]),
                        "shadow_label": labels[i],
                        "shadow_latency_ms": latency,
                        "shadow_error": error,
                    }
                )
        write(self.store, route, rows)
        return len(rows)
