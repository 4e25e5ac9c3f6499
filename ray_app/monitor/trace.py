"""Lineage to the row: from one logged prediction back to everything that produced it.

`trace(store, request_id)` finds a request's rows in the prediction log
(`ray_app.monitor.predictions`) and then asks the registry and MLflow about each version that
answered them: the registered version, its training run, the dataset version and snapshot it
was trained on, the gate's verdict and report, the commit, and the aliases it held when it
answered.

The log is scanned with pyarrow, never loaded whole: each `date=` folder in range is one
dataset whose scan reads only the `_request_id` (and, with `since`, `_time`) column of its
files, filtered in C++, keeps no file's metadata once read, and returns the names of the files
that hold the request; only those files are then read whole, filtered again. `since` bounds
the scan to the dates from it on; a model name bounds it to its `model=` partition. On a 1M-row
log of 10,800 files (3 hours at one flush a second) a trace takes about 2 s, in about 100 MB
(`bench/RESULTS.md`, monitor_drift).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from ray_app import registry, tracking
from ray_app.data.store import DataStore
from ray_app.errors import RayAppError
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.monitor.predictions import FOLDER

REQUEST_ID, TIME = "_request_id", "_time"
# The gate job's run tag and report folder (evaluate/job.py): read here, without importing the
# gate, as MLflow's UI shows them.
GATE_TAG, GATE_DIR, GATE_PAGE = "gate", "gate", "gate.html"
_KEYS = pa.schema([(REQUEST_ID, pa.string()), (TIME, pa.timestamp("us", tz="UTC"))])


class TraceNotFound(RayAppError, LookupError):
    """No logged row carries the request id; the message says where the search looked."""


@dataclass(frozen=True)
class TracedRow:
    """One answered row of the request, as the log has it."""

    time: str  # ISO 8601, UTC
    row: int  # its index in the request's `instances`
    entity_id: Any  # the contract's id column; None when the row did not carry it
    variant: str
    model_version: str  # "name/version"
    probability: float
    label: str


@dataclass
class VersionLineage:
    """Everything that produced one answering version."""

    model: str
    version: str
    run_id: str
    run_name: str
    dataset_version: str
    data_snapshot: str
    data_source: str
    gate: str  # the gate's verdict on the run: "passed", "failed" or "not gated"
    gate_report: str  # where the report is ("" when never gated)
    git_commit: str
    threshold: float
    id_column: str | None  # the contract's entity id, as the log's rows carry it
    aliases_then: list[str] = field(default_factory=list)  # held when the request came
    test_metrics: dict[str, float] = field(default_factory=dict)
    config: str = ""  # the run's logged pipeline config


@dataclass
class Trace:
    request_id: str
    rows: list[TracedRow]
    versions: list[VersionLineage]
    files: list[str]  # the log files that hold the rows


def since_time(text: str) -> dt.datetime:
    """A `--since` value: an ISO date or time (`2026-11-25`, `2026-11-25T14:00`), UTC unless it
    names its zone. Raises ValueError."""
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def describe(found: Trace) -> list[str]:
    """The trace as a person reads it: the rows, then each version's lineage."""
    lines = [f"[trace] request {found.request_id}: {len(found.rows)} logged row(s)"]
    for r in found.rows:
        lines.append(
            f"  row {r.row:<3} {r.time}  id {r.entity_id if r.entity_id is not None else '-'}  "
            f"{r.variant}  {r.model_version}  probability {r.probability:.4f}  label {r.label}"
        )
    for v in found.versions:
        held = ", ".join(v.aliases_then) or "no alias"
        auc = v.test_metrics.get("test_roc_auc")
        lines += [
            f"[trace] {v.model}/{v.version} ({held} when it answered; threshold {v.threshold:g})",
            f"  run       {v.run_id} ({v.run_name})"
            + (f", test roc_auc {auc:.4f}" if auc is not None else ""),
            f"  data      version {v.dataset_version}, snapshot {v.data_snapshot}",
            f"  source    {v.data_source}",
            f"  gate      {v.gate}" + (f", report {v.gate_report}" if v.gate_report else ""),
            f"  commit    {v.git_commit}",
            f"  config    {v.config}",
        ]
    lines += [f"[trace] log file {f}" for f in found.files]
    return lines


def _date_folders(store: DataStore, model: str | None, since: dt.datetime | None) -> list[str]:
    """The log's `model=/date=` folders to scan (one model's or every model's), newest first,
    from `since`'s date on."""
    models = [f"model={model}"] if model else store.folders(FOLDER)
    first = "" if since is None else f"date={since.astimezone(dt.UTC).date()}"
    found = [
        posixpath.join(m, d)
        for m in models
        if m.startswith("model=")
        for d in store.folders(FOLDER, m)
        if d.startswith("date=") and d >= first
    ]
    return sorted(found, key=lambda p: p.split("/")[-1], reverse=True)


