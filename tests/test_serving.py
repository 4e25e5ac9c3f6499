"""The router over real HTTP: API keys and rate limits, blue/green under load, canaries that
promote or roll back on their own, shadow traffic and its report, and Serve's metrics.

Rollouts go through `rayapp deploy`, which changes the running application through Serve's
config API as `serve deploy` does. Every test leaves the service as it found it: the default
route, with production where it was.
"""

import json
import threading
import time
from collections import Counter
from functools import partial
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import requests
import xgboost as xgb
from conftest import OTHER_KEY, wait_healthy
from typer.testing import CliRunner

from ray_app import pipeline, registry, tracking
from ray_app.cli import app as cli
from ray_app.model.logged import load, log_model, sample_request
from ray_app.monitor import gauges
from ray_app.rollout.deploy import Running
from ray_app.rollout.routing import KEY_HEADER, VARIANT_HEADER, Canary, CanaryLimits, Route, Variant

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def candidate(result, pipeline_config, gates_without_margin) -> str:
    """A second version that passed the gate (staging) while production stayed put."""
    run = pipeline.run(
        pipeline_config,
        data_version=result.dataset_version,
        log=lambda m: None,
        gates=gates_without_margin,
        confirm=lambda report: False,
    )
    assert registry.gate_report(run.model_name, run.model_version), run.gate_reasons
    return run.model_version


@pytest.fixture
def rollout(service, dashboard, result):
    """`rayapp deploy ...` as a function; afterwards the route is back to its default."""

    def deploy(*args: str) -> str:
        out = CliRunner().invoke(
            cli, ["deploy", "--model", result.model_name, "--address", dashboard, *args]
        )
        assert out.exit_code == 0, out.output
        return out.output

    production = registry.aliased_version(result.model_name)
    yield deploy
    running = Running.read(dashboard, "ray_app")
    running.put(result.model_name, None)
    if registry.aliased_version(result.model_name) != production:
        registry.rollback(result.model_name, to=production)
    _until(service, result.model_name, lambda r: r["strategy"] == "single")


def _until(url: str, name: str, check, timeout_s: float = 30) -> dict:
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = requests.get(f"{url}/healthz", timeout=10).json()["models"][name]
        if check(seen):
            return seen
        time.sleep(0.3)
    raise AssertionError(f"/healthz never showed it; last: {seen}")


