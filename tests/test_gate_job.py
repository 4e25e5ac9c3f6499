"""The gate job on real models: a good first model is promoted through staging, a worse one
is stopped with its reasons, and the report is logged to the candidate's run."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ray_app import pipeline, registry, tracking
from ray_app.cli import app as cli
from ray_app.config import SplitConfig, load_yaml
from ray_app.evaluate import checks, job
from ray_app.evaluate.gate import load_gates
from ray_app.evaluate.report import render_html
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef

MODEL = "gate_model"
DIMENSIONS = (
    "quality",
    "baseline",
    "slices",
    "fairness",
    "calibration",
    "robustness",
    "explainability",
    "latency",
    "champion",
)


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
    assert {r["dimension"] for r in report["results"]} == set(DIMENSIONS)
    assert 0 < report["threshold"] < 1
    version = client.get_model_version(MODEL, good.model_version)
    assert float(version.tags["threshold"]) == pytest.approx(report["threshold"], abs=1e-6)
    files = {a.path for a in client.list_artifacts(good.run_id, "gate")}
    assert files == {
        f"gate/{f}" for f in ("gate.json", "gate.html", "reliability.png", "shap_summary.png")
    }
    page = Path(
        mlflow.artifacts.download_artifacts(run_id=good.run_id, artifact_path="gate/gate.html")
    )
    html = page.read_text()
    assert html.count("src='data:image/png;base64,") == 2
    for section in ("Robustness", "Explainability", "Latency", "mean |SHAP|", "p99 ms"):
        assert section in html


def test_worse_model_is_stopped_and_aliases_stay(good, worse):
    assert not worse.promoted
    reasons = "; ".join(worse.gate_reasons)
    assert "champion: roc_auc" in reasons and f"vs production v{good.model_version}" in reasons
    assert str(registry.version_for(MODEL).version) == good.model_version
    assert str(registry.version_for(MODEL, "staging").version) == good.model_version
    assert MlflowClient().get_run(worse.run_id).data.tags["gate"] == "failed"
    with pytest.raises(registry.RegistryError, match="has never been production"):
        registry.rollback(MODEL, to=worse.model_version)  # no way round the gate


def test_gate_command_prints_a_verdict_per_dimension(worse, cfg, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(json.loads(cfg.model_dump_json())))  # JSON is YAML
    out = CliRunner().invoke(
        cli, ["gate", f"{MODEL}/{worse.model_version}", "--config", str(config)]
    )
    assert out.exit_code == 1, out.output
    for dimension in DIMENSIONS:
        assert f"[gate] {dimension}" in out.output
    assert re.search(r"\[gate\] champion +FAIL", out.output) and "FAILED; report" in out.output
    assert str(registry.version_for(MODEL).version) != worse.model_version


def test_gate_command_refuses_a_run_without_a_model(worse, cfg, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(json.loads(cfg.model_dump_json())))
    out = CliRunner().invoke(cli, ["gate", "--run", "0123456789abcdef", "--config", str(config)])
    assert out.exit_code == 2, out.output
    assert "gate refused: run 0123456789abcdef has no registered version" in out.output


def test_slow_model_fails_latency_in_the_gate_and_the_report_says_why(
    good, cfg, monkeypatch, tmp_path, slowed
):
    gates = tmp_path / "gates.yaml"
    limits = load_yaml(cfg.gates)
    limits[MODEL] = {"latency": {"max_p95_ms": 100, "requests": 10, "rounds": 2, "warmup": 1}}
    gates.write_text(json.dumps(limits))
    monkeypatch.setattr(job, "load", lambda ref: slowed(load(ref), delay=0.12))
    report = job.evaluate(cfg, ModelRef(run_id=good.run_id), load_gates(gates))
    failed = [r for r in report.results if not r.passed]
    assert {r.dimension for r in failed} == {"latency"}, report.failures()
    assert failed[0].value >= 120 and "> SLA 100 ms" in failed[0].reason
    assert "best of 2 rounds" in failed[0].reason
    assert html.escape(failed[0].reason) in render_html(report)


def test_a_retrain_that_changes_nothing_does_not_move_production(good, cfg):
    """Same data, config and seed: an identical model, registered, gated, and kept out of
    production by the champion margin (configs/gates.yaml)."""
    again = pipeline.run(cfg, data_version=good.dataset_version, log=print)
    assert not again.promoted and again.aliases == []
    assert registry.aliased_version(MODEL) == good.model_version
    assert len(again.gate_reasons) == 1, again.gate_reasons
    assert "champion: roc_auc" in again.gate_reasons[0]
    assert "(change +0.0000, needs +0.0020)" in again.gate_reasons[0]


def test_regating_production_judges_its_training_split_and_moves_nothing(good, cfg):
    other = cfg.data.model_copy(update={"split": SplitConfig(train=0.5, valid=0.25, test=0.25)})
    history = registry.alias_history(MODEL)
    report, moves = job.run_gate(
        cfg.model_copy(update={"data": other}), ModelRef(run_id=good.run_id), load_gates(cfg.gates)
    )
    assert report.passed and moves == [] and registry.alias_history(MODEL) == history
    assert f"production v{good.model_version} itself" in report.results[-1].reason
    logged = mlflow.artifacts.load_dict(f"runs:/{good.run_id}/config/pipeline.json")
    assert logged["data"]["split"]["test"] == 0.15
    rows = sum(report.metrics["confusion"].values())
    assert 0.13 < rows / 20_000 < 0.17  # 15% of the data version, not 25%


def test_the_gate_command_asks_before_moving_production(good, worse, cfg, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(json.dumps(json.loads(cfg.model_copy().model_dump_json())))
    registry.promote(MODEL, "production", worse.model_version, "test", "", good.model_version)
    try:
        command = ["gate", f"{MODEL}/{good.model_version}", "--config", str(config)]
        out = CliRunner().invoke(cli, command, input="n\n")
        assert out.exit_code == 0, out.output  # the gate passed; the person said no
        assert f"move production from {worse.model_version} to it? [y/N]" in out.output
        assert registry.aliased_version(MODEL) == worse.model_version
        out = CliRunner().invoke(cli, [*command, "--yes"])
        assert out.exit_code == 0 and "[y/N]" not in out.output, out.output
        assert f"{MODEL}@production: {worse.model_version} -> {good.model_version}" in out.output
    finally:
        if registry.aliased_version(MODEL) != good.model_version:
            current = registry.aliased_version(MODEL)
            registry.promote(MODEL, "production", good.model_version, "test", "", current)


def test_a_champion_of_another_contract_fails_the_comparison_with_the_reason(good, cfg):
    """Under one model name the contract changed: a champion of another positive class would
    be scored against inverted labels (and lose to anything), one reading a column the new
    data lacks would crash the gate. Either fails the champion check, saying why."""
    import dataclasses

    champ = load(ModelRef(MODEL, version=good.model_version))
    test = job._frames(cfg, champ)["test"]
    assert job._incomparable(champ, champ, test) is None
    label = champ.contract.label_column
    contract = json.loads(champ.contract.model_dump_json())
    contract["columns"][label]["positive"] = 0
    features = dataclasses.replace(champ.features, contract=contract)
    candidate = dataclasses.replace(champ, version="99", features=features)
    why = job._incomparable(champ, candidate, test)
    assert why == (
        f"production v{good.model_version} and the candidate cannot be compared on one test "
        f"set: it predicts {label}=1, the candidate {label}=0"
    )
    contract["columns"][label].update(type="category", allowed=["0", "1"], positive="1")
    features = dataclasses.replace(champ.features, contract=contract)
    drafted = dataclasses.replace(champ, version="99", features=features)  # `contract infer`'s
    assert job._incomparable(champ, drafted, test) is None  # 1 and "1": one positive class
    why = job._incomparable(champ, champ, test.drop(columns="age"))
    assert why.endswith(f"it reads ['age'], which data version {good.dataset_version} lacks")
    limits = load_gates(cfg.gates).for_model(MODEL).champion
    (result,) = checks.champion(good.metrics, None, "3", limits, "roc_auc", why)
    assert not result.passed and result.reason == why


def test_the_shap_summary_is_drawn_the_same_for_the_same_values():
    """Its dots' jitter comes from its own seeded generator, not NumPy's global state: the
    same model's gate report holds the same picture."""
    import numpy as np
    import pandas as pd

    from ray_app.evaluate.plots import shap_summary

    rng = np.random.default_rng(1)
    matrix = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd"))
    contribs = rng.normal(size=(300, 5))
    first = shap_summary(contribs, matrix)
    np.random.seed(7)  # whatever else ran in the process
    assert shap_summary(contribs, matrix) == first


