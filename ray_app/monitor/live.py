"""Live quality on delayed labels: the four kinds of monitoring a managed model monitor offers,
beside drift (`monitor/drift.py`).

`live_quality` reads the labels `rayapp labels ingest` stored (`monitor/labels.py`) and judges
each served version on its labelled traffic: ROC-AUC, F1 at the answered label and
calibration per time bucket of prediction time, the gate's fairness criteria per sensitive
column (bias drift), and the change of mean |SHAP| per feature against the training data
(attribution drift). `LiveReport.breaches` is what the retraining loop acts on; each
version's figures go to an MLflow run, per bucket over time.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from sklearn import metrics as skm

from ray_app import tracking
from ray_app.data.store import DataStore
from ray_app.evaluate import checks, gate
from ray_app.features import encode_label
from ray_app.metrics import F1, ROC_AUC
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.scoring import Scorer
from ray_app.monitor.drift import EXPERIMENT, LiveLimits, MonitorConfig, reference
from ray_app.monitor.labels import LABEL_TIME, join, read_labels, read_log

ECE, ROWS, POSITIVES = "ece", "rows", "positives"


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
    now = now or dt.datetime.now(dt.UTC)
    since = since or now - dt.timedelta(seconds=cfg.live.window_s)
    log, served = read_log(store, model_name, since, now)
    report = LiveReport(
        model_name, since.isoformat(timespec="seconds"), now.isoformat(timespec="seconds")
    )
    if served is None:
        return report
    gates = gate.load_gates(cfg.live.gates)
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
