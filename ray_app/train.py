"""Ray Train XGBoost: one boosting loop and one trainer builder, shared by the pipeline,
tuning and benchmarks.

`boost` is the loop every model is trained with, in a Ray Train worker or in a single-process
Tune trial: the same early-stopping rule (XGBoost's `EarlyStopping`, keeping the best round,
carried across a resume from a checkpoint) and the same round counting (`summary`). Each
worker trains on its shard of the transformed data; rank 0 saves the booster in XGBoost's own
UBJ format into the run's checkpoint. Ray Train hears about progress at the end, every
`checkpoint_every` rounds (a checkpoint that a worker group restarted after a failure resumes
from), and every `report_every` rounds when a Tune trial asks: each `ray.train.report` waits
for the controller's poll (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`), so a report per round would
cost more than the training itself.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.data
import ray.train
import xgboost as xgb
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

from ray_app.config import TrainConfig
from ray_app.data.split import TRAIN, VALID
from ray_app.errors import RayAppError
from ray_app.features import LABEL
from ray_app.metrics import eval_key

ROUNDS = "rounds"  # boosting rounds run (early stopping may keep fewer): ASHA's clock
MODEL_ROUNDS = "model_rounds"  # rounds in the kept model
RESUMED_FROM = "resumed_from"  # the round a restarted run went on from (0: it never restarted)
MODEL_FILE = RayTrainReportCallback.CHECKPOINT_NAME  # "model.ubj", as Ray's callbacks name it
STATE_FILE = "state.json"  # beside the model in a checkpoint: the rounds run so far


@dataclass
class TrainResult:
    booster: xgb.Booster
    metrics: dict[str, float]  # rank 0's final validation metrics, rounds and model_rounds
    checkpoint_path: str


def _dmatrix(split: str, feature_names: list[str]) -> xgb.DMatrix:
    df = ray.train.get_dataset_shard(split).materialize().to_pandas()
    return xgb.DMatrix(df[feature_names], label=df[LABEL].to_numpy(), feature_names=feature_names)


def metrics_at(evals_log: dict[str, dict[str, list[float]]], index: int) -> dict[str, float]:
    """Evaluation metrics after a round, named as xgboost names them (`valid-logloss`)."""
    return {
        eval_key(data, m): float(v[index]) for data, ms in evals_log.items() for m, v in ms.items()
    }


def boost(
    params: dict[str, Any],
    dtrain: xgb.DMatrix,
    dvalid: xgb.DMatrix,
    rounds: int,
    early_stopping_rounds: int | None,
    metric: str | None = None,
    callbacks: list[xgb.callback.TrainingCallback] | None = None,
    start_from: xgb.Booster | None = None,
) -> xgb.Booster:
    """The boosting loop: validation metrics each round and, with `early_stopping_rounds`,
    a stop when `metric` (default: the last of `eval_metric`) stops improving, keeping the
    model at its best round. `callbacks` run after early stopping, so they see the kept model.
    `start_from`: this run's own checkpointed model, whose early-stopping state goes on."""
    stop = (
        [
            _EarlyStopping(
                rounds=early_stopping_rounds, metric_name=metric, data_name=VALID, save_best=True
            )
        ]
        if early_stopping_rounds
        else []
    )
    return xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dvalid, VALID)],
        xgb_model=start_from,
        callbacks=[*stop, *(callbacks or [])],
        verbose_eval=False,
    )


class _EarlyStopping(xgb.callback.EarlyStopping):
    """XGBoost's early stopping, carried across a resume. Training continued from a checkpoint
    starts its own afresh: it forgets a best round before the checkpoint and keeps a later,
    worse one. This one starts from the best score and round that the checkpointed model
    carries (`best_score`, `best_iteration`, which `EarlyStopping` sets on it), with the
    rounds since then already counted, as the uninterrupted run had them."""

    def before_training(self, model: xgb.Booster) -> xgb.Booster:
        model = super().before_training(model)
        best, at = model.attr("best_score"), model.attr("best_iteration")
        self.carried = (float(best), int(at)) if self.starting_round and best and at else None
        return model

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if self.carried and not self.stopping_history:  # the first round after the resume
            data = self.data or list(evals_log)[-1]
            metric = self.metric_name or list(evals_log[data])[-1]
            best, at = self.carried
            self.stopping_history = {data: {metric: [best]}}
            self.best_scores = {data: {metric: [best]}}
            self.current_rounds = self.starting_round - 1 - at
        return super().after_iteration(model, epoch, evals_log)


