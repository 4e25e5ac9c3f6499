"""The whole flow as one function: data → validated snapshot → features → model → registry.

`run` is what `jobs/pipeline.py` (under `ray job submit`) and `rayapp pipeline` call. It
expects Ray to be initialised by its caller and reports each step through `log`.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import mlflow
import ray.data
import xgboost as xgb

from ray_app import features, registry, tracking
from ray_app.config import PipelineConfig, SplitConfig, rayapp_home
from ray_app.data import report as validation_report
from ray_app.data import synth
from ray_app.data.contract import Contract, load_contract
from ray_app.data.ingest import inspect_source, read_raw
from ray_app.data.quarantine import quarantine
from ray_app.data.snapshot import Snapshot, find_snapshot, head, read_snapshot, write_snapshot
from ray_app.data.split import split_dataset
from ray_app.data.store import open_store
from ray_app.data.validate import validate
from ray_app.evaluate.gate import thresholds
from ray_app.evaluate.job import run_gate
from ray_app.evaluate.metrics import PROBA, classification_metrics, score
from ray_app.serve.schema import to_records
from ray_app.train import train, xgb_params

SAMPLE_REQUEST = "sample_request.json"


@dataclass
class PipelineResult:
    dataset_version: str
    rows: int
    run_id: str
    metrics: dict[str, float]
    model_name: str
    model_version: str
    promoted: bool
    gate_reasons: list[str]


def builtin_dataset(rows: int, seed: int) -> Path:
    """The built-in churn table for (rows, seed), generated once under `$RAYAPP_HOME`."""
    path = rayapp_home() / "builtin" / f"churn-{rows}-seed{seed}.csv"
    if not path.exists():
        synth.write(path, rows, seed)
    return path


def log_model_artifacts(
    booster: xgb.Booster, fs: features.FeatureSet, cfg: PipelineConfig, sample: list[dict]
) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = xgb.plot_importance(
        booster, importance_type="gain", max_num_features=20, show_values=False
    )
    ax.set_title("feature importance (gain)")
    mlflow.log_figure(ax.figure, "feature_importance.png")
    plt.close(ax.figure)
    mlflow.log_text(fs.to_json(), "preprocessor/features.json")
    mlflow.log_dict(json.loads(cfg.model_dump_json()), tracking.CONFIG_ARTIFACT)
    mlflow.log_dict({"instances": sample}, SAMPLE_REQUEST)


class Steps:
    """Reports each step with the seconds it took."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.started = log, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.log(f"{message} ({time.perf_counter() - self.started:.1f}s)")
        self.started = time.perf_counter()


def ingest(cfg: PipelineConfig, contract: Contract, data: Path, step: Steps) -> Snapshot:
    """Validate a source against its contract and snapshot it; bad data stops here."""
    home = rayapp_home()
    source = inspect_source(data, contract)
    report = validate(read_raw(source, contract), contract, source, cfg.data.batch_size)
    quarantined = 0
    if not report.success:
        page = validation_report.write(report, home / "reports" / source.version)
        if not (cfg.data.policy == "quarantine" and report.quarantinable):
            report.raise_for_failures(f"full report: {page}")
        folder, quarantined = quarantine(
            read_raw(source, contract),
            contract,
            source,
            report.rows,
            cfg.data.max_bad_fraction,
            home / "quarantine",
        )
        step(f"[quarantine] {quarantined} of {report.rows} rows set aside with reasons in {folder}")
    step(
        f"[validate] {report.rows - quarantined} rows of {source.path.name} passed "
        f"{len(report.checked)} checks of contract {contract.name!r}; "
        f"dataset version {source.version}"
    )
    store = open_store(cfg.data.store)
    snap = write_snapshot(read_raw(source, contract), contract, source, report, store, quarantined)
    step(f"[snapshot] typed Parquet snapshot at {snap.url}")
    return snap


