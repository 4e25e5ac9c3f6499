"""`rayapp gate --run RUN_ID`: every check on a candidate model, a report, and the alias moves.

The candidate is the model logged in the run; the data is the run's own data version, split
by id exactly as in training, so the test rows are frozen. The decision threshold is chosen
on validation rows. The champion is whatever `production` points at, scored on the same rows.
Passing moves `staging`, then `production` (per `promotion`); failing moves nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ray_app import features, registry
from ray_app.config import PipelineConfig, SplitConfig
from ray_app.data.contract import NUMERIC_TYPES
from ray_app.data.snapshot import find_snapshot, read_snapshot
from ray_app.data.split import split_dataset
from ray_app.data.store import open_store
from ray_app.evaluate import checks, latency, plots
from ray_app.evaluate.gate import thresholds
from ray_app.evaluate.report import render_html
from ray_app.serve.predictor import THRESHOLD_TAG, Predictor, shap_values
from ray_app.tracking import CONFIG_ARTIFACT

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
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)  # name -> PNG

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[str]:
        return [f"{r.dimension}: {r.reason}" for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "passed": self.passed}
        del out["figures"]
        return out


def _version_of_run(name: str, run_id: str) -> str:
    found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not found:
        raise registry.RegistryError(f"run {run_id} has no registered version of {name}")
    return str(max(int(v.version) for v in found))


def _split_of_run(cfg: PipelineConfig, run_id: str) -> SplitConfig:
    """The split the run was trained with (its logged config), so its test rows are the ones
    it never saw even if `data.split` has changed since; the current one for runs without it."""
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{CONFIG_ARTIFACT}")
    except (MlflowException, OSError):
        return cfg.data.split
    return SplitConfig.model_validate(logged["data"]["split"])


def _frames(
    cfg: PipelineConfig, run_id: str, dataset_version: str, fs: features.FeatureSet
) -> dict[str, pd.DataFrame]:
    """Validation and test rows of the run's data version, as raw columns."""
    contract = fs.parsed_contract()
    snap = find_snapshot(open_store(cfg.data.store), dataset_version, None)
    splits = split_dataset(read_snapshot(snap), contract.id_column, _split_of_run(cfg, run_id))
    return {k: splits[k].to_pandas() for k in ("valid", "test")}


def _scorer(model: registry.LoadedModel) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda frame: model.booster.inplace_predict(features.transform(frame, model.features))


def _explain(
    model: registry.LoadedModel, test: pd.DataFrame, limits: dict[str, Any]
) -> tuple[checks.CheckResult, bytes]:
    """Global SHAP importance on a sample of test rows: the check and the summary plot."""
    sample = test.sample(min(len(test), int(limits["sample_rows"])), random_state=0)
    frame = features.transform(sample, model.features)
    contribs = shap_values(model.booster, frame)
    importance = checks.global_importance(contribs, model.features.feature_names)
    png = plots.shap_summary(contribs, frame, model.features.categorical)
    return checks.explainability(importance, limits), png


def _champion(
    name: str, version: str, frames: dict[str, pd.DataFrame], y: dict[str, np.ndarray]
) -> tuple[dict[str, Any] | None, str | None]:
    """The production model's test metrics at its own validation threshold, if there is one
    other than the candidate."""
    champ_version = registry.aliased_version(name)
    if champ_version in (None, version):
        return None, champ_version
    score = _scorer(registry.load_version(name, champ_version))
    threshold = checks.choose_threshold(y["valid"], score(frames["valid"]))
    return checks.full_metrics(y["test"], score(frames["test"]), threshold), champ_version


def evaluate(cfg: PipelineConfig, run_id: str) -> GateReport:
    """Score the run's model and its champion and run every check; moves nothing."""
    name = cfg.tracking.model_name
    version = _version_of_run(name, run_id)
    candidate = registry.load_version(name, version)
    contract = candidate.features.parsed_contract()
    dataset_version = MlflowClient().get_run(run_id).data.tags.get("dataset_version")
    if dataset_version is None:
        raise registry.RegistryError(
            f"run {run_id} has no dataset_version tag: the gate judges a model on the data "
            "version it was trained on"
        )
    frames = _frames(cfg, run_id, dataset_version, candidate.features)
    test = frames["test"]
    limits = thresholds(cfg.gates, name)
    y = {k: features.encode_label(f, contract) for k, f in frames.items()}
    score = _scorer(candidate)
    proba = score(test)
    threshold = checks.choose_threshold(y["valid"], score(frames["valid"]))
    metrics = checks.full_metrics(y["test"], proba, threshold)
    pred = (proba >= threshold).astype(int)
    numeric = [c for c in contract.input_columns if contract.columns[c].type in NUMERIC_TYPES]
    explained, shap_png = _explain(candidate, test, limits["explainability"])
    timing = limits["latency"]
    measured = latency.measure(
        Predictor.of(candidate, threshold),
        test,
        timing["batch_sizes"],
        int(timing["requests"]),
        int(timing["warmup"]),
        int(timing["rounds"]),
    )
    calibration = checks.calibration(y["test"], proba, limits["calibration"])
    results = [
        *checks.quality(metrics, limits["quality"]),
        *checks.naive_baseline(y["test"], pred, limits["baseline"]["must_beat"]),
        *checks.slices(test, y["test"], proba, contract.slice_columns, limits["slices"]),
        *checks.fairness(test, y["test"], pred, contract.sensitive_columns, limits["fairness"]),
        calibration,
        *checks.robustness(
            test,
            y["test"],
            score,
            threshold,
            {"numeric": numeric, "inputs": contract.input_columns},
            limits["robustness"],
        ),
        explained,
        *checks.latency(measured, timing),
    ]
    champ_metrics, champ_version = _champion(name, version, frames, y)
    results += checks.champion(
        metrics,
        champ_metrics,
        champ_version,
        {**limits["champion"], "primary_metric": limits["primary_metric"]},
    )
    figures = {
        "reliability": plots.reliability(calibration.details["reliability"]),
        "shap_summary": shap_png,
    }
    return GateReport(
        name, version, run_id, dataset_version, threshold, metrics, champ_version, results, figures
    )


def run_gate(cfg: PipelineConfig, run_id: str) -> tuple[GateReport, list[registry.AliasMove]]:
    """Evaluate, log the report to the candidate's run, and move aliases only on a pass."""
    report = evaluate(cfg, run_id)
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as folder:
        write_files(report, Path(folder))
        client.log_artifacts(run_id, folder, REPORT_DIR)
    client.set_tag(run_id, "gate", "passed" if report.passed else "failed")
    client.set_model_version_tag(
        report.model_name, report.version, THRESHOLD_TAG, f"{report.threshold:.6f}"
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
        if registry.aliased_version(report.model_name, alias) != report.version
    ]
    return report, moves


def write_files(report: GateReport, folder: Path) -> Path:
    """The report as files: gate.json, gate.html (figures inline) and each figure as a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    for name, png in report.figures.items():
        (folder / f"{name}.png").write_bytes(png)
    page = folder / "gate.html"
    page.write_text(render_html(report))
    return page
