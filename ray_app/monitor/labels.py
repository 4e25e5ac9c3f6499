"""Delayed labels: outcomes that arrive after the answer, joined to the prediction log, and the
four kinds of live monitoring they make possible beside drift.

`ingest` reads a labels file (the contract's id and label columns, and `label_time` when the
outcome's time is known; else the time of ingest), refuses it whole on bad input with the
file, column and row counts, and appends what is new as Parquet under
`<store>/labels/model=<name>/`. Re-ingesting a file, or labels already stored for the same id
and time, adds nothing. A label belongs to the entity's latest logged prediction at or before
the label's time, within `live.max_label_delay_s`; a prediction takes one label (the latest),
so labels sent twice are never counted twice.

`live_quality` reads what was ingested and judges each served version on its labelled traffic:
ROC-AUC, F1 at the answered label and calibration per time bucket of prediction time, the
gate's fairness criteria per sensitive column (bias drift), and the change of mean |SHAP| per
feature against the training data (attribution drift). `LiveReport.breaches` is what a
retraining loop acts on; each version's figures go to an MLflow run, per bucket over time.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from mlflow.entities import Metric
from sklearn import metrics as skm

from ray_app import tracking
from ray_app.data.contract import NUMERIC_TYPES, ColumnSpec, Contract
from ray_app.data.ingest import (
    ARROW_TYPES,
    DataError,
    Source,
    csv_header,
    csv_options,
    dataset_version,
    read_problem,
)
from ray_app.data.store import DataStore
from ray_app.evaluate import checks, gate
from ray_app.features import encode_label
from ray_app.metrics import F1, ROC_AUC
from ray_app.model.loaded import LoadedModel, load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer
from ray_app.monitor.drift import EXPERIMENT, LiveLimits, MonitorConfig, reference
from ray_app.monitor.predictions import read

FOLDER = "labels"
LABEL_TIME = "label_time"  # optional column of a labels file: when the outcome was known
INGESTED, SOURCE, DIGEST = "_ingested_at", "_source", "_digest"  # stored beside each label
PREDICTION = ["_request_id", "_row", "_time"]  # one logged prediction
ECE, ROWS, POSITIVES = "ece", "rows", "positives"
TIMESTAMP = pa.timestamp("us", tz="UTC")
_EXAMPLES = 5


@dataclass
class IngestResult:
    """What one labels file added, and how its new labels joined the prediction log."""

    source: str
    rows: int
    stored: int  # new labels written
    duplicates: int  # already stored: the same file, or the same id, time and label
    matched: int  # new labels joined to a prediction
    late: int  # the id's latest prediction before the label is older than the horizon
    no_prediction: int  # the id has no prediction at or before the label's time
    ignored_columns: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"[labels] {self.source}: {self.rows:,} rows; {self.stored:,} new labels stored, "
            f"{self.duplicates:,} already stored",
            f"[labels] new labels joined: {self.matched:,} to a prediction, {self.late:,} too "
            f"late after their id's last prediction, {self.no_prediction:,} with none before",
        ]
        if self.ignored_columns:
            out.append(f"[labels] columns not read: {self.ignored_columns}")
        return out


@dataclass
class Joined:
    """Labels joined to logged predictions: each matched prediction with its label."""

    rows: pd.DataFrame
    labels: int
    matched: int
    late: int
    no_prediction: int
    superseded: int  # matched a prediction that a later label also matched


@dataclass
class Quality:
    """Live quality of labelled predictions made from `start` (a bucket, or the window)."""

    start: str
    rows: int
    positives: int
    roc_auc: float | None = None  # None: under `min_rows` rows, or one class only
    f1: float | None = None
    ece: float | None = None

    def figures(self) -> str:
        named = ((ROC_AUC, self.roc_auc), (F1, self.f1), (ECE, self.ece))
        return ", ".join(f"{name} {value:.4f}" for name, value in named if value is not None)


@dataclass
class VersionReport:
    version: str  # name/version, as logged
    logged: int  # predictions in the window
    labelled: int  # of them with a label
    window: Quality | None = None
    buckets: list[Quality] = field(default_factory=list)
    bias: list[dict[str, Any]] = field(default_factory=list)  # the gate's fairness checks
    attribution: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> figures
    breaches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mlflow_run_id: str = ""

    def lines(self) -> list[str]:
        out = [f"[live] {self.version}: {self.labelled:,} of {self.logged:,} predictions labelled"]
        if self.window and self.window.f1 is not None:
            out[0] += f"; {self.window.figures()}"
        if judged := [b for b in self.buckets if b.f1 is not None]:
            out.append(f"  latest bucket from {judged[-1].start}: {judged[-1].figures()}")
        out += [f"  bias: {check['reason']}" for check in self.bias]
        if self.attribution:
            name, top = max(self.attribution.items(), key=lambda kv: abs(kv[1]["change"]))
            out.append(f"  attribution: largest change {name} {top['change']:+.1%} of training's")
        out += [f"  note: {note}" for note in self.notes]
        out += [f"  BREACH {breach}" for breach in self.breaches]
        if self.mlflow_run_id:
            out.append(f"  report: MLflow run {self.mlflow_run_id} (live/live.json)")
        return out


@dataclass
class LiveReport:
    """Live quality, bias and attribution drift of every version served in the window."""

    model: str
    since: str
    until: str
    labels: int = 0  # labels stored with a time in the window
    matched: int = 0
    late: int = 0
    no_prediction: int = 0
    superseded: int = 0
    versions: list[VersionReport] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)  # non-empty: retrain (or roll back)

    def lines(self) -> list[str]:
        out = [
            f"[live] {self.model} from {self.since}: {self.labels:,} labels, {self.matched:,} "
            f"joined a prediction ({self.late:,} late, {self.no_prediction:,} with none before, "
            f"{self.superseded:,} superseded by a later label)"
        ]
        if not self.versions:
            out.append(f"[live] no predictions of {self.model} logged since {self.since}")
        return out + [line for version in self.versions for line in version.lines()]


def _refused(path: Path, rows: int, problems: list[str]) -> DataError:
    listed = "\n".join(f"  - {p}" for p in problems)
    return DataError(f"{path} ({rows:,} rows): refused, nothing stored:\n{listed}")


def _examples(values: pd.Series) -> list[str]:
    return [str(v) for v in values.head(_EXAMPLES)]


def _read_file(path: Path) -> pd.DataFrame:
    """A labels file: CSV with every column as text (type guessing would hide a bad value),
    or Parquet as typed."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if suffix not in (".csv", ".txt"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected .csv or .parquet")
    columns = csv_header(path)
    try:
        return pacsv.read_csv(path, **csv_options(columns)).to_pandas()
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: {read_problem(Source(path, 'csv', '', columns)) or e}") from None


