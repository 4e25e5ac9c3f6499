"""The whole flow, orchestrated: data → validated snapshot → features → model → publish → gate.

`run` is what `jobs/pipeline.py` (under `ray job submit`) and `rayapp pipeline` call. It
expects Ray to be initialised by its caller and reports each step through `log`. The steps
live with their subjects (`data.sources`, `features`, `train`, `publish`, `evaluate.job`);
this module only puts them in order.

A run is journaled (`$RAYAPP_HOME/pipeline/<model>/<key>.json`, see `ray_app.journal`): the
snapshot's data version, then the MLflow run and the trained model's checkpoint, then the
registered version, then the gate's verdict. The key is what makes two runs the same work:
the config, the contract and the data version. Running the same command again after its
driver was killed resumes after the last finished step: no second validation, training or
registered version. A finished journal is a record only: the next run is a new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import ray.train
import xgboost as xgb
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray.train.xgboost import RayTrainReportCallback

from ray_app import features, registry, tracking
from ray_app.config import PipelineConfig, rayapp_home, redacted, results_root
from ray_app.data import report as validation_report
from ray_app.data.contract import Contract, load_contract
from ray_app.data.ingest import open_source
from ray_app.data.snapshot import Snapshot, contract_hash
from ray_app.data.sources import resolve_snapshot, source_path
from ray_app.data.split import TRAIN, VALID
from ray_app.evaluate.gate import Gates, load_gates
from ray_app.evaluate.job import GateReport, earlier_pass, run_gate
from ray_app.journal import Busy, hold, load_entry, save_entry
from ray_app.model.ref import ModelRef
from ray_app.progress import Steps
from ray_app.publish import model_name, publish, registered
from ray_app.train import fit_to_cluster, train, xgb_params

# A journal's steps, in order: `step` names the next one to run.
SNAPSHOT, TRAIN_STEP, PUBLISH, GATE, DONE = "snapshot", "train", "publish", "gate", "done"
RUN_TAG = "pipeline_run"  # the MLflow run's tag naming the journal's key


class PipelineBusy(Busy):
    """Another process is running the same pipeline (same config, contract and data)."""


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
    champion: str | None = None  # the production version the gate judged it against


@dataclass
class Journal:
    """One pipeline run: what each finished step produced. A journal without a key is kept in
    memory only."""

    key: str
    model: str
    started: str
    data: str  # what the run was asked to read: a file or folder, or a data version
    step: str = SNAPSHOT
    data_version: str = ""
    mlflow_run_id: str = ""
    checkpoint: str = ""  # the trained booster's Ray Train checkpoint
    model_version: str = ""
    test_metrics: dict[str, float] = field(default_factory=dict)
    gate_passed: bool | None = None
    gate_reasons: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    champion: str | None = None  # the production version the gate judged it against
    finished: str = ""

    @staticmethod
    def path(model: str, key: str) -> Path:
        return rayapp_home() / "pipeline" / model / f"{key}.json"

    def update(self, **changes: object) -> None:
        """Record a step's result, on disk before the next step starts."""
        for name, value in changes.items():
            setattr(self, name, value)
        if self.key:
            save_entry(self, self.path(self.model, self.key))


def run_key(cfg: PipelineConfig, contract: Contract, data_version: str) -> str:
    """What makes two runs the same work: the settings, the contract's content and the data
    version. Files count by content, not by where they are (a `ray job submit` copy of the
    project lives in another folder each session); the gates are read when the gate runs."""
    settings = redacted(cfg)
    del settings["contract"], settings["gates"], settings["data"]["path"]
    facts = {"settings": settings, "contract": contract_hash(contract), "data": data_version}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def run(
    cfg: PipelineConfig,
    data: str | Path | None = None,
    contract_path: str | Path | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
    gates: Gates | None = None,
    confirm: Callable[[GateReport], bool] | None = None,
    fresh: bool = False,
) -> PipelineResult:
    """The whole flow; with `data_version`, train again on an existing snapshot instead.
    `gates` is the loaded gates file (loaded here when not given, before any work);
    `confirm` is asked before production moves (see `run_gate`). A killed run of the same
    config and data is resumed, unless `fresh`; a second one running now raises
    `PipelineBusy`."""
    gates = gates or load_gates(cfg.gates)
    step = Steps(log)
    contract = load_contract(contract_path or cfg.contract)
    version = data_version or open_source(source_path(cfg, data)).version
    model, key = model_name(cfg, contract), run_key(cfg, contract, version)
    gates.for_contract(model, contract)  # a gate entry naming a column it lacks stops here
    path = Journal.path(model, key)
    what = f"a pipeline run of {model} on data version {version} with this config"
    with hold(path.with_suffix(".lock"), what, PipelineBusy):  # read under the lock
        entry = load_entry(Journal, path)
        if entry is not None and not entry.finished and not fresh:
            log(f"[resume] run {key} of {model} stopped before step {entry.step!r} ({path})")
            snap = resolve_snapshot(cfg, contract, None, entry.data_version, step)
        else:
            if entry is not None and not entry.finished:  # abandoned: never to be resumed
                _end_killed(entry.mlflow_run_id)
                path.unlink()
                log(f"[pipeline] run {key} stopped before step {entry.step!r}: starting afresh")
            origin = data_version or source_path(cfg, data)
            entry = Journal(key, model, _now(), str(origin))
            snap = resolve_snapshot(cfg, contract, data, data_version, step)
            entry.update(data_version=snap.version, step=TRAIN_STEP)
        return _train_and_gate(cfg, contract, snap, gates, step, confirm, entry)


