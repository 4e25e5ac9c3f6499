"""Ray Tune search: CPU and (logical) GPU trials, single-process and distributed trials, every
trial a nested MLflow run, crashed trials retried, a killed driver resumed, results reproducible.

The session's Ray has one logical GPU and no CUDA, so GPU scheduling is real and the trial's
CUDA check is what decides between fallback and a clear failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import xgboost as xgb
from mlflow.tracking import MlflowClient
from ray import tune

from ray_app import registry, tracking
from ray_app.config import SearchConfig
from ray_app.data import sources
from ray_app.model.logged import load
from ray_app.registry import CANDIDATE
from ray_app.tuning import space
from ray_app.tuning.search import (
    SEARCH_FILE,
    SearchError,
    finished_version,
    resumable,
    run_search,
    searches_root,
)
from ray_app.tuning.trials import MODEL_FILE, TRAINED, TrialData, single_trial

ROOT = Path(__file__).resolve().parent.parent


def _search(**overrides) -> SearchConfig:
    base = {
        "algorithm": "optuna",
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "num_boost_round": 40,
        "early_stopping_rounds": 10,
        "report_every": 10,
        "checkpoint_every": 20,
        "asha": {"enabled": True, "grace_rounds": 10, "reduction_factor": 2},
        "space": {
            "max_depth": {"type": "randint", "low": 2, "high": 7},
            "eta": {"type": "loguniform", "low": 0.05, "high": 0.4},
        },
    }
    return SearchConfig.model_validate({**base, **overrides})


@pytest.fixture(scope="module")
def version(ray_session, pipeline_config, contract, churn_csv) -> str:
    return sources.ingest(pipeline_config, contract, churn_csv, lambda m: None).version


def _children(parent: str) -> list:
    tracking.configure()
    return MlflowClient().search_runs(
        [tracking.experiment_id("ray_app")],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
    )


# -- configuration and scheduling, no trials run ---------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"checkpoint_every": 15}, "multiple of report_every"),
        ({"algorithm": "grid"}, "`grid` dimensions go with `algorithm: grid`"),
        ({"space": {"eta": {"type": "uniform", "low": 1, "high": 0}}}, "`low` < `high`"),
    ],
)
def test_bad_search_configs_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        _search(**change)


def test_a_metric_training_does_not_evaluate_is_refused_before_any_work(pipeline_config):
    with pytest.raises(SearchError, match="'error' is not evaluated in training: add it to"):
        run_search(pipeline_config, _search(metric="error"), data_version="unused")


def test_shipped_search_space_loads():
    from ray_app.config import load_search_config

    cfg = load_search_config(ROOT / "configs" / "search_space.yaml")
    assert cfg.algorithm == "optuna" and cfg.asha.enabled and "device" in cfg.space


def test_resources_follow_each_trial_config():
    cfg = _search(resources={"cpus_per_trial": 2, "cpus_per_gpu_trial": 1, "gpus_per_trial": 1})
    fn = space.trial_resources(cfg, distributed=False)
    assert fn({"device": "cuda"}) == {"cpu": 1, "gpu": 1}
    assert fn({"device": "cpu"}) == {"cpu": 2}
    assert fn({}) == {"cpu": 2}


def test_cuda_dimension_without_gpus_falls_back_or_fails():
    device = {"device": {"type": "choice", "values": ["cpu", "cuda"]}}
    said: list[str] = []
    fallback = _search(space=device)
    assert space.param_space(fallback, 0, said.append)["device"].categories == ["cpu"]
    assert "no GPU" in said[0]
    fail = _search(space=device, resources={"on_missing_cuda": "fail"})
    with pytest.raises(space.NoGpuError, match="has no GPU"):
        space.param_space(fail, 0, said.append)
    assert space.param_space(fail, 1, said.append)["device"].categories == ["cpu", "cuda"]


# -- searches on the session's Ray ------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(version, pipeline_config):
    """A mixed search: a device dimension, so some trials are scheduled on the logical GPU."""
    cfg = _search(
        algorithm="grid",
        num_samples=1,
        asha={"enabled": False},
        space={
            "device": {"type": "grid", "values": ["cpu", "cuda"]},
            "max_depth": {"type": "grid", "values": [3, 5]},
        },
    )
    return run_search(pipeline_config, cfg, data_version=version, name="mixed", log=print)


def test_every_trial_is_a_child_run_with_lineage_and_a_learning_curve(searched, version):
    children = _children(searched.parent_run_id)
    assert len(children) == searched.trials == 4 and searched.errors == 0
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["dataset_version"] == version
        assert run.data.tags["mlflow.source.git.commit"]
        assert run.data.tags["outcome"] == "completed"
        assert {"max_depth", "device"} <= set(run.data.params)
        curve = MlflowClient().get_metric_history(run.info.run_id, "valid-logloss")
        steps = [m.step for m in curve]  # one point per report; the last is the final one
        assert steps[:-1] == list(range(10, 10 * len(steps), 10))
        assert steps[-1] == run.data.metrics["rounds"] <= 40


def test_gpu_trials_get_a_gpu_and_fall_back_to_cpu_without_cuda(searched):
    by_device: dict[str, list] = {"cpu": [], "cuda": []}
    for run in _children(searched.parent_run_id):
        by_device[run.data.tags["device_requested"]].append(run)
    assert len(by_device["cuda"]) == len(by_device["cpu"]) == 2
    for run in by_device["cuda"]:
        assert json.loads(run.data.tags["resources"]) == {"CPU": 1.0, "GPU": 1.0}
        assert run.data.tags["device_used"] == "cpu"  # logical GPU, no CUDA: fallback
    for run in by_device["cpu"]:
        assert json.loads(run.data.tags["resources"]) == {"CPU": 1.0}


def test_best_trial_is_tagged_and_registered_as_candidate(searched, pipeline_config):
    name = searched.model_name
    candidate = registry.version_for(name, CANDIDATE)
    assert str(candidate.version) == searched.model_version
    assert candidate.run_id == searched.best_run_id
    best = MlflowClient().get_run(searched.best_run_id)
    assert best.data.tags["best_trial"] == "true"
    assert best.data.metrics["test_roc_auc"] > 0.8
    parent = MlflowClient().get_run(searched.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_run_id"] == searched.best_run_id
    assert load(f"{name}@{CANDIDATE}").booster.num_boosted_rounds() >= 1


def test_resume_refuses_unknown_and_finished_searches(searched, pipeline_config):
    with pytest.raises(SearchError, match="no search named 'nope'"):
        run_search(pipeline_config, _search(), name="nope", resume=True)
    with pytest.raises(SearchError, match="search mixed already finished"):
        run_search(pipeline_config, _search(), name="mixed", resume=True)


def test_gpu_trial_fails_clearly_when_so_configured(version, pipeline_config):
    cfg = _search(
        algorithm="grid",
        num_samples=1,
        max_failures=0,
        asha={"enabled": False},
        resources={"on_missing_cuda": "fail"},
        space={"device": {"type": "grid", "values": ["cpu", "cuda"]}},
    )
    result = run_search(pipeline_config, cfg, data_version=version, name="strict", log=print)
    assert result.errors == 1 and result.best_params["device"] == "cpu"
    failed = [r for r in _children(result.parent_run_id) if r.info.status == "FAILED"]
    assert len(failed) == 1
    assert "CUDA is not usable" in failed[0].data.tags["outcome"]


def test_distributed_trials_above_the_size_threshold(version, pipeline_config):
    cfg = _search(
        algorithm="grid",
        num_samples=1,
        num_boost_round=20,
        asha={"enabled": False},
        distributed={"min_rows": 1, "num_workers": 2},
        space={"max_depth": {"type": "grid", "values": [3, 4]}},
    )
    result = run_search(pipeline_config, cfg, data_version=version, name="distributed", log=print)
    assert result.errors == 0 and result.trials == 2
    parent = MlflowClient().get_run(result.parent_run_id)
    assert parent.data.params["distributed_trials"] == "True"
    train_runs = list((searches_root() / "distributed" / "train_runs").glob("trial-*"))
    assert len(train_runs) == 2  # one Ray Train run per trial
    for run in _children(result.parent_run_id):
        assert run.data.tags["outcome"] == "completed"
        assert run.data.metrics["valid-auc"] > 0.8


def test_same_seed_same_best_params_and_model_bytes(version, pipeline_config, tmp_path):
    cfg = _search(max_concurrent_trials=1, num_samples=4)  # one at a time: arrival order fixed
    models = []
    for name in ("repro-a", "repro-b"):
        result = run_search(pipeline_config, cfg, data_version=version, name=name, log=print)
        uri = f"models:/{result.model_name}/{result.model_version}"
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / name)))
        models.append((result.best_params, (local / "artifacts" / "model.ubj").read_bytes()))
    assert models[0][0] == models[1][0]
    assert models[0][1] == models[1][1]


# -- failures: a crashed trial, a killed driver ------------------------------------------------


def _tune_process(ray_session, search: SearchConfig, tmp_path: Path, name: str, version: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(json.loads(search.model_dump_json())))  # JSON is YAML
    command = [
        sys.executable, "-m", "ray_app.cli", "tune",
        "--search", str(path), "--data-version", version, "--name", name,
        "--address", ray_session.get_runtime_context().gcs_address,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=os.environ.copy())


def _results(name: str) -> list[dict]:
    found = []
    for file in (searches_root() / name).glob("*/result.json"):
        found += [json.loads(line) for line in file.read_text().splitlines() if line]
    return found


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_crashed_trial_is_retried_from_its_checkpoint(ray_session, version, tmp_path):
    cfg = _search(
        algorithm="grid",
        num_samples=1,
        num_boost_round=3000,
        early_stopping_rounds=None,
        report_every=20,
        checkpoint_every=100,
        asha={"enabled": False},
        space={
            "max_depth": {"type": "grid", "values": [6]},
            "eta": {"type": "grid", "values": [0.01]},
        },
    )
    proc = _tune_process(ray_session, cfg, tmp_path, "crash", version)
    try:
        checkpointed = _wait(
            lambda: [r for r in _results("crash") if r.get("rounds", 0) >= 200],
            240,
            "a checkpointed trial",
        )
        os.kill(checkpointed[0]["pid"], signal.SIGKILL)  # the trial dies
        assert proc.wait(timeout=400) == 0
    finally:
        proc.kill()
    state = json.loads((searches_root() / "crash" / SEARCH_FILE).read_text())
    (child,) = _children(state["parent_run_id"])
    assert child.info.status == "FINISHED"
    assert child.data.tags["retries"] == "1" and child.data.tags["outcome"] == "completed"
    restarts = [r for r in _results("crash") if r.get("iterations_since_restore") == 1]
    assert restarts[-1]["rounds"] > 20  # resumed from a checkpoint, not from round 0


def test_a_trial_that_dies_after_its_final_report_is_not_trained_again(
    ray_session, pipeline_config, tmp_path
):
    """Its driver's death (or its own) between the final checkpoint and Tune recording the
    trial as done: the retry restores that checkpoint, with nothing left to train."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    data = TrialData(x[:300], y[:300], x[300:], y[300:], ["a", "b", "c"])
    settings = _search(num_boost_round=30, early_stopping_rounds=None, asha={"enabled": False})

    def dies_once(config: dict) -> None:
        first = tune.get_checkpoint() is None
        single_trial(config, data, settings, pipeline_config.train.params)
        if first:
            raise RuntimeError("died after its final report")

    tuner = tune.Tuner(
        dies_once,
        param_space={"max_depth": 3, "eta": 0.3},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    (result,) = tuner.fit()
    assert result.error is None
    assert result.metrics[TRAINED] == 1 and result.metrics["rounds"] == 30
    assert result.metrics["iterations_since_restore"] == 1  # the final report, sent again
    with result.checkpoint.as_directory() as d:
        assert xgb.Booster(model_file=str(Path(d) / MODEL_FILE)).num_boosted_rounds() == 30


def _curve_lengths(parent: str) -> dict[str, int]:
    client = MlflowClient()
    return {
        r.data.tags["trial_id"]: len(client.get_metric_history(r.info.run_id, "valid-logloss"))
        for r in _children(parent)
    }


def test_killed_search_resumes_without_redoing_finished_trials(
    ray_session, version, pipeline_config, tmp_path
):
    cfg = _search(
        num_samples=8,
        max_concurrent_trials=1,
        num_boost_round=6000,  # seconds per trial: the kill must land mid-search
        early_stopping_rounds=None,
        report_every=100,
        checkpoint_every=500,
        asha={"enabled": False},
    )
    proc = _tune_process(ray_session, cfg, tmp_path, "killed", version)
    state = searches_root() / "killed" / SEARCH_FILE
    try:
        parent = _wait(
            lambda: state.is_file() and json.loads(state.read_text())["parent_run_id"],
            240,
            "the search to start",
        )
        _wait(
            lambda: sum(r.info.status == "FINISHED" for r in _children(parent)) >= 2,
            300,
            "two finished trials",
        )
        time.sleep(5)
        killed_at_ms = time.time() * 1000
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    ended = {r.data.tags["trial_id"]: r.info.end_time for r in _children(parent)}
    # Tune saves its state every second and copies it to storage in the background, so a
    # trial that ended just before the kill may run again; one that ended well before, not.
    settled = {t for t, end in ended.items() if end and end < killed_at_ms - 4_000}
    assert len(settled) >= 2 and sum(bool(e) for e in ended.values()) < 8, "kill mid-search"
    curves_before = _curve_lengths(parent)
    assert MlflowClient().get_run(parent).info.status == "RUNNING"
    assert resumable("killed") and not resumable("never-ran")
    assert finished_version("killed", "churn_model") is None  # not over yet

    result = run_search(pipeline_config, cfg, name="killed", resume=True, log=print)
    # over: a caller killed before it heard so (a retrain) takes the version it registered
    assert finished_version("killed", result.model_name) == result.model_version
    children = _children(parent)
    finished = [r for r in children if r.info.status == "FINISHED"]
    seen = [(r.data.tags["trial_id"], r.info.status, r.data.tags.get("outcome")) for r in children]
    assert result.trials == 8 and len(finished) == 8, seen  # one finished run per trial
    for lost in (r for r in children if r.info.status != "FINISHED"):  # begun, never saved
        assert lost.info.status == "KILLED" and lost.data.tags["outcome"].startswith("lost")
    curves_after = _curve_lengths(parent)
    for trial in settled:  # a re-run would have logged its learning curve again
        assert curves_after[trial] == curves_before[trial], f"finished trial {trial} ran again"
    assert MlflowClient().get_run(parent).info.status == "FINISHED"
