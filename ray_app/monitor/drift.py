"""Drift of a served model: a recent window of its prediction log against the data its version
was trained on, with Evidently's own drift preset where it fits.

- Feature drift: Evidently's `DataDriftPreset`, pinned to KS for numeric and chi-squared for
  categorical features (its default switches to distances past 1,000 reference rows), drifted
  where p < `feature_drift.p_value`; the data drifts when `feature_drift.share` of them do.
- Prediction drift: the window's mean probability against the reference rows scored by the same
  version, as a relative shift (the canary's rule, `prediction_drift`).
- Data quality: null share per column above the reference's, and values outside the contract's
  range or categories.

Thresholds come from `configs/monitor.yaml`. The verdict, Evidently's HTML report and a JSON
summary are logged to MLflow as a run tagged with the served version.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from pydantic import Field

from ray_app import registry, tracking
from ray_app.config import Strict, load_yaml
from ray_app.data.contract import Contract
from ray_app.data.snapshot import find_snapshot, parquet
from ray_app.data.store import DataStore
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer
from ray_app.monitor import predictions
from ray_app.monitor.predictions import read

EXPERIMENT = "ray_app-monitor"
PROBABILITY = "_probability"


class FeatureDriftLimits(Strict):
    p_value: float = Field(0.05, gt=0, lt=1)
    share: float = Field(0.5, gt=0, le=1)
    # The tests see a seeded sample of a larger window: against a few thousand reference rows
    # more rows hardly add power, and Evidently's time and memory grow with them.
    max_rows: int = Field(100_000, ge=1000)


class PredictionDriftLimits(Strict):
    max_mean_shift: float = Field(0.15, ge=0)
    score_floor: float = Field(0.05, gt=0)


class QualityLimits(Strict):
    max_null_increase: float = Field(0.10, ge=0)
    max_out_of_range: float = Field(0.01, ge=0)


class LiveLimits(Strict):
    """Delayed labels (`rayapp labels ingest`, monitor/labels.py): the join horizon, the time
    buckets, and floors on live quality. Fairness limits and their meaning are the gate's
    (`gates`, the model's entry), so live traffic is judged as the candidate was."""

    gates: Path = Path("configs/gates.yaml")  # relative: to the working directory
    window_s: float = Field(30 * 86400, gt=0)
    bucket_s: int = Field(86400, ge=1)
    max_label_delay_s: float = Field(30 * 86400, gt=0)
    min_rows: int = Field(200, ge=1)
    min_roc_auc: float = Field(0.75, ge=0, le=1)
    min_f1: float = Field(0.5, ge=0, le=1)
    max_ece: float = Field(0.1, ge=0, le=1)
    max_attribution_change: float = Field(0.1, gt=0)


class MonitorConfig(Strict):
    window_s: float = Field(3600, gt=0)
    min_rows: int = Field(200, ge=1)
    reference_rows: int = Field(5000, ge=100)
    seed: int = 0
    feature_drift: FeatureDriftLimits = FeatureDriftLimits()
    prediction_drift: PredictionDriftLimits = PredictionDriftLimits()
    data_quality: QualityLimits = QualityLimits()
    live: LiveLimits = LiveLimits()


def load_monitor_config(path: Path) -> MonitorConfig:
    return MonitorConfig.model_validate(load_yaml(path))


@dataclass
class DriftSummary:
    """What `rayapp monitor` decided, and the figures behind it."""

    model: str
    version: str
    window_from: str
    window_to: str
    rows: int
    reference_rows: int
    verdict: str  # "drift", "no drift" or "too few rows"
    reasons: list[str] = field(default_factory=list)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)  # column -> p, drifted
    drifted_share: float = 0.0
    prediction: dict[str, float] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    mlflow_run_id: str = ""

    @property
    def drifted(self) -> bool:
        return self.verdict == "drift"


