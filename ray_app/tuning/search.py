"""`rayapp tune`: a Ray Tune search over a validated snapshot, tracked as one MLflow parent run
with a child run per trial; its best trial's model is registered as alias `candidate`.

A search lives in `results_root()/<name>/` (`$RAYAPP_HOME/ray_results` by default), beside
Tune's own state, with `rayapp_search.json` recording what a resume needs: the data version,
both configs (redacted: a resume takes their secrets from the configs it is given) and the
parent run. `--resume` restores Tune's state, so finished trials are not run again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import ray.train
import xgboost as xgb
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from ray_app import registry, tracking
from ray_app.config import PipelineConfig, SearchConfig, redacted, results_root, unredacted
from ray_app.data.contract import Contract, load_contract
from ray_app.data.snapshot import Snapshot
from ray_app.data.sources import resolve_snapshot
from ray_app.data.split import TRAIN, VALID
from ray_app.errors import RayAppError
from ray_app.features import ModelData, prepare
from ray_app.metrics import ROC_AUC, eval_key, test_key
from ray_app.progress import Steps
from ray_app.publish import lineage, model_name, publish, registered
from ray_app.train import wait_for
from ray_app.tuning import space
from ray_app.tuning.mlflow_trials import MLflowTrials, child_run
from ray_app.tuning.trials import (
    MODEL_FILE,
    TrialData,
    distributed_trial,
    finished_training,
    single_trial,
)

SEARCH_FILE = "rayapp_search.json"


@dataclass
class SearchResult:
    name: str
    path: Path
    parent_run_id: str
    trials: int
    errors: int
    best_trial_id: str
    best_run_id: str
    best_params: dict[str, Any]
    best_metric: float
    test_metrics: dict[str, float]
    model_name: str
    model_version: str


def searches_root() -> Path:
    return results_root()


class SearchError(RayAppError, RuntimeError):
    """A search that cannot start or resume, with the reason."""


def latest_search() -> str:
    """The most recently started search, for `--resume` without a name."""
    found = sorted(searches_root().glob(f"*/{SEARCH_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SearchError(f"no search to resume under {searches_root()}")
    return found[-1].parent.name


def _metric_keys(cfg: PipelineConfig, search: SearchConfig) -> list[str]:
    """The validation metrics trials report (`valid-logloss`); the searched one among them."""
    params = {**cfg.train.params, **search.fixed}
    evaluated = params.get("eval_metric", [])
    evaluated = [evaluated] if isinstance(evaluated, str) else list(evaluated)
    if search.metric not in evaluated:
        raise SearchError(
            f"the search metric {search.metric!r} is not evaluated in training: add it to "
            f"train.params.eval_metric of the pipeline config (now {evaluated})"
        )
    return [eval_key(VALID, m) for m in evaluated]


def _trainable(
    cfg: PipelineConfig, search: SearchConfig, data: ModelData, storage: Path
) -> tuple[Any, bool]:
    """The wrapped trainable (rebuilt the same way on resume) and whether trials are
    distributed, which depends on the training rows only."""
    names = data.features.feature_names
    distributed = data.counts[TRAIN] >= search.distributed.min_rows
    if distributed:
        fn = tune.with_parameters(
            distributed_trial,
            datasets={TRAIN: data.splits[TRAIN], VALID: data.splits[VALID]},
            feature_names=names,
            settings=search,
            base=cfg.train.params,
            storage=str(storage),
        )
    else:
        arrays = TrialData.from_datasets(data.splits[TRAIN], data.splits[VALID], names)
        fn = tune.with_parameters(single_trial, data=arrays, settings=search, base=cfg.train.params)
    return tune.with_resources(fn, space.trial_resources(search, distributed)), distributed


def _best(results: tune.ResultGrid, search: SearchConfig) -> tune.Result:
    """The best trial among those whose model finished (a trial stopped by ASHA has no final
    model), on the validation metric."""
    finished = [
        r for r in results if r.error is None and r.metrics and finished_training(r.metrics)
    ]
    if not finished:
        raise RuntimeError(f"no trial of the search finished; errors: {results.num_errors}")
    sign = 1 if search.mode == "min" else -1
    return min(finished, key=lambda r: sign * r.metrics[eval_key(VALID, search.metric)])


def _load_booster(result: tune.Result) -> xgb.Booster:
    checkpoint = result.checkpoint or ray.train.Checkpoint(result.metrics["checkpoint_path"])
    with checkpoint.as_directory() as d:
        return xgb.Booster(model_file=str(Path(d) / MODEL_FILE))


def resumable(name: str) -> bool:
    """Whether a search of this name left what a resume needs: our state file and Tune's."""
    path = searches_root() / name
    return (path / SEARCH_FILE).is_file() and tune.Tuner.can_restore(str(path))