def train_and_gate(
    cfg: PipelineConfig,
    contract: Contract,
    snap: Snapshot,
    gates: Gates,
    step: Steps,
    confirm: Callable[[GateReport], bool] | None = None,
    key: str = "",
) -> PipelineResult:
    """Features, training, publishing and the gate for one snapshot, for a caller with a
    journal of its own (a retrain). `key` (the caller's id) names the journal of this part, so
    that a call killed after training or registering, made again with the same key, goes on
    from there: no second training, no second registered version. One that finished is
    reported as it ended."""
    model = model_name(cfg, contract)
    entry = load_entry(Journal, Journal.path(model, key)) if key else None
    if entry is None:
        entry = Journal(key, model, _now(), snap.version, TRAIN_STEP, snap.version)
    elif entry.finished:
        step(f"[resume] {model} version {entry.model_version} was trained and gated already")
        return _result(entry, snap)
    return _train_and_gate(cfg, contract, snap, gates, step, confirm, entry)


def _train_and_gate(
    cfg: PipelineConfig,
    contract: Contract,
    snap: Snapshot,
    gates: Gates,
    step: Steps,
    confirm: Callable[[GateReport], bool] | None,
    entry: Journal,
) -> PipelineResult:
    tracking.configure()
    name = entry.model
    resumed = bool(entry.model_version)
    if resumed:
        step(f"[resume] {name} version {entry.model_version} of MLflow run {entry.mlflow_run_id}")
    else:
        _train_and_publish(cfg, contract, snap, step, entry)
    version = entry.model_version
    if resumed and (earlier := earlier_pass(name, version)) is not None:
        passed, champion = True, earlier["champion_version"]
        reasons = [f"{len(earlier['results'])} checks passed"]
        moved = (registry.STAGING, registry.PRODUCTION)
        aliases = [a for a in moved if registry.aliased_version(name, a) == version]
        step(f"[gate] {name} version {version}: passed before the stop ({reasons[0]})")
    else:
        report, moves = run_gate(cfg, ModelRef(name, version=version), gates, confirm)
        passed, champion = report.passed, report.champion_version
        reasons = report.failures() or [f"{len(report.results)} checks passed"]
        aliases = [m.alias for m in moves]
        step(
            f"[gate] {name} version {version}: {'passed' if passed else 'FAILED'} "
            f"({'; '.join(reasons)})"
            + "".join(f"; alias {m.alias!r} -> version {m.to_version}" for m in moves)
        )
    entry.update(
        gate_passed=passed,
        gate_reasons=reasons,
        aliases=aliases,
        champion=champion,
        step=DONE,
        finished=_now(),
    )
    return _result(entry, snap)


def _result(entry: Journal, snap: Snapshot) -> PipelineResult:
    return PipelineResult(
        snap.version,
        snap.rows,
        entry.mlflow_run_id,
        entry.test_metrics,
        entry.model,
        entry.model_version,
        bool(entry.gate_passed),
        entry.gate_reasons,
        entry.aliases,
        entry.champion,
    )


def _train_and_publish(
    cfg: PipelineConfig, contract: Contract, snap: Snapshot, step: Steps, entry: Journal
) -> None:
    """Train (unless the journal holds a trained model) and publish into one MLflow run."""
    prepared = features.prepare(snap, contract, cfg.data.split, step)
    if entry.checkpoint:  # trained before the kill: its run is resumed, not trained again
        with mlflow.start_run(run_id=entry.mlflow_run_id):
            step(f"[resume] model trained in MLflow run {entry.mlflow_run_id} ({entry.checkpoint})")
            published = registered(entry.mlflow_run_id, entry.model) or publish(
                _booster(entry.checkpoint), prepared, snap, contract, cfg
            )
    else:
        _end_killed(entry.mlflow_run_id)  # killed while training: that run holds no model
        sized = fit_to_cluster(cfg.train, step.log)
        experiment = tracking.experiment_id(cfg.tracking.experiment)
        with mlflow.start_run(experiment_id=experiment, run_name=f"train-{snap.version}") as active:
            run_id = active.info.run_id
            entry.update(mlflow_run_id=run_id)
            if entry.key:
                mlflow.set_tag(RUN_TAG, entry.key)
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
                results_root(),
                f"train-{snap.version}-{run_id[:8]}",
            )
            mlflow.log_metrics(result.metrics)
            entry.update(checkpoint=result.checkpoint_path, step=PUBLISH)
            published = publish(result.booster, prepared, snap, contract, cfg)
    metrics = published.test_metrics
    entry.update(model_version=published.model_version, test_metrics=metrics, step=GATE)
    step(
        f"[train] MLflow run {entry.mlflow_run_id}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    )


def _booster(checkpoint: str) -> xgb.Booster:
    return RayTrainReportCallback.get_model(ray.train.Checkpoint(checkpoint))


def _end_killed(run_id: str) -> None:
    """A run left RUNNING by a killed driver, marked as such (one stopped by an error was
    marked FAILED by MLflow already)."""
    if run_id and MlflowClient().get_run(run_id).info.status == "RUNNING":
        MlflowClient().set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