def reference(model: LoadedModel, store: DataStore, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of the snapshot the version was trained on (its lineage names it),
    read with pyarrow: a few thousand rows need no Ray job."""
    version = model.lineage.get("dataset_version")
    if not version:
        raise registry.RegistryError(f"{model.name} v{model.version} names no dataset_version")
    data = parquet(find_snapshot(store, version, None))
    count = data.count_rows()
    if count > rows:
        picked = np.sort(np.random.default_rng(seed).choice(count, rows, replace=False))
        return data.take(picked).to_pandas()
    return data.to_table().to_pandas()


def _features(contract: Contract, model: LoadedModel) -> tuple[list[str], list[str]]:
    """The raw input columns that are features, numeric and categorical (dates feed derived
    features; their drift shows there)."""
    inputs = set(contract.input_columns)
    numeric = [c for c in model.features.numeric if c in inputs]
    categorical = [c for c in model.features.categorical if c in inputs]
    return numeric, categorical


def _feature_drift(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    cfg: MonitorConfig,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    from evidently import DataDefinition, Dataset, Report  # 3 s to import: only here
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    columns = [*numeric, *categorical]
    preset = DataDriftPreset(
        columns=columns,
        num_method="ks",
        cat_method="chisquare",
        threshold=cfg.feature_drift.p_value,
        drift_share=cfg.feature_drift.share,
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(cur[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(ref[columns], data_definition=definition),
    )
    found = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            p = float(metric["value"])
            found[config["column"]] = {
                "method": config["method"],
                "p_value": p,
                "drifted": p < cfg.feature_drift.p_value,
            }
    return snapshot, found


def _quality(
    ref: pd.DataFrame, cur: pd.DataFrame, contract: Contract, columns: list[str]
) -> dict[str, dict[str, float]]:
    out = {}
    for name in columns:
        spec, values = contract.columns[name], cur[name]
        outside = pd.Series(False, index=values.index)
        if spec.allowed:
            outside |= values.notna() & ~values.isin(spec.allowed)
        if spec.min is not None and pd.api.types.is_numeric_dtype(values):
            outside |= values < spec.min
        if isinstance(spec.max, int | float) and pd.api.types.is_numeric_dtype(values):
            outside |= values > spec.max
        out[name] = {
            "null_share": float(values.isna().mean()),
            "reference_null_share": float(ref[name].isna().mean()),
            "out_of_range_share": float(outside.mean()),
        }
    return out


def run(
    model_name: str, cfg: MonitorConfig, store: DataStore, now: dt.datetime | None = None
) -> DriftSummary:
    """Judge the last `window_s` of the served (production) version's traffic."""
    tracking.configure()
    now = now or dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(seconds=cfg.window_s)
    model = load(ModelRef(model_name, alias=registry.PRODUCTION))
    served = f"{model.name}/{model.version}"
    numeric, categorical = _features(model.contract, model)
    columns = [*numeric, *categorical, PROBABILITY]
    logged = predictions.schema(model.contract)  # files from before a column was added: nulls
    log = read(store, model_name, since, now, columns, served, logged).to_pandas()
    summary = DriftSummary(
        model_name, str(model.version), since.isoformat(), now.isoformat(), len(log), 0, ""
    )
    if len(log) < cfg.min_rows:
        summary.verdict = "too few rows"
        summary.reasons = [
            f"{len(log)} logged rows of {served} since {since:%F %T}; need {cfg.min_rows}"
        ]
        return summary
    contract = model.contract
    ref = reference(model, store, cfg.reference_rows, cfg.seed)
    summary.reference_rows = len(ref)
    cap = cfg.feature_drift.max_rows  # the mean shift and data quality count every row
    tested = log.sample(cap, random_state=cfg.seed) if len(log) > cap else log
    snapshot, summary.features = _feature_drift(ref, tested, numeric, categorical, cfg)
    drifted = sorted(c for c, f in summary.features.items() if f["drifted"])
    summary.drifted_share = len(drifted) / max(len(summary.features), 1)
    if drifted and summary.drifted_share >= cfg.feature_drift.share:
        summary.reasons.append(
            f"feature drift: {len(drifted)} of {len(summary.features)} features "
            f"({', '.join(drifted)}) at p < {cfg.feature_drift.p_value}"
        )
    ref_mean = float(Scorer.of(model).proba(ref).mean())
    cur_mean = float(log[PROBABILITY].mean())
    shift = abs(cur_mean - ref_mean) / max(ref_mean, cfg.prediction_drift.score_floor)
    summary.prediction = {"reference_mean": ref_mean, "mean": cur_mean, "relative_shift": shift}
    if shift > cfg.prediction_drift.max_mean_shift:
        summary.reasons.append(
            f"prediction drift: mean probability {cur_mean:.4f} against {ref_mean:.4f} "
            f"({shift:.0%} > {cfg.prediction_drift.max_mean_shift:.0%})"
        )
    summary.quality = _quality(ref, log, contract, [*numeric, *categorical])
    limits = cfg.data_quality
    for name, q in summary.quality.items():
        if q["null_share"] - q["reference_null_share"] > limits.max_null_increase:
            summary.reasons.append(f"data quality: {name} nulls {q['null_share']:.1%}")
        if q["out_of_range_share"] > limits.max_out_of_range:
            summary.reasons.append(
                f"data quality: {name} out of the contract's range in "
                f"{q['out_of_range_share']:.1%} of rows"
            )
    summary.verdict = "drift" if summary.reasons else "no drift"
    summary.mlflow_run_id = _log(summary, snapshot, model)
    return summary


def _log(summary: DriftSummary, snapshot: Any, model: LoadedModel) -> str:
    """The verdict, Evidently's HTML and the JSON summary, as an MLflow run tagged with the
    served version and its training run."""
    tags = {
        "model_name": summary.model,
        "model_version": summary.version,
        "model_run_id": model.lineage.get("run_id", ""),
        "dataset_version": model.lineage.get("dataset_version", ""),
        "verdict": summary.verdict,
    }
    with mlflow.start_run(
        experiment_id=tracking.experiment_id(EXPERIMENT),
        run_name=f"monitor {summary.model}/{summary.version}",
        tags=tags,
    ) as run:
        mlflow.log_metrics(
            {
                "rows": summary.rows,
                "drifted_share": summary.drifted_share,
                "prediction_relative_shift": summary.prediction["relative_shift"],
            }
        )
        with tempfile.TemporaryDirectory() as folder:
            snapshot.save_html(str(Path(folder) / "drift.html"))
            summary.mlflow_run_id = run.info.run_id
            (Path(folder) / "drift.json").write_text(json.dumps(asdict(summary), indent=2))
            mlflow.log_artifacts(folder, "monitor")
    return run.info.run_id
