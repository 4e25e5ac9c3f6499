"""`rayapp gate --run RUN_ID`: every check on a candidate model, a report, and the alias moves.

The candidate is the model logged in the run; the data is the run's own data version, split
by id exactly as in training, so the test rows are frozen. The decision threshold is chosen
on validation rows. The champion is whatever `production` points at, scored on the same rows.
Passing moves `staging`, then `production` (per `promotion`); failing moves nothing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ray_app import features, registry
from ray_app.config import PipelineConfig
from ray_app.data.snapshot import find_snapshot, read_snapshot
from ray_app.data.split import split_dataset
from ray_app.data.store import open_store
from ray_app.evaluate import checks
from ray_app.evaluate.gate import thresholds
from ray_app.evaluate.report import render_html

STAGING = "staging"
REPORT_DIR = "gate"


@dataclass
class GateReport:
    model_name: str
    version: str
    run_id: str
    dataset_version: str
    threshold: float
    metrics: dict[str, Any]
    champion_version: str | None
    results: list[checks.CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[str]:
        return [f"{r.dimension}: {r.reason}" for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _version_of_run(name: str, run_id: str) -> str:
    found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not found:
        raise registry.RegistryError(f"run {run_id} has no registered version of {name}")
    return str(max(int(v.version) for v in found))


def _frames(cfg: PipelineConfig, dataset_version: str, fs: features.FeatureSet) -> dict:
    """Validation and test rows of the run's data version, as raw columns."""
    contract = fs.parsed_contract()
    snap = find_snapshot(open_store(cfg.data.store), dataset_version, None)
    splits = split_dataset(read_snapshot(snap), contract.id_column, cfg.data.split)
    return {k: splits[k].to_pandas() for k in ("valid", "test")}


def _proba(model: registry.LoadedModel, frame: pd.DataFrame) -> np.ndarray:
    return model.booster.inplace_predict(features.transform(frame, model.features))


def evaluate(cfg: PipelineConfig, run_id: str) -> GateReport:
    """Score the run's model and its champion and run every check; moves nothing."""
    name = cfg.tracking.model_name
    version = _version_of_run(name, run_id)
    candidate = registry.load_version(name, version)
    contract = candidate.features.parsed_contract()
    dataset_version = MlflowClient().get_run(run_id).data.tags["dataset_version"]
    frames = _frames(cfg, dataset_version, candidate.features)
    limits = thresholds(cfg.gates, name)
    y = {k: features.encode_label(f, contract) for k, f in frames.items()}
    proba = _proba(candidate, frames["test"])
    threshold = checks.choose_threshold(y["valid"], _proba(candidate, frames["valid"]))
    metrics = checks.full_metrics(y["test"], proba, threshold)
    pred = (proba >= threshold).astype(int)
    results = [
        *checks.quality(metrics, limits["quality"]),
        *checks.naive_baseline(y["test"], pred, limits["baseline"]["must_beat"]),
        *checks.slices(frames["test"], y["test"], proba, contract.slice_columns, limits["slices"]),
        *checks.fairness(
            frames["test"], y["test"], pred, contract.sensitive_columns, limits["fairness"]
        ),
        checks.calibration(y["test"], proba, limits["calibration"]),
    ]
    champ_metrics, champ_version = None, None
    with contextlib.suppress(MlflowException):  # no production model yet
        champ_version = str(registry.version_for(name).version)
    if champ_version is not None and champ_version != version:
        champ = registry.load_version(name, champ_version)
        champ_valid = _proba(champ, frames["valid"])
        champ_threshold = checks.choose_threshold(y["valid"], champ_valid)
        champ_metrics = checks.full_metrics(
            y["test"], _proba(champ, frames["test"]), champ_threshold
        )
    results += checks.champion(
        metrics,
        champ_metrics,
        champ_version,
        {**limits["champion"], "primary_metric": limits["primary_metric"]},
    )
    return GateReport(
        name, version, run_id, dataset_version, threshold, metrics, champ_version, results
    )


def run_gate(cfg: PipelineConfig, run_id: str) -> tuple[GateReport, list[registry.AliasMove]]:
    """Evaluate, log the report to the candidate's run, and move aliases only on a pass."""
    report = evaluate(cfg, run_id)
    client = MlflowClient()
    client.log_dict(run_id, report.to_dict(), f"{REPORT_DIR}/gate.json")
    client.log_text(run_id, render_html(report), f"{REPORT_DIR}/gate.html")
    client.set_tag(run_id, "gate", "passed" if report.passed else "failed")
    client.set_model_version_tag(
        report.model_name, report.version, "threshold", f"{report.threshold:.6f}"
    )
    if not report.passed:
        return report, []
    where = f"{client.get_run(run_id).info.artifact_uri}/{REPORT_DIR}/gate.html"
    aliases = [STAGING]
    if thresholds(cfg.gates, report.model_name).get("promotion", "production") == "production":
        aliases.append(registry.PRODUCTION)
    moves = [
        registry.move_alias(report.model_name, alias, report.version, "gate passed", where)
        for alias in aliases
    ]
    return report, moves


def write_local(report: GateReport, folder: Path) -> Path:
    """The report as files, for a person at a terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    page = folder / "gate.html"
    page.write_text(render_html(report))
    return page
