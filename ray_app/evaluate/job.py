"""The gate job: every check on a candidate model version, a report, and the alias moves.

The candidate is a registered version (`name@candidate`, `name/3`, or the version a run
registered); the data is its own data version, split by id exactly as in training, so the
test rows are frozen. The decision threshold is chosen on validation rows. The champion is
whatever `production` points at, scored on the same rows with the same scoring path.
Passing moves `staging`, then `production` (per `promotion`), and only if production still
points at the champion that was scored; failing moves nothing.
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
from ray_app.data.split import TEST, VALID, split_dataset
from ray_app.data.store import open_store
from ray_app.evaluate import checks, latency, plots
from ray_app.evaluate.gate import GateLimits, Gates
from ray_app.evaluate.report import render_html
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer
from ray_app.tracking import CONFIG_ARTIFACT

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


def _split_of_run(cfg: PipelineConfig, run_id: str) -> SplitConfig:
    """The split the run was trained with (its logged config), so its test rows are the ones
    it never saw even if `data.split` has changed since; the current one for runs without it."""
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/{CONFIG_ARTIFACT}")
    except (MlflowException, OSError):
        return cfg.data.split
    return SplitConfig.model_validate(logged["data"]["split"])


def _frames(cfg: PipelineConfig, model: LoadedModel) -> dict[str, pd.DataFrame]:
    """Validation and test rows of the model's data version, as raw columns."""
    run_id, dataset_version = model.lineage.get("run_id"), model.lineage.get("dataset_version")
    if not run_id or not dataset_version:
        raise registry.RegistryError(
            f"{model.name} v{model.version} has no run or dataset_version: the gate judges a "
            "model on the data version it was trained on"
        )
    snap = find_snapshot(open_store(cfg.data.store), dataset_version, None)
    split = _split_of_run(cfg, run_id)
    splits = split_dataset(read_snapshot(snap), model.contract.id_column, split)
    return {k: splits[k].to_pandas() for k in (VALID, TEST)}


def _explain(
    scorer: Scorer, test: pd.DataFrame, limits: GateLimits
) -> tuple[checks.CheckResult, bytes]:
    """Global SHAP importance on a sample of test rows: the check and the summary plot."""
    sample = test.sample(min(len(test), limits.explainability.sample_rows), random_state=0)
    matrix = scorer.matrix(sample)
    contribs = scorer.shap(matrix)
    importance = checks.global_importance(contribs, scorer.model.features.feature_names)
    png = plots.shap_summary(contribs, matrix)
    return checks.explainability(importance, limits.explainability), png


