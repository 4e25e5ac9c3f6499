"""A pipeline job killed mid-run resumes from its last finished step when the same command runs
again: no second validation, no second training run, no second registered version, and the
gate gives its verdict. Only one run of the same pipeline proceeds at a time; a finished run's
journal starts a new run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ray_app import pipeline, tracking
from ray_app.config import TrackingConfig, load_pipeline_config, rayapp_home
from ray_app.data import synth
from ray_app.data.contract import load_contract
from ray_app.data.ingest import open_source
from ray_app.journal import hold

ROOT = Path(__file__).resolve().parent.parent
MODEL = "resume_model"  # its own model and experiment: the session's production never moves
EXPERIMENT = "ray_app-resume"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def config(pipeline_config, tmp_path_factory) -> Path:
    """The session's (untimed) pipeline, training briefly."""
    train = pipeline_config.train.model_copy(
        update={"num_boost_round": 30, "early_stopping_rounds": 5}
    )
    cfg = pipeline_config.model_copy(
        update={"train": train, "tracking": TrackingConfig(experiment=EXPERIMENT, model_name=MODEL)}
    )
    path = tmp_path_factory.mktemp("resume") / "pipeline.yaml"
    path.write_text(cfg.model_dump_json())  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth.write(tmp_path_factory.mktemp("resume_data") / "churn.csv", 3_000, seed=11)


def _journals() -> list[dict]:
    return [json.loads(p.read_text()) for p in (rayapp_home() / "pipeline" / MODEL).glob("*.json")]


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen, out: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        assert proc.poll() is None, f"the job ended ({proc.returncode}):\n{out.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{out.read_text()}")


def test_a_second_run_of_the_same_pipeline_is_refused_while_one_runs(ray_session, config, data):
    cfg = load_pipeline_config(config)
    version = open_source(data).version
    journal = pipeline.Journal.path(
        MODEL, pipeline.run_key(cfg, load_contract(cfg.contract), version)
    )
    busy = pytest.raises(pipeline.PipelineBusy, match=rf"{MODEL} on data version {version} .*pid")
    with hold(journal.with_suffix(".lock"), "the first run"), busy:
        pipeline.run(cfg, data=data, log=lambda line: None)
    assert not journal.exists()  # it did nothing


def test_a_killed_job_resumes_after_training_and_a_finished_one_starts_anew(
    ray_session, config, data, tmp_path
):
    command = [
        sys.executable, str(ROOT / "jobs" / "pipeline.py"), "--config", str(config),
        "--data", str(data), "--address", ray_session.get_runtime_context().gcs_address,
    ]  # fmt: skip
    first = tmp_path / "first.log"
    with first.open("w") as log:
        job = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        trained = _wait(
            lambda: [j for j in _journals() if j["checkpoint"]], 420, "training", job, first
        )
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver dies, as with a lost head node
        job.wait(30)
    [stopped] = trained
    assert not stopped["finished"] and stopped["step"] in (pipeline.PUBLISH, pipeline.GATE)
    assert "[validate]" in first.read_text()
    tracking.configure()
    client = MlflowClient()
    assert client.get_run(stopped["mlflow_run_id"]).info.status == "RUNNING"  # left by the kill

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)
    out = again.stdout + again.stderr
    assert again.returncode in (0, 1), out  # promoted, or judged and not promoted
    assert f"[resume] run {stopped['key']} of {MODEL} stopped before step" in out, out
    assert "[validate]" not in out and "[snapshot] reusing data version" in out, out
    assert f"[resume] model trained in MLflow run {stopped['mlflow_run_id']}" in out, out
    assert f"[gate] {MODEL} version 1: " in out and "[done]" in out, out
    [done] = _journals()
    assert done["key"] == stopped["key"] and done["mlflow_run_id"] == stopped["mlflow_run_id"]
    assert done["finished"] and done["model_version"] == "1"
    assert done["gate_passed"] == (again.returncode == 0) and done["gate_reasons"]
    # one training: one MLflow run, one Ray Train run, one registered version
    experiment = tracking.experiment_id(EXPERIMENT)
    [run] = client.search_runs([experiment])
    assert run.info.run_id == done["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags[pipeline.RUN_TAG] == done["key"]
    assert len(list((rayapp_home() / "ray_results").glob(f"train-{done['data_version']}-*"))) == 1
    [version] = client.search_model_versions(f"name = '{MODEL}'")
    assert version.run_id == done["mlflow_run_id"] and str(version.version) == "1"

    # killed after MLflow registered the version, before the journal said so: no second one
    unrecorded = {**done, "step": pipeline.PUBLISH, "model_version": "", "finished": ""}
    unrecorded.update(test_metrics={}, gate_passed=None, gate_reasons=[], aliases=[])
    pipeline.Journal.path(MODEL, done["key"]).write_text(json.dumps(unrecorded))
    lines: list[str] = []
    result = pipeline.run(load_pipeline_config(config), data=data, log=lines.append)
    assert lines[0].startswith("[resume]") and result.run_id == done["mlflow_run_id"], lines
    assert result.model_version == "1" and result.metrics == pytest.approx(done["test_metrics"])
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert len(client.search_runs([experiment])) == 1

    # the same command once that run finished is a new run (`make run` twice trains twice): it
    # validates its data again instead of resuming, and is stopped there
    def stopped_at_first_step(line: str) -> None:
        lines.append(line)
        raise KeyboardInterrupt

    lines.clear()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(load_pipeline_config(config), data=data, log=stopped_at_first_step)
    assert lines[0].startswith("[validate]"), lines
    [record] = _journals()  # a new run's journal is first written once it has a snapshot
    assert record["finished"] and record["mlflow_run_id"] == done["mlflow_run_id"]
