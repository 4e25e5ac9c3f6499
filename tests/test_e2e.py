"""End to end on a local Ray: built-in data, pipeline, MLflow, registry, Serve, HTTP."""

import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from conftest import API_KEY, kill_replicas, wait_healthy
from mlflow.tracking import MlflowClient
from ray import serve
from typer.testing import CliRunner

from ray_app import pipeline, registry, tracking
from ray_app.cli import app as cli
from ray_app.data import synth
from ray_app.model.logged import load, log_model, sample_request

ROOT = Path(__file__).resolve().parent.parent


def _named(run) -> str:
    return f"{run.model_name}/{run.model_version}"


pytestmark = pytest.mark.e2e


def test_pipeline_trains_and_promotes_a_good_model(result):
    assert result.rows == 20_000
    assert result.promoted, result.gate_reasons
    assert 0.80 <= result.metrics["roc_auc"] <= 0.95


def test_mlflow_run_records_lineage_and_artifacts(result):
    tracking.configure()
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["dataset_version"] == result.dataset_version
    assert len(run.data.tags["mlflow.source.git.commit"]) >= 7
    [dataset] = run.inputs.dataset_inputs  # MLflow's own lineage: the data version as digest
    assert dataset.dataset.digest == result.dataset_version
    assert {
        "test_roc_auc",
        "test_f1",
        "test_precision",
        "test_recall",
        "test_accuracy",
        "test_logloss",
    } <= set(run.data.metrics)
    assert run.data.params["max_depth"] == "6"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_importance.png", "config", "validation"} <= artifacts

    version = registry.version_for(result.model_name)
    assert str(version.version) == result.model_version
    assert version.tags["dataset_version"] == result.dataset_version
    loaded = load(result.model_name)
    assert loaded.features.feature_names == loaded.booster.feature_names
    assert loaded.lineage["dataset_version"] == result.dataset_version
    model_files = mlflow.artifacts.download_artifacts(
        f"models:/{result.model_name}/{version.version}"
    )
    assert (Path(model_files) / "artifacts" / "model.ubj").is_file()