def _holding(store: DataStore, folder: str, wanted: pads.Expression, checked: bool) -> list[str]:
    """The files of one log folder that hold matching rows. A fixed two-column schema: files
    of other contracts or versions never conflict. `checked` skips files that are not whole
    Parquet, at the cost of opening every file first."""
    data = pads.dataset(
        store.path(FOLDER, folder),
        schema=_KEYS,
        filesystem=store.fs,
        format="parquet",
        exclude_invalid_files=checked,
    )
    found = data.to_table(columns=["__filename"], filter=wanted, cache_metadata=False)
    return sorted(set(found.column("__filename").to_pylist()))


def find_rows(
    store: DataStore, request_id: str, model: str | None = None, since: dt.datetime | None = None
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The logged rows of a request (each with every column its file has), the files that
    hold them, and the folders searched."""
    wanted = pads.field(REQUEST_ID) == request_id
    if since is not None:
        wanted &= pads.field(TIME) >= pa.scalar(since, pa.timestamp("us", "UTC"))
    folders = _date_folders(store, model, since)
    files: list[str] = []
    for folder in folders:
        try:
            hits = _holding(store, folder, wanted, checked=False)
        except pa.ArrowInvalid:  # a file not whole (being flushed, or a killed replica's)
            hits = _holding(store, folder, wanted, checked=True)
        files += hits
    rows = []
    for path in files:
        rows += pq.read_table(path, filesystem=store.fs, filters=wanted).to_pylist()
    rows.sort(key=lambda r: (r[TIME], r["_row"]))
    shown = [store.url(posixpath.relpath(f, store.root)) for f in files]
    return rows, shown, [store.url(FOLDER, f) for f in folders]


def _aliases_then(name: str, version: str, when: dt.datetime) -> list[str]:
    """The aliases that pointed at the version at `when`, by the registry's audit trail."""
    latest: dict[str, str] = {}
    for move in registry.alias_history(name):  # oldest first
        if dt.datetime.fromisoformat(move.when) <= when:
            latest[move.alias] = move.to_version
    return sorted(alias for alias, held in latest.items() if held == version)


def version_lineage(name: str, version: str, when: dt.datetime) -> VersionLineage:
    """A registered version's run, data, gate and commit, and its aliases at `when`."""
    model = load(ModelRef(name, version=version))
    tags = model.lineage
    run = mlflow.get_run(tags["run_id"])
    gate = run.data.tags.get(GATE_TAG, "not gated")
    report = registry.gate_report(name, version) or ""
    if not report and gate != "not gated":  # judged, but moved no alias (or failed)
        pages = mlflow.MlflowClient().list_artifacts(run.info.run_id, GATE_DIR)
        report = next(
            (f"{run.info.artifact_uri}/{f.path}" for f in pages if f.path.endswith(GATE_PAGE)), ""
        )
    return VersionLineage(
        model=name,
        version=version,
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        dataset_version=tags.get("dataset_version", ""),
        data_snapshot=tags.get("data_snapshot", ""),
        data_source=tags.get("data_source", ""),
        gate=gate,
        gate_report=report,
        git_commit=tags.get(MLFLOW_GIT_COMMIT, ""),
        threshold=model.threshold,
        id_column=model.contract.id_column,
        aliases_then=_aliases_then(name, version, when),
        test_metrics={k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
        config=f"{run.info.artifact_uri}/{tracking.CONFIG_ARTIFACT}",
    )


def trace(
    store: DataStore,
    request_id: str,
    model: str | None = None,
    since: dt.datetime | None = None,
    flush_s: float | None = None,
) -> Trace:
    """The request's rows and the lineage of every version that answered them. Raises
    `TraceNotFound` naming where it looked; `flush_s` (the log's flush interval) is said there,
    since a request answered a moment ago may not be written yet."""
    rows, files, searched = find_rows(store, request_id, model, since)
    if not rows:
        scope = [f"model={model}" if model else "", f"date>={since:%F}" if since else ""]
        none = " ".join(["no partition", *filter(None, scope)])
        where = ", ".join(searched) or f"{store.url(FOLDER)} ({none})"
        every = f"{flush_s:g} s" if flush_s else "`prediction_log.flush_s` seconds"
        bound = f" from {since.isoformat()}" if since else ""
        raise TraceNotFound(
            f"request id {request_id!r} is not in the prediction log{bound}; searched {where}. "
            f"The log is flushed every {every}, so a request answered within that is not "
            "there yet; rows the log refused when its buffer was full never are "
            "(ray_rayapp_unlogged_rows)"
        )
    tracking.configure()
    versions: dict[str, VersionLineage] = {}
    traced = []
    for r in rows:
        served = r["_model_version"]
        if served not in versions:
            name, number = served.rsplit("/", 1)
            versions[served] = version_lineage(name, number, r[TIME])
        key = versions[served].id_column
        traced.append(
            TracedRow(
                time=r[TIME].isoformat(),
                row=r["_row"],
                entity_id=r.get(key) if key else None,
                variant=r["_variant"],
                model_version=served,
                probability=r["_probability"],
                label=r["_label"],
            )
        )
    return Trace(request_id, traced, list(versions.values()), files)
