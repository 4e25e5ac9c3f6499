"""What one trial runs. Below the distributed threshold a trial is one process calling
`xgboost.train` (no Ray Train start-up, which costs seconds per trial); above it, a trial is a
data-parallel Ray Train run (`train.build_trainer`). Both report `rounds` and the validation
metrics to Tune every `report_every` rounds, and end with a checkpoint of the model at its best
round.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import xgboost as xgb
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ray_app.config import SearchConfig, TrainConfig
from ray_app.data.split import TRAIN, VALID
from ray_app.features import LABEL
from ray_app.train import ROUNDS, boost, build_trainer, metrics_at, summary
from ray_app.tuning.space import CPU, CUDA, DEVICE

MODEL_FILE = "model.ubj"  # the name Ray's xgboost callbacks use too
STATE_FILE = "state.json"
TRAINED = "trained"  # 1 on a trial's final report: its model ran to the end or early stopping
DEVICE_USED = "device_used"


def finished_training(result: dict[str, Any]) -> bool:
    """Whether a result is a trial's final one, with its model: ours flag it, and a Ray Train
    trial's only checkpointed report is its last."""
    return bool(result.get(TRAINED)) or "checkpoint_path" in result


@dataclass(frozen=True)
class TrialData:
    """Train and validation arrays for single-process trials, shared through the object store."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    feature_names: list[str]

    @classmethod
    def from_datasets(cls, train: ray.data.Dataset, valid: ray.data.Dataset, names: list[str]):
        frames = [d.to_pandas() for d in (train, valid)]
        return cls(
            *(a for f in frames for a in (f[names].to_numpy(np.float32), f[LABEL].to_numpy())),
            feature_names=names,
        )


@cache
def cuda_usable() -> bool:
    """Whether XGBoost in this process really trains on a GPU. Ray's GPUs may be logical, and
    XGBoost quietly falls back to CPU when it finds no device, so ask it what it used."""
    if not xgb.build_info().get("USE_CUDA"):
        return False
    tiny = xgb.DMatrix(np.array([[0.0], [1.0]]), label=np.array([0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        booster = xgb.train({"device": CUDA, "tree_method": "hist"}, tiny, 1)
    return json.loads(booster.save_config())["learner"]["generic_param"]["device"].startswith(CUDA)


def choose_device(requested: str, on_missing_cuda: str) -> str:
    """The device a trial trains on: cuda only with a GPU assigned by Ray and usable by XGBoost."""
    if requested != CUDA:
        return CPU
    if ray.get_gpu_ids() and cuda_usable():
        return CUDA
    if on_missing_cuda == "fail":
        raise RuntimeError(
            f"trial asked for device=cuda but CUDA is not usable on node "
            f"{ray.get_runtime_context().get_node_id()[:12]} (Ray GPU ids "
            f"{ray.get_gpu_ids()}, XGBoost built with CUDA: {xgb.build_info().get('USE_CUDA')}); "
            "set resources.on_missing_cuda: fallback to train such trials on CPU"
        )
    return CPU


def trial_params(
    config: dict[str, Any], settings: SearchConfig, base: dict[str, Any], device: str
) -> dict[str, Any]:
    """XGBoost parameters of a trial: training's own (`base`, the pipeline config's), the
    search's `fixed` overrides, the sampled ones, then seed, threads and device."""
    res = settings.resources
    threads = res.cpus_per_gpu_trial if config.get(DEVICE) == CUDA else res.cpus_per_trial
    sampled = {k: v for k, v in config.items() if k != DEVICE}
    fixed = {"seed": settings.seed, "nthread": threads, "device": device}
    return {**base, **settings.fixed, **sampled, **fixed}


class _TuneReport(xgb.callback.TrainingCallback):
    """Reports to Tune every `every` rounds, with a checkpoint every `checkpoint_every`; the
    final report carries the model after early stopping truncated it to its best round."""

    def __init__(self, settings: SearchConfig, device: str, start: int, dvalid: xgb.DMatrix):
        self.every, self.checkpoint_every = settings.report_every, settings.checkpoint_every
        self.device, self.start, self.rounds = device, start, settings.num_boost_round
        self.dvalid = dvalid
        self.evals_log: dict = {}

    def before_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.evals_log = evals_log  # as `train._History` takes it: early stopping may skip us
        return False

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        done = self.start + epoch + 1
        if done % self.every == 0 and done < self.rounds:  # the last round: after_training
            metrics = {**metrics_at(evals_log, epoch), ROUNDS: done, DEVICE_USED: self.device}
            _report(metrics, model if done % self.checkpoint_every == 0 else None)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        metrics = {**summary(self.evals_log, model, self.dvalid, self.start), TRAINED: 1}
        _report({**metrics, DEVICE_USED: self.device}, model)
        return model


def _report(metrics: dict[str, Any], model: xgb.Booster | None) -> None:
    """Reports to Tune; with `model`, checkpointed with the rounds run and, on the final
    report, its metrics: a trial restored from that checkpoint has nothing left to train."""
    if model is None:
        tune.report(metrics)
        return
    state = {ROUNDS: metrics[ROUNDS], "final": metrics if metrics.get(TRAINED) else None}
    with tempfile.TemporaryDirectory() as d:
        model.save_model(str(Path(d) / MODEL_FILE))
        (Path(d) / STATE_FILE).write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def single_trial(
    config: dict[str, Any], data: TrialData, settings: SearchConfig, base: dict[str, Any]
) -> None:
    """One trial in one process. A retried trial resumes from its last checkpoint."""
    start, model = 0, None
    if checkpoint := tune.get_checkpoint():
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
            model = xgb.Booster(model_file=str(Path(d) / MODEL_FILE))
        if state.get("final"):  # it died (or its driver did) after its final report
            _report(state["final"], model)
            return
        start = state[ROUNDS]
    device = choose_device(config.get(DEVICE, CPU), settings.resources.on_missing_cuda)
    params = trial_params(config, settings, base, device)
    names = data.feature_names
    dtrain = xgb.DMatrix(data.x_train, label=data.y_train, feature_names=names)
    dvalid = xgb.DMatrix(data.x_valid, label=data.y_valid, feature_names=names)
    boost(
        params,
        dtrain,
        dvalid,
        settings.num_boost_round - start,
        settings.early_stopping_rounds,
        settings.metric,
        [_TuneReport(settings, device, start, dvalid)],
        start_from=model,
    )


def distributed_trial(
    config: dict[str, Any],
    datasets: dict[str, ray.data.Dataset],
    feature_names: list[str],
    settings: SearchConfig,
    base: dict[str, Any],
    storage: str,
) -> None:
    """One trial as a Ray Train run with several workers; this function is only its driver.
    The run's name is the trial id, so a restored trial finds its own run folder."""
    device = CUDA if config.get(DEVICE) == CUDA else CPU
    params = trial_params(config, settings, base, device)
    train_cfg = TrainConfig(
        num_workers=settings.distributed.num_workers,
        cpus_per_worker=params["nthread"],
        use_gpu=device == CUDA,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        seed=settings.seed,
        params={k: v for k, v in params.items() if k not in ("seed", "nthread", "device")},
    )
    trainer = build_trainer(
        {TRAIN: datasets[TRAIN], VALID: datasets[VALID]},
        feature_names,
        train_cfg,
        Path(storage),
        f"trial-{tune.get_context().get_trial_id()}",
        report_every=settings.report_every,
        callbacks=[TuneReportCallback()],
        metric=settings.metric,
    )
    trainer.fit()
