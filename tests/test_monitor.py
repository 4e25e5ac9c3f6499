"""Drift on live traffic: rows sent to the real service, logged, and judged against the served
version's training data with Evidently; the verdict and reports land in MLflow."""

import datetime as dt
import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from ray_app import tracking
from ray_app.cli import app as cli
from ray_app.data import synth
from ray_app.data.store import open_store
from ray_app.model.schema import to_records
from ray_app.monitor.drift import MonitorConfig, run

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def _send(service: str, api, contract, path: Path) -> tuple[dt.datetime, dt.datetime]:
    """Every row of a synth file through /predict (50 per request, the test app's limit);
    the window they were answered in, once the log has them (flush_s is 1 s)."""
    dates = [c for c in contract.input_columns if contract.columns[c].type == "date"]
    rows = to_records(pd.read_csv(path, parse_dates=dates), contract)
    start = dt.datetime.now(dt.UTC)
    for i in range(0, len(rows), 50):
        answer = api.post(f"{service}/predict", json={"instances": rows[i : i + 50]}, timeout=30)
        assert answer.status_code == 200, answer.text
    end = dt.datetime.now(dt.UTC)
    time.sleep(2.5)
    return start, end


def _judge(result, window: tuple[dt.datetime, dt.datetime]):
    start, end = window
    cfg = MonitorConfig(window_s=(end - start).total_seconds() + 0.5, min_rows=200)
    return run(result.model_name, cfg, open_store(None), now=end + dt.timedelta(seconds=0.25))


def test_traffic_like_training_shows_no_drift_and_shifted_traffic_does(
    result, service, api, contract, tmp_path
):
    clean = synth.write(tmp_path / "clean.csv", 1_000, seed=11)
    summary = _judge(result, _send(service, api, contract, clean))
    assert summary.rows == 1_000 and summary.verdict == "no drift", summary.reasons
    assert summary.features and summary.prediction["relative_shift"] < 0.15

    shifted = synth.write(
        tmp_path / "shifted.csv",
        1_000,
        seed=12,
        drift=synth.Drift(shift={"monthly_charge": 40.0, "days_since_last_login": 60.0}),
    )
    summary = _judge(result, _send(service, api, contract, shifted))
    assert summary.verdict == "drift", summary
    assert summary.features["monthly_charge"]["drifted"]
    assert summary.features["days_since_last_login"]["drifted"]
    assert not summary.features["region"]["drifted"]
    assert any(r.startswith("prediction drift") for r in summary.reasons), summary.reasons
    tracking.configure()
    logged = mlflow.get_run(summary.mlflow_run_id)
    assert logged.data.tags["verdict"] == "drift"
    assert logged.data.tags["model_version"] == summary.version
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(summary.mlflow_run_id, "monitor")}
    assert files == {"monitor/drift.html", "monitor/drift.json"}
    saved = json.loads(
        mlflow.artifacts.load_text(f"runs:/{summary.mlflow_run_id}/monitor/drift.json")
    )
    assert saved["verdict"] == "drift" and saved["rows"] == 1_000


def test_monitor_command_says_when_there_are_too_few_rows(result, tmp_path):
    config = tmp_path / "monitor.yaml"
    config.write_text("window_s: 0.001\nmin_rows: 10\n")
    out = CliRunner().invoke(
        cli, ["monitor", "--model", result.model_name, "--config", str(config)]
    )
    assert out.exit_code == 0, out.output
    assert "too few rows" in out.output


def test_a_check_replaces_the_drift_gauges_it_exports(ray_session):
    """A version promoted away, or a window too thin to judge, stops being exported: a stale
    drift of 1 would keep its alert firing for ever."""
    from ray_app.monitor import gauges
    from ray_app.monitor.drift import DriftSummary

    def check(version: str, verdict: str) -> set[tuple[str, str]]:
        gauges.drift(DriftSummary("gauged", version, "", "", 500, 500, verdict, drifted_share=0.5))
        return {
            (name, dict(tags)["version"])
            for name, tags in gauges._last
            if ("model", "gauged") in tags and name in gauges.DRIFT
        }

    assert ("rayapp_drift", "1") in check("1", "drift")
    assert {version for _, version in check("2", "no drift")} == {"2"}
    assert check("2", "too few rows") == set()
