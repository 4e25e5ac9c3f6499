"""A router replica's fleet against the session's real registry: a reference that is gone does
not stop a route from following its aliases, and a canary that breaches its limits is stopped
while the registry cannot be reached, its ending recorded once the registry answers again."""

from __future__ import annotations

import time

import mlflow
import pytest
from conftest import free_port
from mlflow import MlflowClient

from ray_app import registry
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.rollout.routing import (
    ROLLBACK,
    Canary,
    CanaryLimits,
    Route,
    RouterConfig,
    Shadow,
    Variant,
)
from ray_app.serve.fleet import Deployed, Fleet

pytestmark = pytest.mark.e2e

NAME = "fleet_model"  # a model of its own: its aliases and rollout records touch no other test


@pytest.fixture(scope="module")
def versions(result) -> list[str]:
    """Two versions of the session's trained model (its files registered again)."""
    source = MlflowClient().get_model_version(result.model_name, result.model_version).source
    return [registry.register(source, NAME, {}).version for _ in range(2)]


def _fleet(version: str) -> Fleet:
    features = load(ModelRef(NAME, version=version)).features
    return Fleet({NAME: Deployed(f"{NAME}/{version}", f"{NAME}/{version}", features)}, 100)


def test_a_reference_that_is_gone_does_not_stop_a_route_following_its_alias(versions):
    first, second = versions
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "served", first)
    client.set_registered_model_alias(NAME, "shadowed", first)
    fleet = _fleet(first)
    route = Route(
        strategy="shadow",
        variants=[Variant(name="primary", model=f"{NAME}@served")],
        shadow=Shadow(model=f"{NAME}@shadowed"),
    )
    fleet.apply(RouterConfig(routes={NAME: route}))
    assert fleet.routes[NAME].shadow == f"{NAME}/{first}"

    client.delete_registered_model_alias(NAME, "shadowed")
    client.set_registered_model_alias(NAME, "served", second)
    fleet.refresh()
    live = fleet.routes[NAME]
    assert live.serving == {"primary": f"{NAME}/{second}"}
    assert live.shadow is None and "gone" in live.held_back[route.shadow.name]
    fleet.refresh()  # nothing moved since: the route is not built again
    assert fleet.routes[NAME] is live


def test_a_breaching_canary_stops_while_the_registry_is_down_and_is_recorded_after(
    versions, monkeypatch
):
    first, second = versions
    fleet = _fleet(first)
    canary = Canary(
        variant="canary", started_at=time.time(), step_s=3600, limits=CanaryLimits(min_requests=10)
    )
    route = Route(
        strategy="canary",
        variants=[
            Variant(name="primary", model=f"{NAME}/{first}"),
            Variant(name="canary", model=f"{NAME}/{second}", weight=0),
        ],
        canary=canary,
    )
    fleet.apply(RouterConfig(routes={NAME: route}))
    for _ in range(20):
        fleet.observe(NAME, "primary", 5.0, 0.3)
        fleet.observe(NAME, "canary", 5.0, None)  # every canary request failed

    def recorded() -> list[str]:
        history = registry.rollout_history(NAME)
        return [e.action for e in history if e.rollout_id == canary.rollout_id]

    uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the registry is out
    mlflow.set_tracking_uri(down)
    mlflow.set_registry_uri(down)
    try:
        with pytest.raises(RuntimeError, match="Connection|connect"):
            fleet.judge(time.time())
    finally:
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])
    assert fleet.canary_stopped(NAME, canary)  # stopped here, whatever the registry said
    assert fleet.routes[NAME].weights(time.time(), True) == {"primary": 100.0, "canary": 0.0}
    assert recorded() == [] and len(fleet.unrecorded) == 1

    fleet.judge(time.time())  # the registry answers again: the ending is recorded, once
    fleet.judge(time.time())
    assert recorded() == [ROLLBACK] and fleet.unrecorded == []
