"""Publishing a trained model, the one tail that the pipeline and the search share: score it
on the frozen test rows with the one scoring path, log its test metrics, figures, config and
dataset lineage to the active MLflow run, log the model and register it.

Lineage goes where MLflow's own UI looks: the data version as the digest of the run's input
dataset (`mlflow.log_input`), the commit as the standard `mlflow.source.git.commit` tag.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlflow
import xgboost as xgb
from matplotlib.figure import Figure
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from ray_app import registry, tracking
from ray_app.config import PipelineConfig
from ray_app.data.contract import Contract, load_contract
from ray_app.data.snapshot import Snapshot, head
from ray_app.data.split import TEST
from ray_app.features import LABEL, ModelData
from ray_app.metrics import classification_metrics, test_key
from ray_app.model.loaded import LoadedModel
from ray_app.model.logged import log_model, signature
from ray_app.model.schema import to_records
from ray_app.model.scoring import PROBA, score_dataset

SAMPLE_ROWS = 2  # rows of the snapshot logged as the model's input example


@dataclass
class Published:
    model_name: str
    model_version: str
    test_metrics: dict[str, float]  # on the test split, at threshold 0.5


def model_name(cfg: PipelineConfig, contract: Contract | None = None) -> str:
    """The registered model's name: the pipeline config's, else the contract's."""
    return cfg.tracking.model_name or (contract or load_contract(cfg.contract)).name


def lineage(snap: Snapshot, contract: Contract) -> dict[str, str]:
    """Tags every run and model version of this data carries."""
    return {
        "dataset_version": snap.version,
        "data_source": snap.source,
        "data_snapshot": snap.url,
        "contract": contract.name,
        MLFLOW_GIT_COMMIT: tracking.git_commit(),
    }


def log_dataset(snap: Snapshot, contract: Contract) -> None:
    """The snapshot as the active run's input dataset, its data version as the digest."""
    with warnings.catch_warnings():  # MLflow registers its local source class twice, and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(snap.url)
    dataset = MetaDataset(
        source=source,
        name=contract.name,
        digest=snap.version,
        schema=signature(contract).inputs,
    )
    mlflow.log_input(dataset, context="training", tags={"rows": str(snap.rows)})


def _importance(booster: xgb.Booster) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    xgb.plot_importance(
        booster, ax=ax, importance_type="gain", max_num_features=20, show_values=False
    )
    ax.set_title("feature importance (gain)")
    return fig


def registered(run_id: str, name: str) -> Published | None:
    """The version a run registered before its driver was killed, if it got that far (between
    registering and recording it): publishing again would register a second."""
    found = registry.versions_of_run(run_id, name)
    if not found:
        return None
    prefix = test_key("")
    logged = mlflow.MlflowClient().get_run(run_id).data.metrics
    metrics = {k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)}
    return Published(name, str(found[0].version), metrics)


def publish(
    booster: xgb.Booster,
    data: ModelData,
    snap: Snapshot,
    contract: Contract,
    cfg: PipelineConfig,
    tags: dict[str, str] | None = None,
) -> Published:
    """Score, log and register a model trained on `data` into the active run; `tags` are
    extra tags of the model version (the search it came from)."""
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    name = model_name(cfg, contract)
    model = LoadedModel(name, None, booster, data.features)
    scored = score_dataset(data.raw[TEST], model)
    test = classification_metrics(scored[LABEL].to_numpy(), scored[PROBA].to_numpy())
    mlflow.log_metrics({test_key(k): v for k, v in test.items()})
    mlflow.set_tags(lineage(snap, contract))
    log_dataset(snap, contract)
    mlflow.log_figure(_importance(booster), "feature_importance.png")
    tracking.log_config(cfg)
    sample = to_records(head(snap, SAMPLE_ROWS), contract)
    info = log_model(booster, data.features, sample, lineage(snap, contract))
    version = registry.register(
        info.model_uri, name, tags={**lineage(snap, contract), "run_id": run_id, **(tags or {})}
    )
    return Published(name, str(version.version), test)
