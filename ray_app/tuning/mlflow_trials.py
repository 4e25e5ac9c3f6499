"""Every trial of a search as a nested MLflow run, written from the Tune driver only.

Ray's `MLflowLoggerCallback` logs every result of every trial as it comes and knows nothing of
parent runs. Here one child run per trial carries `mlflow.parentRunId`, its sampled params, its
resources, lineage tags and, when it ends, its final metrics plus the learning curve (one point
per report) in a single `log_batch`. One writer process also keeps SQLite free of lock fights.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune
from ray.tune.experiment import Trial

from ray_app.train import MODEL_ROUNDS, ROUNDS
from ray_app.tuning.space import DEVICE
from ray_app.tuning.trials import DEVICE_USED, finished_training

TRIAL_ID = "trial_id"
BATCH = 1000  # MLflow's limit of metrics per log_batch


def child_run(experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The MLflow run of one trial of a search, if it has one."""
    found = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
        f"and tags.{TRIAL_ID} = '{trial_id}'",
    )
    return found[0].info.run_id if found else None


def _last_error(trial: Trial) -> str:
    """The last line of the trial's error (the exception and its message); the error file is
    written locally before callbacks run, while storage is synced later."""
    if not trial.error_file or not Path(trial.error_file).is_file():
        return "unknown error"
    lines = [line for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else "unknown error"


class MLflowTrials(tune.Callback):
    def __init__(
        self,
        experiment_id: str,
        parent_run_id: str,
        tags: dict[str, str],
        metric_keys: list[str],
    ):
        """`metric_keys`: the evaluation metrics of the learning curve (`valid-logloss`)."""
        self.experiment_id, self.parent_run_id, self.tags = experiment_id, parent_run_id, tags
        self.metric_keys = metric_keys
        self._runs: dict[str, str] = {}
        self._curves: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into its experiment state; curves are rebuilt after a resume.
        return {**self.__dict__, "_curves": defaultdict(list)}

    def run_id(self, trial: Trial) -> str:
        """The trial's child run: found again after a resume, created on first sight."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client = MlflowClient()
        run_id = child_run(self.experiment_id, self.parent_run_id, trial.trial_id)
        if run_id is None:
            resources = trial.placement_group_factory.required_resources
            tags = {
                **self.tags,
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                TRIAL_ID: trial.trial_id,
                "resources": json.dumps(resources, sort_keys=True),
                "device_requested": str(trial.config.get(DEVICE, "cpu")),
            }
            run = client.create_run(
                self.experiment_id, run_name=f"trial-{trial.trial_id}", tags=tags
            )
            run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in sorted(trial.config.items())]
            client.log_batch(run_id, params=params)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        run_id = self.run_id(trial)
        MlflowClient().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info):
        curve = self._curves[trial.trial_id]
        if not curve:
            MlflowClient().set_tag(self.run_id(trial), DEVICE_USED, result.get(DEVICE_USED, "?"))
        curve.append(result)

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        MlflowClient().set_tag(self.run_id(trial), "retries", str(trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.FINISHED)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.FAILED)

    def _finish(self, trial: Trial, status: int) -> None:
        client, run_id = MlflowClient(), self.run_id(trial)
        curve = self._curves.pop(trial.trial_id, [])
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(result[ROUNDS]))
            for result in curve
            for key, value in result.items()
            if key in self.metric_keys
        ]
        if curve:
            last = curve[-1]
            outcome = "completed" if finished_training(last) else "stopped by scheduler"
            metrics += [
                Metric(k, float(last[k]), now, 0) for k in (ROUNDS, MODEL_ROUNDS) if k in last
            ]
        else:
            outcome = "no result"
        if status == RunStatus.FAILED:
            outcome = "failed: " + _last_error(trial)
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + BATCH])
        client.set_tag(run_id, "outcome", outcome)
        client.set_terminated(run_id, RunStatus.to_string(status))
