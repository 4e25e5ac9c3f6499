"""Shadow traffic: the candidate scores what the primary answered, in its own deployment, and
both answers are kept for `rayapp shadow report`.

The router hands over batches of answered requests every fraction of a second, never awaiting
them on a request's path; this deployment's small queue sheds what it cannot take, so a slow
or failing shadow costs the router one dropped batch, never a client's latency. Records are
Parquet files (one per batch, one row per scored instance) under
`<store>/shadow/<model>/date=YYYY-MM-DD/`, readable by Ray Data and pyarrow alike.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from ray import serve

from ray_app import tracking
from ray_app.data.store import DataStore, open_store
from ray_app.model.loaded import LoadedModel, load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer

logger = logging.getLogger("ray.serve")
FOLDER = "shadow"
SCHEMA = pa.schema(
    [
        ("time", pa.float64()),
        ("request_id", pa.string()),
        ("row", pa.int64()),
        ("primary_variant", pa.string()),
        ("primary_version", pa.string()),
        ("primary_probability", pa.float64()),
        ("primary_label", pa.string()),
        ("primary_latency_ms", pa.float64()),
        ("shadow_variant", pa.string()),
        ("shadow_version", pa.string()),
        ("shadow_probability", pa.float64()),
        ("shadow_label", pa.string()),
        ("shadow_latency_ms", pa.float64()),
        ("shadow_error", pa.string()),
    ]
)


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


def write(store: DataStore, route: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    day = dt.datetime.fromtimestamp(rows[0]["time"], dt.timezone.utc).date()
    folder = store.path(FOLDER, route, f"date={day}")
    store.fs.create_dir(folder, recursive=True)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)  # typed even when a batch is all errors
    pq.write_table(table, posixpath.join(folder, name), filesystem=store.fs)


def report(store: DataStore, route: str, since: float | None = None) -> dict[str, Any]:
    """Agreement, score differences and latency of the shadow against the primary."""
    where = store.path(FOLDER, route)
    found = store.fs.get_file_info(where)
    if found.type.name == "NotFound":
        return {"model": route, "requests": 0, "rows": 0}
    table = pads.dataset(
        where, filesystem=store.fs, format="parquet", partitioning="hive"
    ).to_table()
    frame = table.to_pandas()
    if since is not None:
        frame = frame[frame["time"] >= since]
    if frame.empty:
        return {"model": route, "requests": 0, "rows": 0}
    scored = frame[frame["shadow_error"] == ""]
    diff = (scored["shadow_probability"] - scored["primary_probability"]).to_numpy(float)
    first = frame.drop_duplicates("request_id")
    pct = _percentiles
    return {
        "model": route,
        "requests": int(len(first)),
        "rows": int(len(frame)),
        "primary": sorted(frame["primary_version"].unique().tolist()),
        "shadow": sorted(frame["shadow_version"].unique().tolist()),
        "shadow_errors": int((first["shadow_error"] != "").sum()),
        "agreement_rate": float((scored["shadow_label"] == scored["primary_label"]).mean())
        if len(scored)
        else None,
        "score_difference": {
            "mean": float(diff.mean()) if len(diff) else None,
            **{f"abs_{k}": v for k, v in pct(np.abs(diff), (50, 95, 99)).items()},
            "abs_max": float(np.abs(diff).max()) if len(diff) else None,
        },
        "shadow_latency_ms": pct(first["shadow_latency_ms"].to_numpy(float), (50, 95, 99)),
        "primary_latency_ms": pct(first["primary_latency_ms"].to_numpy(float), (50, 95, 99)),
        "from": dt.datetime.fromtimestamp(frame["time"].min(), dt.timezone.utc).isoformat(),
        "to": dt.datetime.fromtimestamp(frame["time"].max(), dt.timezone.utc).isoformat(),
    }


def _percentiles(values: np.ndarray, qs: tuple[int, ...]) -> dict[str, float | None]:
    if not len(values):
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}
