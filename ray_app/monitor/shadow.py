"""Shadow records: what the primary answered and what the shadow variant scored for the same
rows, and the report that compares them (`rayapp shadow report`).

The Serve deployment that scores mirrored requests (`serve.shadow.ShadowScorer`) writes them
here; readers (the CLI, notebooks) need neither Serve nor a cluster. Records are Parquet files
(one per batch, one row per scored instance) under `<store>/shadow/<model>/date=YYYY-MM-DD/`,
readable by Ray Data and pyarrow alike.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ray_app.data.store import DataStore

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


def write(store: DataStore, route: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    day = dt.datetime.fromtimestamp(rows[0]["time"], dt.UTC).date()
    folder = store.path(FOLDER, route, f"date={day}")
    store.fs.create_dir(folder, recursive=True)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)  # typed even when a batch is all errors
    # Under a hidden name, then renamed, as the prediction log is written: readers skip names
    # starting with a dot, so a replica killed mid-write leaves no half file they would read.
    hidden = posixpath.join(folder, f".{name}")
    pq.write_table(table, hidden, filesystem=store.fs)
    store.fs.move(hidden, posixpath.join(folder, name))


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
        "from": dt.datetime.fromtimestamp(frame["time"].min(), dt.UTC).isoformat(),
        "to": dt.datetime.fromtimestamp(frame["time"].max(), dt.UTC).isoformat(),
    }


def _percentiles(values: np.ndarray, qs: tuple[int, ...]) -> dict[str, float | None]:
    if not len(values):
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}