def test_prediction_over_http(result, service, api):
    sample = sample_request(result.model_name)
    response = api.post(f"{service}/predict", json=sample, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"]) == (result.model_name, result.model_version)
    assert len(body["predictions"]) == len(sample["instances"])
    gate_threshold = float(registry.version_for(result.model_name).tags["threshold"])
    assert body["threshold"] == pytest.approx(gate_threshold)  # the gate's, not 0.5
    for p in body["predictions"]:
        assert 0.0 < p["probability"] < 1.0
        assert p["label"] == int(p["probability"] >= body["threshold"])


def test_mlflow_pyfunc_on_raw_rows_answers_like_the_service(result, service, api):
    sample = sample_request(result.model_name)
    served = api.post(f"{service}/predict", json=sample, timeout=30).json()
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{served['model_version']}")
    contract = load(result.model_name).contract
    assert model.metadata.get_input_schema().input_names() == contract.input_columns  # raw
    answer = model.predict(
        pd.DataFrame(sample["instances"]), params={"threshold": served["threshold"]}
    )
    expected = served["predictions"]
    assert answer["probability"].tolist() == pytest.approx([p["probability"] for p in expected])
    assert answer["label"].tolist() == [p["label"] for p in expected]


def test_explain_names_the_features_behind_each_prediction(result, service, api):
    sample = sample_request(result.model_name)
    response = api.post(f"{service}/explain?top_k=3", json=sample, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = api.post(f"{service}/predict", json=sample, timeout=30).json()
    features = set(load(result.model_name).features.feature_names)
    for row, prediction in zip(body["explanations"], predicted["predictions"], strict=True):
        assert row["probability"] == pytest.approx(prediction["probability"])
        assert len(row["contributions"]) == 3
        assert {c["feature"] for c in row["contributions"]} <= features
    bad = api.post(f"{service}/explain?top_k=0", json=sample, timeout=30)
    assert bad.status_code == 422 and "top_k" in bad.json()["detail"]


def test_bad_requests_get_422_naming_the_field_and_service_keeps_serving(result, service, api):
    good = sample_request(result.model_name)["instances"][0]
    cases = [
        ({"instances": []}, "instances"),
        ({"instances": [{**good, "plan": "gold"}]}, "instances.0.plan"),
        ({"instances": [{**good, "age": "old"}]}, "instances.0.age"),
        ({"instances": [{k: v for k, v in good.items() if k != "region"}]}, "instances.0.region"),
        ({"rows": [good]}, "instances"),
        # the contract's id pattern and cross-column rule, as its checks of files apply them
        ({"instances": [{**good, "customer_id": "X1"}]}, "instances.0.customer_id"),
        (
            {"instances": [{**good, "signup_date": "2020-02-02", "last_login": "2020-01-01"}]},
            "instances.0: Value error, last_login (2020-01-01) must be >= signup_date",
        ),
    ]
    for body, field in cases:
        response = api.post(f"{service}/predict", json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert field in response.json()["detail"]
    malformed = api.post(
        f"{service}/predict",
        data="{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert malformed.status_code == 422 and "body" in malformed.json()["detail"]
    health = requests.get(f"{service}/healthz", timeout=10).json()
    assert health["status"] == "ok"
    assert health["models"][result.model_name]["serving"] == {"primary": _named(result)}


def test_a_request_id_past_its_bound_is_a_400_and_one_within_is_echoed(result, service, api):
    """The id is logged with every row of its request: 10,000 rows of an 8 KB id would be
    80 MB in the prediction log's buffer."""
    sample = sample_request(result.model_name)
    for bad in ("x" * 129, "has space", "tab\there"):
        response = api.post(
            f"{service}/predict", json=sample, headers={"X-Request-ID": bad}, timeout=30
        )
        assert response.status_code == 400 and "X-Request-ID" in response.json()["detail"]
    fine = "trace-" + "a" * 122
    answer = api.post(f"{service}/predict", json=sample, headers={"X-Request-ID": fine}, timeout=30)
    assert answer.status_code == 200 and answer.json()["request_id"] == fine


def test_a_body_with_many_bad_fields_names_the_first_and_counts_them_all(result, service, api):
    good = sample_request(result.model_name)["instances"][0]
    rows = [{**good, "age": "old", "plan": "gold"} for _ in range(30)]  # within max_instances
    response = api.post(f"{service}/predict", json={"instances": rows}, timeout=30)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["count"] == 60 and len(body["errors"]) == 50, body
    assert body["errors"][0]["field"] == "instances.0.plan" and "50 more" in body["detail"]


def test_input_json_cannot_carry_back_is_a_422_not_a_500(result, service, api):
    good = sample_request(result.model_name)["instances"][0]
    for field, literal in (("monthly_charge", "NaN"), ("age", "Infinity"), ("age", "-Infinity")):
        body = json.dumps({"instances": [{**good, field: 0}]}).replace(
            f'"{field}": 0', f'"{field}": {literal}'
        )
        response = api.post(
            f"{service}/predict",
            data=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 422, (literal, response.text)
        assert f"instances.0.{field}" in response.json()["detail"]


def test_ids_and_sensitive_columns_are_echoed_or_accepted_never_fed(result, service, api):
    good = sample_request(result.model_name)["instances"][0]
    rows = [
        {**good, "customer_id": "C000000001", "gender": "female"},
        {**good, "customer_id": "C000000002", "gender": "male"},
        good,
    ]
    response = api.post(
        f"{service}/predict",
        json={"instances": rows},
        headers={"X-Request-ID": "req-42"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "req-42" and response.headers["x-request-id"] == "req-42"
    answers = body["predictions"]
    assert [a["id"] for a in answers] == ["C000000001", "C000000002", None]
    assert len({a["probability"] for a in answers}) == 1  # gender and id never reach the model
    fresh = api.post(f"{service}/predict", json={"instances": [good]}, timeout=30)
    assert fresh.json()["request_id"] == fresh.headers["x-request-id"]  # made by Serve


def test_limits_on_what_a_request_may_be(result, service, api):
    good = sample_request(result.model_name)["instances"][0]
    too_many = api.post(f"{service}/predict", json={"instances": [good] * 51}, timeout=30)
    assert too_many.status_code == 422 and "instances" in too_many.json()["detail"]
    assert "at most 50" in too_many.json()["detail"]
    padded = {"instances": [good], "pad": "x" * 70_000}
    too_big = api.post(f"{service}/predict", json=padded, timeout=30)
    assert too_big.status_code == 413 and "65536 bytes" in too_big.json()["detail"]
    as_text = api.post(
        f"{service}/predict",
        data=json.dumps({"instances": [good]}),
        timeout=30,
        headers={"content-type": "text/plain"},
    )
    assert as_text.status_code == 415 and "application/json" in as_text.json()["detail"]
    ok = api.post(f"{service}/predict", json={"instances": [good] * 50}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 50


def test_openapi_docs_show_the_contract(result, service):
    schema = requests.get(f"{service}/openapi.json", timeout=10).json()
    instance = schema["components"]["schemas"][f"{result.model_name}.Instance"]
    assert instance["properties"]["region"]["enum"] == ["north", "south", "east", "west"]
    assert requests.get(f"{service}/docs", timeout=10).status_code == 200


def test_cli_predict_prints_the_answer(result, service):
    unauthorised = CliRunner().invoke(cli, ["predict", "--sample", "--url", service])
    assert unauthorised.exit_code == 1 and "401" in unauthorised.output
    out = CliRunner(env={"RAYAPP_API_KEY": API_KEY}).invoke(
        cli, ["predict", "--sample", "--url", service]
    )
    assert out.exit_code == 0, out.output
    assert f'"model_version": "{result.model_version}"' in out.output


def test_cli_pipeline_stops_on_bad_data_without_training(ray_session, pipeline_yaml, tmp_path):
    bad = synth.write(
        tmp_path / "bad.csv", 2_000, seed=3, corruption=synth.Corruption(negative_amounts=0.1)
    )
    tracking.configure()
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    out = CliRunner().invoke(cli, ["pipeline", "--config", str(pipeline_yaml), "--data", str(bad)])
    assert out.exit_code == 2
    assert "monthly_charge" in out.output and str(bad) in out.output
    assert "validation.html" in out.output  # the full report was written for a person to read
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_same_data_version_config_and_seed_give_identical_model_bytes(result, pipeline_yaml):
    """...and so the gate keeps the copy out of production: it is not better by the margin."""
    out = CliRunner().invoke(
        cli,
        [
            "train",
            "--data-version",
            result.dataset_version,
            "--config",
            str(pipeline_yaml),
            "--yes",
        ],
    )
    assert out.exit_code == 1 and "champion: roc_auc" in out.output, out.output
    tracking.configure()
    name = result.model_name
    assert registry.aliased_version(name) == result.model_version  # production stayed
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    again = max(versions, key=lambda v: int(v.version))
    assert again.version != result.model_version
    assert again.tags["dataset_version"] == result.dataset_version

    def model_bytes(version: str) -> bytes:
        local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}")
        return (Path(local) / "artifacts" / "model.ubj").read_bytes()

    assert model_bytes(again.version) == model_bytes(result.model_version)


def test_versions_lists_the_snapshot(result):
    out = CliRunner().invoke(cli, ["data", "versions"])
    assert out.exit_code == 0 and result.dataset_version in out.output and "20,000" in out.output


@pytest.mark.parametrize(
    "job, option",
    [
        ("pipeline", "--data"),
        ("tune", "--resume"),
        ("monitor", "--window-s"),
        ("retrain", "--dry-run"),
    ],
)
def test_job_entry_points_parse_their_arguments(job, option):
    out = subprocess.run(
        [sys.executable, f"jobs/{job}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and option in out.stdout and "--config" in out.stdout


def test_rollback_moves_production_back_and_the_service_follows(
    result, service, pipeline_config, api, gates_without_margin
):
    newer = pipeline.run(
        pipeline_config,
        data_version=result.dataset_version,
        log=lambda m: None,
        gates=gates_without_margin,
    )
    assert newer.promoted
    moves = registry.alias_history(result.model_name, registry.PRODUCTION)
    assert moves[-1].to_version == newer.model_version and moves[-1].reason.startswith("gate")
    assert moves[-1].run_id == newer.run_id and moves[-1].dataset_version == result.dataset_version
    body = {"instances": sample_request(result.model_name)["instances"]}
    _wait_for_version(api, service, body, newer.model_version)

    out = CliRunner().invoke(cli, ["rollback", "--model", result.model_name, "--yes"])
    assert out.exit_code == 0, out.output
    back = moves[-1].from_version
    assert f"version {newer.model_version} -> {back}" in out.output
    assert str(registry.version_for(result.model_name).version) == back
    _wait_for_version(api, service, body, back)  # the same replica, reloaded in place

    out = CliRunner().invoke(cli, ["rollback", "--model", result.model_name, "--to", back, "--yes"])
    assert out.exit_code == 2 and "already points at version" in out.output
    out = CliRunner().invoke(cli, ["history", "--model", result.model_name])
    assert f"rollback from version {newer.model_version}" in out.output


def test_a_version_with_another_request_schema_waits_for_a_redeploy(result, service, api):
    name = result.model_name
    serving = load(name)
    contract = copy.deepcopy(serving.features.contract)
    contract["columns"]["age"]["max"] = 90  # another contract: requests validate differently
    narrower = dataclasses.replace(serving.features, contract=contract)
    sample = sample_request(name)
    with mlflow.start_run(experiment_id=tracking.experiment_id("ray_app")):
        info = log_model(serving.booster, narrower, sample["instances"], {})
    other = registry.register(info.model_uri, name, {})
    registry.promote(name, registry.PRODUCTION, other.version, "test", "", serving.version)
    try:
        route = _route_health(service, name, lambda r: r["held_back"])
        assert route["configured"]["primary"] == f"{name}/{other.version}", route
        assert "redeploy" in route["held_back"]["primary"]
        assert route["serving"]["primary"] == f"{name}/{serving.version}"
        answer = api.post(f"{service}/predict", json=sample, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == serving.version
        # A replica Serve restarts now finds the alias on the other contract: it must serve
        # the deployed version, not the one its schema cannot validate for.
        killed = kill_replicas("Router")
        route = _route_health(
            service,
            name,
            lambda r: r["held_back"] and not any(r["replica"] in k for k in killed),
            timeout_s=90,
        )
        assert route["serving"]["primary"] == route["deployed"], (killed, route)
        answer = api.post(f"{service}/predict", json=sample, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        registry.promote(name, registry.PRODUCTION, serving.version, "test", "", other.version)
    _route_health(service, name, lambda r: not r["held_back"])


def _route_health(url: str, name: str, until, timeout_s: float = 30) -> dict:
    """The model's entry in /healthz once `until(entry)` holds (a restarting replica may not
    answer for a while)."""
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            seen = requests.get(f"{url}/healthz", timeout=10).json()
            route = {**seen["models"][name], "status": seen["status"], "replica": seen["replica"]}
            if until(route):
                return route
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"/healthz never showed what was waited for; last: {seen}")


def _wait_for_version(api, url: str, body: dict, version: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = api.post(f"{url}/predict", json=body, timeout=10).json()["model_version"]
        if seen == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"service still answers with version {seen}, expected {version}")


def test_another_table_registers_under_its_contracts_name_and_gate_entry(
    ray_session, pipeline_yaml, churn_csv, tmp_path
):
    drafted = tmp_path / "accounts.yaml"
    infer = ["contract", "infer", "--data", str(churn_csv), "--label", "churned"]
    out = CliRunner().invoke(cli, [*infer, "--name", "accounts", "--out", str(drafted)])
    assert out.exit_code == 0, out.output
    command = ["pipeline", "--config", str(pipeline_yaml), "--contract", str(drafted)]
    out = CliRunner().invoke(cli, [*command, "--data", str(churn_csv), "--yes"])
    assert "-> accounts v1" in out.output, out.output  # not churn_model, not its champion
    tracking.configure()
    run_id = registry.model_version("accounts", "1").run_id
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate/gate.json")
    [floor] = [
        r for r in report["results"] if r["name"] == "roc_auc" and r["dimension"] == "quality"
    ]
    assert floor["limit"] == 0.75  # gates.yaml `default`; churn_model's entry says 0.80
    assert "champion" not in "; ".join(r["reason"] for r in report["results"] if not r["passed"])


def test_a_version_that_fails_to_load_shows_as_degraded_while_the_old_one_answers(
    result, service, api
):
    name = result.model_name
    serving, sample = load(name), sample_request(name)
    with mlflow.start_run(experiment_id=tracking.experiment_id("ray_app")):
        # a model without ray_app's files: it cannot be loaded
        info = mlflow.xgboost.log_model(serving.booster, name="model")
    broken = registry.register(info.model_uri, name, {})
    registry.promote(name, registry.PRODUCTION, broken.version, "test", "", serving.version)
    try:
        route = _route_health(service, name, lambda r: r["held_back"])
        assert route["status"] == "degraded" and "cannot load" in route["held_back"]["primary"]
        assert route["serving"]["primary"] == f"{name}/{serving.version}"
        answer = api.post(f"{service}/predict", json=sample, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == serving.version
    finally:
        registry.promote(name, registry.PRODUCTION, serving.version, "test", "", broken.version)
    assert _route_health(service, name, lambda r: not r["held_back"])["status"] == "ok"


def test_kserve_v1_routes_answer_like_predict(result, service, api):
    name, sample = result.model_name, sample_request(result.model_name)
    v1 = api.post(f"{service}/v1/models/{name}:predict", json=sample, timeout=30)
    plain = api.post(f"{service}/predict", json=sample, timeout=30)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == plain.json()["predictions"]
    ready = requests.get(f"{service}/v1/models/{name}", timeout=10).json()
    assert ready["name"] == name and ready["ready"] is True
    assert ready["version"] == plain.json()["model_version"]
    for unknown in (
        requests.get(f"{service}/v1/models/nope", timeout=10),
        api.post(f"{service}/v1/models/nope:predict", json=sample, timeout=30),
    ):
        assert unknown.status_code == 404 and "'nope' is not served here" in unknown.text
    bad = api.post(f"{service}/v1/models/{name}:predict", json={"rows": []}, timeout=30)
    assert bad.status_code == 422 and "instances" in bad.json()["detail"]


def test_overload_is_shed_with_429_and_retry_after_never_500(result, service, api):
    from concurrent.futures import ThreadPoolExecutor

    from ray_app.serve.app import Router, ShadowScorer

    name = result.model_name
    deployed = load(name)
    served = {
        name: {
            "ref": f"{name}@production",
            "version": f"{name}/{deployed.version}",
            "features": deployed.features.to_json(),
        }
    }
    shed = {"status_code": 429, "retry_after_s": 1}  # as serve_config.yaml says
    router = Router.options(
        name="BusyRouter", max_ongoing_requests=1, max_queued_requests=1, backpressure_config=shed
    )
    app = router.bind(ShadowScorer.options(name="BusyShadow").bind(), {"models": [name]}, served)
    serve.run(app, name="busy", route_prefix="/busy")
    try:
        wait_healthy(f"{service}/busy", api=api, body=sample_request(name))
        body = {"instances": sample_request(name)["instances"] * 100}

        def call(_: int) -> tuple[int, str | None, float]:
            started = time.monotonic()
            r = api.post(f"{service}/busy/explain", json=body, timeout=30)
            return r.status_code, r.headers.get("retry-after"), time.monotonic() - started

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(48)))
        codes = [code for code, _, _ in answers]
        assert set(codes) <= {200, 429}, codes
        assert 200 in codes and 429 in codes, codes
        assert all(after == "1" for code, after, _ in answers if code == 429)
        assert max(seconds for _, _, seconds in answers) < 20  # nobody left hanging
    finally:
        serve.delete("busy")
    assert requests.get(f"{service}/healthz", timeout=10).status_code == 200