def _label(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, np.ndarray]:
    """The label in the contract's type, and which rows miss it or hold a value not allowed."""
    text = raw.astype("string").str.strip()
    if spec.type in NUMERIC_TYPES:
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        whole = values == np.round(values) if spec.type == "integer" else True
        values = values.where(np.isfinite(values) & whole)
        values = values.astype("Int64") if spec.type == "integer" else values
    elif spec.type == "boolean":
        values = text.str.lower().map({"true": True, "false": False, "1": True, "0": False})
    else:
        values = text
    bad = values.isna()
    if spec.allowed is not None:
        bad |= ~values.isin(spec.allowed)
    return values, bad.to_numpy(dtype=bool)


def _parse(
    frame: pd.DataFrame, path: Path, contract: Contract, now: dt.datetime
) -> tuple[pd.DataFrame, list[str]]:
    """The file's labels as (id, label, label_time) and what is wrong with them."""
    key, target = contract.id_column, contract.label_column
    if key is None:
        raise DataError(f"contract {contract.name!r} has no id column: labels cannot be joined")
    missing = [c for c in (key, target) if c not in frame]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; a labels file holds the id column {key!r}, "
            f"the label column {target!r} and optionally {LABEL_TIME!r} "
            f"(found {list(frame.columns)})"
        )
    if frame.empty:
        raise DataError(f"{path}: no label rows")
    problems = []
    ids = frame[key].astype("string").str.strip()
    no_id = (ids.isna() | (ids == "")).to_numpy()
    if no_id.any():
        problems.append(f"column {key!r}: {no_id.sum():,} rows without an id")
    values, bad = _label(frame[target], contract.columns[target])
    if bad.any():
        problems.append(
            f"column {target!r}: {bad.sum():,} rows whose label is missing or not one of the "
            f"contract's allowed values {contract.columns[target].allowed}, "
            f"e.g. {_examples(frame[target][bad])}"
        )
    if LABEL_TIME in frame:
        when = pd.to_datetime(frame[LABEL_TIME], utc=True, errors="coerce", format="ISO8601")
        if (no_time := when.isna().to_numpy()).any():
            problems.append(
                f"column {LABEL_TIME!r}: {no_time.sum():,} rows without an ISO 8601 time, "
                f"e.g. {_examples(frame[LABEL_TIME][no_time])}"
            )
    else:
        when = pd.Series(pd.Timestamp(now), index=frame.index)
    labels = pd.DataFrame(
        {key: ids, target: values, LABEL_TIME: when.astype("datetime64[us, UTC]")}
    )
    repeated = labels.duplicated([key, LABEL_TIME], keep=False).to_numpy() & ~no_id
    if repeated.any():
        at = f"at the same {LABEL_TIME!r}" if LABEL_TIME in frame else "(the file has no times)"
        problems.append(
            f"column {key!r}: {repeated.sum():,} rows label an id another row labels too {at}, "
            f"e.g. {_examples(ids[repeated].drop_duplicates())}"
        )
    return labels, problems