def run(
    cfg: PipelineConfig,
    data: str | Path | None = None,
    contract_path: str | Path | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """The whole flow; with `data_version`, train again on an existing snapshot instead."""
    thresholds(cfg.gates, cfg.tracking.model_name)  # a bad gates file fails now, not after training
    step = Steps(log)
    contract: Contract = load_contract(contract_path or cfg.contract)
    snap = resolve_snapshot(cfg, contract, data, data_version, step)
    return train_and_register(cfg, contract, snap, step)


def resolve_snapshot(
    cfg: PipelineConfig,
    contract: Contract,
    data: str | Path | None,
    data_version: str | None,
    step: Steps,
) -> Snapshot:
    """An existing data version, or a source (given, configured or built-in) ingested now."""
    if data_version:
        snap = find_snapshot(open_store(cfg.data.store), data_version, contract)
        step(f"[snapshot] reusing data version {snap.version} ({snap.rows} rows of {snap.source})")
        return snap
    path = data or cfg.data.path or builtin_dataset(cfg.data.synth_rows, cfg.data.seed)
    return ingest(cfg, contract, Path(path), step)


@dataclass
class ModelData:
    """A snapshot split by id and turned into model inputs, with the fitted features."""

    features: features.FeatureSet
    splits: dict[str, ray.data.Dataset]  # train/valid/test, transformed and materialised
    counts: dict[str, int]


def prepare(snap: Snapshot, contract: Contract, split: SplitConfig, step: Steps) -> ModelData:
    """Split, fit features on train only, transform every split: shared by train and tune."""
    splits = split_dataset(read_snapshot(snap).materialize(), contract.id_column, split)
    fs = features.fit(splits["train"], contract)
    model_data = {k: features.transform_dataset(v, fs).materialize() for k, v in splits.items()}
    counts = {k: v.count() for k, v in model_data.items()}
    step(
        f"[features] {len(fs.feature_names)} features fitted on train; rows train/valid/test = "
        f"{counts['train']}/{counts['valid']}/{counts['test']}"
    )
    return ModelData(fs, model_data, counts)


def train_and_register(
    cfg: PipelineConfig, contract: Contract, snap: Snapshot, step: Steps
) -> PipelineResult:
    """Features, training, evaluation, tracking and the minimal gate for one snapshot."""
    home = rayapp_home()
    prepared = prepare(snap, contract, cfg.data.split, step)
    fs, names, model_data = prepared.features, prepared.features.feature_names, prepared.splits

    tracking.configure()
    experiment = tracking.experiment_id(cfg.tracking.experiment)
    with mlflow.start_run(experiment_id=experiment, run_name=f"train-{snap.version}") as active:
        run_id = active.info.run_id
        lineage = {
            "dataset_version": snap.version,
            "data_source": snap.source,
            "data_snapshot": snap.url,
            "contract": contract.name,
            "git_commit": tracking.git_commit(),
        }
        mlflow.set_tags(lineage)
        params = xgb_params(cfg.train, cfg.train.cpus_per_worker)
        mlflow.log_params(
            {
                **params,
                "num_boost_round": cfg.train.num_boost_round,
                "num_workers": cfg.train.num_workers,
                "early_stopping_rounds": cfg.train.early_stopping_rounds,
            }
        )
        for name in (validation_report.JSON_NAME, validation_report.HTML_NAME):
            mlflow.log_text(snap.read_text(name), f"validation/{name}")

        result = train(
            model_data["train"],
            model_data["valid"],
            names,
            cfg.train,
            home / "ray_results",
            f"train-{snap.version}-{run_id[:8]}",
        )
        scored = score(model_data["test"], result.booster, names)
        metrics = classification_metrics(
            scored[features.LABEL].to_numpy(), scored[PROBA].to_numpy()
        )
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics(result.metrics)
        step(
            f"[train] MLflow run {run_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )

        sample_rows = head(snap, 2)
        log_model_artifacts(result.booster, fs, cfg, to_records(sample_rows, contract))
        example = model_data["test"].limit(5).to_pandas()[names]
        info = registry.log_model(result.booster, fs, example, lineage)

    name = cfg.tracking.model_name
    version = registry.register(info.model_uri, name, tags={**lineage, "run_id": run_id})
    report, moves = run_gate(cfg, run_id)
    reasons = report.failures() or [f"{len(report.results)} checks passed"]
    step(
        f"[gate] {name} version {version.version}: {'passed' if report.passed else 'FAILED'} "
        f"({'; '.join(reasons)})"
        + "".join(f"; alias {m.alias!r} -> version {m.to_version}" for m in moves)
    )
    return PipelineResult(
        snap.version,
        snap.rows,
        run_id,
        metrics,
        name,
        str(version.version),
        report.passed,
        reasons,
    )


def sample_request(model_name: str, alias: str = registry.PRODUCTION) -> dict:
    """The sample request logged with the run of the model behind an alias."""
    version = registry.version_for(model_name, alias)
    run_id = version.run_id or version.tags["run_id"]
    with tempfile.TemporaryDirectory() as d:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=SAMPLE_REQUEST, dst_path=d
        )
        return json.loads(Path(path).read_text())