def test_prediction_needs_a_key_while_health_stays_open(result, service):
    sample, name = sample_request(result.model_name), result.model_name
    for route in ("/predict", "/explain", f"/v1/models/{name}:predict"):
        missing = requests.post(f"{service}{route}", json=sample, timeout=10)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = requests.post(
            f"{service}{route}", json=sample, headers={"Authorization": "Bearer nope"}, timeout=10
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert requests.get(f"{service}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{service}/v1/models/{name}", timeout=10).json()["ready"] is True


def test_each_key_has_its_own_rate_limit_answered_with_retry_after(result, service, api):
    from ray import serve

    from ray_app.serve.app import app_builder

    args = {"models": [result.model_name], "auth": {"rate_per_s": 0.2, "burst": 2}}
    serve.run(app_builder(args), name="limited", route_prefix="/limited")
    try:
        body = sample_request(result.model_name)
        unkeyed = SimpleNamespace(post=partial(api.post, headers={"Authorization": "Bearer x"}))
        wait_healthy(f"{service}/limited", api=unkeyed, body=body)  # 401 spends no token
        codes = [api.post(f"{service}/limited/predict", json=body, timeout=30) for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[2].headers["retry-after"]) >= 1 and "'tester'" in codes[2].text
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        assert (
            requests.post(
                f"{service}/limited/predict", json=body, headers=other, timeout=30
            ).status_code
            == 200
        )
    finally:
        serve.delete("limited")


class Load:
    """Requests sent back to back from a few threads until stopped: what a switch must not
    disturb."""

    def __init__(self, url: str, api, body: dict, threads: int = 3):
        self.url, self.api, self.body = url, api, body
        self.codes: Counter = Counter()
        self.versions: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                r = self.api.post(f"{self.url}/predict", json=self.body, timeout=10)
                self.codes[r.status_code] += 1
                if r.status_code == 200:
                    self.versions.append(r.json()["model_version"])
            except requests.RequestException as e:
                self.codes[type(e).__name__] += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def wait_for(self, version: str, timeout_s: float = 30) -> None:
        deadline, start = time.monotonic() + timeout_s, len(self.versions)
        while time.monotonic() < deadline:
            if self.versions[start:] and self.versions[-1] == version:
                return
            time.sleep(0.2)
        raise AssertionError(f"still answered by {self.versions[-1:]}, waited for {version}")


def test_blue_green_switch_and_rollback_under_load_fail_no_request(
    result, service, api, candidate, rollout
):
    name, blue = result.model_name, registry.aliased_version(result.model_name)
    body = sample_request(name)
    with Load(service, api, body) as load_:
        out = rollout("--strategy", "bluegreen", "--candidate", f"{name}/{candidate}")
        assert '"strategy": "bluegreen"' in out
        route = _until(service, name, lambda r: "green" in r["serving"])
        assert route["weights"] == {"blue": 100.0, "green": 0.0}
        pinned = api.post(f"{service}/predict", json=body, headers={VARIANT_HEADER: "green"})
        assert pinned.json()["model_version"] == candidate and pinned.json()["variant"] == "green"

        rollout("--switch")
        load_.wait_for(candidate)
        assert registry.aliased_version(name) == candidate  # production moved with the traffic
        rollout("--rollback")
        load_.wait_for(blue)
        assert registry.aliased_version(name) == blue
    assert load_.codes[200] > 20 and set(load_.codes) == {200}, load_.codes
    actions = [e.action for e in registry.rollout_history(name)]
    assert actions[-3:] == ["bluegreen-start", "bluegreen-switch", "bluegreen-rollback"]
    shown = CliRunner().invoke(cli, ["history", "--model", name]).output
    assert "bluegreen-switch" in shown and f"all traffic to {name}/{candidate}" in shown


def test_canary_is_sticky_steps_up_and_promotes_itself_through_the_registry(
    result, service, api, candidate, rollout
):
    name, primary = result.model_name, registry.aliased_version(result.model_name)
    body = sample_request(name)
    rollout(
        "--strategy", "canary", "--candidate", f"{name}/{candidate}", "--steps", "50,100",
        "--step-s", "4",
    )  # fmt: skip
    _until(service, name, lambda r: r["strategy"] == "canary")
    by_key = {}
    for i in range(30):
        variants = {
            api.post(f"{service}/predict", json=body, headers={KEY_HEADER: f"user-{i}"}).json()[
                "variant"
            ]
            for _ in range(3)
        }
        assert len(variants) == 1, variants  # one key, one variant
        by_key[i] = variants.pop()
    assert set(by_key.values()) == {"primary", "canary"}, by_key  # at 50%, both serve
    deadline = time.monotonic() + 40
    with Load(service, api, body):  # evidence: min_requests for each variant
        while registry.aliased_version(name) != candidate:
            assert time.monotonic() < deadline, registry.rollout_history(name)[-3:]
            time.sleep(0.5)
    [promotion] = [m for m in registry.alias_history(name) if m.reason.startswith("canary")][-1:]
    assert (promotion.from_version, promotion.to_version) == (primary, candidate)
    assert promotion.gate_report  # through the gate's move, with the gate's report
    events = [e for e in registry.rollout_history(name) if e.action.startswith("canary")]
    assert [e.action for e in events[-2:]] == ["canary-start", "canary-promote"]
    route = _until(service, name, lambda r: r["serving"]["primary"] == f"{name}/{candidate}")
    assert route["weights"]["primary"] == 100  # ended: the primary follows production
    rollout("--rollback")  # undoes the promotion too
    assert registry.aliased_version(name) == primary


def _shifted_version(name: str) -> str:
    """A registered version whose scores sit near 0.95: a canary that must not get through."""
    served = load(name)
    features = served.features.feature_names
    rows = np.random.default_rng(0).random((200, len(features)))
    booster = xgb.train(
        {"objective": "binary:logistic", "base_score": 0.95},
        xgb.DMatrix(rows, label=np.ones(200), feature_names=features),
        2,
    )
    with mlflow.start_run(experiment_id=tracking.experiment_id("ray_app")):
        info = log_model(booster, served.features, sample_request(name)["instances"], {})
    return registry.register(info.model_uri, name, {}).version


def test_canary_that_breaches_its_limits_is_rolled_back_with_the_reason(
    result, service, api, dashboard, rollout
):
    name = result.model_name
    shifted = _shifted_version(name)
    refused = CliRunner().invoke(
        cli,
        ["deploy", "--model", name, "--address", dashboard, "--strategy", "canary",
         "--candidate", f"{name}/{shifted}"],
    )  # fmt: skip
    assert refused.exit_code == 2 and "has not passed the gate" in refused.output
    route = Route(
        strategy="canary",
        variants=[
            Variant(name="primary", model=f"{name}@production"),
            Variant(name="canary", model=f"{name}/{shifted}", weight=0),
        ],
        canary=Canary(
            variant="canary", steps=[50], step_s=600, started_at=time.time(),
            limits=CanaryLimits(min_requests=10),
        ),
    )  # fmt: skip
    Running.read(dashboard, "ray_app").put(name, route)
    _until(service, name, lambda r: "canary" in r["serving"])
    body = sample_request(name)
    for i in range(80):
        api.post(f"{service}/predict", json=body, headers={KEY_HEADER: f"k{i}"}, timeout=10)
    stopped = _until(service, name, lambda r: r["canary_stopped"])
    assert "mean score" in stopped["canary_stopped"] and stopped["weights"]["canary"] == 0
    after = {api.post(f"{service}/predict", json=body).json()["variant"] for _ in range(20)}
    assert after == {"primary"}
    [event] = [e for e in registry.rollout_history(name) if e.action == "canary-rollback"][-1:]
    assert "mean score" in event.reason and json.loads(event.detail)["canary"]["requests"] >= 10
    assert registry.aliased_version(name) != shifted


def test_shadow_scores_every_request_apart_and_reports(result, service, api, candidate, rollout):
    name = result.model_name
    rollout("--strategy", "shadow", "--candidate", f"{name}/{candidate}")
    _until(service, name, lambda r: r["shadow"] == f"{name}/{candidate}")
    body = sample_request(name)
    since = time.time()
    answers = [api.post(f"{service}/predict", json=body, timeout=10) for _ in range(30)]
    assert {(a.status_code, a.json()["variant"]) for a in answers} == {(200, "primary")}
    deadline, report = time.monotonic() + 30, {}
    while report.get("requests", 0) < 30:
        assert time.monotonic() < deadline, report
        time.sleep(0.5)
        out = CliRunner().invoke(
            cli, ["shadow", "report", "--model", name, "--since", str(time.time() - since + 1)]
        )
        assert out.exit_code == 0, out.output
        report = json.loads(out.output)
    assert report["shadow"] == [f"{name}/{candidate}"] and report["shadow_errors"] == 0
    assert report["agreement_rate"] == 1.0  # the same data, config and seed: the same model
    assert report["score_difference"]["abs_max"] == 0.0
    assert report["shadow_latency_ms"]["p50"] > 0


def test_metrics_per_variant_leave_through_rays_prometheus_endpoint(
    result, service, api, ray_session
):
    from prometheus_client.parser import text_string_to_metric_families

    body = sample_request(result.model_name)
    for _ in range(5):
        assert api.post(f"{service}/predict", json=body, timeout=10).status_code == 200
    assert requests.post(f"{service}/predict", json=body, timeout=10).status_code == 401
    from test_alerts import metric_names

    port = ray_session.nodes()[0]["MetricsExportPort"]
    wanted = {
        "ray_rayapp_requests",  # the parser drops _total from counter family names
        "ray_rayapp_latency_ms",
        "ray_rayapp_score",
        # every metric the alert rules and the dashboard read, but the watcher's own
        # (monitor/gauges.py), which tests/test_retrain.py scrapes after a watcher's check
        *(metric_names() - gauges.NAMES),
    }
    deadline, found = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = {f.name: f for f in text_string_to_metric_families(text) if f.name in wanted}
        if set(found) == wanted:
            break
        time.sleep(2)
    assert set(found) == wanted, sorted(found)
    labels = [s.labels for s in found["ray_rayapp_requests"].samples]
    ours = [x for x in labels if x.get("model") == result.model_name and x.get("code") == "200"]
    assert ours and {"variant", "version", "deployment", "application"} <= set(ours[0])
