"""The gate job on real models: a good first model is promoted through staging, a worse one
is stopped with its reasons, and the report is logged to the candidate's run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ray_app import pipeline, registry, tracking
from ray_app.cli import app as cli

MODEL = "gate_model"


@pytest.fixture(scope="module")
def cfg(pipeline_config):
    tracking_cfg = pipeline_config.tracking.model_copy(update={"model_name": MODEL})
    return pipeline_config.model_copy(update={"tracking": tracking_cfg})


@pytest.fixture(scope="module")
def good(ray_session, cfg):
    return pipeline.run(cfg, log=print)


@pytest.fixture(scope="module")
def worse(good, cfg):
    weak = cfg.train.model_copy(
        update={"num_boost_round": 2, "params": {**cfg.train.params, "max_depth": 1}}
    )
    weak_cfg = cfg.model_copy(update={"train": weak})
    return pipeline.run(weak_cfg, data_version=good.dataset_version, log=print)


def test_first_model_passes_every_dimension_and_goes_through_staging(good):
    assert good.promoted, good.gate_reasons
    tracking.configure()
    assert str(registry.version_for(MODEL, registry.PRODUCTION).version) == good.model_version
    assert str(registry.version_for(MODEL, "staging").version) == good.model_version
    moves = registry.alias_history(MODEL)
    assert [m.alias for m in moves] == ["staging", "production"]
    assert moves[-1].gate_report.endswith("gate/gate.html") and moves[-1].by
    client = MlflowClient()
    assert client.get_run(good.run_id).data.tags["gate"] == "passed"
    path = mlflow.artifacts.download_artifacts(run_id=good.run_id, artifact_path="gate/gate.json")
    report = json.loads(Path(path).read_text())
    dimensions = {r["dimension"] for r in report["results"]}
    assert dimensions == {"quality", "baseline", "slices", "fairness", "calibration", "champion"}
    assert 0 < report["threshold"] < 1


def test_worse_model_is_stopped_and_aliases_stay(good, worse):
    assert not worse.promoted
    reasons = "; ".join(worse.gate_reasons)
    assert "champion: roc_auc" in reasons and f"vs production v{good.model_version}" in reasons
    assert str(registry.version_for(MODEL).version) == good.model_version
    assert str(registry.version_for(MODEL, "staging").version) == good.model_version
    assert MlflowClient().get_run(worse.run_id).data.tags["gate"] == "failed"


def test_gate_command_prints_a_verdict_per_dimension(worse, cfg, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(json.loads(cfg.model_dump_json())))  # JSON is YAML
    out = CliRunner().invoke(cli, ["gate", "--run", worse.run_id, "--config", str(config)])
    assert out.exit_code == 1, out.output
    for dimension in ("quality", "baseline", "slices", "fairness", "calibration", "champion"):
        assert f"[gate] {dimension}" in out.output
    assert "[gate] champion    FAIL" in out.output and "FAILED; report" in out.output
    assert str(registry.version_for(MODEL).version) != worse.model_version