def read_labels(store: DataStore, model_name: str) -> pd.DataFrame:
    """Every label ingested for a model (an empty frame before the first)."""
    where = store.path(FOLDER, f"model={model_name}")
    if store.fs.get_file_info(where).type == pafs.FileType.NotFound:
        return pd.DataFrame()
    return pads.dataset(where, filesystem=store.fs, format="parquet").to_table().to_pandas()


def _write(store: DataStore, model_name: str, labels: pd.DataFrame, contract: Contract) -> None:
    """One Parquet file, written under a hidden name and then renamed, so a reader never sees
    half of it (dataset discovery skips names starting with a dot)."""
    spec = contract.columns[contract.label_column]
    schema = pa.schema(
        [
            (contract.id_column, pa.string()),
            (contract.label_column, ARROW_TYPES[spec.type]),
            (LABEL_TIME, TIMESTAMP),
            (INGESTED, TIMESTAMP),
            (SOURCE, pa.string()),
            (DIGEST, pa.string()),
        ]
    )
    table = pa.Table.from_pandas(labels[schema.names], schema=schema, preserve_index=False)
    folder = store.path(FOLDER, f"model={model_name}")
    store.fs.create_dir(folder, recursive=True)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(table, posixpath.join(folder, f".{name}"), filesystem=store.fs)
    store.fs.move(posixpath.join(folder, f".{name}"), posixpath.join(folder, name))


