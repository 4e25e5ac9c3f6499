"""The whole flow, orchestrated: data → validated snapshot → features → model → publish → gate.

`run` is what `jobs/pipeline.py` (under `ray job submit`) and `rayapp pipeline` call. It
expects Ray to be initialised by its caller and reports each step through `log`. The steps
live with their subjects (`data.sources`, `features`, `train`, `publish`, `evaluate.job`);
this module only puts them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from ray_app import features, tracking
from ray_app.config import PipelineConfig, rayapp_home, redacted
from ray_app.data import report as validation_report
from ray_app.data.contract import Contract, load_contract
from ray_app.data.snapshot import Snapshot
from ray_app.data.sources import resolve_snapshot
from ray_app.data.split import TRAIN, VALID
from ray_app.evaluate.gate import Gates, load_gates
from ray_app.evaluate.job import GateReport, run_gate
from ray_app.model.ref import ModelRef
from ray_app.progress import Steps
from ray_app.publish import publish
from ray_app.train import fit_to_cluster, train, xgb_params


@dataclass
class PipelineResult:
    dataset_version: str
    rows: int
    run_id: str
    metrics: dict[str, float]
    model_name: str
    model_version: str
    promoted: bool  # the gate passed
    gate_reasons: list[str]
    aliases: list[str]  # the aliases this run's version took


def run(
    cfg: PipelineConfig,
    data: str | Path | None = None,
    contract_path: str | Path | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
    gates: Gates | None = None,
    confirm: Callable[[GateReport], bool] | None = None,
) -> PipelineResult:
    """The whole flow; with `data_version`, train again on an existing snapshot instead.
    `gates` is the loaded gates file (loaded here when not given, before any work);
    `confirm` is asked before production moves (see `run_gate`)."""
    gates = gates or load_gates(cfg.gates)
    step = Steps(log)
    contract = load_contract(contract_path or cfg.contract)
    snap = resolve_snapshot(cfg, contract, data, data_version, step)
    return train_and_gate(cfg, contract, snap, gates, step, confirm)


def train_and_gate(
    cfg: PipelineConfig,
    contract: Contract,
    snap: Snapshot,
    gates: Gates,
    step: Steps,
    confirm: Callable[[GateReport], bool] | None = None,
) -> PipelineResult:
    """Features, training, publishing and the gate for one snapshot."""
    prepared = features.prepare(snap, contract, cfg.data.split, step)
    tracking.configure()
    experiment = tracking.experiment_id(cfg.tracking.experiment)
    sized = fit_to_cluster(cfg.train, step.log)
    with mlflow.start_run(experiment_id=experiment, run_name=f"train-{snap.version}") as active:
        run_id = active.info.run_id
        mlflow.log_params(
            redacted(
                {
                    **xgb_params(sized, sized.cpus_per_worker),
                    "num_boost_round": sized.num_boost_round,
                    "num_workers": sized.num_workers,
                    "early_stopping_rounds": sized.early_stopping_rounds,
                }
            )
        )
        for name in (validation_report.JSON_NAME, validation_report.HTML_NAME):
            mlflow.log_text(snap.read_text(name), f"validation/{name}")
        result = train(
            prepared.splits[TRAIN],
            prepared.splits[VALID],
            prepared.features.feature_names,
            sized,
            rayapp_home() / "ray_results",
            f"train-{snap.version}-{run_id[:8]}",
        )
        mlflow.log_metrics(result.metrics)
        published = publish(result.booster, prepared, snap, contract, cfg)
    metrics = published.test_metrics
    step(f"[train] MLflow run {run_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    name, version = published.model_name, published.model_version
    report, moves = run_gate(cfg, ModelRef(name, version=version), gates, confirm)
    reasons = report.failures() or [f"{len(report.results)} checks passed"]
    step(
        f"[gate] {name} version {version}: {'passed' if report.passed else 'FAILED'} "
        f"({'; '.join(reasons)})"
        + "".join(f"; alias {m.alias!r} -> version {m.to_version}" for m in moves)
    )
    return PipelineResult(
        snap.version,
        snap.rows,
        run_id,
        metrics,
        name,
        version,
        report.passed,
        reasons,
        [m.alias for m in moves],
    )