def summary(
    evals_log: dict, booster: xgb.Booster, dvalid: xgb.DMatrix, start: int = 0
) -> dict[str, float]:
    """Validation metrics of the kept model, the rounds run (counting from 0 even when
    resumed at `start`) and the rounds kept. A run resumed after its best round may keep a
    model from before `start`, whose metrics are not in this run's log: it is evaluated."""
    trained = len(next(iter(evals_log[VALID].values())))
    kept = booster.num_boosted_rounds()
    metrics = (
        metrics_at(evals_log, kept - start - 1) if kept > start else _evaluated(booster, dvalid)
    )
    return {**metrics, ROUNDS: start + trained, MODEL_ROUNDS: kept}


def _evaluated(booster: xgb.Booster, dvalid: xgb.DMatrix) -> dict[str, float]:
    """The model's validation metrics, from XGBoost's evaluation line
    (`[0]\tvalid-logloss:0.35\tvalid-auc:0.91`), named as in the training log."""
    fields = booster.eval_set([(dvalid, VALID)]).split("\t")[1:]
    return {key: float(value) for key, value in (f.split(":", 1) for f in fields)}


class _History(xgb.callback.TrainingCallback):
    """Keeps the evaluation log, for `summary` after training. Taken before each round (the
    same dict, filled in after it): XGBoost skips the later callbacks' `after_iteration` once
    early stopping says stop, which a resumed run can do on its first round."""

    def __init__(self) -> None:
        self.evals_log: dict = {}

    def before_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.evals_log = evals_log
        return False