def join(labels: pd.DataFrame, log: pd.DataFrame, contract: Contract, max_delay_s: float) -> Joined:
    """Each label to the latest prediction of its id at or before the label's time, when that
    is at most `max_delay_s` earlier; a prediction keeps only its latest label."""
    key = contract.id_column
    if labels.empty:
        return Joined(log.iloc[:0], 0, 0, 0, 0, 0)
    left = labels.assign(**{key: labels[key].astype(str)}).sort_values(LABEL_TIME)
    right = log.dropna(subset=[key]).sort_values("_time")
    right = right.assign(**{key: right[key].astype(str)})
    both = pd.merge_asof(
        left.assign(**{LABEL_TIME: left[LABEL_TIME].astype("datetime64[us, UTC]")}),
        right.assign(_time=right["_time"].astype("datetime64[us, UTC]")),
        left_on=LABEL_TIME,
        right_on="_time",
        by=key,
        direction="backward",
    )
    found = both["_time"].notna()
    within = found & (both[LABEL_TIME] - both["_time"] <= pd.Timedelta(seconds=max_delay_s))
    order = [LABEL_TIME, INGESTED] if INGESTED in both else [LABEL_TIME]
    matched = both[within].sort_values(order).drop_duplicates(PREDICTION, keep="last")
    return Joined(
        rows=matched.reset_index(drop=True),
        labels=len(both),
        matched=int(within.sum()),
        late=int((found & ~within).sum()),
        no_prediction=int((~found).sum()),
        superseded=int(within.sum()) - len(matched),
    )


def _served(log: pd.DataFrame) -> LoadedModel:
    """The version that answered most recently: its contract names the id and the label."""
    return load(ModelRef.parse(log.loc[log["_time"].idxmax(), "_model_version"]))