def _champion(
    candidate: LoadedModel, frames: dict[str, pd.DataFrame], y: dict[str, np.ndarray]
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """The production model's test metrics at its own validation threshold, if there is one
    other than the candidate, its version, and why the two cannot be compared on these rows
    if they cannot. A registry that cannot be read stops the gate: only a model with no
    `production` alias at all is judged without a champion."""
    name = str(candidate.name)
    champ_version = registry.aliased_version(name, registry.PRODUCTION)
    if champ_version in (None, candidate.version):
        return None, champ_version, None
    champ = Scorer.of(load(ModelRef(name, version=champ_version)))
    if problem := _incomparable(champ.model, candidate, frames[TEST]):
        return None, champ_version, problem
    threshold = checks.choose_threshold(y[VALID], champ.proba(frames[VALID]))
    metrics = checks.full_metrics(y[TEST], champ.proba(frames[TEST]), threshold)
    return metrics, champ_version, None


def _incomparable(champ: LoadedModel, candidate: LoadedModel, test: pd.DataFrame) -> str | None:
    """Why the champion cannot be scored against the candidate's labels on its test rows: a
    contract changed under the same model name (another label or positive class would
    invert its scores; a column it reads may be gone)."""
    was, now = champ.contract, candidate.contract
    about = f"production v{champ.version} and the candidate cannot be compared on one test set"
    # as text: a label typed integer in one contract and category in the other is one label
    if (was.label_column, str(was.positive_label)) != (now.label_column, str(now.positive_label)):
        return (
            f"{about}: it predicts {was.label_column}={was.positive_label!r}, the candidate "
            f"{now.label_column}={now.positive_label!r}"
        )
    if missing := [c for c in was.input_columns if c not in test]:
        data = candidate.lineage.get("dataset_version")
        return f"{about}: it reads {missing}, which data version {data} lacks"
    return None


def evaluate(cfg: PipelineConfig, ref: ModelRef, gates: Gates) -> GateReport:
    """Score a registered version and its champion and run every check; moves nothing."""
    candidate = load(ref)
    contract = candidate.contract
    limits = gates.for_contract(str(candidate.name), contract)
    frames = _frames(cfg, candidate)
    test = frames[TEST]
    y = {k: features.encode_label(f, contract) for k, f in frames.items()}
    scorer = Scorer.of(candidate)
    proba = scorer.proba(test)
    threshold = checks.choose_threshold(y[VALID], scorer.proba(frames[VALID]))
    scorer = scorer.at(threshold)
    metrics = checks.full_metrics(y[TEST], proba, threshold)
    pred = (proba >= threshold).astype(int)
    numeric = [c for c in contract.input_columns if contract.columns[c].type in NUMERIC_TYPES]
    explained, shap_png = _explain(scorer, test, limits)
    timing = limits.latency
    measured = latency.measure(
        scorer, test, timing.batch_sizes, timing.requests, timing.warmup, timing.rounds
    )
    calibration = checks.calibration(y[TEST], proba, limits.calibration)
    results = [
        *checks.quality(metrics, limits.quality_bounds),
        *checks.naive_baseline(y[TEST], pred, limits.baseline.must_beat),
        *checks.slices(test, y[TEST], proba, contract.slice_columns, limits.slices),
        *checks.fairness(test, y[TEST], pred, contract.sensitive_columns, limits.fairness),
        calibration,
        *checks.robustness(
            test,
            y[TEST],
            scorer.proba,
            threshold,
            {"numeric": numeric, "inputs": contract.input_columns},
            limits.robustness,
        ),
        explained,
        *checks.latency(measured, timing),
    ]
    champ_metrics, champ_version, problem = _champion(candidate, frames, y)
    results += checks.champion(
        metrics, champ_metrics, champ_version, limits.champion, limits.primary_metric, problem
    )
    figures = {
        "reliability": plots.reliability(calibration.details["reliability"]),
        "shap_summary": shap_png,
    }
    return GateReport(
        str(candidate.name),
        str(candidate.version),
        candidate.lineage["run_id"],
        candidate.lineage["dataset_version"],
        threshold,
        metrics,
        champ_version,
        results,
        figures,
    )


def run_gate(
    cfg: PipelineConfig,
    ref: ModelRef,
    gates: Gates,
    confirm: Callable[[GateReport], bool] | None = None,
) -> tuple[GateReport, list[registry.AliasMove]]:
    """Evaluate, log the report to the candidate's run, record the chosen threshold, and move
    aliases only on a pass and only from the champion that was scored. `confirm`, when given,
    is asked before `production` moves (a person at a terminal); a no leaves it where it is."""
    report = evaluate(cfg, ref, gates)
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as folder:
        write_files(report, Path(folder))
        client.log_artifacts(report.run_id, folder, REPORT_DIR)
    client.set_tag(report.run_id, "gate", "passed" if report.passed else "failed")
    registry.set_threshold(report.model_name, report.version, report.threshold)
    if not report.passed:
        return report, []
    where = f"{client.get_run(report.run_id).info.artifact_uri}/{REPORT_DIR}/gate.html"
    aliases = [registry.STAGING]
    if gates.for_model(report.model_name).promotion == registry.PRODUCTION:
        aliases.append(registry.PRODUCTION)
    moves = []
    for alias in aliases:
        current = registry.aliased_version(report.model_name, alias)
        if current == report.version:
            continue
        if alias == registry.PRODUCTION and confirm is not None and not confirm(report):
            continue
        # production must still be the champion the candidate beat; staging just follows.
        expected = report.champion_version if alias == registry.PRODUCTION else current
        moves.append(
            registry.promote(
                report.model_name, alias, report.version, "gate passed", where, expected
            )
        )
    return report, moves


def earlier_pass(name: str, version: str) -> dict[str, Any] | None:
    """The report (`gate.json`) of a gate that passed this version and moved its aliases, or
    None. A run killed after its gate, resumed, must not judge the version again: where it
    became production, it would be judged against itself."""
    if registry.gate_report(name, version) is None:
        return None
    run_id = MlflowClient().get_model_version(name, version).run_id
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{REPORT_DIR}/gate.json"
    )
    return json.loads(Path(path).read_text())


def write_files(report: GateReport, folder: Path) -> Path:
    """The report as files: gate.json, gate.html (figures inline) and each figure as a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    for name, png in report.figures.items():
        (folder / f"{name}.png").write_bytes(png)
    page = folder / "gate.html"
    page.write_text(render_html(report))
    return page