def test_a_run_killed_after_its_gate_passed_is_not_judged_again_against_itself(good, cfg):
    """Killed after its gate moved production to it, before the journal had the verdict: the
    resumed run reports the verdict that moved it. Judged again, it would be judged against
    itself, now production, and fail for being no better."""
    from ray_app.data.contract import load_contract
    from ray_app.data.sources import resolve_snapshot
    from ray_app.progress import Steps

    assert registry.aliased_version(MODEL) == good.model_version
    contract = load_contract(cfg.contract)
    snap = resolve_snapshot(cfg, contract, None, good.dataset_version, Steps(print))
    stopped = pipeline.Journal(
        key="killed-after-the-gate",
        model=MODEL,
        started="2026-01-01T00:00:00+00:00",
        data=good.dataset_version,
        step=pipeline.GATE,
        data_version=good.dataset_version,
        mlflow_run_id=good.run_id,
        model_version=good.model_version,
    )
    stopped.update()  # saved as the kill left it
    lines: list[str] = []
    again = pipeline.train_and_gate(
        cfg, contract, snap, load_gates(cfg.gates), Steps(lines.append), key=stopped.key
    )
    assert any("passed before the stop" in line for line in lines), lines
    assert again.promoted and again.model_version == good.model_version
    assert again.aliases == ["staging", "production"]