def finished_version(name: str, model: str) -> str | None:
    """The version a finished search (its MLflow parent run closed) registered, or None: a
    caller killed after the search ended takes it instead of resuming a search that is over."""
    saved = searches_root() / name / SEARCH_FILE
    if not saved.is_file():
        return None
    tracking.configure()
    parent = MlflowClient().get_run(json.loads(saved.read_text())["parent_run_id"])
    best = parent.data.tags.get("best_run_id")
    if parent.info.status != RunStatus.to_string(RunStatus.FINISHED) or not best:
        return None
    published = registered(best, model)
    return published.model_version if published else None


def run_search(
    cfg: PipelineConfig,
    search: SearchConfig,
    data: str | Path | None = None,
    data_version: str | None = None,
    name: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) a search and register its best model as `candidate`."""
    step = Steps(log)
    _metric_keys(cfg, search)  # a metric training does not evaluate fails before any work
    if resume:
        name = name or latest_search()
        saved = searches_root() / name / SEARCH_FILE
        if not saved.is_file():
            raise SearchError(f"no search named {name!r} under {searches_root()}")
        state = json.loads(saved.read_text())
        tracking.configure()
        parent = MlflowClient().get_run(state["parent_run_id"])
        if parent.info.status == RunStatus.to_string(RunStatus.FINISHED):
            raise SearchError(f"search {name} already finished (MLflow run {parent.info.run_id})")
        # The state file holds the configs redacted: their secrets come from the ones given now.
        cfg = PipelineConfig.model_validate(unredacted(state["pipeline"], cfg))
        search = SearchConfig.model_validate(unredacted(state["search"], search))
        data_version = state["data_version"]
    contract = load_contract(cfg.contract)
    snap = resolve_snapshot(cfg, contract, data, data_version, step)
    prepared = prepare(snap, contract, cfg.data.split, step)
    return search_prepared(cfg, search, contract, snap, prepared, name, resume, step)


def search_prepared(
    cfg: PipelineConfig,
    search: SearchConfig,
    contract: Contract,
    snap: Snapshot,
    prepared: ModelData,
    name: str | None,
    resume: bool,
    step: Steps,
) -> SearchResult:
    """The search proper, on data already split and featurised (what the benchmark times)."""
    tracking.configure()
    name = name or f"search-{snap.version}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    path = searches_root() / name
    trainable, distributed = _trainable(cfg, search, prepared, path / "train_runs")
    experiment = tracking.experiment_id(cfg.tracking.experiment)
    tags = lineage(snap, contract)
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise SearchError(f"{path} holds no Tune state to resume")
        parent = json.loads((path / SEARCH_FILE).read_text())["parent_run_id"]
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
        step(f"[tune] resuming search {name} (MLflow parent run {parent})")
    else:
        parent = _start_parent(experiment, name, tags, search, distributed)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "name": name,
            "parent_run_id": parent,
            "data_version": snap.version,
            "pipeline": redacted(cfg),
            "search": redacted(search),
        }
        (path / SEARCH_FILE).write_text(json.dumps(state, indent=2))
        callback = MLflowTrials(experiment, parent, tags, _metric_keys(cfg, search))
        tuner = _tuner(search, trainable, name, callback, step)
        step(
            f"[tune] search {name}: {search.num_samples} x {search.algorithm}, "
            f"{'distributed' if distributed else 'single-process'} trials, MLflow parent {parent}"
        )
    # Training beside serving: a trial that cannot be placed stops the search with a message
    # instead of pending (a distributed trial's driver needs little; its workers need a CPU).
    cpus = 1.0 if distributed else float(search.resources.cpus_per_trial)
    wait_for({"CPU": cpus}, cfg.train.placement_timeout_s, "each CPU trial of the search")
    results = tuner.fit()
    return _finish(cfg, search, contract, results, prepared, snap, path, parent, step)


def _start_parent(
    experiment: str, name: str, tags: dict, search: SearchConfig, distributed: bool
) -> str:
    client = MlflowClient()
    run = client.create_run(
        experiment, run_name=name, tags={**tags, "search": name, "kind": "search"}
    )
    settings = {
        "algorithm": search.algorithm,
        "metric": search.metric,
        "mode": search.mode,
        "num_samples": search.num_samples,
        "max_concurrent_trials": search.max_concurrent_trials,
        "num_boost_round": search.num_boost_round,
        "asha": search.asha.enabled,
        "seed": search.seed,
        "distributed_trials": distributed,
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    client.log_dict(run.info.run_id, redacted(search), "search_space.json")
    return run.info.run_id


def _tuner(
    search: SearchConfig, trainable: Any, name: str, callback: MLflowTrials, step: Steps
) -> tune.Tuner:
    gpus = ray.cluster_resources().get("GPU", 0)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(search, gpus, step),
        tune_config=tune.TuneConfig(
            metric=eval_key(VALID, search.metric),
            mode=search.mode,
            search_alg=space.search_algorithm(search),
            scheduler=space.scheduler(search),
            num_samples=search.num_samples,
            time_budget_s=search.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(searches_root()),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # Every checkpoint is kept (num_boost_round / checkpoint_every + 1 per trial):
            # with num_to_keep set, Tune saves its whole state after every checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[callback],
            verbose=1,  # Tune's own progress: a status line per trial event
        ),
    )


def _finish(
    cfg: PipelineConfig,
    search: SearchConfig,
    contract: Contract,
    results: tune.ResultGrid,
    prepared: ModelData,
    snap: Snapshot,
    path: Path,
    parent: str,
    step: Steps,
) -> SearchResult:
    """Tag the best trial, publish its model, mark it `candidate` for the gate."""
    client = MlflowClient()
    best = _best(results, search)
    trial_id = best.metrics["trial_id"]
    experiment = tracking.experiment_id(cfg.tracking.experiment)
    # A trial started by a driver that died before Tune saved it is not in the restored
    # state; its run is closed as such (the searcher ran another trial in its place).
    for run in client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'"
    ):
        client.set_tag(run.info.run_id, "outcome", "lost: its driver died before Tune saved it")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    best_run = child_run(experiment, parent, trial_id)
    if best_run is None:
        raise RuntimeError(f"trial {trial_id} has no MLflow run under parent {parent}")
    # A search killed after registering its best (before closing its parent run) is
    # resumed to that version, not registered again.
    published = registered(best_run, model_name(cfg, contract))
    if published is None:
        with mlflow.start_run(run_id=best_run):
            mlflow.set_tag("best_trial", "true")
            published = publish(
                _load_booster(best), prepared, snap, contract, cfg, tags={"search": path.name}
            )
    name, version = published.model_name, published.model_version
    registry.mark_candidate(name, version, f"best trial of search {path.name}")
    metric_key = eval_key(VALID, search.metric)
    metric = best.metrics[metric_key]
    test = published.test_metrics
    for key, value in {
        **{test_key(k): v for k, v in test.items()},
        f"best_{metric_key}": metric,
    }.items():
        client.log_metric(parent, key, value)
    for key, value in {
        "best_run_id": best_run,
        "best_trial_id": trial_id,
        "best_params": json.dumps(best.config, sort_keys=True, default=str),
    }.items():
        client.set_tag(parent, key, value)
    client.set_terminated(parent)
    step(
        f"[tune] best trial {trial_id} ({metric_key}={metric:.4f}, test {ROC_AUC}="
        f"{test[ROC_AUC]:.4f}) -> {name} v{version}, alias {registry.CANDIDATE!r}"
    )
    return SearchResult(
        name=path.name,
        path=path,
        parent_run_id=parent,
        trials=len(results),
        errors=results.num_errors,
        best_trial_id=trial_id,
        best_run_id=best_run,
        best_params=dict(best.config),
        best_metric=metric,
        test_metrics=test,
        model_name=name,
        model_version=version,
    )