def _report(
    metrics: dict[str, float], model: xgb.Booster | None = None, final: bool = False
) -> None:
    """Every rank calls report (it is a barrier); with `model`, rank 0 attaches it and the
    rounds run so far as the run's checkpoint (the final one also keeps its metrics)."""
    if model is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    state = {ROUNDS: metrics[ROUNDS], "final": metrics if final else None}
    with tempfile.TemporaryDirectory() as d:
        model.save_model(str(Path(d) / MODEL_FILE))
        (Path(d) / STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _resume_point() -> tuple[int, xgb.Booster | None, dict[str, float] | None]:
    """The rounds run, the model and, for a finished run, its final metrics, from the run's
    latest checkpoint: Ray Train restarted the worker group after a failure, or the run's name
    was run before. (0, None, None) on a first start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None, None
    with checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        model = xgb.Booster(model_file=str(Path(d) / MODEL_FILE))
        return state[ROUNDS], model, state.get("final")


class _Progress(xgb.callback.TrainingCallback):
    """Metrics every `report_every` rounds (a Tune trial's ASHA needs them) and the model every
    `checkpoint_every` rounds (0: neither); the last round's report is the final one."""

    def __init__(self, report_every: int, checkpoint_every: int, start: int, rounds: int):
        self.report_every, self.checkpoint_every = report_every, checkpoint_every
        self.start, self.rounds = start, rounds

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        done = self.start + epoch + 1
        checkpoint = bool(self.checkpoint_every) and done % self.checkpoint_every == 0
        due = checkpoint or (bool(self.report_every) and done % self.report_every == 0)
        if due and done < self.rounds:
            _report({**metrics_at(evals_log, epoch), ROUNDS: done}, model if checkpoint else None)
        return False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; with several, XGBoostTrainer sets up their collective.

    Progress is reported every `report_every` rounds (a Tune trial's ASHA needs it) and
    checkpointed every `checkpoint_every`; the last report carries the kept model. A worker
    group that Ray Train restarted (`FailureConfig`) goes on from the latest checkpoint.
    """
    names = config["feature_names"]
    rounds = config["num_boost_round"]
    start, model, finished = _resume_point()
    if finished is not None:  # failed after its final report: that model is the result
        _report(finished, model, final=True)
        return
    history = _History()
    progress = _Progress(
        config.get("report_every", 0), config.get("checkpoint_every", 0), start, rounds
    )
    dvalid = _dmatrix(VALID, names)
    booster = boost(
        config["params"],
        _dmatrix(TRAIN, names),
        dvalid,
        rounds - start,
        config.get("early_stopping_rounds"),
        config.get("metric"),
        [history, progress],
        start_from=model,
    )
    metrics = {**summary(history.evals_log, booster, dvalid, start), RESUMED_FROM: start}
    _report(metrics, booster, final=True)


def xgb_params(cfg: TrainConfig, threads: int) -> dict[str, Any]:
    """XGBoost parameters from config, with the seed and thread count made explicit."""
    device = "cuda" if cfg.use_gpu else "cpu"
    return {**cfg.params, "seed": cfg.seed, "nthread": threads, "device": device}


def build_trainer(
    datasets: dict[str, ray.data.Dataset],
    feature_names: list[str],
    cfg: TrainConfig,
    storage_path: Path,
    name: str,
    report_every: int = 0,
    callbacks: list | None = None,
    metric: str | None = None,
) -> DataParallelTrainer:
    """The Ray Train trainer for one training run: workers, threads and rounds from config.
    Tune trials pass `report_every` and Tune's `TuneReportCallback` in `callbacks`."""
    loop_config = {
        "params": xgb_params(cfg, cfg.cpus_per_worker),
        "num_boost_round": cfg.num_boost_round,
        "early_stopping_rounds": cfg.early_stopping_rounds,
        "feature_names": feature_names,
        "report_every": report_every,
        "checkpoint_every": cfg.checkpoint_every,
        "metric": metric,
    }
    # One worker has no peer to talk to: XGBoostTrainer's collective (a RabitTracker in the
    # controller, which then imports xgboost, and a communicator around the loop) is start-up
    # cost and nothing else there.
    trainer = XGBoostTrainer if cfg.num_workers > 1 else DataParallelTrainer
    return trainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        # One worker reads whole datasets directly; splitting only pays off across workers
        # (it starts a coordinator actor, seconds on a small machine).
        dataset_config=ray.train.DataConfig(
            datasets_to_split=list(datasets) if cfg.num_workers > 1 else []
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks,
        ),
    )


class ResourcesUnavailable(RayAppError, RuntimeError):
    """Training cannot be placed on the cluster: the message names what it asked for and what
    was free."""


def _shown(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU"))


def wait_for(demand: dict[str, float], timeout_s: float, what: str) -> None:
    """Wait until `demand` (e.g. {"CPU": 1}) is free on the cluster, at most `timeout_s`, then
    stop naming what was asked and what was free: a request Ray cannot place would otherwise
    stay pending with no message."""
    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources()
        if all(free.get(k, 0) >= v for k, v in demand.items()):
            return
        if time.monotonic() >= deadline:
            raise ResourcesUnavailable(
                f"{what} asks for {_shown(demand)}; after {timeout_s:g}s the cluster has "
                f"{_shown(free) or 'nothing'} free of {_shown(ray.cluster_resources())} "
                "(Serve replicas and other jobs hold the rest)"
            )
        time.sleep(min(1.0, timeout_s / 10))


def fit_to_cluster(cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """The training config sized to what the cluster can give now: with serving (or another
    job) holding part of it, each worker takes the whole CPUs that are free, up to
    `cpus_per_worker`. With not even one CPU (or the GPUs) per worker free, it waits up to
    `placement_timeout_s`, then stops with what it asked for and what was free, instead of
    leaving a placement group pending for ever."""
    deadline = time.monotonic() + cfg.placement_timeout_s
    while True:
        free = ray.available_resources()
        per_worker = min(cfg.cpus_per_worker, int(free.get("CPU", 0) // cfg.num_workers))
        gpus = not cfg.use_gpu or free.get("GPU", 0) >= cfg.num_workers
        if per_worker >= 1 and gpus:
            break
        if time.monotonic() >= deadline:
            asked = f"CPU 1 to {cfg.cpus_per_worker}" + (", GPU 1" if cfg.use_gpu else "")
            raise ResourcesUnavailable(
                f"training asks for {cfg.num_workers} worker(s) x {{{asked}}}; after "
                f"{cfg.placement_timeout_s:g}s the cluster has {_shown(free) or 'nothing'} "
                f"free of {_shown(ray.cluster_resources())} (Serve replicas and other jobs "
                "hold the rest); free some, add nodes, or lower train.num_workers"
            )
        time.sleep(min(1.0, cfg.placement_timeout_s / 10))
    if per_worker < cfg.cpus_per_worker:
        log(
            f"[train] {free.get('CPU', 0):g} CPUs free: {cfg.num_workers} worker(s) x "
            f"{per_worker} CPUs instead of {cfg.cpus_per_worker}"
        )
        cfg = cfg.model_copy(update={"cpus_per_worker": per_worker})
    return cfg


def train(
    train_ds: ray.data.Dataset,
    valid_ds: ray.data.Dataset,
    feature_names: list[str],
    cfg: TrainConfig,
    storage_path: Path,
    name: str,
) -> TrainResult:
    result = build_trainer(
        {TRAIN: train_ds, VALID: valid_ds}, feature_names, cfg, storage_path, name
    ).fit()
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    return TrainResult(booster, dict(result.metrics), result.checkpoint.path)
