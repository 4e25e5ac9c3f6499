"""`rayapp trace`: from a prediction the real service answered and logged, back to the model
version, training run, gate report, dataset version and snapshot that produced it, each fact
checked against the registry and MLflow; an unknown request id is a usage error that says
where it looked."""

import datetime as dt
import json
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from ray_app import registry, tracking
from ray_app.cli import app as cli
from ray_app.data import synth
from ray_app.data.snapshot import find_snapshot
from ray_app.data.store import open_store
from ray_app.model.logged import sample_request
from ray_app.model.schema import to_records

pytestmark = pytest.mark.e2e


def _trace(*args: str, timeout_s: float = 20):
    """`rayapp trace ...`, again until the log has the request (it is flushed every 1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = CliRunner().invoke(cli, ["trace", *args])
        if out.exit_code != 2 or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def _answered(service: str, api, contract, folder: Path) -> tuple[str, dict, list[str]]:
    """Three synth rows with customer ids through /predict under a fresh request id."""
    dates = [c for c in contract.input_columns if contract.columns[c].type == "date"]
    frame = pd.read_csv(synth.write(folder / "rows.csv", 3, seed=5), parse_dates=dates)
    ids = [f"C{uuid.uuid4().int % 10**9:09d}" for _ in range(len(frame))]  # the id pattern
    rows = [
        {**r, contract.id_column: i} for r, i in zip(to_records(frame, contract), ids, strict=True)
    ]
    rid = f"trace-{uuid.uuid4().hex}"
    answer = api.post(
        f"{service}/predict", json={"instances": rows}, headers={"X-Request-ID": rid}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return rid, answer.json(), ids


def test_trace_leads_from_a_logged_prediction_to_everything_that_produced_it(
    result, service, api, contract, tmp_path
):
    before = dt.datetime.now(dt.UTC)
    rid, answer, ids = _answered(service, api, contract, tmp_path)
    name, version = answer["model_name"], answer["model_version"]

    out = _trace(rid, "--json")
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)

    # The rows: one per instance, as answered.
    assert found["request_id"] == rid
    assert [r["row"] for r in found["rows"]] == [0, 1, 2]
    assert [r["entity_id"] for r in found["rows"]] == ids
    assert [r["probability"] for r in found["rows"]] == [
        p["probability"] for p in answer["predictions"]
    ]
    assert [r["label"] for r in found["rows"]] == [str(p["label"]) for p in answer["predictions"]]
    for r in found["rows"]:
        assert r["variant"] == answer["variant"] and r["model_version"] == f"{name}/{version}"
        assert before <= dt.datetime.fromisoformat(r["time"]) <= dt.datetime.now(dt.UTC)
    assert len(found["files"]) == 1 and f"model={name}" in found["files"][0]

    # The version: every fact as the registry and the training run record it.
    [lineage] = found["versions"]
    tracking.configure()
    mv = registry.model_version(name, version)
    run = mlflow.get_run(mv.run_id)
    assert (lineage["model"], lineage["version"]) == (name, version)
    assert lineage["run_id"] == mv.run_id == mv.tags["run_id"]
    assert lineage["run_name"] == run.info.run_name
    assert lineage["dataset_version"] == mv.tags["dataset_version"]
    assert lineage["data_snapshot"] == mv.tags["data_snapshot"]
    assert lineage["data_source"] == mv.tags["data_source"]
    assert lineage["git_commit"] == mv.tags["mlflow.source.git.commit"]
    assert lineage["threshold"] == registry.threshold_of(mv) == answer["threshold"]
    assert lineage["id_column"] == contract.id_column
    assert lineage["gate"] == run.data.tags["gate"] == "passed"
    assert lineage["gate_report"] == registry.gate_report(name, version)
    report = Path(lineage["gate_report"].removeprefix("file://"))
    assert report.is_file() and report.name == "gate.html"
    test_auc = lineage["test_metrics"]["test_roc_auc"]
    assert test_auc == run.data.metrics["test_roc_auc"]
    assert json.loads(mlflow.artifacts.load_text(lineage["config"]))["tracking"]
    # The snapshot it names is the committed snapshot of that data version.
    snap = find_snapshot(open_store(None), lineage["dataset_version"], None)
    assert snap.url == lineage["data_snapshot"]
    # Each alias it claims had moved to this version before the request; production, if it
    # points here and moved before the request, is among them.
    history = registry.alias_history(name)
    answered_at = dt.datetime.fromisoformat(found["rows"][0]["time"])
    for alias in lineage["aliases_then"]:
        assert any(
            m.alias == alias
            and m.to_version == version
            and dt.datetime.fromisoformat(m.when) <= answered_at
            for m in history
        ), alias
    production = [m for m in history if m.alias == registry.PRODUCTION]
    if production[-1].to_version == version and answer["variant"] == "primary":
        assert registry.PRODUCTION in lineage["aliases_then"]

    # A half-written file beside it (a killed replica's) is passed over, not an error.
    folder = Path(found["files"][0]).parent
    broken = folder / "part-0-killed.parquet"
    broken.write_bytes(b"PAR1")
    try:
        again = _trace(rid, "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.output)["rows"] == found["rows"]
    finally:
        broken.unlink()

    # The same, as a person reads it; bounded to the model and today's partitions.
    text = _trace(rid, "--model", name, "--since", f"{before:%F}")
    assert text.exit_code == 0, text.output
    for fact in [
        f"{name}/{version}",
        mv.run_id,
        run.info.run_name,
        mv.tags["dataset_version"],
        mv.tags["data_snapshot"],
        lineage["gate_report"],
        mv.tags["mlflow.source.git.commit"],
        *ids,
    ]:
        assert fact in text.output, fact


def test_an_unknown_request_id_says_where_it_looked(result, service, api):
    api.post(f"{service}/predict", json=sample_request(result.model_name), timeout=30)
    rid = f"never-{uuid.uuid4().hex}"
    time.sleep(1.5)  # a flush after that request: the log has a partition to search
    out = CliRunner().invoke(cli, ["trace", rid])
    assert out.exit_code == 2
    assert "not in the prediction log" in out.output
    assert open_store(None).url("predictions", f"model={result.model_name}") in out.output
    assert "flushed every 1 s" in out.output
    # Bounded to dates with no log yet: nothing searched, and it says so.
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    later = CliRunner().invoke(cli, ["trace", rid, "--since", f"{tomorrow:%F}"])
    assert later.exit_code == 2 and f"no partition date>={tomorrow:%F}" in later.output
    bad = CliRunner().invoke(cli, ["trace", rid, "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output