def ingest(
    path: str | Path,
    model_name: str,
    store: DataStore,
    cfg: MonitorConfig,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Validate a labels file against the served model's contract and its prediction log,
    store its new labels, and say how they joined. Bad input stores nothing (DataError)."""
    tracking.configure()
    path, now = Path(path).resolve(), now or dt.datetime.now(dt.timezone.utc)
    frame = _read_file(path)
    log = read(store, model_name).to_pandas()
    if log.empty:
        raise DataError(f"{path}: no predictions of {model_name!r} are logged in {store.uri}")
    contract = _served(log).contract
    labels, problems = _parse(frame, path, contract, now)
    key, target = contract.id_column, contract.label_column
    known = set(log[key].dropna().astype(str))
    unknown = labels[key].notna() & ~labels[key].isin(known)
    if unknown.any():
        problems.append(
            f"column {key!r}: {unknown.sum():,} rows with ids {model_name!r} never logged a "
            f"prediction for, e.g. {_examples(labels[key][unknown])}"
        )
    stored = read_labels(store, model_name)
    digest = dataset_version(path)
    if not problems and not stored.empty and digest in set(stored[DIGEST]):
        return IngestResult(str(path), len(labels), 0, len(labels), 0, 0, 0)
    if not stored.empty:
        old = stored[[key, target, LABEL_TIME]].drop_duplicates([key, LABEL_TIME], keep="last")
        old = old.astype({key: "string", LABEL_TIME: "datetime64[us, UTC]"})
        both = labels.merge(old, on=[key, LABEL_TIME], how="left", suffixes=("", "_stored"))
        seen = both[f"{target}_stored"].notna().to_numpy()
        differs = seen & (both[target] != both[f"{target}_stored"]).fillna(False).to_numpy()
        if differs.any():
            problems.append(
                f"column {target!r}: {differs.sum():,} rows contradict labels stored for the "
                f"same id and time, e.g. {_examples(labels[key][differs])}"
            )
        labels = labels[~seen]
    else:
        seen = np.zeros(len(labels), dtype=bool)
    if problems:
        raise _refused(path, len(frame), problems)
    labels = labels.assign(**{INGESTED: pd.Timestamp(now), SOURCE: str(path), DIGEST: digest})
    if not labels.empty:
        _write(store, model_name, labels, contract)
    joined = join(labels, log, contract, cfg.live.max_label_delay_s)
    ignored = [c for c in frame.columns if c not in (key, target, LABEL_TIME)]
    return IngestResult(
        str(path),
        len(frame),
        len(labels),
        int(seen.sum()),
        joined.matched,
        joined.late,
        joined.no_prediction,
        ignored,
    )


def _quality(
    start: str,
    y: np.ndarray,
    proba: np.ndarray,
    pred: np.ndarray,
    live: LiveLimits,
    calibration: gate.Calibration,
) -> Quality:
    q = Quality(start, len(y), int(y.sum()))
    if len(y) >= live.min_rows:
        q.f1 = float(skm.f1_score(y, pred, zero_division=0))
        q.ece = checks.calibration(y, proba, calibration).value
        if len(np.unique(y)) == 2:
            q.roc_auc = float(skm.roc_auc_score(y, proba))
    return q


def _floors(q: Quality, live: LiveLimits) -> list[str]:
    out = []
    for name, value, limit, floor in (
        (ROC_AUC, q.roc_auc, live.min_roc_auc, True),
        (F1, q.f1, live.min_f1, True),
        (ECE, q.ece, live.max_ece, False),
    ):
        if value is not None and (value < limit if floor else value > limit):
            bound = f"< floor {limit}" if floor else f"> ceiling {limit}"
            out.append(
                f"live {name} {value:.4f} {bound} on predictions from {q.start} "
                f"({q.rows:,} labelled rows)"
            )
    return out


def _attribution(
    model: LoadedModel, logged: pd.DataFrame, cfg: MonitorConfig, store: DataStore
) -> dict[str, dict[str, Any]]:
    """Mean |SHAP| per feature on live rows against the training reference; the change is a
    share of the reference's total, so a feature that carried little cannot flag on noise."""
    scorer, names = Scorer.of(model), model.features.feature_names

    def importance(rows: pd.DataFrame) -> dict[str, float]:
        found = checks.global_importance(scorer.shap(scorer.matrix(rows)), names)
        return {i["feature"]: i["mean_abs_shap"] for i in found}

    sample = logged.sample(n=min(len(logged), cfg.reference_rows), random_state=cfg.seed)
    live = importance(sample)
    ref = importance(reference(model, store, cfg.reference_rows, cfg.seed))
    total = sum(ref.values()) or 1.0
    return {
        name: {
            "live": live[name],
            "reference": ref[name],
            "change": (live[name] - ref[name]) / total,
            "drifted": abs(live[name] - ref[name]) / total > cfg.live.max_attribution_change,
        }
        for name in names
    }


def _judge(
    model: LoadedModel,
    logged: pd.DataFrame,
    labelled: pd.DataFrame,
    cfg: MonitorConfig,
    limits: gate.GateLimits,
    store: DataStore,
    since: str,
) -> VersionReport:
    live, contract = cfg.live, model.contract
    report = VersionReport(f"{model.name}/{model.version}", len(logged), len(labelled))
    if labelled.empty:
        report.notes.append("no labelled predictions: quality and bias not judged")
    else:
        y = encode_label(labelled, contract)
        proba = labelled["_probability"].to_numpy()
        pred = (labelled["_label"] == str(contract.positive_label)).to_numpy(np.int32)
        calibration = limits.calibration.model_copy(update={"max_ece": live.max_ece})
        report.window = _quality(since, y, proba, pred, live, calibration)
        starts = labelled["_time"].dt.floor(f"{live.bucket_s}s")
        for start in sorted(starts.unique()):
            at = (starts == start).to_numpy()
            report.buckets.append(
                _quality(start.isoformat(), y[at], proba[at], pred[at], live, calibration)
            )
        judged = [b for b in report.buckets if b.f1 is not None]
        if judged:
            report.breaches += _floors(judged[-1], live)
        else:
            report.notes.append(f"no time bucket has {live.min_rows} labelled rows yet")
        # The gate's criteria and bounds; a group is judged from the live minimum of rows too,
        # so a small day of labels cannot call a breach on noise.
        at_least = max(limits.fairness.min_rows, live.min_rows)
        fairness = limits.fairness.model_copy(update={"min_rows": at_least})
        sensitive = [c for c in contract.sensitive_columns if c in labelled]
        bias = checks.fairness(labelled, y, pred, sensitive, fairness)
        report.bias = [asdict(c) for c in bias]
        report.breaches += [f"bias: {c.reason}" for c in bias if not c.passed]
    if len(logged) >= live.min_rows:
        report.attribution = _attribution(model, logged, cfg, store)
        report.breaches += [
            f"attribution drift: {name} mean |SHAP| {a['live']:.4f} against {a['reference']:.4f}"
            f" in training ({a['change']:+.1%} of the total > {live.max_attribution_change:.0%})"
            for name, a in report.attribution.items()
            if a["drifted"]
        ]
    else:
        report.notes.append(f"{len(logged)} predictions: attribution needs {live.min_rows}")
    report.breaches = [f"{report.version}: {b}" for b in report.breaches]
    return report


def live_quality(
    model_name: str,
    cfg: MonitorConfig,
    store: DataStore,
    since: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> LiveReport:
    """Judge every version that answered between `since` (default: `live.window_s` before
    `now`) and `now` on the labels ingested so far; one MLflow run per version."""
    tracking.configure()
    now = now or dt.datetime.now(dt.timezone.utc)
    since = since or now - dt.timedelta(seconds=cfg.live.window_s)
    log = read(store, model_name, since).to_pandas()
    log = log[log["_time"] <= pd.Timestamp(now)] if not log.empty else log
    report = LiveReport(
        model_name, since.isoformat(timespec="seconds"), now.isoformat(timespec="seconds")
    )
    if log.empty:
        return report
    gates = gate.load_gates(cfg.live.gates)
    served = _served(log)
    labels = read_labels(store, model_name)
    if not labels.empty:
        labels = labels[labels[LABEL_TIME] >= pd.Timestamp(since)]
    joined = join(labels, log, served.contract, cfg.live.max_label_delay_s)
    report.labels, report.matched = joined.labels, joined.matched
    report.late, report.no_prediction = joined.late, joined.no_prediction
    report.superseded = joined.superseded
    for version, logged in log.groupby("_model_version"):
        model = served if version == f"{served.name}/{served.version}" else load(str(version))
        labelled = joined.rows[joined.rows["_model_version"] == version]
        limits = gates.for_model(str(model.name))
        judged = _judge(model, logged, labelled, cfg, limits, store, report.since)
        judged.mlflow_run_id = _log(report, judged, model, cfg.live)
        report.versions.append(judged)
        report.breaches += judged.breaches
    return report


def _log(report: LiveReport, version: VersionReport, model: LoadedModel, live: LiveLimits) -> str:
    """One run per version: quality per bucket as metric series (step: the bucket's number
    since the epoch, timestamp: its start), window figures, bias, attribution, and the JSON."""
    now_ms = int(time.time() * 1000)
    series = []
    for b in version.buckets:
        at_ms = int(pd.Timestamp(b.start).timestamp() * 1000)
        step = at_ms // (live.bucket_s * 1000)
        figures = {ROWS: b.rows, POSITIVES: b.positives, ROC_AUC: b.roc_auc, F1: b.f1, ECE: b.ece}
        series += [
            Metric(f"live_{k}", float(v), at_ms, step) for k, v in figures.items() if v is not None
        ]
    single: dict[str, float | None] = {}
    if version.window:
        w = version.window
        single |= {f"window_{ROWS}": w.rows, f"window_{ROC_AUC}": w.roc_auc, f"window_{F1}": w.f1}
        single |= {f"window_{ECE}": w.ece}
    single |= {f"bias/{c['name'].replace(' ', '_')}": c["value"] for c in version.bias}
    single |= {f"attribution_change/{f}": a["change"] for f, a in version.attribution.items()}
    series += [Metric(k, float(v), now_ms, 0) for k, v in single.items() if v is not None]
    tags = {
        "model_name": str(model.name),
        "model_version": str(model.version),
        "kind": "live",
        "served_as": report.model,
        "verdict": "breach" if version.breaches else "ok",
    }
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(EXPERIMENT),
        run_name=f"live {version.version}",
        tags=tags,
    ) as run:
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=series)
        header = {k: v for k, v in asdict(report).items() if k not in ("versions", "breaches")}
        mlflow.log_dict({**header, **asdict(version)}, "live/live.json")
    return run.info.run_id
