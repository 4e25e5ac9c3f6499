"""Ray Train XGBoost: one trainer builder shared by the pipeline, tuning and benchmarks.

Each worker trains on its shard of the transformed data; rank 0 saves the booster in XGBoost's
own UBJ format into the one checkpoint of the run. Ray Train is told about progress once, at
the end: each `ray.train.report` waits for the controller's poll (about 2 s by default), so a
report per boosting round would cost more than the training itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import ray.train
import xgboost as xgb
from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

from ray_app.config import TrainConfig
from ray_app.features import LABEL

TRAIN, VALID = "train", "valid"


@dataclass
class TrainResult:
    booster: xgb.Booster
    metrics: dict[str, float]  # final validation metrics reported by rank 0
    checkpoint_path: str


def _dmatrix(split: str, feature_names: list[str]) -> xgb.DMatrix:
    df = ray.train.get_dataset_shard(split).materialize().to_pandas()
    return xgb.DMatrix(df[feature_names], label=df[LABEL].to_numpy(), feature_names=feature_names)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; the xgboost collective is set up by XGBoostTrainer."""
    names = config["feature_names"]
    dtrain, dvalid = _dmatrix(TRAIN, names), _dmatrix(VALID, names)
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        config["params"],
        dtrain,
        num_boost_round=config["num_boost_round"],
        evals=[(dtrain, TRAIN), (dvalid, VALID)],
        evals_result=history,
        early_stopping_rounds=config.get("early_stopping_rounds"),
        verbose_eval=False,
    )
    if config.get("early_stopping_rounds"):
        booster = booster[: booster.best_iteration + 1]
    metrics = {
        f"{VALID}_{m}": float(v[booster.num_boosted_rounds() - 1])
        for m, v in history[VALID].items()
    }
    metrics["rounds"] = booster.num_boosted_rounds()
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as d:
            booster.save_model(str(Path(d) / RayTrainReportCallback.CHECKPOINT_NAME))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)  # every rank must call report: it is a barrier


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
) -> XGBoostTrainer:
    """The XGBoostTrainer for one training run: workers, threads and rounds from config."""
    loop_config = {
        "params": xgb_params(cfg, cfg.cpus_per_worker),
        "num_boost_round": cfg.num_boost_round,
        "early_stopping_rounds": cfg.early_stopping_rounds,
        "feature_names": feature_names,
    }
    return XGBoostTrainer(
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
        ),
    )


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


def predict_proba(booster: xgb.Booster, features: np.ndarray | Any) -> np.ndarray:
    """Positive-class probabilities; `features` columns in the booster's feature order."""
    return booster.inplace_predict(features)
